package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// CPUUse is where the machine's CPU went during one benchmark phase, in cores (CPU
// seconds per wall second). The lab puts two hosts and the client on one machine, so
// a protected VM's replaying QEMU and both agents compete with the primary for the
// same cores; these figures say how much of each a phase took.
type CPUUse struct {
	Busy        float64 `json:"machine_busy_cores"`
	Cores       int     `json:"machine_cores"`
	PrimaryQEMU float64 `json:"primary_qemu_cores"`
	// PrimaryQEMUSys is the part of PrimaryQEMU spent in the kernel (its system
	// time: syscalls, and the softirq work the kernel charges to it).
	PrimaryQEMUSys float64 `json:"primary_qemu_sys_cores"`
	BackupQEMU     float64 `json:"backup_qemu_cores,omitempty"`
	AgentA         float64 `json:"agent_a_cores"`
	AgentB         float64 `json:"agent_b_cores"`
}

// cpuSnap is one reading of the counters CPUUse is computed from.
type cpuSnap struct {
	at    time.Time
	busy  uint64 // machine busy jiffies (all cores)
	cores int
	procs [4]uint64 // primary QEMU, backup QEMU, agent A, agent B: utime+stime jiffies
	pSys  uint64    // the primary QEMU's stime jiffies
}

// cpuProbe knows the processes of one benchmark phase.
type cpuProbe struct {
	pids [4]int // 0 when absent
}

// newCPUProbe finds the processes of vm on the lab: its QEMUs from the agents'
// status, the agents from the lab that started them.
func newCPUProbe(ctx context.Context, l *lab.Lab, vm string, protected bool) (*cpuProbe, error) {
	p := &cpuProbe{}
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return nil, err
	}
	p.pids[0] = st.PID
	if protected {
		bst, err := lab.Status(ctx, lab.HostB, vm)
		if err != nil {
			return nil, err
		}
		p.pids[1] = bst.PID
	}
	p.pids[2], p.pids[3] = l.AgentPID(lab.HostA), l.AgentPID(lab.HostB)
	return p, nil
}

func (p *cpuProbe) snap() (cpuSnap, error) {
	s := cpuSnap{at: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		if f[0] != "cpu" {
			s.cores++
			continue
		}
		// user nice system idle iowait irq softirq steal: busy is all but idle+iowait.
		for i, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return s, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			if i != 3 && i != 4 && i < 8 {
				s.busy += n
			}
		}
	}
	for i, pid := range p.pids {
		if pid == 0 {
			continue
		}
		var sys uint64
		s.procs[i], sys, err = procJiffies(pid)
		if i == 0 {
			s.pSys = sys
		}
		if err != nil {
			return s, err
		}
	}
	return s, nil
}

// procJiffies is utime+stime of all of pid's threads (fields 14 and 15 of
// /proc/PID/stat, counted after the command name, which may hold spaces), and the
// stime alone.
func procJiffies(pid int) (total, sys uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	k, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return u + k, k, nil
}

// clockTicks is USER_HZ, the unit of /proc's CPU times; 100 on every Linux ABI
// ftvmd supports.
const clockTicks = 100

// use computes CPUUse between two snapshots.
func use(a, b cpuSnap) CPUUse {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return CPUUse{}
	}
	cores := func(x, y uint64) float64 { return float64(y-x) / clockTicks / wall }
	return CPUUse{
		Busy:           cores(a.busy, b.busy),
		Cores:          b.cores,
		PrimaryQEMU:    cores(a.procs[0], b.procs[0]),
		PrimaryQEMUSys: cores(a.pSys, b.pSys),
		BackupQEMU:     cores(a.procs[1], b.procs[1]),
		AgentA:         cores(a.procs[2], b.procs[2]),
		AgentB:         cores(a.procs[3], b.procs[3]),
	}
}
