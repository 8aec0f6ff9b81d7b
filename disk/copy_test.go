package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// transport makes a connected pair: a is the sender's end, b the receiver's.
type transport struct {
	name string
	pair func(t testing.TB) (a, b net.Conn)
}

func pipePair(t testing.TB) (net.Conn, net.Conn) {
	a, b := net.Pipe()
	return a, b
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

var transports = []transport{{"pipe", pipePair}, {"tcp", tcpPair}}

// syntheticHeader is a qcow2 v3 header of a standalone image: magic, version 3, no
// backing file, no incompatible features, header length 104.
var syntheticHeader = func() []byte {
	h := make([]byte, qcow2V3MinHeaderSize)
	copy(h, "QFI\xfb\x00\x00\x00\x03")
	h[qcow2OffHeaderLength+3] = qcow2V3MinHeaderSize
	return h
}()

// writeSynthetic writes a file with a valid qcow2 v3 header and a random body.
func writeSynthetic(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		_, _ = rng.Read(b)
		if off == 0 {
			copy(b, syntheticHeader)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
}

// makeQcow2 makes a real 64M qcow2 image with 8 MiB of random data in it.
func makeQcow2(t testing.TB, dir string) string {
	t.Helper()
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
			t.Fatalf("qemu-img not found and FTVMD_REQUIRE_QEMU=1: %v", err)
		}
		t.Skipf("qemu-img not found: %v", err)
	}
	raw := filepath.Join(dir, "data.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(data)
	if _, err := f.WriteAt(data, 4<<20); err != nil { // leave a hole before it
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	img := filepath.Join(dir, "vm.qcow2")
	if out, err := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	if out, err := exec.Command(qemuImg, "check", img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img check: %v\n%s", err, out)
	}
	return img
}

type copyResult struct {
	sendErr error
	info    ImageInfo
	recvErr error
}

// runCopy runs send and receive on the two ends; each end is closed when its
// side returns (as an agent would on error).
func runCopy(t *testing.T, a, b net.Conn, send func(net.Conn) error, recv func(net.Conn) (ImageInfo, error)) copyResult {
	t.Helper()
	var res copyResult
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		res.sendErr = send(a)
		if res.sendErr != nil {
			a.Close()
		}
	}()
	go func() {
		defer wg.Done()
		res.info, res.recvErr = recv(b)
		if res.recvErr != nil {
			b.Close()
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		a.Close()
		b.Close()
		t.Fatal("copy did not finish in 60s")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return res
}

func mustInspect(t testing.TB, path string) ImageInfo {
	t.Helper()
	info, err := Inspect(path)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return info
}

func assertNoFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (or stat failed: %v), want no file", path, err)
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d vs %d bytes)", a, b, len(x), len(y))
	}
}

func TestCopyQcow2(t *testing.T) {
	src := makeQcow2(t, t.TempDir())
	info := mustInspect(t, src)
	if info.Name != "vm.qcow2" || info.Size < 8<<20 {
		t.Fatalf("Inspect = %+v, want vm.qcow2 holding at least the 8 MiB written", info)
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "backup.qcow2")
			var mu sync.Mutex
			var sendProg, recvProg []Progress
			cfg := func(p *[]Progress) CopyConfig {
				return CopyConfig{ChunkSize: 256 << 10, Progress: func(pr Progress) {
					mu.Lock()
					*p = append(*p, pr)
					mu.Unlock()
				}}
			}
			a, b := tr.pair(t)
			res := runCopy(t, a, b,
				func(c net.Conn) error { return SendImage(context.Background(), c, src, info, cfg(&sendProg)) },
				func(c net.Conn) (ImageInfo, error) {
					return ReceiveImage(context.Background(), c, dst, cfg(&recvProg))
				})
			if res.sendErr != nil || res.recvErr != nil {
				t.Fatalf("send: %v; receive: %v", res.sendErr, res.recvErr)
			}
			if res.info != info {
				t.Errorf("ReceiveImage = %+v, want %+v", res.info, info)
			}
			sameFile(t, src, dst)
			assertNoFile(t, dst+".partial")
			if got := mustInspect(t, dst); got.SHA256 != info.SHA256 {
				t.Errorf("dst sha256 %s, want %s", got.SHA256, info.SHA256)
			}
			if out, err := exec.Command("qemu-img", "check", dst).CombinedOutput(); err != nil {
				t.Errorf("qemu-img check on the copy: %v\n%s", err, out)
			}
			for name, ps := range map[string][]Progress{"sender": sendProg, "receiver": recvProg} {
				if len(ps) == 0 {
					t.Fatalf("%s: no progress reported", name)
				}
				last := ps[len(ps)-1]
				if last.Done != info.Size || last.Total != info.Size || last.Rate <= 0 {
					t.Errorf("%s: last progress %+v, want Done == Total == %d and a rate", name, last, info.Size)
				}
			}

			// The conn is still usable (the rr log stream follows the copy).
			go func() { _, _ = a.Write([]byte("rr-log")) }()
			got := make([]byte, 6)
			if _, err := io.ReadFull(b, got); err != nil || string(got) != "rr-log" {
				t.Errorf("conn after copy: read %q, %v", got, err)
			}
		})
	}
}

func TestCopySyntheticOverwritesStalePartial(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 3<<20+12345, 1)
	info := mustInspect(t, src)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst.qcow2")
			// A stale partial from an earlier attempt and an older dst.
			if err := os.WriteFile(dst+".partial", bytes.Repeat([]byte{0xee}, 5<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, []byte("old image"), 0o600); err != nil {
				t.Fatal(err)
			}
			a, b := tr.pair(t)
			res := runCopy(t, a, b,
				func(c net.Conn) error { return SendImage(context.Background(), c, src, info, CopyConfig{}) },
				func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
			if res.sendErr != nil || res.recvErr != nil {
				t.Fatalf("send: %v; receive: %v", res.sendErr, res.recvErr)
			}
			sameFile(t, src, dst)
			assertNoFile(t, dst+".partial")
		})
	}
}

// flipConn flips one byte in the middle of the nth Write (1 = the header).
type flipConn struct {
	net.Conn
	nth    int
	writes int
}

func (c *flipConn) Write(p []byte) (int, error) {
	c.writes++
	if c.writes == c.nth {
		q := bytes.Clone(p)
		q[len(q)/2] ^= 0x40
		return c.Conn.Write(q)
	}
	return c.Conn.Write(p)
}

// cutConn closes the conn once limit bytes have been written.
type cutConn struct {
	net.Conn
	limit int64
	n     int64
}

func (c *cutConn) Write(p []byte) (int, error) {
	if c.n+int64(len(p)) > c.limit {
		k := c.limit - c.n
		n, _ := c.Conn.Write(p[:k])
		c.n += int64(n)
		c.Conn.Close()
		return n, net.ErrClosed
	}
	n, err := c.Conn.Write(p)
	c.n += int64(n)
	return n, err
}

func TestCopyCorruptedChunk(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 4<<20, 2)
	info := mustInspect(t, src)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst.qcow2")
			a, b := tr.pair(t)
			res := runCopy(t, &flipConn{Conn: a, nth: 3}, b,
				func(c net.Conn) error {
					return SendImage(context.Background(), c, src, info, CopyConfig{ChunkSize: 64 << 10})
				},
				func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
			if !errors.Is(res.recvErr, ErrChecksum) {
				t.Errorf("receive: %v, want ErrChecksum", res.recvErr)
			}
			if !errors.Is(res.sendErr, ErrChecksum) || !errors.Is(res.sendErr, ErrPeerRefused) {
				t.Errorf("send: %v, want ErrChecksum from the peer", res.sendErr)
			}
			if res.recvErr != nil && !strings.Contains(res.recvErr.Error(), "chunk 1 at offset 65536") {
				t.Errorf("receive error does not name the chunk: %v", res.recvErr)
			}
			t.Logf("receiver: %v\nsender: %v", res.recvErr, res.sendErr)
			assertNoFile(t, dst)
			assertNoFile(t, dst+".partial")
		})
	}
}

func TestCopyTruncated(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 4<<20, 3)
	info := mustInspect(t, src)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst.qcow2")
			a, b := tr.pair(t)
			res := runCopy(t, &cutConn{Conn: a, limit: 2<<20 + 1000}, b,
				func(c net.Conn) error { return SendImage(context.Background(), c, src, info, CopyConfig{}) },
				func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
			if !errors.Is(res.recvErr, ErrTruncated) {
				t.Errorf("receive: %v, want ErrTruncated", res.recvErr)
			}
			if !errors.Is(res.sendErr, ErrTruncated) {
				t.Errorf("send: %v, want ErrTruncated", res.sendErr)
			}
			t.Logf("receiver: %v\nsender: %v", res.recvErr, res.sendErr)
			assertNoFile(t, dst)
			// The partial may stay; it holds only verified chunks.
			if st, err := os.Stat(dst + ".partial"); err == nil && st.Size() > 2<<20 {
				t.Errorf("partial has %d bytes, more than was sent", st.Size())
			}
		})
	}
}

func TestCopyLyingSHA(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 2<<20, 4)
	info := mustInspect(t, src)
	sum := sha256.Sum256([]byte("something else"))
	info.SHA256 = hex.EncodeToString(sum[:])
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "dst.qcow2")
			a, b := tr.pair(t)
			res := runCopy(t, a, b,
				func(c net.Conn) error { return SendImage(context.Background(), c, src, info, CopyConfig{}) },
				func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
			if !errors.Is(res.recvErr, ErrChecksum) || !errors.Is(res.sendErr, ErrChecksum) {
				t.Errorf("receive: %v\nsend: %v\nwant ErrChecksum on both", res.recvErr, res.sendErr)
			}
			t.Logf("receiver: %v\nsender: %v", res.recvErr, res.sendErr)
			assertNoFile(t, dst)
			assertNoFile(t, dst+".partial")
		})
	}
}

// fakeHeader is a valid header for an image of size bytes.
func fakeHeader(t *testing.T, size int64) []byte {
	js, err := json.Marshal(ImageInfo{Name: "x.qcow2", Size: size, SHA256: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	h := make([]byte, headerFixedLen, headerFixedLen+len(js))
	copy(h, headerMagic)
	binary.BigEndian.PutUint16(h[8:], wireVersion)
	binary.BigEndian.PutUint32(h[12:], uint32(len(js)))
	return append(h, js...)
}

func TestReceiveHostileLengths(t *testing.T) {
	chunkHdr := func(n uint32) []byte { return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, n), 0) }
	badJSON := fakeHeader(t, 1)[:headerFixedLen]
	binary.BigEndian.PutUint32(badJSON[12:], 0xFFFFFFFF)
	for _, tc := range []struct {
		name   string
		header []byte // then, after the accept, frame
		frame  []byte
		reply  replyType
	}{
		{"chunk longer than the image", fakeHeader(t, 100), chunkHdr(101), replyFail},
		{"huge abort message", fakeHeader(t, 100), chunkHdr(abortMarker)[:4:4], replyAccept},
		{"huge header", badJSON, nil, replyRefuse},
		{"bad magic", []byte("GET / HTTP/1.1\r\n"), nil, replyRefuse},
	} {
		if tc.name == "huge abort message" {
			tc.frame = binary.BigEndian.AppendUint32(tc.frame, 0xFFFFFFFF)
		}
		for _, tr := range transports {
			t.Run(tc.name+"/"+tr.name, func(t *testing.T) {
				dir := t.TempDir()
				dst := filepath.Join(dir, "dst.qcow2")
				a, b := tr.pair(t)
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				var gotReply reply
				res := runCopy(t, a, b,
					func(c net.Conn) error {
						if _, err := c.Write(tc.header); err != nil {
							return err
						}
						rep, err := readReply(c)
						if err != nil {
							return err
						}
						gotReply = rep
						if tc.frame == nil || rep.typ != replyAccept {
							return nil
						}
						if _, err := c.Write(tc.frame); err != nil {
							return err
						}
						if tc.reply == replyAccept {
							return nil // the receiver just hangs up
						}
						gotReply, err = readReply(c)
						return err
					},
					func(c net.Conn) (ImageInfo, error) {
						return ReceiveImage(context.Background(), c, dst, CopyConfig{Timeout: 5 * time.Second})
					})
				runtime.ReadMemStats(&after)
				if !errors.Is(res.recvErr, ErrProtocol) {
					t.Errorf("receive: %v, want ErrProtocol", res.recvErr)
				}
				if res.sendErr != nil {
					t.Errorf("fake sender: %v", res.sendErr)
				}
				if gotReply.typ != tc.reply {
					t.Errorf("reply %+v, want type %d", gotReply, tc.reply)
				}
				if tc.reply != replyAccept && gotReply.code != codeProtocol {
					t.Errorf("reply code %d, want protocol (%d): %q", gotReply.code, codeProtocol, gotReply.msg)
				}
				if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
					t.Errorf("allocated %d bytes for a hostile length", d)
				}
				assertNoFile(t, dst)
				assertNoFile(t, dst+".partial")
			})
		}
	}
}

func TestReceiveHugeChunkLength(t *testing.T) {
	// An image size the filesystem can hold, a chunk length far beyond the cap.
	for _, n := range []uint32{maxChunkSize + 1, 0xFFFFFFF0} {
		a, b := net.Pipe()
		dst := filepath.Join(t.TempDir(), "dst.qcow2")
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res := runCopy(t, a, b,
			func(c net.Conn) error {
				if _, err := c.Write(fakeHeader(t, 64<<20)); err != nil {
					return err
				}
				if _, err := readReply(c); err != nil {
					return err
				}
				if _, err := c.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, n), 0)); err != nil {
					return err
				}
				rep, err := readReply(c)
				if err == nil && (rep.typ != replyFail || rep.code != codeProtocol) {
					t.Errorf("reply %+v, want a protocol failure", rep)
				}
				return err
			},
			func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
		runtime.ReadMemStats(&after)
		if !errors.Is(res.recvErr, ErrProtocol) || !strings.Contains(res.recvErr.Error(), "limit is 16777216") {
			t.Errorf("length %d: receive: %v, want ErrProtocol naming the limit", n, res.recvErr)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
			t.Errorf("length %d: allocated %d bytes", n, d)
		}
		assertNoFile(t, dst)
		assertNoFile(t, dst+".partial")
	}
}

func TestCopyNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	src := filepath.Join(t.TempDir(), "big.qcow2")
	writeSynthetic(t, src, 64<<20, 5)
	info := mustInspect(t, src)
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dst := filepath.Join(mnt, "big.qcow2")
			a, b := tr.pair(t)
			res := runCopy(t, a, b,
				func(c net.Conn) error { return SendImage(context.Background(), c, src, info, CopyConfig{}) },
				func(c net.Conn) (ImageInfo, error) { return ReceiveImage(context.Background(), c, dst, CopyConfig{}) })
			if !errors.Is(res.recvErr, ErrNoSpace) {
				t.Errorf("receive: %v, want ErrNoSpace", res.recvErr)
			}
			if !errors.Is(res.sendErr, ErrPeerRefused) || !errors.Is(res.sendErr, ErrNoSpace) {
				t.Errorf("send: %v, want ErrPeerRefused and ErrNoSpace", res.sendErr)
			}
			want := "backup host has 8.0 MiB free on " + mnt + ", the image needs 64.0 MiB"
			if res.sendErr == nil || !strings.Contains(res.sendErr.Error(), want) {
				t.Errorf("send error %q does not say %q", res.sendErr, want)
			}
			t.Logf("sender sees: %v", res.sendErr)
			assertNoFile(t, dst)
			assertNoFile(t, dst+".partial")
		})
	}
}

func TestCopyContextCancel(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			// The receiver waits for a header that never comes.
			_, b := tr.pair(t)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			start := time.Now()
			_, err := ReceiveImage(ctx, b, filepath.Join(t.TempDir(), "d"), CopyConfig{})
			if !errors.Is(err, context.Canceled) {
				t.Errorf("receive: %v, want context.Canceled", err)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("cancel took %v", el)
			}
		})
	}
	t.Run("sender mid-stream", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "src.qcow2")
		writeSynthetic(t, src, 8<<20, 6)
		info := mustInspect(t, src)
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() { // read the header, accept, then read only a little
			h := make([]byte, 4096)
			_, _ = b.Read(h)
			_, _ = b.Read(h)
			_, _ = b.Write(encodeReply(reply{typ: replyAccept}))
			_, _ = b.Read(h)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		err := SendImage(ctx, a, src, info, CopyConfig{})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("send: %v, want context.DeadlineExceeded", err)
		}
	})
}

func TestCopyStallTimeout(t *testing.T) {
	_, b := net.Pipe()
	defer b.Close()
	_, err := ReceiveImage(context.Background(), b, filepath.Join(t.TempDir(), "d"), CopyConfig{Timeout: 150 * time.Millisecond})
	if !errors.Is(err, ErrCopyTimeout) {
		t.Errorf("receive: %v, want ErrCopyTimeout", err)
	}
}

func TestSendSourceChanged(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src.qcow2")
	writeSynthetic(t, src, 1<<20, 8)
	info := mustInspect(t, src)
	info.Size++
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := SendImage(context.Background(), a, src, info, CopyConfig{}); !errors.Is(err, ErrImageCorrupt) {
		t.Errorf("send: %v, want ErrImageCorrupt", err)
	}
}

func TestInspect(t *testing.T) {
	dir := t.TempDir()
	if _, err := Inspect(filepath.Join(dir, "nope.qcow2")); !errors.Is(err, ErrImageMissing) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing: %v, want ErrImageMissing", err)
	}
	raw := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(raw, bytes.Repeat([]byte{0}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(raw); !errors.Is(err, ErrImageCorrupt) || !strings.Contains(err.Error(), "qcow2 magic") {
		t.Errorf("raw file: %v, want ErrImageCorrupt about the magic", err)
	}
	v9 := filepath.Join(dir, "v9.qcow2")
	if err := os.WriteFile(v9, []byte("QFI\xfb\x00\x00\x00\x09rest"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(v9); !errors.Is(err, ErrImageCorrupt) || !strings.Contains(err.Error(), "version 9") {
		t.Errorf("version 9: %v, want ErrImageCorrupt about the version", err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("QFI"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(short); !errors.Is(err, ErrImageCorrupt) {
		t.Errorf("short file: %v, want ErrImageCorrupt", err)
	}
	if _, err := Inspect(dir); !errors.Is(err, ErrImageCorrupt) {
		t.Errorf("directory: %v, want ErrImageCorrupt", err)
	}
	good := filepath.Join(dir, "good.qcow2")
	writeSynthetic(t, good, 100000, 9)
	info := mustInspect(t, good)
	data, _ := os.ReadFile(good)
	sum := sha256.Sum256(data)
	if info != (ImageInfo{Name: "good.qcow2", Size: 100000, SHA256: hex.EncodeToString(sum[:])}) {
		t.Errorf("Inspect = %+v", info)
	}
}

func BenchmarkCopy(b *testing.B) {
	const size = 256 << 20
	src := filepath.Join(b.TempDir(), "src.qcow2")
	writeSynthetic(b, src, size, 10)
	info := mustInspect(b, src)
	dst := filepath.Join(b.TempDir(), "dst.qcow2")
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		a, c := tcpPair(b)
		var sendErr atomic.Value
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := SendImage(context.Background(), a, src, info, CopyConfig{}); err != nil {
				sendErr.Store(err)
			}
		}()
		if _, err := ReceiveImage(context.Background(), c, dst, CopyConfig{}); err != nil {
			b.Fatal(err)
		}
		<-done
		if err := sendErr.Load(); err != nil {
			b.Fatal(err)
		}
		a.Close()
		c.Close()
	}
}
