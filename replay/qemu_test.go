package replay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// qemuBinary finds qemu-system-x86_64, skipping the test without it
// unless FTVMD_REQUIRE_QEMU=1.
func qemuBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
			t.Fatalf("qemu-system-x86_64 required: %v", err)
		}
		t.Skipf("qemu-system-x86_64 not found: %v", err)
	}
	return p
}

// qmp is a minimal QMP client: one command at a time, events remembered.
type qmp struct {
	conn   net.Conn
	r      *bufio.Reader
	events []string
}

func dialQMP(path string, timeout time.Duration) (*qmp, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			q := &qmp{conn: c, r: bufio.NewReader(c)}
			if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
				c.Close()
				return nil, fmt.Errorf("qmp greeting: %w", err)
			}
			if _, err := q.do("qmp_capabilities", nil, timeout); err != nil {
				c.Close()
				return nil, err
			}
			return q, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial qmp %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type qmpMsg struct {
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Desc string `json:"desc"`
	} `json:"error"`
}

func (q *qmp) read(timeout time.Duration) (qmpMsg, error) {
	var m qmpMsg
	q.conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return m, fmt.Errorf("qmp read: %w", err)
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("qmp decode %q: %w", line, err)
	}
	if m.Event != "" {
		q.events = append(q.events, m.Event)
	}
	return m, nil
}

func (q *qmp) do(cmd string, out any, timeout time.Duration) (json.RawMessage, error) {
	req, _ := json.Marshal(map[string]string{"execute": cmd})
	if _, err := q.conn.Write(append(req, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		m, err := q.read(timeout)
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s", cmd, m.Error.Desc)
		}
		if m.Return != nil {
			if out != nil {
				return m.Return, json.Unmarshal(m.Return, out)
			}
			return m.Return, nil
		}
	}
}

func (q *qmp) waitEvent(name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		for _, e := range q.events {
			if e == name {
				return nil
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no %s event within %v", name, timeout)
		}
		if _, err := q.read(left); err != nil {
			return err
		}
	}
}

func (q *qmp) icount(t *testing.T) uint64 {
	t.Helper()
	var r struct {
		Icount uint64 `json:"icount"`
		Mode   string `json:"mode"`
	}
	if _, err := q.do("query-replay", &r, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return r.Icount
}

// vm describes one guest configuration to record and replay.
type vm struct {
	name    string
	args    []string // machine arguments besides rr, serial and qmp
	serial  bool     // -serial file: makes CHAR_WRITE events
	runFor  time.Duration
	replayT time.Duration
}

func (v vm) command(bin, dir, mode string) (*exec.Cmd, string) {
	sock := filepath.Join(dir, mode+".qmp")
	args := []string{"-M", "pc", "-accel", "tcg", "-m", "128", "-nographic",
		"-icount", "shift=4,rr=" + mode + ",rrfile=" + filepath.Join(dir, "x.rr"),
		"-net", "none", "-monitor", "none", "-qmp", "unix:" + sock + ",server=on,wait=off"}
	if v.serial {
		args = append(args, "-serial", "file:"+filepath.Join(dir, mode+".console"))
	} else {
		args = append(args, "-serial", "none")
	}
	if mode == "replay" {
		// Stop instead of exiting at the recorded shutdown, so the final
		// icount can still be queried.
		args = append(args, "-action", "shutdown=pause")
	}
	args = append(args, v.args...)
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	return cmd, sock
}

func stop(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := cmd.Process.Signal(sig); err != nil {
		t.Logf("signal: %v", err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("qemu did not exit after %v; output: %s", sig, cmd.Stderr)
	}
}

// record runs the guest under rr=record, reads QMP query-replay just
// before SIGTERM and returns that icount.
func (v vm) record(t *testing.T, bin, dir string) uint64 {
	cmd, sock := v.command(bin, dir, "record")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	q, err := dialQMP(sock, 10*time.Second)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("%v; output: %s", err, cmd.Stderr)
	}
	defer q.conn.Close()
	time.Sleep(v.runFor)
	ic := q.icount(t)
	stop(t, cmd, syscall.SIGTERM)
	return ic
}

// replayIcount replays the log to its end and returns QMP's icount there.
func (v vm) replayIcount(t *testing.T, bin, dir string) uint64 {
	cmd, sock := v.command(bin, dir, "replay")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	defer stop(t, cmd, syscall.SIGKILL)
	q, err := dialQMP(sock, 10*time.Second)
	if err != nil {
		t.Fatalf("%v; output: %s", err, cmd.Stderr)
	}
	defer q.conn.Close()
	if err := q.waitEvent("SHUTDOWN", v.replayT); err != nil {
		t.Fatalf("replay: %v (icount now %d); output: %s", err, q.icount(t), cmd.Stderr)
	}
	return q.icount(t)
}

func TestRealLog(t *testing.T) {
	bin := qemuBinary(t)
	vms := []vm{
		{name: "bios", runFor: 3 * time.Second, replayT: 60 * time.Second},
		{name: "bios-serial", serial: true, runFor: 3 * time.Second, replayT: 60 * time.Second},
	}
	guest := filepath.Join("..", "build", "guest")
	kernel, initrd := filepath.Join(guest, "vmlinuz"), filepath.Join(guest, "initrd.img")
	if _, err := os.Stat(kernel); err == nil {
		if _, err := os.Stat(initrd); err == nil {
			vms = append(vms, vm{name: "kernel", serial: true, runFor: 5 * time.Second, replayT: 180 * time.Second,
				args: []string{"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet"}})
		}
	} else {
		t.Logf("no guest kernel at %s: kernel case skipped", kernel)
	}
	for _, v := range vms {
		t.Run(v.name, func(t *testing.T) {
			dir := t.TempDir()
			qmpIcount := v.record(t, bin, dir)
			data, err := os.ReadFile(filepath.Join(dir, "x.rr"))
			if err != nil {
				t.Fatal(err)
			}
			evs, sum := checkRealLog(t, data)
			// QMP query-replay reports icount_get_raw(); the recorder's
			// replay_finish writes the instructions run since the last event
			// as a final INSTRUCTION, so the log's sum is the icount at
			// exit: at least what QMP said a moment before SIGTERM.
			if qmpIcount > sum || qmpIcount == 0 {
				t.Fatalf("QMP icount before SIGTERM %d, log sum %d", qmpIcount, sum)
			}
			t.Logf("%s: %d bytes, %d events, icount sum %d (QMP %d just before SIGTERM), kinds %s",
				v.name, len(data), len(evs), sum, qmpIcount, kindCounts(evs))
			if v.serial {
				checkConsole(t, evs, filepath.Join(dir, "record.console"))
			}
			checkChunks(t, data)
			checkEveryPrefix(t, data, evs)
			// Exact check: replay reaches the same icount as the sum.
			if got := v.replayIcount(t, bin, dir); got != sum {
				t.Fatalf("replay ended at icount %d, log sum %d", got, sum)
			}
			if v.serial {
				a, _ := os.ReadFile(filepath.Join(dir, "record.console"))
				b, _ := os.ReadFile(filepath.Join(dir, "replay.console"))
				if !bytes.Equal(a, b) {
					t.Errorf("replayed console differs: %d vs %d bytes", len(a), len(b))
				}
			}
		})
	}
}

// checkRealLog decodes a finished log and checks its overall shape.
func checkRealLog(t *testing.T, data []byte) ([]Event, uint64) {
	t.Helper()
	if err := CheckHeader(data); err != nil {
		t.Fatalf("header: %v", err)
	}
	if v := binary.BigEndian.Uint32(data); v != Version {
		t.Fatalf("version %#x", v)
	}
	evs, d, err := decodeAll(data[HeaderSize:], HeaderSize)
	if err != io.EOF {
		t.Fatalf("decode stopped at %d of %d: %v", d.Offset(), len(data), err)
	}
	if len(evs) < 3 || evs[len(evs)-1].Kind != KindEnd || evs[len(evs)-1].End() != int64(len(data)) {
		t.Fatalf("log does not end with END at EOF: last %+v", evs[len(evs)-1])
	}
	// replay_finish always writes SHUTDOWN(host-signal) right before END.
	if k := evs[len(evs)-2].Kind; k != KindShutdownHostSignal {
		t.Fatalf("event before END is %v", k)
	}
	counts := map[Kind]int{}
	for _, e := range evs {
		counts[e.Kind]++
	}
	if counts[KindCheckpointInit] != 1 || counts[KindCheckpointReset] != 1 || counts[KindEnd] != 1 {
		t.Fatalf("want one INIT, RESET, END: %v", counts)
	}
	return evs, d.Icount()
}

// checkConsole: each CHAR_WRITE records how many bytes the file backend
// accepted, so their sum is the console file's size.
func checkConsole(t *testing.T, evs []Event, path string) {
	t.Helper()
	console, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	var writes int
	for _, e := range evs {
		if e.Kind == KindCharWrite {
			writes++
			n += int64(e.Written)
		}
	}
	if writes == 0 || n != int64(len(console)) {
		t.Fatalf("%d CHAR_WRITE events account for %d bytes, console has %d", writes, n, len(console))
	}
}

func checkChunks(t *testing.T, data []byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 4; i++ {
		sizes := make([]byte, 64)
		for j := range sizes {
			sizes[j] = byte(rng.IntN(256))
		}
		if i == 0 {
			sizes = []byte{0} // one byte at a time
		}
		checkAgreement(t, data[HeaderSize:], sizes)
	}
	// Large random chunks too, as a tail reader sees them.
	c := NewCutter(HeaderSize, 0)
	for rest := data[HeaderSize:]; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(20000))
		if _, err := c.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if c.Boundary() != int64(len(data)) || !c.SawEnd() {
		t.Fatalf("cutter boundary %d of %d", c.Boundary(), len(data))
	}
}

// checkEveryPrefix cuts the log at every byte. Decoding each prefix from
// offset 12 would be quadratic, so each is decoded from the boundary two
// events before the cut; a sample is also decoded from the start.
func checkEveryPrefix(t *testing.T, data []byte, evs []Event) {
	t.Helper()
	br := bufio.NewReaderSize(nil, 16)
	i := 0 // evs[i] is the event containing the cut, or the one after it
	for cut := HeaderSize; cut <= len(data); cut++ {
		for i < len(evs) && evs[i].End() <= int64(cut) {
			i++
		}
		from := max(0, i-2)
		start := evs[from].Offset
		br.Reset(bytes.NewReader(data[start:cut]))
		d := NewDecoder(br, start)
		j := from
		var err error
		for {
			var e Event
			if e, err = d.Next(); err != nil {
				break
			}
			if j >= len(evs) || e != evs[j] {
				t.Fatalf("cut %d: wrong event %+v", cut, e)
			}
			j++
		}
		atBoundary := i == len(evs) || evs[i].Offset == int64(cut)
		if atBoundary && err != io.EOF || !atBoundary && !errors.Is(err, ErrTruncated) || j != i {
			t.Fatalf("cut %d: %v after %d events, want %d (boundary %v)", cut, err, j, i, atBoundary)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for k := 0; k < 100; k++ {
		cut := HeaderSize + rng.IntN(len(data)-HeaderSize+1)
		checkAgreement(t, data[HeaderSize:cut], []byte{byte(rng.IntN(256))})
		off, _, err := LastBoundary(bytes.NewReader(data[HeaderSize:cut]), HeaderSize, 0)
		if err != nil || off > int64(cut) {
			t.Fatalf("LastBoundary(cut %d) = %d, %v", cut, off, err)
		}
	}
}

func kindCounts(evs []Event) string {
	var counts [NumKinds]int
	for _, e := range evs {
		counts[e.Kind]++
	}
	var b bytes.Buffer
	for k, n := range counts {
		if n > 0 {
			fmt.Fprintf(&b, "%v=%d ", Kind(k), n)
		}
	}
	return b.String()
}

// TestRealKilledLog checks the shape of a log whose recorder died: the
// version is still zero and the file ends wherever the last 4 KiB stdio
// block ended, usually inside an event.
func TestRealKilledLog(t *testing.T) {
	bin := qemuBinary(t)
	dir := t.TempDir()
	cmd, _ := vm{name: "killed"}.command(bin, dir, "record")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	time.Sleep(2 * time.Second)
	stop(t, cmd, syscall.SIGKILL)
	data, err := os.ReadFile(filepath.Join(dir, "x.rr"))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckHeader(data); !errors.Is(err, ErrRecording) {
		t.Fatalf("killed log header: %v", err)
	}
	off, ic, err := LastBoundary(bytes.NewReader(data[HeaderSize:]), HeaderSize, 0)
	if err != nil || off > int64(len(data)) || off <= HeaderSize || ic == 0 {
		t.Fatalf("LastBoundary = %d, %d, %v (file %d bytes)", off, ic, err, len(data))
	}
	s, err := Summarize(bytes.NewReader(data))
	if err != nil || s.Finished || s.SawEnd || s.Boundary != off || s.Icount != ic {
		t.Fatalf("summary %+v, %v", s, err)
	}
	t.Logf("killed log: %d bytes (%d mod 4096 past the header), last boundary %d, icount %d, truncated %v",
		len(data), (len(data)-HeaderSize)%4096, off, ic, s.Truncated)
}
