package logging

import (
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// transport makes a connected (primary, backup) pair.
type transport struct {
	name string
	pair func(t *testing.T) (primary, backup net.Conn)
}

func transports() []transport {
	return []transport{
		{"netpipe", func(t *testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
		{"memlink", func(t *testing.T) (net.Conn, net.Conn) {
			l := NewMemLink()
			return l.A(), l.B()
		}},
		{"mtls", func(t *testing.T) (net.Conn, net.Conn) {
			k := makeKeys(t, "conformance CA")
			srv, cli, serr, cerr := tlsDial(t, serverCfg(t, k.server), clientCfg(t, k.client))
			if serr != nil || cerr != nil {
				t.Fatalf("mTLS setup: server %v, client %v", serr, cerr)
			}
			return cli, srv
		}},
	}
}

func randN(n int64) int64 {
	v, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		return n / 2
	}
	return v.Int64()
}

// TestConformance streams a file in random increments over every transport:
// the sink ends byte-identical, acks and the replayed icount reach the end,
// and a clean stop on the primary ends the backup with ErrPeerClosed.
func TestConformance(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			const start = 12
			body := make([]byte, 3<<20+12345)
			rand.Read(body)
			path := filepath.Join(t.TempDir(), "rr.log")
			if err := os.WriteFile(path, append(make([]byte, start), body...), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			end := int64(start + len(body))

			pconn, bconn := tr.pair(t)
			snd := NewSender(pconn, f, SenderConfig{
				StartOffset: start, MaxInFlight: 256 << 10, MaxFrame: 16 << 10,
				HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second,
				Logger: testLogger(t).With("side", "primary"),
			})
			sink := NewMemLog(start)
			rcv := NewReceiver(bconn, sink, ReceiverConfig{
				StartOffset: start, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second,
				Logger: testLogger(t).With("side", "backup"),
			})
			sctx, scancel := context.WithCancel(context.Background())
			defer scancel()
			rctx, rcancel := context.WithCancel(context.Background())
			defer rcancel()
			sdone := runAsync(func() error { return snd.Run(sctx) })
			rdone := runAsync(func() error { return rcv.Run(rctx) })

			// Publish in random increments, as the rr parser would at event
			// boundaries; icount = 3 * offset.
			go func() {
				for b := int64(start); b < end; {
					b = min(end, b+1+randN(40000))
					snd.Publish(b, uint64(3*b))
					if randN(4) == 0 {
						time.Sleep(time.Millisecond)
					}
				}
			}()

			timeout := time.After(30 * time.Second)
			var last Ack
			for last.Offset < end {
				select {
				case last = <-snd.Acks():
				case err := <-sdone:
					t.Fatalf("sender stopped early: %v", err)
				case err := <-rdone:
					t.Fatalf("receiver stopped early: %v", err)
				case <-timeout:
					t.Fatalf("acks stuck at %d of %d; sender %+v receiver %+v", last.Offset, end, snd.Stats(), rcv.Stats())
				}
			}
			if got := sink.Bytes(); string(got) != string(body) {
				t.Fatalf("sink differs from the source (%d vs %d bytes)", len(got), len(body))
			}
			if rs := rcv.Stats(); rs.BoundaryIcount != uint64(3*end) || rs.Held != end {
				t.Fatalf("receiver stats %+v, want held %d, boundary icount %d", rs, end, 3*end)
			}

			// The backup's replay progress reaches the primary on periodic acks.
			rcv.SetReplayed(uint64(3 * end))
			for last.ReplayedIcount != uint64(3*end) {
				select {
				case last = <-snd.Acks():
				case <-timeout:
					t.Fatalf("replayed icount never reported; last ack %+v", last)
				}
			}
			st := snd.Stats()
			if st.Acked != end || st.Sent != end || st.Behind || st.ReplayedIcount != uint64(3*end) {
				t.Fatalf("sender stats %+v", st)
			}
			if st.BytesSent != uint64(len(body)) {
				t.Fatalf("BytesSent %d, want %d (nothing sent twice)", st.BytesSent, len(body))
			}

			scancel()
			if err := waitErr(t, sdone, 5*time.Second, "sender"); err != nil {
				t.Fatalf("sender Run after cancel: %v", err)
			}
			if err := waitErr(t, rdone, 5*time.Second, "receiver"); !errors.Is(err, ErrPeerClosed) {
				t.Fatalf("receiver Run after primary's Bye: %v, want ErrPeerClosed", err)
			}
		})
	}
}
