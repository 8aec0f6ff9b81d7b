package logging

import (
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// HandshakeTimeout bounds each handshake helper call.
const HandshakeTimeout = 10 * time.Second

// WriteHello sends v as a JSON Hello (at most MaxHelloSize bytes).
func WriteHello(conn net.Conn, v any) error { return writeJSON(conn, MsgHello, v) }

// WriteHelloReply sends v as a JSON HelloReply.
func WriteHelloReply(conn net.Conn, v any) error { return writeJSON(conn, MsgHelloReply, v) }

// ReadHello reads a Hello into v. A Bye/Error from the peer is returned as
// ErrPeerClosed/ErrPeerRefused; any other message is ErrProtocol.
func ReadHello(conn net.Conn, v any) error { return readJSON(conn, MsgHello, v) }

// ReadHelloReply reads a HelloReply into v.
func ReadHelloReply(conn net.Conn, v any) error { return readJSON(conn, MsgHelloReply, v) }

// WriteRefusal sends an Error message with reason (e.g. to refuse a Hello).
func WriteRefusal(conn net.Conn, reason string) error {
	if err := conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	defer conn.SetWriteDeadline(time.Time{})
	if _, err := conn.Write(appendReason(nil, MsgError, reason)); err != nil {
		return fmt.Errorf("sending refusal: %w", err)
	}
	return nil
}

// WriteBye ends a connection in an orderly way before its log channel started, with
// reason: the peer's ReadHello or Receiver reports ErrPeerClosed. A backup that
// accepted a Hello treats any other end as the loss of its primary.
func WriteBye(conn net.Conn, reason string) error {
	if err := conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	defer conn.SetWriteDeadline(time.Time{})
	if _, err := conn.Write(appendReason(nil, MsgBye, reason)); err != nil {
		return fmt.Errorf("sending bye: %w", err)
	}
	return nil
}

func writeJSON(conn net.Conn, t MsgType, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", t, err)
	}
	if len(b) > MaxHelloSize {
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrTooLarge, t, len(b), MaxHelloSize)
	}
	if err := conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	defer conn.SetWriteDeadline(time.Time{})
	if _, err := conn.Write(AppendMessage(nil, t, b)); err != nil {
		return fmt.Errorf("sending %s: %w", t, err)
	}
	return nil
}

func readJSON(conn net.Conn, t MsgType, v any) error {
	if err := conn.SetReadDeadline(time.Now().Add(HandshakeTimeout)); err != nil {
		return fmt.Errorf("setting deadline: %w", err)
	}
	defer conn.SetReadDeadline(time.Time{})
	m, err := ReadMessage(conn)
	if err != nil {
		return fmt.Errorf("reading %s: %w", t, err)
	}
	switch m.Type {
	case t:
	case MsgBye, MsgError:
		return fmt.Errorf("waiting for %s: %w", t, peerGone(m))
	default:
		return fmt.Errorf("%w: got %s, want %s", ErrProtocol, m.Type, t)
	}
	if err := json.Unmarshal(m.Payload, v); err != nil {
		return fmt.Errorf("%w: decoding %s: %w", ErrProtocol, t, err)
	}
	return nil
}
