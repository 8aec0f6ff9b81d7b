package agent

import (
	"testing"

	"github.com/ftvmd/ftvmd/vmspec"
)

// validIfName is Linux's dev_valid_name (net/core/dev.c): 1 to 15 bytes, not "."
// or "..", no '/', ':' or whitespace.
func validIfName(n string) bool {
	if n == "" || len(n) > 15 || n == "." || n == ".." {
		return false
	}
	for i := 0; i < len(n); i++ {
		switch n[i] {
		case '/', ':', ' ', '\t', '\n', '\v', '\f', '\r':
			return false
		}
	}
	return true
}

// FuzzNames: every valid VM name gives the primary's and the backup's taps names
// Linux accepts, and two VMs never share a tap on one host: a VM's primary tap and
// the tap its backup replays on differ, and distinct VMs get distinct taps (a
// backup deletes a tap of its name left behind, and a primary cannot create one
// that exists).
func FuzzNames(f *testing.F) {
	f.Add("vm1", "vm2")
	f.Add("web", "web")
	f.Add("a-very-long-vm-name", "a-very-long-vm-other")
	f.Add("0123456789ab", "0123456789abc")
	f.Fuzz(func(t *testing.T, a, b string) {
		if !vmspec.ValidName(a) || !vmspec.ValidName(b) {
			return
		}
		for _, n := range []string{tapName(a), backupTapName(a)} {
			if !validIfName(n) {
				t.Fatalf("VM %q: tap name %q is not a valid interface name", a, n)
			}
		}
		if tapName(a) == backupTapName(b) {
			t.Fatalf("primary tap of %q and backup tap of %q are both %q", a, b, tapName(a))
		}
		if a == b {
			return
		}
		if tapName(a) == tapName(b) {
			t.Fatalf("VMs %q and %q share the primary tap %q", a, b, tapName(a))
		}
		if backupTapName(a) == backupTapName(b) {
			t.Fatalf("VMs %q and %q share the backup tap %q", a, b, backupTapName(a))
		}
	})
}
