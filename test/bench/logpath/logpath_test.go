// Package logpath measures agent A's log path offline: the primary's tail of a
// growing rr log, its cutter and the log channel's sender over real TLS, in this
// process; the recording QEMU (a writer growing the log in QEMU's write sizes) and
// agent B (a receiver writing what it gets to a file and acking it) in a child
// process, so that this process's CPU is agent A's log path alone (the kernel's
// receive path of the loopback connection is charged to it too, as the lab's shared
// kernel charges the backup host's to agent A).
//
//	LOGPATH_SECONDS=10 go test -count=1 -run TestLogPathCPU -v ./test/bench/logpath \
//	    [-cpuprofile cpu.out]
//
// LOGPATH_MBPS (default 125) is the log's growth in MB/s, LOGPATH_STAMPS (default
// 2000) how many times a second a held guest frame stamps the log (an fstat and a
// wake of the tail, as netbuf.Hold does per batch of queued frames),
// LOGPATH_FRAME (default 1514) the size of the network frames in the log,
// LOGPATH_FLUSH_US (default 1000) how often the recording flushes its stdio
// buffer (patch 0003's flusher runs every millisecond), LOGPATH_MAXFRAME the
// sender's largest frame (default logging.DefaultMaxFrame), LOGPATH_PLAIN=1 the
// channel without TLS (an experiment: ftvmd has no such mode).
package logpath

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/replay"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// events is a cycle of whole rr events as a recording of network input writes them:
// an instruction count, a checkpoint, the frame (ASYNC_NET) and a host clock read.
func events(frame int) []byte {
	var b []byte
	for len(b) < 4<<20 {
		b = append(b, byte(replay.KindInstruction))
		b = binary.BigEndian.AppendUint32(b, 1000)
		b = append(b, byte(replay.KindCheckpointClockVirtual))
		b = append(b, byte(replay.KindAsyncNet), 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(frame))
		for i := range frame {
			b = append(b, byte(i*7+len(b)))
		}
		b = append(b, byte(replay.KindClockHost))
		b = binary.BigEndian.AppendUint64(b, uint64(len(b)))
	}
	return b
}

// TestLogPathChild is the child: the recording QEMU and agent B.
func TestLogPathChild(t *testing.T) {
	if os.Getenv("LOGPATH_CHILD") == "" {
		t.Skip("the child of TestLogPathCPU")
	}
	dir := os.Getenv("LOGPATH_DIR")
	rate := float64(envInt("LOGPATH_MBPS", 125)) * 1e6
	cyc := events(envInt("LOGPATH_FRAME", 1514))
	flush := time.Duration(envInt("LOGPATH_FLUSH_US", 1000)) * time.Microsecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	scfg, err := logging.ServerTLS(filepath.Join(dir, "server"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ADDR %s\n", ln.Addr())
	raw, err := logging.BatchListener(ln).Accept()
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn = raw
	if os.Getenv("LOGPATH_PLAIN") == "" {
		if conn, err = logging.ServerHandshake(ctx, raw, scfg); err != nil {
			t.Fatal(err)
		}
	}
	sink, err := os.Create(filepath.Join(dir, "backup.rr"))
	if err != nil {
		t.Fatal(err)
	}
	rcv := logging.NewReceiver(conn, fileSink{sink}, logging.ReceiverConfig{StartOffset: replay.HeaderSize, PeerTimeout: 10 * time.Second})
	go func() { _ = rcv.Run(ctx) }()

	// The recording: stdio's 4 KiB writes, and a flush of what is buffered every
	// millisecond (patch 0003's flusher; a guest's send flushes too).
	log, err := os.OpenFile(filepath.Join(dir, "log.rr"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var written int64
	pos := 0
	for {
		if _, err := os.Stat(filepath.Join(dir, "stop")); err == nil {
			return
		}
		want := int64(rate * time.Since(start).Seconds())
		for written < want {
			n := int(min(4096, want-written))
			if pos+n > len(cyc) {
				n = len(cyc) - pos
			}
			if _, err := log.Write(cyc[pos : pos+n]); err != nil {
				t.Fatal(err)
			}
			pos = (pos + n) % len(cyc)
			written += int64(n)
		}
		time.Sleep(flush)
	}
}

type fileSink struct{ f *os.File }

func (s fileSink) Append(off int64, data []byte) error {
	_, err := s.f.WriteAt(data, off)
	return err
}

// tail is agent/primary.go's tail: the same buffer, tick and cutter.
func tail(ctx context.Context, rr *os.File, snd *logging.Sender, wake <-chan struct{}, reads *atomic.Int64) error {
	cut := replay.NewCutter(replay.HeaderSize, 0)
	buf := make([]byte, 256<<10)
	off := int64(replay.HeaderSize)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := rr.ReadAt(buf, off)
		reads.Add(1)
		if n > 0 {
			off += int64(n)
			if _, werr := cut.Write(buf[:n]); werr != nil {
				return werr
			}
			snd.Publish(cut.Boundary(), cut.Icount())
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if n == len(buf) {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-wake:
		}
	}
}

func TestLogPathCPU(t *testing.T) {
	secs := envInt("LOGPATH_SECONDS", 0)
	if secs == 0 {
		t.Skip("LOGPATH_SECONDS unset")
	}
	stamps := envInt("LOGPATH_STAMPS", 2000)
	dir := t.TempDir()
	if err := logging.InitCA(filepath.Join(dir, "ca"), "logpath CA"); err != nil {
		t.Fatal(err)
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, h := range []string{"server", "client"} {
		if err := logging.IssueHost(filepath.Join(dir, "ca"), filepath.Join(dir, h), h+".test", lo); err != nil {
			t.Fatal(err)
		}
	}
	hdr := make([]byte, replay.HeaderSize)
	binary.BigEndian.PutUint32(hdr, replay.Version)
	if err := os.WriteFile(filepath.Join(dir, "log.rr"), hdr, 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestLogPathChild$", "-test.v")
	cmd.Env = append(os.Environ(), "LOGPATH_CHILD=1", "LOGPATH_DIR="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = os.WriteFile(filepath.Join(dir, "stop"), nil, 0o600)
		_ = cmd.Wait()
	}()
	var addr string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "ADDR %s", &addr); err == nil {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	if addr == "" {
		t.Fatal("child gave no address")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ccfg, err := logging.ClientTLS(filepath.Join(dir, "client"), "server.test")
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	if os.Getenv("LOGPATH_PLAIN") != "" {
		// An experiment, not a mode ftvmd has: the channel without TLS, to show
		// what the encryption costs.
		if conn, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
		t.Logf("no TLS (LOGPATH_PLAIN)")
	} else {
		tc, err := logging.Dial(ctx, addr, ccfg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		st := tc.ConnectionState()
		t.Logf("TLS version %#x, cipher suite %s", st.Version, tls.CipherSuiteName(st.CipherSuite))
		conn = tc
	}
	rr, err := os.Open(filepath.Join(dir, "log.rr"))
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	snd := logging.NewSender(conn, rr, logging.SenderConfig{StartOffset: replay.HeaderSize, PeerTimeout: 10 * time.Second,
		MaxFrame: envInt("LOGPATH_MAXFRAME", 0)})
	sdone := make(chan error, 1)
	go func() { sdone <- snd.Run(ctx) }()
	go func() { // the ack loop: it only reads them here
		for {
			select {
			case <-ctx.Done():
				return
			case <-snd.Acks():
			}
		}
	}()
	wake := make(chan struct{}, 1)
	var reads atomic.Int64
	tdone := make(chan error, 1)
	go func() { tdone <- tail(ctx, rr, snd, wake, &reads) }()
	go func() { // the hold's stamps: an fstat and a wake per batch of held frames
		tk := time.NewTicker(time.Second / time.Duration(stamps))
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				select {
				case wake <- struct{}{}:
				default:
				}
				_, _ = rr.Stat()
			}
		}
	}()

	time.Sleep(2 * time.Second) // warm up
	s0, r0, c0, t0 := snd.Stats(), reads.Load(), cpuNow(), time.Now()
	time.Sleep(time.Duration(secs) * time.Second)
	s1, r1, c1, t1 := snd.Stats(), reads.Load(), cpuNow(), time.Now()
	cancel()
	<-sdone
	<-tdone

	wall := t1.Sub(t0).Seconds()
	cpu := (c1 - c0).Seconds()
	bytes := float64(s1.BytesSent - s0.BytesSent)
	frames := float64(s1.Frames - s0.Frames)
	t.Logf("RESULT sent %.1f MB/s, acked behind %d B, cpu %.3f cores, %.2f ms CPU per MB, %.3f cores per Gbit/s; frames %.0f/s of %.1f KiB avg; tail reads %.0f/s",
		bytes/wall/1e6, s1.Sent-s1.Acked, cpu/wall, cpu*1e3/(bytes/1e6), cpu/(bytes*8/1e9),
		frames/wall, bytes/frames/1024, float64(r1-r0)/wall)
}
