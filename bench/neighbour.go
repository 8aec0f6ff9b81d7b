package bench

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// neighbourPeriod is the busy/idle cycle of a neighbour load.
const neighbourPeriod = 10 * time.Millisecond

// neighbour is a running neighbour load: a stand-in, in an unprotected run, for
// what protection adds on the lab's two shared cores (the backup's replay on its
// core, the agents that float between both), so that how much of a protected
// run's loss those shared cores explain can be read inside one run (issue 13).
// It runs in this process, on one thread (tid) locked to its CPU, until stop is
// called (more than once is harmless).
type neighbour struct {
	tid  int
	stop func()
}

// newNeighbour keeps CPU cpu busy for duty (0-1] of every neighbourPeriod.
func newNeighbour(cpu int, duty float64) (*neighbour, error) {
	if duty <= 0 || duty > 1 {
		return nil, fmt.Errorf("neighbour load: duty %.2f: must be in (0, 1]", duty)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	started := make(chan error, 1)
	n := &neighbour{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread() // the thread exits with the goroutine, its affinity with it
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			started <- fmt.Errorf("neighbour load: pin to CPU %d: %w", cpu, err)
			return
		}
		n.tid = unix.Gettid()
		started <- nil
		busy, idle := dutyCycle(duty)
		for ctx.Err() == nil {
			t0 := time.Now()
			for time.Since(t0) < busy {
			}
			if idle > 0 {
				time.Sleep(idle)
			}
		}
	}()
	if err := <-started; err != nil {
		cancel()
		wg.Wait()
		return nil, err
	}
	n.stop = func() { cancel(); wg.Wait() }
	return n, nil
}

// dutyCycle splits neighbourPeriod into its busy and idle parts at duty.
func dutyCycle(duty float64) (busy, idle time.Duration) {
	busy = time.Duration(duty * float64(neighbourPeriod))
	return busy, neighbourPeriod - busy
}
