package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuf collects a copy's log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// countConn counts the bytes written through it.
type countConn struct {
	net.Conn
	n int64
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n += int64(n)
	return n, err
}

// resumeRun is one copy attempt with resume enabled on the receiver.
type resumeRun struct {
	res               copyResult
	sentBytes         int64 // on the wire from the sender
	lastSend          Progress
	sendLog, recvLog  string
	partialsAfterward []string
}

func attempt(t *testing.T, tr transport, src, dst, resumeDir string, cut int64) resumeRun {
	t.Helper()
	info := mustInspect(t, src)
	a, b := tr.pair(t)
	cc := &countConn{Conn: a}
	var sendConn net.Conn = cc
	if cut > 0 {
		sendConn = &cutConn{Conn: cc, limit: cut}
	}
	var sl, rl logBuf
	var mu sync.Mutex
	var last Progress
	res := runCopy(t, sendConn, b,
		func(c net.Conn) error {
			return SendImage(context.Background(), c, src, info, CopyConfig{ChunkSize: 256 << 10, Logger: sl.logger(), Progress: func(p Progress) {
				mu.Lock()
				last = p
				mu.Unlock()
			}})
		},
		func(c net.Conn) (ImageInfo, error) {
			return ReceiveImage(context.Background(), c, dst, CopyConfig{ResumeDir: resumeDir, ResumeKey: "vm1", Logger: rl.logger()})
		})
	ents, _ := os.ReadDir(resumeDir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return resumeRun{res: res, sentBytes: cc.n, lastSend: last, sendLog: sl.String(), recvLog: rl.String(), partialsAfterward: names}
}

// interrupted runs a copy cut after cut bytes and returns the partial it left.
func interrupted(t *testing.T, tr transport, src, dst, resumeDir string, cut int64) string {
	t.Helper()
	r := attempt(t, tr, src, dst, resumeDir, cut)
	if !errors.Is(r.res.recvErr, ErrTruncated) || !errors.Is(r.res.sendErr, ErrTruncated) {
		t.Fatalf("cut copy: receive %v, send %v; want ErrTruncated on both", r.res.recvErr, r.res.sendErr)
	}
	assertNoFile(t, dst)
	if len(r.partialsAfterward) != 1 {
		t.Fatalf("after the cut: %v in the resume dir, want one partial", r.partialsAfterward)
	}
	p := filepath.Join(resumeDir, r.partialsAfterward[0])
	st, err := os.Stat(p)
	if err != nil || st.Size() == 0 || st.Size() > cut {
		t.Fatalf("partial %s after a cut at %d bytes: %v, %v", p, cut, st, err)
	}
	return p
}

func TestCopyResumesAfterCut(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.qcow2")
			writeSynthetic(t, src, 6<<20+4321, 11)
			info := mustInspect(t, src)
			dst, resumeDir := filepath.Join(dir, "run", "disk.qcow2"), filepath.Join(dir, "partial")
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				t.Fatal(err)
			}
			p := interrupted(t, tr, src, dst, resumeDir, 3<<20+100)
			if want := partialName("vm1", info); filepath.Base(p) != want {
				t.Errorf("partial %s, want it named for the image: %s", filepath.Base(p), want)
			}
			st, _ := os.Stat(p)
			held := st.Size()

			r := attempt(t, tr, src, dst, resumeDir, 0)
			if r.res.sendErr != nil || r.res.recvErr != nil {
				t.Fatalf("resumed copy: send %v, receive %v", r.res.sendErr, r.res.recvErr)
			}
			sameFile(t, src, dst)
			if len(r.partialsAfterward) != 0 {
				t.Errorf("resume dir holds %v after a success", r.partialsAfterward)
			}
			if r.lastSend.Resumed != held || r.lastSend.Done != info.Size || r.lastSend.Total != info.Size {
				t.Errorf("last progress %+v, want Resumed %d (the partial) and Done == Total == %d", r.lastSend, held, info.Size)
			}
			if max := info.Size - held + 64<<10; r.sentBytes > max {
				t.Errorf("resumed copy sent %d bytes, want at most the %d missing plus framing", r.sentBytes, info.Size-held)
			}
			for _, l := range []string{r.sendLog, r.recvLog} {
				if !strings.Contains(l, "disk copy resumes") {
					t.Errorf("no resume log line:\n%s", l)
				}
			}
		})
	}
}

func TestCopyResumeSourceChangedRestarts(t *testing.T) {
	tr := transports[1]
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 4<<20, 12)
	dst, resumeDir := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "partial")
	old := interrupted(t, tr, src, dst, resumeDir, 2<<20)

	writeSynthetic(t, src, 4<<20, 13) // same size, other content
	info := mustInspect(t, src)
	r := attempt(t, tr, src, dst, resumeDir, 0)
	if r.res.sendErr != nil || r.res.recvErr != nil {
		t.Fatalf("copy of the changed source: send %v, receive %v", r.res.sendErr, r.res.recvErr)
	}
	sameFile(t, src, dst)
	assertNoFile(t, old)
	if r.lastSend.Resumed != 0 || r.sentBytes < info.Size {
		t.Errorf("changed source: progress %+v, %d bytes sent; want a copy from 0 of %d bytes", r.lastSend, r.sentBytes, info.Size)
	}
	if !strings.Contains(r.recvLog, "restarts from 0") || !strings.Contains(r.recvLog, "source image changed") {
		t.Errorf("receiver log does not say why it restarted:\n%s", r.recvLog)
	}
}

func TestCopyResumeCorruptPartialRestarts(t *testing.T) {
	tr := transports[0]
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 4<<20, 14)
	info := mustInspect(t, src)
	dst, resumeDir := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "partial")
	p := interrupted(t, tr, src, dst, resumeDir, 2<<20+7)
	flipByte(t, p, 1<<20+3)

	r := attempt(t, tr, src, dst, resumeDir, 0)
	if r.res.sendErr != nil || r.res.recvErr != nil {
		t.Fatalf("copy over a corrupt partial: send %v, receive %v", r.res.sendErr, r.res.recvErr)
	}
	sameFile(t, src, dst)
	if r.lastSend.Resumed != 0 || r.sentBytes < info.Size {
		t.Errorf("corrupt partial: progress %+v, %d bytes sent; want a copy from 0 of %d bytes", r.lastSend, r.sentBytes, info.Size)
	}
	if !strings.Contains(r.sendLog, "differs from the image") || !strings.Contains(r.recvLog, "restarts from 0") {
		t.Errorf("logs do not say why the copy restarted:\nsender:\n%s\nreceiver:\n%s", r.sendLog, r.recvLog)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// lyingSender speaks the wire by hand: it answers a resume offer with answer(offer)
// whatever the receiver holds, then sends the image's bytes from there with valid
// CRCs and the image's true SHA256 in the trailer.
func lyingSender(t *testing.T, c net.Conn, data []byte, answer func(offer uint64) uint64) {
	t.Helper()
	sum := sha256.Sum256(data)
	js, _ := json.Marshal(ImageInfo{Name: "disk.qcow2", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	h := []byte(headerMagic)
	h = binary.BigEndian.AppendUint16(h, wireVersion)
	h = binary.BigEndian.AppendUint16(h, flagResume)
	h = binary.BigEndian.AppendUint32(h, uint32(len(js)))
	if _, err := c.Write(append(h, js...)); err != nil {
		return
	}
	rep, err := readReply(c)
	if err != nil || rep.typ != replyAccept {
		return
	}
	off := uint64(0)
	if rep.value > 0 {
		off = answer(rep.value)
		if _, err := c.Write(encodeReply(reply{typ: replyResume, value: off})); err != nil {
			return
		}
	}
	tab := crc32.MakeTable(crc32.Castagnoli)
	var b []byte
	if off <= uint64(len(data)) {
		for rest := data[off:]; len(rest) > 0; {
			n := min(len(rest), 64<<10)
			b = binary.BigEndian.AppendUint32(b, uint32(n))
			b = binary.BigEndian.AppendUint32(b, crc32.Checksum(rest[:n], tab))
			b = append(b, rest[:n]...)
			rest = rest[n:]
		}
	}
	body := binary.BigEndian.AppendUint64(nil, uint64(len(data)))
	body = append(body, sum[:]...)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(body, tab))
	_, _ = c.Write(append(b, body...))
	_, _ = readReply(c)
}

// A sender that confirms a resume over a prefix that is not its image's (it
// claims the backup holds good data) cannot make the backup keep a wrong image:
// the whole-image SHA256 over what the backup holds decides. A sender that
// answers with an offset other than the offer is a protocol error.
func TestCopyResumeLyingSender(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(uint64) uint64
		want   error
	}{
		{"confirms a bad prefix", func(o uint64) uint64 { return o }, ErrChecksum},
		{"claims more than offered", func(o uint64) uint64 { return o + 4096 }, ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.qcow2")
			writeSynthetic(t, src, 2<<20, 15)
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			dst, resumeDir := filepath.Join(dir, "disk.qcow2"), filepath.Join(dir, "partial")
			p := interrupted(t, transports[0], src, dst, resumeDir, 1<<20+5)
			flipByte(t, p, 4096)

			a, b := net.Pipe()
			done := make(chan struct{})
			go func() { defer close(done); defer a.Close(); lyingSender(t, a, data, tc.answer) }()
			_, err = ReceiveImage(context.Background(), b, dst, CopyConfig{ResumeDir: resumeDir, ResumeKey: "vm1", Timeout: 5 * time.Second})
			b.Close()
			<-done
			if !errors.Is(err, tc.want) {
				t.Fatalf("receive from a lying sender: %v, want %v", err, tc.want)
			}
			assertNoFile(t, dst)
			assertNoFile(t, p) // a refused copy does not stay to be resumed
		})
	}
}

// A receiver that offers more than the image holds (or a digest that is not
// one) gets a restart from 0, never a shorter copy.
func TestSendResumeOfferBeyondImage(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	writeSynthetic(t, src, 1<<20, 16)
	info := mustInspect(t, src)
	for _, tc := range []struct {
		name   string
		offer  uint64
		digest string
	}{
		{"beyond the image", uint64(info.Size) + 4096, info.SHA256},
		{"no digest", 4096, "not a digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			var l logBuf
			errc := make(chan error, 1)
			go func() {
				errc <- SendImage(context.Background(), a, src, info, CopyConfig{Timeout: 5 * time.Second, Logger: l.logger()})
				a.Close()
			}()
			defer b.Close()
			var h [headerFixedLen]byte
			if _, err := io.ReadFull(b, h[:]); err != nil {
				t.Fatal(err)
			}
			if binary.BigEndian.Uint16(h[10:])&flagResume == 0 {
				t.Fatal("sender does not announce resume")
			}
			if _, err := io.CopyN(io.Discard, b, int64(binary.BigEndian.Uint32(h[12:]))); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Write(encodeReply(reply{typ: replyAccept, value: tc.offer, msg: tc.digest})); err != nil {
				t.Fatal(err)
			}
			rep, err := readReply(b)
			if err != nil || rep.typ != replyResume || rep.value != 0 || rep.msg == "" {
				t.Fatalf("answer to offer %d: %+v, %v; want resume at 0 with a reason", tc.offer, rep, err)
			}
			// The whole image follows from offset 0.
			var fh [frameHeaderLen]byte
			var got int64
			for {
				if _, err := io.ReadFull(b, fh[:]); err != nil {
					t.Fatal(err)
				}
				n := binary.BigEndian.Uint32(fh[:4])
				if n == 0 {
					break
				}
				if _, err := io.CopyN(io.Discard, b, int64(n)); err != nil {
					t.Fatal(err)
				}
				got += int64(n)
			}
			if got != info.Size {
				t.Errorf("sender sent %d bytes after the restart, want %d", got, info.Size)
			}
			b.Close()
			<-errc
			if !strings.Contains(l.String(), "restarts from 0") {
				t.Errorf("sender log does not say it restarted:\n%s", l.String())
			}
		})
	}
}

// An older sender (no resume flag) gets no offer, whatever partial the backup holds.
func TestReceiveOldSenderNoOffer(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("old sender "), 10000)
	sum := sha256.Sum256(data)
	info := ImageInfo{Name: "disk.qcow2", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	resumeDir := filepath.Join(dir, "partial")
	if err := os.MkdirAll(resumeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(resumeDir, partialName("vm1", info)), data[:5000], 0o600); err != nil {
		t.Fatal(err)
	}
	c := &streamConn{r: bytes.NewReader(imageStream(data, nil))}
	dst := filepath.Join(dir, "disk.qcow2")
	if _, err := ReceiveImage(context.Background(), c, dst, CopyConfig{ResumeDir: resumeDir, ResumeKey: "vm1"}); err != nil {
		t.Fatal(err)
	}
	rep, err := readReply(bytes.NewReader(c.w.Bytes()))
	if err != nil || rep.typ != replyAccept || rep.value != 0 {
		t.Fatalf("first reply to an older sender: %+v, %v; want accept at 0", rep, err)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, data) {
		t.Fatal("copy differs from the data sent")
	}
}

func TestIsPartialOf(t *testing.T) {
	info := ImageInfo{Size: 123, SHA256: strings.Repeat("ab", 32)}
	for name, want := range map[string]bool{
		partialName("vm1", info):                   true,
		"vm1.5.0123456789abcdef.partial":           true,
		"vm1.1.5.0123456789abcdef.partial":         false, // VM "vm1.1"
		"vm1.x.0123456789abcdef.partial":           false,
		"vm1.5.0123456789abcdeg.partial":           false,
		"vm1.5.0123456789abcdef":                   false,
		"vm10.5.0123456789abcdef.partial":          false,
		"vm1..0123456789abcdef.partial":            false,
		"vm1.5.0123456789abcdef0123456789.partial": false,
	} {
		if got := isPartialOf("vm1", name); got != want {
			t.Errorf("isPartialOf(vm1, %q) = %v, want %v", name, got, want)
		}
	}
}
