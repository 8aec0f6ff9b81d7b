package vmspec

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/disk"
)

// qemuAcceptsMAC is QEMU 7.2's parser of a NIC's mac= property
// (hw/core/qdev-properties-system.c set_mac): six pairs of hex digits, separated by
// ':' or '-'.
func qemuAcceptsMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i := 0; i < 17; i++ {
		c := s[i]
		if i%3 == 2 {
			if c != ':' && c != '-' {
				return false
			}
			continue
		}
		if !strings.ContainsRune("0123456789abcdefABCDEF", rune(c)) {
			return false
		}
	}
	return true
}

// FuzzParse: a spec from a file, the CLI or a peer's Hello either parses into one
// that is valid, survives a JSON round trip unchanged, is stored and loaded back
// unchanged, and names things every consumer accepts (a VM name that is a plain file
// name and an epoch-store name, a MAC that QEMU takes), or is refused with an
// InvalidError or a JSON error. @K@ and @I@ in the input stand for an existing
// kernel and initrd, @D@ for a directory.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"name":"web1","kernel":"@K@","initrd":"@I@","mac":"52:54:00:12:34:56"}`))
	f.Add([]byte(`{"name":"db_2","memory_mb":512,"kernel":"@K@","initrd":"@I@","append":"console=ttyS0","disk":"/var/lib/x.qcow2","mac":"52:54:00:AB:cd:EF","icount_shift":0,"lag_bound_ms":10}`))
	f.Add([]byte(`{"name":"a","kernel":"@K@","initrd":"@I@","mac":"52-54-00-12-34-56","icount_shift":10,"lag_bound_ms":60000,"memory_mb":16384}`))
	f.Add([]byte(`{"name":"../etc","kernel":"@D@","initrd":"rel","mac":"01:00:5e:00:00:01","icount_shift":-1}`))
	f.Add([]byte(`{"name":"x","kernel":"@K@","initrd":"@I@","mac":"52:54:00:12:34:56","extra":1}`))
	f.Add([]byte(`{"name":"x","kernel":"@K@","initrd":"@I@","mac":"52:54:00:12:34:56"} trailing`))
	f.Add([]byte(`[]`))
	dir := f.TempDir()
	k, i := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	for _, p := range []string{k, i} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	quote := func(s string) []byte { b, _ := json.Marshal(s); return b[1 : len(b)-1] }
	f.Fuzz(func(t *testing.T, b []byte) {
		b = bytes.ReplaceAll(b, []byte("@K@"), quote(k))
		b = bytes.ReplaceAll(b, []byte("@I@"), quote(i))
		b = bytes.ReplaceAll(b, []byte("@D@"), quote(dir))
		s, err := Parse(b)
		if err != nil {
			var inv *InvalidError
			if errors.As(err, &inv) && len(inv.Problems) == 0 {
				t.Fatalf("InvalidError without a problem: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Parse accepted a spec Validate refuses: %v", err)
		}
		if err := disk.ValidateVM(s.Name); err != nil {
			t.Fatalf("valid VM name %q is not an epoch-store name: %v", s.Name, err)
		}
		if filepath.Base(s.Name) != s.Name || s.Name == "." || s.Name == ".." {
			t.Fatalf("valid VM name %q is not a plain file name", s.Name)
		}
		for _, v := range []string{s.Kernel, s.Initrd, s.Append, s.Disk} {
			if strings.ContainsRune(v, 0) {
				t.Fatalf("valid spec has a NUL in %q: no process can be given it as an argument", v)
			}
		}
		if !qemuAcceptsMAC(s.MAC) {
			t.Fatalf("valid spec's MAC %q is one QEMU refuses", s.MAC)
		}
		again := s
		again.Normalize()
		if !reflect.DeepEqual(again, s) {
			t.Fatalf("Normalize is not idempotent: %+v, then %+v", s, again)
		}
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(enc)
		if err != nil || !reflect.DeepEqual(back, s) {
			t.Fatalf("round trip of %s: %+v, %v; want %+v", enc, back, err, s)
		}
		st := Store{Dir: t.TempDir()}
		if err := st.Save(s); err != nil {
			t.Fatalf("Save: %v", err)
		}
		loaded, err := st.Load(s.Name)
		if err != nil || !reflect.DeepEqual(loaded, s) {
			t.Fatalf("Load after Save: %+v, %v; want %+v", loaded, err, s)
		}
	})
}
