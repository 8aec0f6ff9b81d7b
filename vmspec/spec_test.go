package vmspec

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func files(t *testing.T) (string, string) {
	d := t.TempDir()
	k, i := filepath.Join(d, "vmlinuz"), filepath.Join(d, "initrd")
	for _, p := range []string{k, i} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return k, i
}

func TestValidate(t *testing.T) {
	k, i := files(t)
	good := func() Spec {
		s := Spec{Name: "web1", Kernel: k, Initrd: i, MAC: "52:54:00:12:34:56"}
		s.Normalize()
		return s
	}
	shift := func(v int) *int { return &v }
	cases := []struct {
		name string
		mod  func(*Spec)
		want string // substring of the error; "" = valid
	}{
		{"ok", func(*Spec) {}, ""},
		{"bad name", func(s *Spec) { s.Name = "../etc" }, "name"},
		{"memory", func(s *Spec) { s.MemoryMB = 10 }, "memory_mb"},
		{"missing kernel", func(s *Spec) { s.Kernel = "/nonexistent/vmlinuz" }, "kernel"},
		{"relative initrd", func(s *Spec) { s.Initrd = "initrd" }, "absolute"},
		{"kernel is dir", func(s *Spec) { s.Kernel = filepath.Dir(k) }, "not a regular file"},
		{"bad mac", func(s *Spec) { s.MAC = "zz" }, "mac"},
		{"multicast mac", func(s *Spec) { s.MAC = "01:00:5e:00:00:01" }, "multicast"},
		{"shift", func(s *Spec) { s.IcountShift = shift(11) }, "icount_shift"},
		{"lag", func(s *Spec) { s.LagBoundMS = 1 }, "lag_bound_ms"},
		{"bridge", func(s *Spec) { s.Bridge = "br-lan0" }, ""},
		{"bridge too long", func(s *Spec) { s.Bridge = "a-sixteen-chars0" }, "bridge"},
		{"bridge slash", func(s *Spec) { s.Bridge = "br/0" }, "bridge"},
		{"bridge space", func(s *Spec) { s.Bridge = "br 0" }, "bridge"},
		{"bridge dotdot", func(s *Spec) { s.Bridge = ".." }, "bridge"},
		{"log disk", func(s *Spec) { s.MaxLogDisk = 1 << 20 }, "max_log_disk"},
		{"log disk at the minimum", func(s *Spec) { s.MaxLogDisk = MinMaxLogDisk }, ""},
		{"backup hosts", func(s *Spec) { s.BackupHosts = []string{"10.0.0.3:7800", "[fd00::3]:7800", "spare-1.lan:7800"} }, ""},
		{"backup host without port", func(s *Spec) { s.BackupHosts = []string{"10.0.0.3"} }, "backup_hosts \"10.0.0.3\""},
		{"backup host without host", func(s *Spec) { s.BackupHosts = []string{":7800"} }, "needs a host"},
		{"backup host bad port", func(s *Spec) { s.BackupHosts = []string{"10.0.0.3:0"} }, "port must be"},
		{"backup host named twice", func(s *Spec) { s.BackupHosts = []string{"d:7800", "d:7800"} }, "listed twice"},
		{"too many backup hosts", func(s *Spec) {
			for i := range MaxBackupHosts + 1 {
				s.BackupHosts = append(s.BackupHosts, fmt.Sprintf("h%d:7800", i))
			}
		}, "at most"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good()
			c.mod(&s)
			err := s.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("want error containing %q, got %v", c.want, err)
			}
		})
	}
}

func TestParseRejectsUnknownFields(t *testing.T) {
	if _, err := Parse([]byte(`{"name":"a","memroy_mb":5}`)); err == nil || !strings.Contains(err.Error(), "memroy_mb") {
		t.Fatalf("want unknown-field error, got %v", err)
	}
	if _, err := Parse([]byte(`{`)); err == nil {
		t.Fatal("want error for truncated JSON")
	}
}

func TestStoreRoundTrip(t *testing.T) {
	k, i := files(t)
	st := Store{Dir: t.TempDir()}
	s := Spec{Name: "web1", Kernel: k, Initrd: i, MAC: "52:54:00:AB:CD:EF"}
	if err := st.Save(s); err != nil {
		t.Fatal(err)
	}
	got, err := st.Load("web1")
	if err != nil {
		t.Fatal(err)
	}
	if got.MAC != "52:54:00:ab:cd:ef" || got.MemoryMB != DefaultMemoryMB || got.Shift() != DefaultIcountShift || got.LagBoundMS != DefaultLagBoundMS ||
		got.MaxLogDisk != DefaultMaxLogDisk {
		t.Fatalf("defaults not applied: %+v", got)
	}
	if _, err := st.Load("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound, got %v", err)
	}
	if err := st.Save(Spec{Name: "bad"}); err == nil {
		t.Fatal("saving an invalid spec must fail")
	}
	if _, err := os.Stat(filepath.Join(st.Dir, "bad.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("an invalid spec must not be written")
	}
}
