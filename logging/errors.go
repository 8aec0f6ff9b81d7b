package logging

import "errors"

// Sentinel errors. Run and the handshake helpers wrap them with detail; test
// them with errors.Is.
var (
	// ErrProtocol: a message with an unknown type, a bad length, or a
	// message that is not allowed in the current state.
	ErrProtocol = errors.New("logging: protocol violation")
	// ErrTooLarge: a message header announces a payload larger than the
	// limit for its type. It is also an ErrProtocol.
	ErrTooLarge = &wrapped{msg: "logging: message too large", parent: ErrProtocol}
	// ErrChecksum: a frame's data does not match its CRC-32C.
	ErrChecksum = errors.New("logging: frame checksum mismatch")
	// ErrGap: a frame starts after the next expected offset (bytes missing).
	ErrGap = errors.New("logging: gap in log stream")
	// ErrStale: a frame starts before the next expected offset (an old or
	// replayed frame).
	ErrStale = errors.New("logging: stale frame")
	// ErrPeerSilent: nothing at all arrived from the peer for PeerTimeout, or
	// the peer stopped draining the connection for that long.
	ErrPeerSilent = errors.New("logging: peer silent")
	// ErrAckBeyondSent: the backup acknowledged bytes that were never sent.
	ErrAckBeyondSent = errors.New("logging: ack beyond sent offset")
	// ErrPeerClosed: the peer said Bye.
	ErrPeerClosed = errors.New("logging: peer closed the channel")
	// ErrPeerRefused: the peer sent an Error message (it refused something
	// we sent, or failed).
	ErrPeerRefused = errors.New("logging: peer reported an error")
	// ErrSource: the Source could not supply published bytes.
	ErrSource = errors.New("logging: source read failed")
	// ErrSink: the Sink refused an append.
	ErrSink = errors.New("logging: sink append failed")
	// ErrAborted: Abort ended Run: this side failed locally (its replay died, its
	// disk filled, its recording failed) and told the peer why with an Error.
	ErrAborted = errors.New("logging: aborted")
	// ErrConfig: an invalid configuration value.
	ErrConfig = errors.New("logging: invalid config")
	// ErrExists: InitCA would overwrite an existing CA.
	ErrExists = errors.New("logging: already exists")
	// ErrIdentity: a host name that its certificate does not name: a peer that
	// calls itself another host, or an agent started with a --host its own
	// certificate was not issued for.
	ErrIdentity = errors.New("logging: host name not in certificate")
	// ErrKeyPermissions: a private key file that users other than its owner can
	// read or write.
	ErrKeyPermissions = errors.New("logging: private key is accessible to group or others")
	// ErrCertValidity: a certificate that has expired or is not valid yet.
	ErrCertValidity = errors.New("logging: certificate not valid now")
)

// wrapped is a sentinel that also matches its parent sentinel.
type wrapped struct {
	msg    string
	parent error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.parent }

// isRefusal reports whether err is one we should explain to the peer with an
// Error message before hanging up (as opposed to transport failures and the
// peer's own goodbye).
func isRefusal(err error) bool {
	for _, s := range []error{ErrProtocol, ErrChecksum, ErrGap, ErrStale, ErrPeerSilent,
		ErrAckBeyondSent, ErrSource, ErrSink, ErrAborted} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
