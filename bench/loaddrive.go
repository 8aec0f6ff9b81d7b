package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// The traffic drivers of `ftvmd bench load` and test/e2e's TestLoadLockstep. Each
// one talks to the guest service (test/guest/ftguest) for at least a given time,
// checks every answer end to end and counts what it moved. They know nothing of
// protection: a LoadTarget says how to reach the guest, so the unit tests drive a
// real ftguest on loopback and the lab drives the protected guest from host C.

// LoadTarget is where the drivers send their traffic.
type LoadTarget struct {
	// Dial opens a TCP connection to the guest service.
	Dial func(ctx context.Context) (net.Conn, error)
	// Ping floods the guest with ICMP echo requests for d.
	Ping func(ctx context.Context, d time.Duration) (PingCounts, error)
}

// LabTarget reaches the lab guest from the client host's namespace (ftlab-c): the
// traffic crosses the bridge and the primary's output rule as a real client's would.
func LabTarget() LoadTarget {
	addr := net.JoinHostPort(lab.GuestIP, strconv.Itoa(lab.GuestPort))
	return LoadTarget{
		Dial: func(ctx context.Context) (net.Conn, error) { return lab.DialFromClient(ctx, addr) },
		Ping: func(ctx context.Context, d time.Duration) (PingCounts, error) {
			return PingFlood(ctx, lab.NSC, lab.GuestIP, d)
		},
	}
}

// PingCounts is what a ping run reports.
type PingCounts struct {
	Sent     int
	Received int
}

// PingFlood runs `ping -f` from namespace ns to ip for d (whole seconds, rounded
// up) and returns its counts. Only ICMP echo to one address: nothing else in the
// lab is touched.
func PingFlood(ctx context.Context, ns, ip string, d time.Duration) (PingCounts, error) {
	secs := int((d + time.Second - 1) / time.Second)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "ping", "-f", "-q", "-w", strconv.Itoa(secs), ip)
	out, err := cmd.CombinedOutput()
	pc, perr := ParsePingSummary(string(out))
	if ctx.Err() != nil {
		return pc, fmt.Errorf("ping flood: %w", context.Cause(ctx))
	}
	if perr != nil {
		return pc, fmt.Errorf("ping flood to %s: %v (exit: %v): %s", ip, perr, err, strings.TrimSpace(string(out)))
	}
	// ping exits 1 when no reply came at all, which the caller judges from the counts.
	return pc, nil
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)

// ParsePingSummary reads iputils ping's summary line ("N packets transmitted, M
// received, ...").
func ParsePingSummary(out string) (PingCounts, error) {
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		return PingCounts{}, errors.New("no summary line in ping's output")
	}
	sent, _ := strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	return PingCounts{Sent: sent, Received: recv}, nil
}

// Traffic is what a driver moved and checked.
type Traffic struct {
	ToClientBytes int64 `json:"guest_to_client_bytes"`
	ToGuestBytes  int64 `json:"client_to_guest_bytes"`
	Gets          int   `json:"gets,omitempty"`
	Puts          int   `json:"puts,omitempty"`
	MD5s          int   `json:"md5s,omitempty"`
	Connections   int   `json:"connections,omitempty"`
	PingsSent     int   `json:"pings_sent,omitempty"`
	PingsReceived int   `json:"pings_received,omitempty"`
}

func (t *Traffic) add(o Traffic) {
	t.ToClientBytes += o.ToClientBytes
	t.ToGuestBytes += o.ToGuestBytes
	t.Gets += o.Gets
	t.Puts += o.Puts
	t.MD5s += o.MD5s
	t.Connections += o.Connections
	t.PingsSent += o.PingsSent
	t.PingsReceived += o.PingsReceived
}

// LoadPattern is one kind of traffic. Run drives it for at least d (it finishes
// the request under way) and returns an error on any wrong answer, or when ctx
// ends.
type LoadPattern struct {
	Name string
	Desc string
	Run  func(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error)
}

// Sizes of one request. A `get` of 8 MiB takes 1-3 s protected on the lab, so a
// phase overruns its time by at most that much; `md5` hashes 4 MiB per request.
const (
	getChunk = 8 << 20
	putChunk = 8 << 20
	md5MB    = 4
)

// opTimeout bounds one request: a guest that stops answering fails the driver
// instead of hanging it (the lockstep watch normally ends a stalled phase first).
const opTimeout = 2 * time.Minute

// pingICMPBytes is one echo message on the wire above IP (8-byte header, ping's
// default 56-byte payload): what a ping flood's byte counts are made of.
const pingICMPBytes = 64

// LoadPatterns are the patterns in the order TestLoadLockstep and `ftvmd bench
// load` run them.
func LoadPatterns() []LoadPattern {
	return []LoadPattern{
		{Name: "get", Desc: "bulk guest->client (`get`, bytes checked against the guest's pattern)", Run: DriveGet},
		{Name: "put", Desc: "bulk client->guest (`put`, the guest's CRC checked)", Run: DrivePut},
		{Name: "getput", Desc: "bulk both ways at once (two connections)", Run: DriveGetPut},
		{Name: "conns", Desc: "short connections in a loop (connect, ping, seq, quit)", Run: DriveConns},
		{Name: "pingflood", Desc: "ICMP echo flood from the client host (ping -f)", Run: DrivePingFlood},
		{Name: "busyget", Desc: "a busy guest CPU (`md5` in a loop) plus bulk guest->client", Run: DriveBusyGet},
	}
}

// LoadPatternByName finds a pattern.
func LoadPatternByName(name string) (LoadPattern, bool) {
	for _, p := range LoadPatterns() {
		if p.Name == name {
			return p, true
		}
	}
	return LoadPattern{}, false
}

// SelectLoadPatterns returns the named patterns in the order given, or every
// pattern when names is empty; an unknown or repeated name is an error that
// lists the known ones.
func SelectLoadPatterns(names []string) ([]LoadPattern, error) {
	if len(names) == 0 {
		return LoadPatterns(), nil
	}
	var known []string
	for _, p := range LoadPatterns() {
		known = append(known, p.Name)
	}
	var ps []LoadPattern
	seen := map[string]bool{}
	for _, n := range names {
		p, ok := LoadPatternByName(n)
		if !ok {
			return nil, fmt.Errorf("unknown load pattern %q (known: %s)", n, strings.Join(known, ", "))
		}
		if seen[n] {
			return nil, fmt.Errorf("load pattern %q given twice", n)
		}
		seen[n] = true
		ps = append(ps, p)
	}
	return ps, nil
}

// conn is one driver connection, closed when ctx ends so that blocked reads and
// writes return at once.
type conn struct {
	c    net.Conn
	r    *bufio.Reader
	stop func() bool
}

func dial(ctx context.Context, t LoadTarget) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := t.Dial(dctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the guest: %w", err)
	}
	return &conn{c: c, r: bufio.NewReaderSize(c, 64<<10), stop: context.AfterFunc(ctx, func() { c.Close() })}, nil
}

func (c *conn) close() {
	c.stop()
	c.c.Close()
}

func (c *conn) request(line string) error {
	_ = c.c.SetDeadline(time.Now().Add(opTimeout))
	_, err := io.WriteString(c.c, line+"\n")
	return err
}

func (c *conn) readLine() (string, error) {
	line, err := c.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// ctxErr prefers the reason the driver was stopped over the I/O error it caused.
func ctxErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: stopped: %w", what, context.Cause(ctx))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// guestPattern fills b with the guest's byte pattern from offset off: byte i of a
// `get` stream and of `md5`'s input is (i*7 + i>>8) mod 256 (pattern in
// test/guest/ftguest/main.go; TestDriversAgainstFtguest checks the two agree).
func guestPattern(b []byte, off int64) {
	for i := range b {
		x := off + int64(i)
		b[i] = byte(x*7 + x>>8)
	}
}

// CorruptError: the bulk transfer delivered wrong bytes (as opposed to a broken
// connection): Bytes is how many bytes it counts as corrupted.
type CorruptError struct {
	Bytes int64
	What  string
}

func (e *CorruptError) Error() string { return e.What }

// DriveGet reads `get` streams on one connection for at least d, checking every
// byte.
func DriveGet(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	var tr Traffic
	c, err := dial(ctx, t)
	if err != nil {
		return tr, err
	}
	defer c.close()
	b := newBulkBufs()
	for start := time.Now(); time.Since(start) < d; {
		if err := c.getOnce(ctx, b, &tr); err != nil {
			return tr, err
		}
	}
	return tr, nil
}

// bulkBufs are one driver's buffers for getOnce and putOnce.
type bulkBufs struct{ got, want []byte }

func newBulkBufs() *bulkBufs {
	return &bulkBufs{got: make([]byte, 64<<10), want: make([]byte, 64<<10)}
}

// getOnce asks for one `get` stream and checks every byte against the guest's
// pattern; a wrong byte is a *CorruptError counting the wrong bytes of its block.
func (c *conn) getOnce(ctx context.Context, b *bulkBufs, tr *Traffic) error {
	if err := c.request(fmt.Sprintf("get %d", getChunk)); err != nil {
		return ctxErr(ctx, "get", err)
	}
	hdr, err := c.readLine()
	if err != nil {
		return ctxErr(ctx, "get", err)
	}
	if hdr != fmt.Sprintf("data %d", getChunk) {
		return &CorruptError{Bytes: int64(len(hdr)), What: fmt.Sprintf("get %d: header %q", getChunk, hdr)}
	}
	got, want := b.got, b.want
	for off := int64(0); off < getChunk; {
		n := min(int64(len(got)), getChunk-off)
		_ = c.c.SetReadDeadline(time.Now().Add(opTimeout))
		if _, err := io.ReadFull(c.r, got[:n]); err != nil {
			return ctxErr(ctx, fmt.Sprintf("get: at byte %d of %d", off, getChunk), err)
		}
		guestPattern(want[:n], off)
		if !bytes.Equal(got[:n], want[:n]) {
			i, wrong := -1, int64(0)
			for j := range got[:n] {
				if got[j] != want[j] {
					wrong++
					if i < 0 {
						i = j
					}
				}
			}
			return &CorruptError{Bytes: wrong, What: fmt.Sprintf("get: byte %d of a %d-byte stream is %#x, the guest's pattern says %#x (%d wrong bytes in its %d-byte block)", off+int64(i), getChunk, got[i], want[i], wrong, n)}
		}
		off += n
		tr.ToClientBytes += n
	}
	tr.Gets++
	return nil
}

// DrivePut sends `put` bodies on one connection for at least d and checks the
// CRC the guest computed over what it received.
func DrivePut(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	var tr Traffic
	c, err := dial(ctx, t)
	if err != nil {
		return tr, err
	}
	defer c.close()
	b := newBulkBufs()
	for start, round := time.Now(), int64(0); time.Since(start) < d; round++ {
		if err := c.putOnce(ctx, b, round, &tr); err != nil {
			return tr, err
		}
	}
	return tr, nil
}

// putOnce sends one `put` body (round selects its bytes) and checks the guest's
// CRC of it; a wrong CRC is a *CorruptError counting the whole body.
func (c *conn) putOnce(ctx context.Context, b *bulkBufs, round int64, tr *Traffic) error {
	if err := c.request(fmt.Sprintf("put %d", putChunk)); err != nil {
		return ctxErr(ctx, "put", err)
	}
	buf := b.got
	crc := crc32.NewIEEE()
	for off := int64(0); off < putChunk; {
		n := min(int64(len(buf)), putChunk-off)
		// Each round sends different bytes, so a replayed stale buffer would show.
		guestPattern(buf[:n], round*putChunk+off)
		crc.Write(buf[:n])
		_ = c.c.SetWriteDeadline(time.Now().Add(opTimeout))
		if _, err := c.c.Write(buf[:n]); err != nil {
			return ctxErr(ctx, fmt.Sprintf("put: at byte %d of %d", off, putChunk), err)
		}
		off += n
		tr.ToGuestBytes += n
	}
	_ = c.c.SetReadDeadline(time.Now().Add(opTimeout))
	resp, err := c.readLine()
	if err != nil {
		return ctxErr(ctx, "put: answer", err)
	}
	if want := fmt.Sprintf("got %d %08x", putChunk, crc.Sum32()); resp != want {
		return &CorruptError{Bytes: putChunk, What: fmt.Sprintf("put: the guest answered %q, want %q", resp, want)}
	}
	tr.Puts++
	return nil
}

// DriveAlternate moves bulk data both ways in turn on one connection, a `get`
// then a `put`, every byte checked, until stop is closed (it finishes the
// request under way) or a request fails.
func DriveAlternate(ctx context.Context, t LoadTarget, stop <-chan struct{}) (Traffic, error) {
	var tr Traffic
	c, err := dial(ctx, t)
	if err != nil {
		return tr, err
	}
	defer c.close()
	b := newBulkBufs()
	for round := int64(0); ; round++ {
		select {
		case <-stop:
			return tr, nil
		default:
		}
		if round%2 == 0 {
			err = c.getOnce(ctx, b, &tr)
		} else {
			err = c.putOnce(ctx, b, round, &tr)
		}
		if err != nil {
			return tr, err
		}
	}
}

// together runs drivers at once and adds up their traffic; the first error stops
// the others.
func together(ctx context.Context, t LoadTarget, d time.Duration, drivers ...func(context.Context, LoadTarget, time.Duration) (Traffic, error)) (Traffic, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu   sync.Mutex
		sum  Traffic
		errs []error
		wg   sync.WaitGroup
	)
	for _, drive := range drivers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, err := drive(ctx, t, d)
			mu.Lock()
			defer mu.Unlock()
			sum.add(tr)
			if err != nil {
				// The first failure is the cause; the others only report being stopped.
				errs = append(errs, err)
				cancel(err)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return sum, errs[0]
	}
	return sum, nil
}

// DriveGetPut runs DriveGet and DrivePut at once on two connections.
func DriveGetPut(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	return together(ctx, t, d, DriveGet, DrivePut)
}

// DriveConns opens short connections one after another for at least d: connect,
// `ping`, `seq`, `quit`, close. The guest's request count must rise with each.
func DriveConns(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	var tr Traffic
	last := uint64(0)
	for start, i := time.Now(), 1; time.Since(start) < d; i++ {
		c, err := dial(ctx, t)
		if err != nil {
			return tr, ctxErr(ctx, fmt.Sprintf("connection %d", i), err)
		}
		count, err := shortExchange(c, i)
		c.close()
		if err != nil {
			return tr, ctxErr(ctx, fmt.Sprintf("connection %d", i), err)
		}
		if count <= last {
			return tr, fmt.Errorf("connection %d: the guest's request count went from %d to %d", i, last, count)
		}
		last = count
		tr.Connections++
	}
	return tr, nil
}

// shortExchange is one short connection's conversation; it returns the guest's
// request count.
func shortExchange(c *conn, i int) (uint64, error) {
	if err := c.request("ping"); err != nil {
		return 0, err
	}
	if resp, err := c.readLine(); err != nil || resp != "pong" {
		return 0, fmt.Errorf("ping: %q %v", resp, err)
	}
	payload := fmt.Sprintf("load%d", i)
	if err := c.request(fmt.Sprintf("seq %d %s", i, payload)); err != nil {
		return 0, err
	}
	resp, err := c.readLine()
	if err != nil {
		return 0, fmt.Errorf("seq: %w", err)
	}
	var n int
	var count uint64
	var p string
	if _, err := fmt.Sscanf(resp, "ok %d %d %s", &n, &count, &p); err != nil || n != i || p != payload {
		return 0, fmt.Errorf("seq %d %s: answer %q", i, payload, resp)
	}
	if err := c.request("quit"); err != nil {
		return 0, err
	}
	if resp, err := c.readLine(); err != nil || resp != "bye" {
		return 0, fmt.Errorf("quit: %q %v", resp, err)
	}
	return count, nil
}

// DrivePingFlood floods the guest with ICMP echo requests for d. No reply at all
// is an error; the loss is reported, not judged (a flood outruns any guest).
func DrivePingFlood(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	pc, err := t.Ping(ctx, d)
	tr := Traffic{PingsSent: pc.Sent, PingsReceived: pc.Received,
		ToGuestBytes: int64(pc.Sent) * pingICMPBytes, ToClientBytes: int64(pc.Received) * pingICMPBytes}
	if err != nil {
		return tr, err
	}
	if pc.Received == 0 {
		return tr, fmt.Errorf("ping flood: %d echo requests sent, no reply", pc.Sent)
	}
	return tr, nil
}

// DriveMD5 keeps the guest's CPU busy with `md5` requests on one connection for
// at least d and checks each digest against the pattern hashed here.
func DriveMD5(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	var tr Traffic
	want := md5OfPattern(md5MB)
	c, err := dial(ctx, t)
	if err != nil {
		return tr, err
	}
	defer c.close()
	for start := time.Now(); time.Since(start) < d; {
		if err := c.request(fmt.Sprintf("md5 %d", md5MB)); err != nil {
			return tr, ctxErr(ctx, "md5", err)
		}
		resp, err := c.readLine()
		if err != nil {
			return tr, ctxErr(ctx, "md5", err)
		}
		if resp != "md5 "+want {
			return tr, fmt.Errorf("md5 %d: the guest answered %q, want md5 %s", md5MB, resp, want)
		}
		tr.MD5s++
	}
	return tr, nil
}

// DriveBusyGet runs DriveMD5 and DriveGet at once.
func DriveBusyGet(ctx context.Context, t LoadTarget, d time.Duration) (Traffic, error) {
	return together(ctx, t, d, DriveMD5, DriveGet)
}

func md5OfPattern(mb int64) string {
	h := md5.New()
	buf := make([]byte, 1<<20)
	for i := int64(0); i < mb; i++ {
		guestPattern(buf, i<<20)
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}
