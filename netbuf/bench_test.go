package netbuf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/outputrule"
)

// BenchmarkRelay measures guest->network throughput of the relay with real
// unix datagram sockets in front (QEMU's side) and a socketpair as the tap.
// "protected" acks every stamp as soon as it is taken, from another
// goroutine (a backup with zero latency), so it measures the cost of the
// hold/ack/release path itself.
func BenchmarkRelay(b *testing.B) {
	for _, mode := range []string{"unprotected", "protected"} {
		for _, size := range []int{64, 1500, 9000, 65000} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) { benchRelay(b, mode, size, nil) })
		}
	}
}

// BenchmarkRelayDgramQueue is BenchmarkRelay/*/1500 with the relay's socket
// made in a fresh network namespace whose net.unix.max_dgram_qlen is the
// kernel default (10) or DefaultDgramQueue. Needs root.
func BenchmarkRelayDgramQueue(b *testing.B) {
	requireRoot(b)
	for _, qlen := range []int{10, DefaultDgramQueue} {
		for _, mode := range []string{"unprotected", "protected"} {
			b.Run(fmt.Sprintf("qlen=%d/%s/1500", qlen, mode), func(b *testing.B) {
				ns := newNetns(b)
				err := ns.do(func() error {
					return os.WriteFile(dgramQlenPath, []byte(strconv.Itoa(qlen)), 0)
				})
				if err != nil {
					b.Fatal(err)
				}
				benchRelay(b, mode, 1500, ns.do)
			})
		}
	}
}

// benchRelay runs one relay benchmark. inNetns, if not nil, runs NewRelay
// (which creates the relay's socket) in another network namespace.
func benchRelay(b *testing.B, mode string, size int, inNetns func(func() error) error) {
	dir := b.TempDir()
	tap, netSide := fakeTap(b)
	var logSize atomic.Int64
	ackc := make(chan struct{}, 1)
	m := outputrule.Unprotected
	if mode != "unprotected" {
		m = outputrule.Protected
	}
	cfg := RelayConfig{
		AgentSock: filepath.Join(dir, "agent.sock"),
		QEMUSock:  filepath.Join(dir, "qemu.sock"),
		Tap:       tap,
		Stamp: func() (int64, error) {
			s := logSize.Add(int64(size))
			notify(ackc)
			return s, nil
		},
		Rule: outputrule.New(outputrule.Config{}, m),
	}
	var r *Relay
	var err error
	if inNetns != nil {
		err = inNetns(func() (err error) { r, err = NewRelay(cfg); return err })
	} else {
		r, err = NewRelay(cfg)
	}
	if err != nil {
		b.Fatal(err)
	}
	q := newFakeQEMU(b, filepath.Join(dir, "qemu.sock"), filepath.Join(dir, "agent.sock"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	ackDone := make(chan struct{})
	go func() { // the backup: acks whatever was stamped
		defer close(ackDone)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ackc:
				s := logSize.Load()
				r.Sent(s)
				r.Ack(s)
			}
		}
	}()
	payload := frame(1, size)
	sendErr := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	// Like QEMU, the sender stops on EAGAIN (the relay's queue is full) and
	// waits for the socket to become writable; stalls counts the stops.
	var stalls int
	rc, err := q.send.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for i := 0; i < b.N; i++ {
			var werr error
			err := rc.Write(func(fd uintptr) bool {
				_, werr = unix.Write(int(fd), payload)
				if errors.Is(werr, unix.EAGAIN) {
					stalls++
					return false
				}
				return true
			})
			if err := errors.Join(err, werr); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	buf := make([]byte, DefaultMaxFrame)
	_ = netSide.SetReadDeadline(time.Now().Add(60 * time.Second))
	for i := 0; i < b.N; i++ {
		if _, err := netSide.Read(buf); err != nil {
			b.Fatalf("after %d frames: %v (stats %+v)", i, err, r.Stats())
		}
	}
	el := time.Since(start)
	b.StopTimer()
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
	b.ReportMetric(float64(stalls)/float64(b.N), "stalls/frame")
	s := r.Stats()
	if s.Rule.ReleasedFrames > 0 {
		b.ReportMetric(float64(s.Rule.MaxDelay.Microseconds()), "max-delay-µs")
	}
	b.ReportMetric(float64(s.BackpressureWaits), "bp-waits")
	cancel()
	<-ackDone
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
