package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DirStore is an EpochStore on a shared directory. Layout:
//
//	<dir>/<vm>/epoch-<20-digit zero-padded epoch>.json
//
// A claim is an O_CREAT|O_EXCL create of the next epoch's file: exactly one
// creator succeeds on a local filesystem and on NFSv3 and later. The content is
// then written and the file and its directory fsync'd before the claim is
// reported won. Files are never rewritten or removed, and a file whose content is
// missing or damaged still counts as claimed (Claim.Corrupt).
//
// Every call runs its filesystem work in a goroutine bounded by a deadline (the
// ctx's or WithTimeout's, whichever is sooner) and returns ErrStorageTimeout
// when it passes. On a hung NFS mount that goroutine may stay blocked in the
// kernel long after the call returned; at most WithMaxInFlight such goroutines
// exist, after which calls fail with ErrStorageTimeout at once. A claim that
// timed out may still complete in the background: retry ClaimNext with the same
// owner to learn the outcome.
//
// DirStore is safe for concurrent use by goroutines and by processes on any
// number of hosts sharing the directory.
type DirStore struct {
	dir string
	cfg dirConfig
	sem chan struct{} // in-flight filesystem goroutines
}

var _ EpochStore = (*DirStore)(nil)

const (
	defaultTimeout       = 5 * time.Second
	defaultFutureSkew    = 10 * time.Minute
	defaultMaxInFlight   = 8
	defaultSettleDelay   = 10 * time.Millisecond
	defaultSettleRetries = 3
	claimFileVersion     = 1
	maxClaimFileSize     = 64 << 10
	epochDigits          = 20
)

type dirConfig struct {
	timeout       time.Duration
	log           *slog.Logger
	now           func() time.Time
	futureSkew    time.Duration
	maxInFlight   int
	settleDelay   time.Duration
	settleRetries int
	hook          func(op, path string) // test hook before each blocking step
}

// DirOption configures a DirStore.
type DirOption func(*dirConfig)

// WithTimeout bounds every operation (default 5s). Values <= 0 are ignored.
func WithTimeout(d time.Duration) DirOption {
	return func(c *dirConfig) {
		if d > 0 {
			c.timeout = d
		}
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) DirOption {
	return func(c *dirConfig) {
		if l != nil {
			c.log = l
		}
	}
}

// WithClock sets the clock used only to flag claims dated in the future; the
// claim rules never depend on time.
func WithClock(now func() time.Time) DirOption {
	return func(c *dirConfig) {
		if now != nil {
			c.now = now
		}
	}
}

// WithFutureSkew sets how far ahead of our clock a ClaimedAt may be before it is
// reported as from the future (default 10m).
func WithFutureSkew(d time.Duration) DirOption {
	return func(c *dirConfig) {
		if d > 0 {
			c.futureSkew = d
		}
	}
}

// WithMaxInFlight bounds the filesystem goroutines that may be outstanding,
// including ones left blocked by a hung mount (default 8).
func WithMaxInFlight(n int) DirOption {
	return func(c *dirConfig) {
		if n > 0 {
			c.maxInFlight = n
		}
	}
}

// WithSettle sets how often (retries) and how long apart (delay) an unreadable
// claim file is re-read before it is declared corrupt: a contender's file is
// visible between its create and its write (default 3 x 10ms). retries may be 0.
func WithSettle(retries int, delay time.Duration) DirOption {
	return func(c *dirConfig) {
		if retries >= 0 {
			c.settleRetries = retries
		}
		if delay >= 0 {
			c.settleDelay = delay
		}
	}
}

// NewDirStore checks that dir exists, is a directory and is writable (by
// creating and removing a probe file), and returns a store on it.
func NewDirStore(dir string, opts ...DirOption) (*DirStore, error) {
	cfg := dirConfig{
		timeout:       defaultTimeout,
		log:           slog.New(slog.DiscardHandler),
		now:           time.Now,
		futureSkew:    defaultFutureSkew,
		maxInFlight:   defaultMaxInFlight,
		settleDelay:   defaultSettleDelay,
		settleRetries: defaultSettleRetries,
	}
	for _, o := range opts {
		o(&cfg)
	}
	if dir == "" {
		return nil, fmt.Errorf("disk: epoch store: %w: empty path", ErrDirMissing)
	}
	s := &DirStore{dir: filepath.Clean(dir), cfg: cfg, sem: make(chan struct{}, cfg.maxInFlight)}
	_, err := runIO(context.Background(), s, "open epoch store", "", func(context.Context) (struct{}, error) {
		return struct{}{}, s.checkDir()
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *DirStore) checkDir() error {
	s.step("stat", s.dir)
	fi, err := os.Stat(s.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("disk: epoch store %s: %w: %w", s.dir, ErrDirMissing, err)
	case err != nil:
		return fmt.Errorf("disk: epoch store %s: %w", s.dir, err)
	case !fi.IsDir():
		return fmt.Errorf("disk: epoch store %s: %w (mode %s)", s.dir, ErrNotDir, fi.Mode())
	}
	s.step("probe", s.dir)
	f, err := os.CreateTemp(s.dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("disk: epoch store %s: %w: %w", s.dir, ErrReadOnly, err)
	}
	name := f.Name()
	cerr := f.Close()
	rerr := os.Remove(name)
	if err := errors.Join(cerr, rerr); err != nil {
		return fmt.Errorf("disk: epoch store %s: %w: probe file %s: %w", s.dir, ErrReadOnly, name, err)
	}
	return nil
}

// Dir returns the store's directory.
func (s *DirStore) Dir() string { return s.dir }

func (s *DirStore) step(op, path string) {
	if s.cfg.hook != nil {
		s.cfg.hook(op, path)
	}
}

type ioResult[T any] struct {
	v   T
	err error
}

// runIO runs fn in its own goroutine and waits for it or for the deadline.
func runIO[T any](ctx context.Context, s *DirStore, op, vm string, fn func(context.Context) (T, error)) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		cancel()
		return zero, fmt.Errorf("%w (%d storage operations still outstanding)", ctxError(ctx.Err(), op, vm), cap(s.sem))
	}
	done := make(chan ioResult[T], 1)
	go func() {
		defer func() { <-s.sem }()
		defer cancel() // the goroutine owns ctx: its steps check it before acting
		v, err := fn(ctx)
		done <- ioResult[T]{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		// Prefer a result that raced with the deadline.
		select {
		case r := <-done:
			return r.v, r.err
		default:
		}
		s.cfg.log.Error("shared storage did not answer in time; its goroutine may stay blocked",
			"op", op, "vm", vm, "dir", s.dir, "timeout", s.cfg.timeout)
		return zero, ctxError(ctx.Err(), op, vm)
	}
}

func ctxError(err error, op, vm string) error {
	if vm != "" {
		op += " for VM " + vm
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("disk: %s: %w: %w", op, ErrStorageTimeout, err)
	}
	return fmt.Errorf("disk: %s: %w", op, err)
}

func epochFileName(epoch uint64) string {
	return fmt.Sprintf("epoch-%0*d.json", epochDigits, epoch)
}

// parseEpochFileName returns the epoch of a claim file name.
func parseEpochFileName(name string) (uint64, bool) {
	digits, ok := strings.CutPrefix(name, "epoch-")
	if !ok {
		return 0, false
	}
	digits, ok = strings.CutSuffix(digits, ".json")
	if !ok || len(digits) != epochDigits {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	e, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || e == 0 {
		return 0, false
	}
	return e, true
}

// listEpochs returns the claimed epochs of vm in ascending order; a missing VM
// directory has none.
func (s *DirStore) listEpochs(vmDir string) ([]uint64, error) {
	s.step("list", vmDir)
	entries, err := os.ReadDir(vmDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("disk: list epochs in %s: %w", vmDir, err)
	}
	var epochs []uint64
	for _, e := range entries {
		n, ok := parseEpochFileName(e.Name())
		if !ok {
			if strings.HasPrefix(e.Name(), "epoch-") {
				s.cfg.log.Warn("ignoring file with a malformed epoch name", "dir", vmDir, "name", e.Name())
			}
			continue
		}
		epochs = append(epochs, n)
	}
	slices.Sort(epochs)
	return epochs, nil
}

// claimRecord is the signed part of a claim file.
type claimRecord struct {
	Version   int       `json:"version"`
	VM        string    `json:"vm"`
	Epoch     uint64    `json:"epoch"`
	Owner     string    `json:"owner"`
	ClaimedAt time.Time `json:"claimed_at"`
	Reason    string    `json:"reason"`
}

// claimFile is the whole file: the record's exact bytes and their SHA-256.
type claimFile struct {
	Claim  json.RawMessage `json:"claim"`
	SHA256 string          `json:"sha256"`
}

func encodeClaim(c Claim) ([]byte, error) {
	rec, err := json.Marshal(claimRecord{
		Version: claimFileVersion, VM: c.VM, Epoch: c.Epoch, Owner: c.Owner,
		ClaimedAt: c.ClaimedAt.UTC(), Reason: c.Reason,
	})
	if err != nil {
		return nil, fmt.Errorf("disk: encode claim: %w", err)
	}
	sum := sha256.Sum256(rec)
	out, err := json.Marshal(claimFile{Claim: rec, SHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		return nil, fmt.Errorf("disk: encode claim: %w", err)
	}
	return append(out, '\n'), nil
}

// decodeClaim parses a claim file; a non-empty problem means it is corrupt.
func decodeClaim(data []byte, vm string, epoch uint64) (Claim, string) {
	if len(data) > maxClaimFileSize {
		return Claim{}, fmt.Sprintf("larger than %d bytes", maxClaimFileSize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return Claim{}, "empty file (writer crashed or still writing?)"
	}
	var f claimFile
	if err := json.Unmarshal(data, &f); err != nil {
		return Claim{}, fmt.Sprintf("unparsable: %v", err)
	}
	sum := sha256.Sum256(f.Claim)
	if hex.EncodeToString(sum[:]) != strings.ToLower(f.SHA256) {
		return Claim{}, "checksum mismatch"
	}
	var rec claimRecord
	dec := json.NewDecoder(bytes.NewReader(f.Claim))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return Claim{}, fmt.Sprintf("unparsable record: %v", err)
	}
	switch {
	case rec.Version != claimFileVersion:
		return Claim{}, fmt.Sprintf("unknown version %d", rec.Version)
	case rec.VM != vm || rec.Epoch != epoch:
		return Claim{}, fmt.Sprintf("record says VM %q epoch %d, file name says VM %q epoch %d", rec.VM, rec.Epoch, vm, epoch)
	case rec.Owner == "":
		return Claim{}, "no owner"
	}
	return Claim{VM: vm, Epoch: epoch, Owner: rec.Owner, ClaimedAt: rec.ClaimedAt, Reason: rec.Reason}, ""
}

// readClaim reads the claim of an epoch known to exist. Damaged content gives a
// Claim with Corrupt set (after re-reading a few times, since a contender's file
// exists before its content); I/O errors are returned as errors.
func (s *DirStore) readClaim(ctx context.Context, vm, vmDir string, epoch uint64) (Claim, error) {
	path := filepath.Join(vmDir, epochFileName(epoch))
	for attempt := 0; ; attempt++ {
		s.step("read", path)
		data, err := readLimited(path)
		if err != nil {
			return Claim{}, fmt.Errorf("disk: read claim %s: %w", path, err)
		}
		c, problem := decodeClaim(data, vm, epoch)
		if problem == "" {
			return c, nil
		}
		if attempt >= s.cfg.settleRetries {
			s.cfg.log.Error("epoch claim file is corrupt; the epoch still counts as claimed by an unknown owner",
				"vm", vm, "epoch", epoch, "path", path, "problem", problem)
			return Claim{VM: vm, Epoch: epoch, Corrupt: true, Problem: "corrupt claim file: " + problem}, nil
		}
		t := time.NewTimer(s.cfg.settleDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return Claim{}, ctxError(ctx.Err(), "read claim", vm)
		case <-t.C:
		}
	}
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxClaimFileSize+1))
	if err != nil {
		return nil, err
	}
	return data, nil
}

// highestClaim returns the highest claim in vmDir (found=false if none), with
// gap and future-date problems attached and logged.
func (s *DirStore) highestClaim(ctx context.Context, vm, vmDir string) (Claim, bool, error) {
	epochs, err := s.listEpochs(vmDir)
	if err != nil || len(epochs) == 0 {
		return Claim{}, false, err
	}
	h := epochs[len(epochs)-1]
	c, err := s.readClaim(ctx, vm, vmDir, h)
	if err != nil {
		return Claim{}, false, err
	}
	var prev uint64
	if len(epochs) > 1 {
		prev = epochs[len(epochs)-2]
	}
	extra := joinProblem(gapProblem(prev, h), futureProblem(c, s.cfg.now(), s.cfg.futureSkew))
	if extra != "" {
		s.cfg.log.Warn("epoch claim looks wrong; it is respected anyway (epochs never go back)",
			"vm", vm, "epoch", h, "owner", c.Owner, "problem", extra)
		c.Problem = joinProblem(c.Problem, extra)
	}
	return c, true, nil
}

// Current implements EpochStore.
func (s *DirStore) Current(ctx context.Context, vm string) (Claim, error) {
	if err := ValidateVM(vm); err != nil {
		return Claim{}, err
	}
	vmDir := filepath.Join(s.dir, vm)
	return runIO(ctx, s, "read current epoch", vm, func(ctx context.Context) (Claim, error) {
		c, found, err := s.highestClaim(ctx, vm, vmDir)
		if err != nil {
			return Claim{}, err
		}
		if !found {
			return Claim{}, fmt.Errorf("disk: VM %s in %s: %w", vm, s.dir, ErrNoEpoch)
		}
		return c, nil
	})
}

// History returns every claim of vm, oldest first (a corrupt one with Corrupt set),
// none when it was never claimed: who owned the VM from when, which `ftvmd chaos`
// compares the output each host released with.
func (s *DirStore) History(ctx context.Context, vm string) ([]Claim, error) {
	if err := ValidateVM(vm); err != nil {
		return nil, err
	}
	vmDir := filepath.Join(s.dir, vm)
	return runIO(ctx, s, "read epoch history", vm, func(ctx context.Context) ([]Claim, error) {
		epochs, err := s.listEpochs(vmDir)
		if err != nil {
			return nil, err
		}
		var out []Claim
		for _, e := range epochs {
			c, err := s.readClaim(ctx, vm, vmDir, e)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	})
}

// ClaimNext implements EpochStore.
func (s *DirStore) ClaimNext(ctx context.Context, vm string, seen uint64, owner, reason string) (Claim, error) {
	if err := validateClaimArgs(vm, seen, owner, reason); err != nil {
		return Claim{}, err
	}
	vmDir := filepath.Join(s.dir, vm)
	c, err := runIO(ctx, s, "claim epoch", vm, func(ctx context.Context) (Claim, error) {
		return s.claimNext(ctx, vm, vmDir, seen, owner, reason)
	})
	switch {
	case err == nil:
		s.cfg.log.Info("epoch claimed", "vm", vm, "epoch", c.Epoch, "owner", owner, "reason", reason)
	case errors.Is(err, ErrLost):
		s.cfg.log.Warn("epoch claim lost", "vm", vm, "seen", seen, "owner", owner,
			"winner", c.Owner, "winner_epoch", c.Epoch, "corrupt", c.Corrupt, "err", err)
	}
	return c, err
}

func (s *DirStore) claimNext(ctx context.Context, vm, vmDir string, seen uint64, owner, reason string) (Claim, error) {
	if err := s.ensureVMDir(vmDir); err != nil {
		return Claim{}, err
	}
	// decide reads the store and applies the claim rule.
	decide := func() (Claim, bool, error) {
		highest, found, err := s.highestClaim(ctx, vm, vmDir)
		if err != nil {
			return Claim{}, true, err
		}
		var seenNext *Claim
		if found && highest.Epoch > seen+1 {
			if c, err := s.readClaim(ctx, vm, vmDir, seen+1); err == nil {
				seenNext = &c
			}
		}
		c, done, err := decideClaim(vm, seen, owner, highest, found, seenNext)
		if done && err == nil {
			// Our own earlier claim: make sure it is durable before reporting it.
			if err := s.syncClaim(vmDir, c.Epoch); err != nil {
				return Claim{}, true, err
			}
		}
		return c, done, err
	}
	if c, done, err := decide(); done {
		return c, err
	}
	if err := ctx.Err(); err != nil {
		// Never create a claim nobody will hear about.
		return Claim{}, ctxError(err, "claim epoch", vm)
	}
	c := Claim{VM: vm, Epoch: seen + 1, Owner: owner, ClaimedAt: s.cfg.now().UTC(), Reason: reason}
	data, err := encodeClaim(c)
	if err != nil {
		return Claim{}, err
	}
	path := filepath.Join(vmDir, epochFileName(c.Epoch))
	s.step("create", path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		// A contender created it between our read and our create.
		if c, done, err := decide(); done {
			return c, err
		}
		return Claim{}, fmt.Errorf("disk: claim %s: exists but the store does not show it", path)
	}
	if err != nil {
		return Claim{}, fmt.Errorf("disk: claim %s: %w", path, err)
	}
	// From here the epoch is ours and nobody else can win it; until the content
	// is durable the claim is not reported won (a retry by the same owner
	// finishes the job or finds the file corrupt and loses).
	s.step("write", path)
	_, werr := f.Write(data)
	s.step("fsync", path)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return Claim{}, fmt.Errorf("disk: claim %s: created but not made durable (outcome unknown, retry): %w", path, err)
	}
	if err := s.syncDir(vmDir); err != nil {
		return Claim{}, fmt.Errorf("disk: claim %s: created but directory not made durable (outcome unknown, retry): %w", path, err)
	}
	return c, nil
}

func (s *DirStore) ensureVMDir(vmDir string) error {
	s.step("mkdir", vmDir)
	err := os.Mkdir(vmDir, 0o755)
	switch {
	case err == nil:
		return s.syncDir(s.dir)
	case errors.Is(err, fs.ErrExist):
		fi, serr := os.Stat(vmDir)
		if serr != nil {
			return fmt.Errorf("disk: VM epoch directory %s: %w", vmDir, serr)
		}
		if !fi.IsDir() {
			return fmt.Errorf("disk: VM epoch directory %s: %w", vmDir, ErrNotDir)
		}
		return nil
	default:
		return fmt.Errorf("disk: create VM epoch directory %s: %w", vmDir, err)
	}
}

func (s *DirStore) syncClaim(vmDir string, epoch uint64) error {
	path := filepath.Join(vmDir, epochFileName(epoch))
	s.step("fsync", path)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("disk: sync claim %s: %w", path, err)
	}
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("disk: sync claim %s: %w", path, err)
	}
	return s.syncDir(vmDir)
}

func (s *DirStore) syncDir(dir string) error {
	s.step("fsync-dir", dir)
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("disk: sync directory %s: %w", dir, err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return fmt.Errorf("disk: sync directory %s: %w", dir, err)
	}
	return nil
}
