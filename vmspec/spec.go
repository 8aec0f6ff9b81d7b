// Package vmspec holds how an operator names a VM: its resources, boot files, NIC and
// the replay settings, stored as one JSON file per VM in the agent's state directory.
package vmspec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Defaults applied by Normalize to fields an operator left out.
const (
	DefaultMemoryMB    = 256
	DefaultIcountShift = 4
	DefaultLagBoundMS  = 100
	DefaultAppend      = "console=ttyS0 quiet panic=-1"
	// DefaultMaxLogDisk bounds the disk space of a VM's logs on each host.
	DefaultMaxLogDisk = 1 << 30
	// MinMaxLogDisk is the smallest limit accepted: below it a few seconds of a
	// busy guest's unacknowledged log would reach it.
	MinMaxLogDisk = 16 << 20
)

// Spec describes one VM. Paths must exist on both hosts (the backup boots the same
// kernel and initrd to replay).
type Spec struct {
	Name     string `json:"name"`
	MemoryMB int    `json:"memory_mb"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
	Append   string `json:"append,omitempty"`
	Disk     string `json:"disk,omitempty"`
	MAC      string `json:"mac"`
	// Bridge is the host bridge the VM's tap joins on every host that runs it; empty
	// means the agent's --bridge. Both hosts need a bridge of that name.
	Bridge string `json:"bridge,omitempty"`
	// IcountShift is QEMU's fixed -icount shift. It ties guest time to instructions:
	// a smaller shift gives faster guest networking but a slower replay. Never auto.
	IcountShift *int `json:"icount_shift,omitempty"`
	// LagBoundMS is how far the backup may fall behind before the primary is slowed.
	LagBoundMS int `json:"lag_bound_ms,omitempty"`
	// MaxLogDisk bounds the disk space (allocated bytes) the VM's logs (its rr log
	// and console logs) take on each host. Protect and run refuse to start when the
	// file system has less free; a running VM alarms at 80% and, at the limit, keeps
	// only the log a reader still needs (docs/operator-guide.md, "Bounded logs").
	MaxLogDisk int64 `json:"max_log_disk,omitempty"`
	// BackupHosts are agent peer addresses (host:port) of hosts that may take the
	// VM's backup besides the one it is protected with: a copy that runs alone
	// after a failover or a lost backup protects itself again on the first that
	// answers, when the lost host's agent does not come back. The VM's own hosts
	// may be listed too (the list can be the same on every host): a copy never
	// picks itself, and the lost host only once its agent went away and came back.
	BackupHosts []string `json:"backup_hosts,omitempty"`
}

// MaxBackupHosts bounds BackupHosts: each is probed in turn, one a second.
const MaxBackupHosts = 16

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// validIfname is what Linux accepts as an interface name (dev_valid_name): 1 to
// IFNAMSIZ-1 bytes, no '/', ':' or whitespace, not "." or "..".
func validIfname(n string) bool {
	return len(n) >= 1 && len(n) <= 15 && n != "." && n != ".." && !strings.ContainsAny(n, "/: \t\n\v\f\r")
}

// ErrNotFound is returned by Load when no spec with that name is stored.
var ErrNotFound = errors.New("vm spec not found")

// ValidName reports whether name can name a VM: 1-32 of a-z, 0-9, '-', '_',
// starting with a letter or digit.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Normalize fills defaults for unset fields.
func (s *Spec) Normalize() {
	if s.MemoryMB == 0 {
		s.MemoryMB = DefaultMemoryMB
	}
	if s.Append == "" {
		s.Append = DefaultAppend
	}
	if s.IcountShift == nil {
		v := DefaultIcountShift
		s.IcountShift = &v
	}
	if s.LagBoundMS == 0 {
		s.LagBoundMS = DefaultLagBoundMS
	}
	if s.MaxLogDisk == 0 {
		s.MaxLogDisk = DefaultMaxLogDisk
	}
	for i, h := range s.BackupHosts {
		s.BackupHosts[i] = strings.TrimSpace(h)
	}
	// One spelling, the one QEMU's mac= takes: Go's ParseMAC also accepts
	// "5254.0012.3456", which QEMU refuses at start.
	if hw, err := net.ParseMAC(s.MAC); err == nil && len(hw) == 6 {
		s.MAC = hw.String()
	} else {
		s.MAC = strings.ToLower(s.MAC)
	}
}

// Shift returns the icount shift (after Normalize it is always set).
func (s Spec) Shift() int {
	if s.IcountShift == nil {
		return DefaultIcountShift
	}
	return *s.IcountShift
}

// Validate reports every problem in the spec at once, each naming the field.
func (s Spec) Validate() error {
	var errs []error
	if !nameRE.MatchString(s.Name) {
		errs = append(errs, fmt.Errorf("name %q: must be 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit", s.Name))
	}
	if s.MemoryMB < 64 || s.MemoryMB > 16384 {
		errs = append(errs, fmt.Errorf("memory_mb %d: must be between 64 and 16384", s.MemoryMB))
	}
	for _, f := range []struct{ field, path string }{{"kernel", s.Kernel}, {"initrd", s.Initrd}} {
		if f.path == "" {
			errs = append(errs, fmt.Errorf("%s: required", f.field))
			continue
		}
		if !filepath.IsAbs(f.path) {
			errs = append(errs, fmt.Errorf("%s %q: must be an absolute path", f.field, f.path))
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.field, err))
		} else if !st.Mode().IsRegular() {
			errs = append(errs, fmt.Errorf("%s %q: not a regular file", f.field, f.path))
		}
	}
	for _, f := range []struct{ field, v string }{{"append", s.Append}, {"disk", s.Disk}} {
		// Every string ends up in QEMU's argv, where a NUL cannot go.
		if strings.ContainsRune(f.v, 0) {
			errs = append(errs, fmt.Errorf("%s %q: contains a NUL byte", f.field, f.v))
		}
	}
	if s.Disk != "" && !filepath.IsAbs(s.Disk) {
		errs = append(errs, fmt.Errorf("disk %q: must be an absolute path", s.Disk))
	}
	if hw, err := net.ParseMAC(s.MAC); err != nil || len(hw) != 6 {
		errs = append(errs, fmt.Errorf("mac %q: must be a 6-byte MAC like 52:54:00:12:34:56", s.MAC))
	} else if hw[0]&1 == 1 {
		errs = append(errs, fmt.Errorf("mac %q: is a multicast address", s.MAC))
	}
	if s.Bridge != "" && !validIfname(s.Bridge) {
		errs = append(errs, fmt.Errorf("bridge %q: must be a network interface name (1-15 characters, no '/', ':' or spaces)", s.Bridge))
	}
	if sh := s.Shift(); sh < 0 || sh > 10 {
		errs = append(errs, fmt.Errorf("icount_shift %d: must be 0..10 (a fixed shift; auto is not supported)", sh))
	}
	if s.LagBoundMS < 10 || s.LagBoundMS > 60000 {
		errs = append(errs, fmt.Errorf("lag_bound_ms %d: must be between 10 and 60000", s.LagBoundMS))
	}
	if s.MaxLogDisk < MinMaxLogDisk {
		errs = append(errs, fmt.Errorf("max_log_disk %d: must be at least %d (16 MiB)", s.MaxLogDisk, MinMaxLogDisk))
	}
	errs = append(errs, validBackupHosts(s.BackupHosts)...)
	if len(errs) > 0 {
		return &InvalidError{Problems: errs}
	}
	return nil
}

// validBackupHosts checks each backup host is a host:port an agent could listen
// on, named once.
func validBackupHosts(hosts []string) []error {
	var errs []error
	if len(hosts) > MaxBackupHosts {
		errs = append(errs, fmt.Errorf("backup_hosts: %d hosts, at most %d", len(hosts), MaxBackupHosts))
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		host, port, err := net.SplitHostPort(h)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("backup_hosts %q: must be an agent's peer address, host:port (e.g. 10.0.0.3:7800): %v", h, err))
			continue
		case host == "" || strings.ContainsAny(host, " \t\x00/"):
			errs = append(errs, fmt.Errorf("backup_hosts %q: needs a host name or address", h))
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			errs = append(errs, fmt.Errorf("backup_hosts %q: port must be 1-65535", h))
			continue
		}
		if seen[h] {
			errs = append(errs, fmt.Errorf("backup_hosts %q: listed twice", h))
		}
		seen[h] = true
	}
	return errs
}

// InvalidError lists every problem of a spec, on one line so a CLI shows one line.
type InvalidError struct{ Problems []error }

func (e *InvalidError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return "invalid vm spec: " + strings.Join(msgs, "; ")
}

// Unwrap exposes the individual problems to errors.Is/As.
func (e *InvalidError) Unwrap() []error { return e.Problems }

// Parse decodes a spec, rejecting unknown fields, normalizes and validates it.
func Parse(b []byte) (Spec, error) {
	var s Spec
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Spec{}, fmt.Errorf("invalid vm spec: %w", err)
	}
	s.Normalize()
	return s, s.Validate()
}

// Store keeps specs as <dir>/<name>.json.
type Store struct{ Dir string }

func (st Store) path(name string) (string, error) {
	if !nameRE.MatchString(name) {
		return "", fmt.Errorf("vm name %q: must be 1-32 of a-z, 0-9, '-', '_'", name)
	}
	return filepath.Join(st.Dir, name+".json"), nil
}

// Save validates and writes the spec atomically (write to a temp file, rename).
func (st Store) Save(s Spec) error {
	s.Normalize()
	if err := s.Validate(); err != nil {
		return err
	}
	p, err := st.path(s.Name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return fmt.Errorf("save vm spec: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("save vm spec: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save vm spec: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("save vm spec: %w", err)
	}
	return nil
}

// Load reads and validates a stored spec.
func (st Store) Load(name string) (Spec, error) {
	p, err := st.path(name)
	if err != nil {
		return Spec{}, err
	}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return Spec{}, fmt.Errorf("vm %q: %w (define it with 'ftvmd vm define')", name, ErrNotFound)
	}
	if err != nil {
		return Spec{}, fmt.Errorf("load vm spec: %w", err)
	}
	s, err := Parse(b)
	if err != nil {
		return Spec{}, fmt.Errorf("vm %q (%s): %w", name, p, err)
	}
	return s, nil
}
