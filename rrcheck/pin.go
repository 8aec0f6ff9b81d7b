package rrcheck

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ParseCPUList parses a CPU list as taskset -c and cpusets take it: "1",
// "0,2", "2-3".
func ParseCPUList(s string) (unix.CPUSet, error) {
	var set unix.CPUSet
	if strings.TrimSpace(s) == "" {
		return set, errors.New("empty CPU list")
	}
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := cpuNum(lo)
		if err != nil {
			return set, fmt.Errorf("CPU list %q: %w", s, err)
		}
		b := a
		if isRange {
			if b, err = cpuNum(hi); err != nil {
				return set, fmt.Errorf("CPU list %q: %w", s, err)
			}
			if b < a {
				return set, fmt.Errorf("CPU list %q: range %d-%d runs backwards", s, a, b)
			}
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}

// maxCPU is the largest CPU number unix.CPUSet holds.
const maxCPU = 1023

func cpuNum(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > maxCPU {
		return 0, fmt.Errorf("%q is not a CPU number (0-%d)", s, maxCPU)
	}
	return n, nil
}

// pinProcess sets the CPU affinity of every thread of pid. A thread started
// later inherits its creator's affinity, so the pass repeats until it finds no
// thread it has not pinned: then every thread, and every one to come, is pinned.
func pinProcess(pid int, set unix.CPUSet) error {
	done := map[int]bool{}
	for range 100 {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return fmt.Errorf("pin qemu %d: %w", pid, err)
		}
		fresh := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pin qemu thread %d: %w", tid, err)
			}
			done[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
	return fmt.Errorf("pin qemu %d: its threads kept multiplying", pid)
}
