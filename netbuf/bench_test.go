package netbuf

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

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
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) { benchRelay(b, mode, size) })
		}
	}
}

func benchRelay(b *testing.B, mode string, size int) {
	dir := b.TempDir()
	tap, netSide := fakeTap(b)
	var logSize atomic.Int64
	ackc := make(chan struct{}, 1)
	m := outputrule.Unprotected
	if mode != "unprotected" {
		m = outputrule.Protected
	}
	r, err := NewRelay(RelayConfig{
		AgentSock: filepath.Join(dir, "agent.sock"),
		QEMUSock:  filepath.Join(dir, "qemu.sock"),
		Tap:       tap,
		Stamp: func() (int64, error) {
			s := logSize.Add(int64(size))
			notify(ackc)
			return s, nil
		},
		Rule: outputrule.New(outputrule.Config{}, m),
	})
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
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := q.send.Write(payload); err != nil {
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
