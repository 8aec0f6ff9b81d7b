// Package journal keeps an agent's record of what happened to its VMs: epoch claims,
// failovers, go-lives, throttle, pacing and replay stall episodes, peers coming and
// going. `ftvmd events` reads it back over the control socket.
//
// A journal is bounded: File keeps JSON lines in a file that is rotated by size (one
// older file is kept), Memory keeps the newest events in a ring.
package journal

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Event kinds.
const (
	KindProtect      = "protect"       // a primary started protecting a VM (epoch claimed)
	KindClaim        = "claim"         // an epoch claim on shared storage and its result
	KindFailover     = "failover"      // this copy took the VM after its peer was lost, or was handed it
	KindHandover     = "handover"      // a planned failover handed the VM to the backup
	KindGoLive       = "go-live"       // a backup became the live VM (how long it took)
	KindUnprotected  = "unprotected"   // a primary runs on without a backup
	KindHalted       = "halted"        // a copy stopped for good: another one owns the VM
	KindFailed       = "failed"        // a copy failed (a backup stepping down, a primary whose backup takes over)
	KindThrottleOn   = "throttle-on"   // the primary's CPU quota went below 1
	KindThrottleOff  = "throttle-off"  // ... and came back to 1 (DurationMS: how long it was below)
	KindPacingOn     = "pacing-on"     // the network's frames to the guest began to be paced
	KindPacingOff    = "pacing-off"    // ... and flow freely again (DurationMS: how long)
	KindReplayStall  = "replay-stall"  // the backup's replay stopped moving with log in hand
	KindReplayMoving = "replay-moving" // ... and moves again (DurationMS: the stall)
	KindPeerUp       = "peer-up"       // a log channel to a peer agent is up (the first one)
	KindPeerDown     = "peer-down"     // the last log channel to a peer ended
	// KindQEMUUnresponsive: a copy's QEMU stopped answering the agent's liveness
	// probe (Detail: since when, the last good probe); KindQEMUAnswers: it answers
	// again (DurationMS: how long it did not).
	KindQEMUUnresponsive = "qemu-unresponsive"
	KindQEMUAnswers      = "qemu-answers"
)

// Event is one entry. Fields that do not apply to its kind are empty.
type Event struct {
	Time  time.Time `json:"time"`
	Kind  string    `json:"kind"`
	VM    string    `json:"vm,omitempty"`
	Role  string    `json:"role,omitempty"` // the copy's role on this host: primary | backup
	Peer  string    `json:"peer,omitempty"` // the other host
	Epoch uint64    `json:"epoch,omitempty"`
	// Result: a claim's (won | lost | failed); a protect's ProtectFromRunning
	// when the VM ran alone (protect of a running VM, automatic re-protection).
	Result string `json:"result,omitempty"`
	// DurationMS is how long the thing took or lasted (go-live, a claim, an episode).
	DurationMS float64 `json:"duration_ms,omitempty"`
	Detail     string  `json:"detail,omitempty"`
}

// Claim results.
const (
	ClaimWon    = "won"
	ClaimLost   = "lost"
	ClaimFailed = "failed"
)

// ProtectFromRunning is the Result of a protect that gave a VM running alone a
// new backup (its running state copied, not a boot).
const ProtectFromRunning = "from-running"

// Journal records events and reads them back.
type Journal interface {
	// Record appends an event (stamped now when its Time is zero). It never fails
	// the caller: a journal that cannot write says so in Err.
	Record(Event)
	// Read returns the newest events, oldest first: at most limit (0: all kept),
	// only vm's when vm is not empty.
	Read(vm string, limit int) ([]Event, error)
}

// filterTail keeps vm's events (all when vm is empty), the newest limit of them.
func filterTail(evs []Event, vm string, limit int) []Event {
	out := evs[:0:0]
	for _, e := range evs {
		if vm == "" || e.VM == vm {
			out = append(out, e)
		}
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

// Memory is a Journal in memory that keeps the newest Max events.
type Memory struct {
	Max int
	Now func() time.Time // nil: time.Now

	mu  sync.Mutex
	evs []Event
}

// NewMemory returns a memory journal keeping max events.
func NewMemory(max int) *Memory { return &Memory{Max: max} }

// Record implements Journal.
func (m *Memory) Record(e Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Time.IsZero() {
		e.Time = now(m.Now)
	}
	m.evs = append(m.evs, e)
	if m.Max > 0 && len(m.evs) > m.Max {
		m.evs = append(m.evs[:0], m.evs[len(m.evs)-m.Max:]...)
	}
}

// Read implements Journal.
func (m *Memory) Read(vm string, limit int) ([]Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return filterTail(m.evs, vm, limit), nil
}

func now(f func() time.Time) time.Time {
	if f != nil {
		return f()
	}
	return time.Now()
}

// DefaultMaxBytes is the size at which File rotates its file: the journal holds at
// most about twice this on disk, some ten thousand events.
const DefaultMaxBytes = 1 << 20

// File is a Journal of JSON lines in Path, rotated to Path+".1" when it would grow
// past MaxBytes.
type File struct {
	path     string
	maxBytes int64
	now      func() time.Time

	mu   sync.Mutex
	f    *os.File
	size int64
	err  error // the latest write error, nil once a write succeeds again
}

// Open opens (creating) the journal at path, rotated at maxBytes (0: DefaultMaxBytes).
func Open(path string, maxBytes int64) (*File, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j := &File{path: path, maxBytes: maxBytes, now: time.Now}
	if err := j.open(); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *File) open() error {
	f, err := os.OpenFile(j.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("journal: %w", err)
	}
	j.f, j.size = f, st.Size()
	if j.size > 0 && !endsWithNewline(j.path, j.size) {
		// A write cut short by a crash: end its line, or the next event would
		// be glued to it and lost too.
		n, err := f.Write([]byte{'\n'})
		j.size += int64(n)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
	}
	return nil
}

func endsWithNewline(path string, size int64) bool {
	f, err := os.Open(path)
	if err != nil {
		return true
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, size-1); err != nil {
		return true
	}
	return b[0] == '\n'
}

// Path is the journal's current file.
func (j *File) Path() string { return j.path }

// Record implements Journal. A failed write is kept for Err and the event is lost:
// the journal is a record for the operator, and must not stop a failover.
func (j *File) Record(e Event) {
	if e.Time.IsZero() {
		e.Time = j.now()
	}
	line, err := json.Marshal(e)
	if err != nil {
		j.setErr(fmt.Errorf("journal: encode %s event: %w", e.Kind, err))
		return
	}
	line = append(line, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		j.err = errors.New("journal: closed")
		return
	}
	if j.size > 0 && j.size+int64(len(line)) > j.maxBytes {
		if err := j.rotate(); err != nil {
			j.err = err
			return
		}
	}
	n, err := j.f.Write(line)
	j.size += int64(n)
	j.err = err
}

func (j *File) setErr(err error) {
	j.mu.Lock()
	j.err = err
	j.mu.Unlock()
}

// rotate moves the current file to Path+".1" (replacing the older one) and starts
// a new one. Called with j.mu held.
func (j *File) rotate() error {
	if err := j.f.Close(); err != nil {
		return fmt.Errorf("journal: close for rotation: %w", err)
	}
	j.f = nil
	if err := os.Rename(j.path, j.path+".1"); err != nil {
		// Carry on appending to the file we have rather than lose events.
		if oerr := j.open(); oerr != nil {
			return errors.Join(fmt.Errorf("journal: rotate: %w", err), oerr)
		}
		return fmt.Errorf("journal: rotate: %w", err)
	}
	return j.open()
}

// Err is the latest write error, nil when the latest write succeeded.
func (j *File) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// Read implements Journal: the rotated file, then the current one. A line that
// does not parse (a write cut short by a crash) is skipped.
func (j *File) Read(vm string, limit int) ([]Event, error) {
	// Hold the lock so a rotation does not move the files between the two reads.
	j.mu.Lock()
	defer j.mu.Unlock()
	var evs []Event
	for _, p := range []string{j.path + ".1", j.path} {
		got, err := readLines(p)
		if err != nil {
			return nil, err
		}
		evs = append(evs, got...)
	}
	return filterTail(evs, vm, limit), nil
}

func readLines(path string) ([]Event, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	var evs []Event
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			var e Event
			if json.Unmarshal(line, &e) == nil {
				evs = append(evs, e)
			}
		}
		if errors.Is(err, io.EOF) {
			return evs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("journal: read %s: %w", path, err)
		}
	}
}

// Close closes the file; later Records fail (see Err).
func (j *File) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
