package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer collects log output from any goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// withHook installs a hook run before each blocking filesystem step.
func withHook(h func(op, path string)) DirOption {
	return func(c *dirConfig) { c.hook = h }
}

// hangSwitch blocks every hooked step while on.
type hangSwitch struct {
	mu   sync.Mutex
	gate chan struct{}
}

func (h *hangSwitch) set(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case on && h.gate == nil:
		h.gate = make(chan struct{})
	case !on && h.gate != nil:
		close(h.gate)
		h.gate = nil
	}
}

func (h *hangSwitch) hook(string, string) {
	h.mu.Lock()
	g := h.gate
	h.mu.Unlock()
	if g != nil {
		<-g
	}
}

// storeUnderTest is one EpochStore implementation with its fault controls.
type storeUnderTest struct {
	store EpochStore
	plant func(t *testing.T, c Claim) // c.Corrupt plants unreadable content
	hang  func(on bool)
	// drain waits until no storage work is outstanding (lingering goroutines).
	drain func()
}

type storeImpl struct {
	name string
	new  func(t *testing.T) storeUnderTest
}

func storeImpls() []storeImpl {
	return []storeImpl{
		{"MemStore", func(t *testing.T) storeUnderTest {
			m := NewMemStore()
			return storeUnderTest{
				store: m,
				plant: func(_ *testing.T, c Claim) { m.Put(c) },
				hang:  m.SetHung,
				drain: func() {},
			}
		}},
		{"DirStore", func(t *testing.T) storeUnderTest {
			hs := &hangSwitch{}
			log, _ := testLogger()
			s, err := NewDirStore(t.TempDir(), WithLogger(log), WithMaxInFlight(128), withHook(hs.hook))
			if err != nil {
				t.Fatalf("NewDirStore: %v", err)
			}
			return storeUnderTest{
				store: s,
				plant: func(t *testing.T, c Claim) { plantFile(t, s, c) },
				hang:  hs.set,
				drain: func() {
					for range cap(s.sem) {
						s.sem <- struct{}{}
					}
					for range cap(s.sem) {
						<-s.sem
					}
				},
			}
		}},
	}
}

// plantFile writes a claim file directly (garbage if c.Corrupt).
func plantFile(t *testing.T, s *DirStore, c Claim) {
	t.Helper()
	dir := filepath.Join(s.Dir(), c.VM)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := []byte("{\"claim\":{\"version\":1,\"vm\":\"trunc")
	if !c.Corrupt {
		var err error
		if data, err = encodeClaim(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, epochFileName(c.Epoch)), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func seenOf(t *testing.T, s EpochStore, vm string) uint64 {
	t.Helper()
	c, err := s.Current(context.Background(), vm)
	if errors.Is(err, ErrNoEpoch) {
		return 0
	}
	if err != nil {
		t.Fatalf("Current(%s): %v", vm, err)
	}
	return c.Epoch
}

func mustClaim(t *testing.T, s EpochStore, vm string, seen uint64, owner string) Claim {
	t.Helper()
	c, err := s.ClaimNext(context.Background(), vm, seen, owner, "test")
	if err != nil {
		t.Fatalf("ClaimNext(%s, %d, %s): %v", vm, seen, owner, err)
	}
	if c.Epoch != seen+1 || c.Owner != owner || c.VM != vm || c.Corrupt {
		t.Fatalf("ClaimNext(%s, %d, %s) = %+v", vm, seen, owner, c)
	}
	return c
}

func TestEpochStoreConformance(t *testing.T) {
	for _, impl := range storeImpls() {
		t.Run(impl.name, func(t *testing.T) {
			t.Run("Basic", func(t *testing.T) { testBasic(t, impl.new(t)) })
			t.Run("Invalid", func(t *testing.T) { testInvalid(t, impl.new(t)) })
			t.Run("Corrupt", func(t *testing.T) { testCorrupt(t, impl.new(t)) })
			t.Run("Future", func(t *testing.T) { testFuture(t, impl.new(t)) })
			t.Run("Hung", func(t *testing.T) { testHung(t, impl.new(t)) })
			t.Run("RaceFree", func(t *testing.T) { testRace(t, impl.new(t)) })
			t.Run("RaceLockstep", func(t *testing.T) { testRaceLockstep(t, impl.new(t)) })
		})
	}
}

func testBasic(t *testing.T, u storeUnderTest) {
	ctx := context.Background()
	s := u.store
	if _, err := s.Current(ctx, "vm1"); !errors.Is(err, ErrNoEpoch) {
		t.Fatalf("Current on empty store: err = %v, want ErrNoEpoch", err)
	}
	c1 := mustClaim(t, s, "vm1", 0, "hostA")
	if c1.ClaimedAt.IsZero() || c1.Reason != "test" {
		t.Errorf("claim = %+v, want ClaimedAt and Reason set", c1)
	}
	got, err := s.Current(ctx, "vm1")
	if err != nil || got.Epoch != 1 || got.Owner != "hostA" || got.Corrupt || got.Problem != "" {
		t.Fatalf("Current = %+v, %v; want epoch 1 owner hostA", got, err)
	}
	if !got.ClaimedAt.Equal(c1.ClaimedAt) {
		t.Errorf("ClaimedAt round trip: %v != %v", got.ClaimedAt, c1.ClaimedAt)
	}

	// The other contender for epoch 1 loses and learns the winner.
	w, err := s.ClaimNext(ctx, "vm1", 0, "hostB", "peer silent")
	if !errors.Is(err, ErrLost) || w.Epoch != 1 || w.Owner != "hostA" {
		t.Fatalf("second ClaimNext(0) = %+v, %v; want ErrLost with hostA's epoch 1", w, err)
	}
	// The winner retrying (e.g. after a timeout) gets its claim back.
	if again := mustClaim(t, s, "vm1", 0, "hostA"); !again.ClaimedAt.Equal(c1.ClaimedAt) {
		t.Errorf("retry returned a new claim %+v, want the original %+v", again, c1)
	}
	mustClaim(t, s, "vm1", 1, "hostB")
	// A stale view (saw 0, store at 2) loses to the highest claim.
	w, err = s.ClaimNext(ctx, "vm1", 0, "hostA", "stale")
	if !errors.Is(err, ErrLost) || w.Epoch != 2 || w.Owner != "hostB" {
		t.Fatalf("stale ClaimNext(0) = %+v, %v; want ErrLost with epoch 2", w, err)
	}
	// A view ahead of the store is refused: claiming would leave a gap.
	if _, err := s.ClaimNext(ctx, "vm1", 7, "hostA", "ahead"); !errors.Is(err, ErrEpochRegressed) {
		t.Fatalf("ClaimNext(7) on store at 2: err = %v, want ErrEpochRegressed", err)
	}
	if _, err := s.ClaimNext(ctx, "vm2", 3, "hostA", "ahead"); !errors.Is(err, ErrEpochRegressed) {
		t.Fatalf("ClaimNext(3) on empty VM: err = %v, want ErrEpochRegressed", err)
	}
	// VMs are independent.
	mustClaim(t, s, "vm2", 0, "hostB")
	if seenOf(t, s, "vm1") != 2 || seenOf(t, s, "vm2") != 1 {
		t.Fatalf("epochs vm1=%d vm2=%d, want 2 and 1", seenOf(t, s, "vm1"), seenOf(t, s, "vm2"))
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.ClaimNext(cctx, "vm1", 2, "hostA", "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("ClaimNext with canceled ctx: err = %v, want context.Canceled", err)
	}
	if seenOf(t, s, "vm1") != 2 {
		t.Fatal("a canceled ClaimNext claimed an epoch")
	}
}

func testInvalid(t *testing.T, u storeUnderTest) {
	ctx := context.Background()
	s := u.store
	for _, vm := range []string{"", ".", "..", "../x", "a/b", "/abs", ".hidden", "sp ace", "nul\x00", "tab\t", strings.Repeat("v", 129)} {
		if _, err := s.Current(ctx, vm); !errors.Is(err, ErrInvalidVM) {
			t.Errorf("Current(%q): err = %v, want ErrInvalidVM", vm, err)
		}
		if _, err := s.ClaimNext(ctx, vm, 0, "h", ""); !errors.Is(err, ErrInvalidVM) {
			t.Errorf("ClaimNext(%q): err = %v, want ErrInvalidVM", vm, err)
		}
	}
	for _, vm := range []string{"vm", "web-01.prod", "A_b.c-9", strings.Repeat("v", 128)} {
		if err := ValidateVM(vm); err != nil {
			t.Errorf("ValidateVM(%q) = %v, want nil", vm, err)
		}
	}
	if _, err := s.ClaimNext(ctx, "vm", 0, "", ""); !errors.Is(err, ErrInvalidOwner) {
		t.Errorf("empty owner: err = %v, want ErrInvalidOwner", err)
	}
	if _, err := s.ClaimNext(ctx, "vm", 0, strings.Repeat("h", 256), ""); !errors.Is(err, ErrInvalidOwner) {
		t.Errorf("long owner: err = %v, want ErrInvalidOwner", err)
	}
	if _, err := s.ClaimNext(ctx, "vm", math.MaxUint64, "h", ""); !errors.Is(err, ErrInvalidEpoch) {
		t.Errorf("seen=max: err = %v, want ErrInvalidEpoch", err)
	}
	if _, err := s.ClaimNext(ctx, "vm", 0, "h", strings.Repeat("r", 2000)); err == nil {
		t.Error("2000-byte reason accepted")
	}
}

func testCorrupt(t *testing.T, u storeUnderTest) {
	ctx := context.Background()
	s := u.store
	mustClaim(t, s, "vm", 0, "hostA")
	u.plant(t, Claim{VM: "vm", Epoch: 2, Corrupt: true})

	c, err := s.Current(ctx, "vm")
	if err != nil || c.Epoch != 2 || !c.Corrupt || c.Owner != "" || c.Problem == "" {
		t.Fatalf("Current = %+v, %v; want corrupt epoch 2 with a problem", c, err)
	}
	// Nobody wins a corrupt epoch, not even by guessing its owner.
	for _, owner := range []string{"hostA", "hostB", ""} {
		if owner == "" {
			continue
		}
		w, err := s.ClaimNext(ctx, "vm", 1, owner, "x")
		if !errors.Is(err, ErrLost) || w.Epoch != 2 || !w.Corrupt {
			t.Fatalf("ClaimNext(1, %s) over corrupt epoch 2 = %+v, %v; want ErrLost with the corrupt claim", owner, w, err)
		}
	}
	// The next epoch after the corrupt one is claimable.
	mustClaim(t, s, "vm", 2, "hostB")
}

func testFuture(t *testing.T, u storeUnderTest) {
	ctx := context.Background()
	s := u.store
	mustClaim(t, s, "vm", 0, "hostA")
	future := time.Now().Add(365 * 24 * time.Hour).UTC().Truncate(time.Second)
	u.plant(t, Claim{VM: "vm", Epoch: 1_000_000, Owner: "rogue", ClaimedAt: future, Reason: "?"})

	c, err := s.Current(ctx, "vm")
	if err != nil || c.Epoch != 1_000_000 || c.Owner != "rogue" || c.Corrupt {
		t.Fatalf("Current = %+v, %v; want rogue's epoch 1000000 respected", c, err)
	}
	if !strings.Contains(c.Problem, "future") || !strings.Contains(c.Problem, "jumps") {
		t.Errorf("Problem = %q, want both the date and the gap reported", c.Problem)
	}
	// No regression: an old view loses, the epoch only goes on from the top.
	w, err := s.ClaimNext(ctx, "vm", 1, "hostB", "x")
	if !errors.Is(err, ErrLost) || w.Epoch != 1_000_000 {
		t.Fatalf("ClaimNext(1) under a future epoch = %+v, %v; want ErrLost with epoch 1000000", w, err)
	}
	mustClaim(t, s, "vm", 1_000_000, "hostB")
	if c, _ := s.Current(ctx, "vm"); c.Problem != "" {
		t.Errorf("after a normal claim, Problem = %q, want none", c.Problem)
	}
}

func testHung(t *testing.T, u storeUnderTest) {
	s := u.store
	u.hang(true)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := s.ClaimNext(ctx, "vm", 0, "hostA", "x")
	cancel()
	if !errors.Is(err, ErrStorageTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ClaimNext on hung storage: err = %v, want ErrStorageTimeout", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err = s.Current(ctx, "vm")
	cancel()
	if !errors.Is(err, ErrStorageTimeout) {
		t.Fatalf("Current on hung storage: err = %v, want ErrStorageTimeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timed-out calls took %s", d)
	}
	u.hang(false)
	u.drain()
	// The timed-out claim gave up before creating anything.
	if seen := seenOf(t, s, "vm"); seen != 0 {
		t.Fatalf("a timed-out claim left epoch %d behind", seen)
	}
	mustClaim(t, s, "vm", 0, "hostB")
}

// testRaceLockstep: 64 goroutines claim the same next epoch at once, for 200
// rounds: each round exactly one wins and the 63 others lose to it.
func testRaceLockstep(t *testing.T, u storeUnderTest) {
	const (
		workers = 64
		rounds  = 200
	)
	type result struct {
		owner string
		claim Claim
		err   error
	}
	ctx := context.Background()
	s := u.store
	gates := make([]chan struct{}, rounds)
	for i := range gates {
		gates[i] = make(chan struct{})
	}
	results := make(chan result, workers*rounds)
	var wg sync.WaitGroup
	defer wg.Wait()
	opened := 0
	defer func() { // on failure, let the workers run out
		for _, g := range gates[opened:] {
			close(g)
		}
	}()
	for w := range workers {
		owner := fmt.Sprintf("host%02d", w)
		wg.Go(func() {
			for r := range uint64(rounds) {
				<-gates[r]
				c, err := s.ClaimNext(ctx, "vm", r, owner, "lockstep")
				results <- result{owner, c, err}
			}
		})
	}
	for r := range uint64(rounds) {
		close(gates[r])
		opened++
		var winners []string
		var lost []result
		for range workers {
			res := <-results
			switch {
			case res.err == nil && res.claim.Epoch == r+1:
				winners = append(winners, res.owner)
			case errors.Is(res.err, ErrLost):
				lost = append(lost, res)
			default:
				t.Fatalf("round %d: %s: ClaimNext = %+v, %v", r, res.owner, res.claim, res.err)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("epoch %d: winners %v, want exactly one", r+1, winners)
		}
		for _, l := range lost {
			if l.claim.Epoch != r+1 || (!l.claim.Corrupt && l.claim.Owner != winners[0]) {
				t.Fatalf("epoch %d: %s lost to %+v, but %s won", r+1, l.owner, l.claim, winners[0])
			}
		}
	}
}

// testRace: 64 goroutines, each in a tight loop reading the current epoch and
// claiming the next, up to epoch 200. Every epoch must have exactly one winner.
func testRace(t *testing.T, u storeUnderTest) {
	const (
		workers = 64
		epochs  = 200
	)
	ctx := context.Background()
	s := u.store
	var (
		mu     sync.Mutex
		wins   = make(map[uint64][]string)
		losses atomic.Int64
	)
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	start := make(chan struct{})
	for w := range workers {
		owner := fmt.Sprintf("host%02d", w)
		wg.Go(func() {
			<-start
			for {
				var seen uint64
				c, err := s.Current(ctx, "vm")
				switch {
				case errors.Is(err, ErrNoEpoch):
				case err != nil:
					errc <- fmt.Errorf("%s: Current: %w", owner, err)
					return
				default:
					seen = c.Epoch
				}
				if seen >= epochs {
					return
				}
				got, err := s.ClaimNext(ctx, "vm", seen, owner, "race")
				switch {
				case err == nil:
					mu.Lock()
					wins[got.Epoch] = append(wins[got.Epoch], owner)
					mu.Unlock()
				case errors.Is(err, ErrLost):
					losses.Add(1)
					if got.Epoch <= seen || (!got.Corrupt && got.Owner == owner) {
						errc <- fmt.Errorf("%s lost epoch %d to %+v", owner, seen+1, got)
						return
					}
				default:
					errc <- fmt.Errorf("%s: ClaimNext(%d): %w", owner, seen, err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	for e := uint64(1); e <= epochs; e++ {
		if len(wins[e]) != 1 {
			t.Errorf("epoch %d: winners %v, want exactly one", e, wins[e])
		}
	}
	if len(wins) != epochs {
		t.Errorf("%d epochs won, want %d", len(wins), epochs)
	}
	if c, err := s.Current(ctx, "vm"); err != nil || c.Epoch != epochs || c.Corrupt || wins[epochs][0] != c.Owner {
		t.Errorf("Current = %+v, %v; want epoch %d owned by %v", c, err, epochs, wins[epochs])
	}
	t.Logf("%d epochs, %d lost claims", len(wins), losses.Load())
}
