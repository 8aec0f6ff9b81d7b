package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startFtguest builds the lab guest's service (test/guest/ftguest) and runs it on
// loopback: the drivers are checked against the real protocol and the real
// pattern, not a copy of them.
func startFtguest(t *testing.T) LoadTarget {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ftguest")
	// `go test` puts its own go command first in PATH.
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ftvmd/ftvmd/test/guest/ftguest").CombinedOutput(); err != nil {
		t.Fatalf("build ftguest: %v: %s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "-listen", addr, "-disk", filepath.Join(t.TempDir(), "nodisk"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ftguest ready" {
		t.Fatalf("ftguest did not start: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return LoadTarget{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
}

func TestDriversAgainstFtguest(t *testing.T) {
	tgt := startFtguest(t)
	tgt.Ping = func(ctx context.Context, d time.Duration) (PingCounts, error) {
		time.Sleep(d) // as ping -w does
		return PingCounts{Sent: 100, Received: 97}, nil
	}
	const d = 300 * time.Millisecond
	for _, p := range LoadPatterns() {
		t.Run(p.Name, func(t *testing.T) {
			t0 := time.Now()
			tr, err := p.Run(context.Background(), tgt, d)
			if err != nil {
				t.Fatal(err)
			}
			if el := time.Since(t0); el < d {
				t.Errorf("%s ran %s, less than %s", p.Name, el, d)
			}
			if tr.ToClientBytes+tr.ToGuestBytes == 0 && tr.Connections == 0 {
				t.Errorf("%s moved nothing: %+v", p.Name, tr)
			}
			switch p.Name {
			case "get":
				if tr.Gets == 0 || tr.ToClientBytes != int64(tr.Gets)*getChunk {
					t.Errorf("get: %+v", tr)
				}
			case "put":
				if tr.Puts == 0 || tr.ToGuestBytes != int64(tr.Puts)*putChunk {
					t.Errorf("put: %+v", tr)
				}
			case "getput":
				if tr.Gets == 0 || tr.Puts == 0 {
					t.Errorf("getput: %+v", tr)
				}
			case "conns":
				if tr.Connections < 2 {
					t.Errorf("conns: %+v", tr)
				}
			case "pingflood":
				if tr.PingsSent != 100 || tr.ToClientBytes != 97*pingICMPBytes {
					t.Errorf("pingflood: %+v", tr)
				}
			case "busyget":
				if tr.MD5s == 0 || tr.Gets == 0 {
					t.Errorf("busyget: %+v", tr)
				}
			}
		})
	}
}

// fakeGuest serves one canned behaviour per connection: answer(line, conn).
func fakeGuest(t *testing.T, answer func(line string, w io.Writer, r *bufio.Reader)) LoadTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					answer(strings.TrimSpace(line), c, r)
				}
			}()
		}
	}()
	return LoadTarget{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}}
}

func TestDriversCatchWrongAnswers(t *testing.T) {
	t.Run("get: one wrong byte", func(t *testing.T) {
		tgt := fakeGuest(t, func(line string, w io.Writer, _ *bufio.Reader) {
			var n int64
			fmt.Sscanf(line, "get %d", &n)
			fmt.Fprintf(w, "data %d\n", n)
			b := make([]byte, n)
			guestPattern(b, 0)
			b[n-3]++
			w.Write(b)
		})
		_, err := DriveGet(context.Background(), tgt, time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("byte %d ", getChunk-3)) {
			t.Fatalf("want the wrong byte found at %d, got %v", getChunk-3, err)
		}
	})
	t.Run("put: wrong crc", func(t *testing.T) {
		tgt := fakeGuest(t, func(line string, w io.Writer, r *bufio.Reader) {
			var n int64
			fmt.Sscanf(line, "put %d", &n)
			io.CopyN(io.Discard, r, n)
			fmt.Fprintf(w, "got %d %08x\n", n, 0xdeadbeef)
		})
		if _, err := DrivePut(context.Background(), tgt, time.Millisecond); err == nil || !strings.Contains(err.Error(), "deadbeef") {
			t.Fatalf("want a CRC mismatch, got %v", err)
		}
	})
	t.Run("md5: wrong digest", func(t *testing.T) {
		tgt := fakeGuest(t, func(line string, w io.Writer, _ *bufio.Reader) { fmt.Fprintln(w, "md5 0123") })
		if _, err := DriveMD5(context.Background(), tgt, time.Millisecond); err == nil || !strings.Contains(err.Error(), "md5 0123") {
			t.Fatalf("want a digest mismatch, got %v", err)
		}
	})
	t.Run("conns: request count goes back", func(t *testing.T) {
		count := 10
		tgt := fakeGuest(t, func(line string, w io.Writer, _ *bufio.Reader) {
			f := strings.Fields(line)
			switch f[0] {
			case "ping":
				fmt.Fprintln(w, "pong")
			case "seq":
				count-- // a guest that lost requests
				fmt.Fprintf(w, "ok %s %d %s\n", f[1], count, f[2])
			case "quit":
				fmt.Fprintln(w, "bye")
			}
		})
		if _, err := DriveConns(context.Background(), tgt, time.Second); err == nil || !strings.Contains(err.Error(), "went from 9 to 8") {
			t.Fatalf("want the count going back caught, got %v", err)
		}
	})
	t.Run("pingflood: no reply", func(t *testing.T) {
		tgt := LoadTarget{Ping: func(context.Context, time.Duration) (PingCounts, error) { return PingCounts{Sent: 50}, nil }}
		if _, err := DrivePingFlood(context.Background(), tgt, time.Second); err == nil {
			t.Fatal("a flood with no reply passed")
		}
	})
	t.Run("getput: one failure stops the other", func(t *testing.T) {
		tgt := fakeGuest(t, func(line string, w io.Writer, r *bufio.Reader) {
			if strings.HasPrefix(line, "put") {
				fmt.Fprintln(w, "err put: no")
			}
			// get: never answers; only the put's failure can end the driver.
		})
		done := make(chan error, 1)
		go func() { _, err := DriveGetPut(context.Background(), tgt, time.Hour); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "put") {
				t.Fatalf("want the put's error, got %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the get kept running after the put failed")
		}
	})
}

func TestDriverStopsWithContext(t *testing.T) {
	tgt := fakeGuest(t, func(string, io.Writer, *bufio.Reader) {}) // never answers
	ctx, cancel := context.WithCancelCause(context.Background())
	stall := errors.New("replay stalled")
	time.AfterFunc(100*time.Millisecond, func() { cancel(stall) })
	t0 := time.Now()
	_, err := DriveGet(ctx, tgt, time.Hour)
	if !errors.Is(err, stall) {
		t.Fatalf("want the cause of the stop, got %v", err)
	}
	if el := time.Since(t0); el > 10*time.Second {
		t.Fatalf("driver took %s to stop", el)
	}
}

func TestParsePingSummary(t *testing.T) {
	for _, tc := range []struct {
		out        string
		sent, recv int
		ok         bool
	}{
		{"PING 10.77.0.100 (10.77.0.100) 56(84) bytes of data.\n\n--- 10.77.0.100 ping statistics ---\n51234 packets transmitted, 51230 received, 0.00781% packet loss, time 60001ms\nrtt min/avg/max/mdev = 0.2/1.1/20.0/0.5 ms, pipe 2, ipg/ewma 1.1/1.0 ms\n", 51234, 51230, true},
		{"--- 10.77.0.100 ping statistics ---\n120 packets transmitted, 0 received, 100% packet loss, time 60000ms\n", 120, 0, true},
		{"ping: connect: Network is unreachable\n", 0, 0, false},
	} {
		pc, err := ParsePingSummary(tc.out)
		if (err == nil) != tc.ok || pc.Sent != tc.sent || pc.Received != tc.recv {
			t.Errorf("%q: got %+v %v", tc.out, pc, err)
		}
	}
}

func TestSelectLoadPatterns(t *testing.T) {
	all, err := SelectLoadPatterns(nil)
	if err != nil || len(all) != len(LoadPatterns()) {
		t.Fatalf("no names: %d patterns, %v", len(all), err)
	}
	ps, err := SelectLoadPatterns([]string{"getput", "put"})
	if err != nil || len(ps) != 2 || ps[0].Name != "getput" || ps[1].Name != "put" {
		t.Fatalf("getput,put: %+v %v", ps, err)
	}
	if _, err := SelectLoadPatterns([]string{"put", "nope"}); err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "getput") {
		t.Fatalf("unknown name: %v", err)
	}
	if _, err := SelectLoadPatterns([]string{"put", "put"}); err == nil {
		t.Fatal("a repeated name was accepted")
	}
}

// DriveAlternate against the real guest service: a get, then a put, in turn, each
// checked, until it is told to stop (it finishes the request under way).
func TestDriveAlternateAgainstFtguest(t *testing.T) {
	tgt := startFtguest(t)
	// Long enough for a get and a put of 8 MiB each under -race on a loaded
	// machine (300 ms saw only the first get there: Gets 1, Puts 0).
	const runFor = 2 * time.Second
	stop := make(chan struct{})
	time.AfterFunc(runFor, func() { close(stop) })
	t0 := time.Now()
	tr, err := DriveAlternate(context.Background(), tgt, stop)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el < runFor {
		t.Fatalf("stopped after %s, before it was told to", el)
	}
	if tr.Gets == 0 || tr.Puts == 0 || tr.Gets-tr.Puts > 1 || tr.Puts > tr.Gets {
		t.Fatalf("want gets and puts in turn, got %+v", tr)
	}
	if tr.ToClientBytes != int64(tr.Gets)*getChunk || tr.ToGuestBytes != int64(tr.Puts)*putChunk {
		t.Fatalf("bytes do not add up: %+v", tr)
	}
}

// Wrong bytes are a *CorruptError that counts them, a broken connection is not.
func TestBulkCorruptionCounted(t *testing.T) {
	wrongGet := fakeGuest(t, func(line string, w io.Writer, _ *bufio.Reader) {
		var n int64
		fmt.Sscanf(line, "get %d", &n)
		fmt.Fprintf(w, "data %d\n", n)
		b := make([]byte, n)
		guestPattern(b, 0)
		b[100]++
		b[200]++
		w.Write(b)
	})
	var ce *CorruptError
	if _, err := DriveAlternate(context.Background(), wrongGet, nil); !errors.As(err, &ce) || ce.Bytes != 2 {
		t.Fatalf("two wrong bytes in a get: %v (%+v)", err, ce)
	}
	wrongPut := fakeGuest(t, func(line string, w io.Writer, r *bufio.Reader) {
		var n int64
		fmt.Sscanf(line, "put %d", &n)
		io.CopyN(io.Discard, r, n)
		fmt.Fprintf(w, "got %d %08x\n", n, 0xdeadbeef)
	})
	if _, err := DrivePut(context.Background(), wrongPut, time.Millisecond); !errors.As(err, &ce) || ce.Bytes != putChunk {
		t.Fatalf("a put with a wrong CRC: %v (%+v)", err, ce)
	}
	hangUp := fakeGuest(t, func(line string, w io.Writer, _ *bufio.Reader) {
		fmt.Fprintf(w, "data %d\nxyz", getChunk)
		w.(net.Conn).Close()
	})
	if _, err := DriveGet(context.Background(), hangUp, time.Millisecond); err == nil || errors.As(err, &ce) {
		t.Fatalf("a connection closed mid-stream is not corruption: %v", err)
	}
}
