// Package logging is the fault-tolerance log channel between two ftvmd
// agents: the primary streams its QEMU record/replay (rr) log to the backup
// over one connection per protected VM, and the backup acknowledges what it
// holds and how far its replaying QEMU has got.
//
// # Transport
//
// One TCP connection per protected VM, mutual TLS 1.3 only (no fallback),
// ECDSA P-256 keys made by ftvmd itself: InitCA creates a CA, IssueHost a
// host certificate valid for both server and client authentication,
// ServerTLS/ClientTLS build configs that accept only peers signed by that
// CA. Any net.Conn works for Sender and Receiver; MemLink is an in-memory
// pair with Disconnect and Drop for tests.
//
// # Wire format
//
// Every message is
//
//	type    u8
//	length  u32 big endian (payload bytes)
//	payload length bytes
//
// All integers are big endian. Types and payloads:
//
//	1 Hello       JSON, at most 64 KiB (opaque: the agent's VM spec/handshake)
//	2 HelloReply  JSON, at most 64 KiB
//	3 Frame       offset u64 | length u32 | crc32c u32 | icount u64 | data
//	              (1 <= length <= 1 MiB, length == payload-24, CRC-32C
//	              Castagnoli of data; icount is the instruction count at
//	              offset+length when that is a published event boundary,
//	              0 when the frame ends inside an event)
//	4 Ack         held u64 | replayed icount u64 | sent unix-nano u64
//	              [| stalled-for ns u64 | stalled-at icount u64 |
//	               log held beyond u64 | stall episodes u64]
//	              (24 bytes, or 56 with the bracketed ReplayStall, which a
//	              backup sends only with ReceiverConfig.StallReports: set it
//	              only for a primary that asked, older ones accept 24 only)
//	5 Heartbeat   sent unix-nano u64
//	6 Bye         UTF-8 reason, at most 4 KiB (orderly shutdown)
//	7 Error       UTF-8 reason, at most 4 KiB (refusal or failure)
//	8 Console     console bytes u64 | crc32c u32 (the primary's console
//	              output so far: the divergence sentinel's mark; sent only
//	              to a backup that set ReceiverConfig.OnConsole and said so)
//	9 Synced      epoch u64 (the backup of a running VM protects it from
//	              now on; sent only to a backup that set
//	              ReceiverConfig.OnSynced and said so)
//	10 NIC        first frame number u64 | primary log size u64 |
//	              1..512 x (frame length u32 | checksum u64): digests of
//	              consecutive frames the primary's guest transmitted, the
//	              sentinel's NIC half; sent only to a backup that set
//	              ReceiverConfig.OnNIC and said so
//
// The type and the length are checked against the type's limits before
// any payload is read or allocated; an unknown type, a length outside the
// limits (ErrTooLarge), or a malformed payload is ErrProtocol.
//
// Offsets are absolute byte offsets in the rr log file. The 12-byte rr
// header is not sent: the stream starts at SenderConfig.StartOffset
// (normally 12) and the receiver expects exactly that offset first.
//
// # Conversation
//
// After the TLS handshake the dialing agent sends Hello and the other
// answers HelloReply (or Error to refuse): WriteHello, ReadHello,
// WriteHelloReply, ReadHelloReply, WriteRefusal, each with a deadline.
// Then the primary runs a Sender and the backup a Receiver on the conn.
//
// The primary sends Frames in offset order, contiguous, each at most
// MaxFrame bytes; the last frame of a published range ends exactly at the
// published event boundary and carries its icount. When idle it sends a
// Heartbeat every HeartbeatInterval. The backup checks each frame (length,
// offset == next expected, CRC), appends it to its Sink, and acks the
// offset the Sink holds (at most its AckLimit, for a Sink that is an
// AckLimiter: the backup's acks only safe cut points); it sends an Ack at least every HeartbeatInterval
// even without new data, carrying the replayed icount set by SetReplayed
// (and, with StallReports, the stall report set by SetStall), so the Ack is
// also its heartbeat. Acks are cumulative.
//
// Either side that hears nothing at all for PeerTimeout, or whose write is
// blocked that long, stops with ErrPeerSilent. A side that refuses input
// sends Error with the reason, then closes: ErrChecksum (CRC mismatch),
// ErrGap (frame past the next expected offset), ErrStale (frame before it,
// a replay), ErrProtocol, ErrAckBeyondSent (an ack for bytes never sent:
// never counted as acked). Ack regressions are ignored and counted. A side
// stopped by its context sends Bye; the peer returns ErrPeerClosed. An
// Error from the peer is ErrPeerRefused. Run owns the conn and closes it.
// Nothing that arrives from the network can make either side panic
// (FuzzReadMessage checks the decoder).
//
// # The primary never blocks on the backup
//
// The primary agent calls only Sender.Publish(boundary, icount), which
// swaps an atomic pointer and nudges Run through a 1-buffered channel: it
// never takes a lock held across I/O and never waits for the network,
// however slow, stuck or gone the backup is. The data itself stays in the
// Source (the primary's rr log file): Run reads one frame at a time from
// it, so memory use is one frame whatever the backlog. At most MaxInFlight
// unacked bytes are on the wire; when the window is full the Sender stops
// sending and Stats().Behind is true, which is the signal for the lag
// control (throttling the primary's QEMU). Acks() is a 1-buffered,
// latest-wins channel, so a slow consumer (the output rule) cannot stall the
// reader. The only ways the backup slows the primary are the output rule
// (holding guest output until acked) and that lag control; both live
// outside this package.
//
// The backup acks only bytes its Sink.Append returned nil for, and no more
// than an AckLimiter sink allows.
// ReceiverConfig.AckDelay delays every ack (tests only: it proves that the
// primary holds output until acked).
package logging
