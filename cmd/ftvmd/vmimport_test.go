package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/vmspec"
)

// A spec written by `vm import -o` is read back whole by `vm define --spec`, and
// --spec refuses other spec flags beside it.
func TestSpecFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := vmspec.Spec{Name: "web1", MemoryMB: 384, Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd"),
		Append: "console=ttyS0", MAC: "52:54:00:12:34:56", Bridge: "br-lan"}
	s.Normalize()
	p := filepath.Join(dir, "web1.json")
	if err := writeSpec(p, s, nil); err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	if err := writeSpec("-", s, &stdout); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, stdout.Bytes()) {
		t.Fatalf("file and stdout differ:\n%s\n%s", b, stdout.Bytes())
	}

	def := newRoot()
	def.SetArgs([]string{"vm", "define", "web1", "--spec", p, "--memory", "512", "--socket", filepath.Join(dir, "none.sock")})
	err := def.Execute()
	if err == nil || !strings.Contains(err.Error(), "drop --memory") {
		t.Fatalf("--spec with --memory: %v", err)
	}
	cmd, _, err := newRoot().Find([]string{"vm", "define"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := readSpecFile(cmd, p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Fatalf("read back %+v, wrote %+v", got, s)
	}
	if err := os.WriteFile(p, []byte(`{"name":"web1","kernal":"/x"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readSpecFile(cmd, p); err == nil || !strings.Contains(err.Error(), "kernal") {
		t.Fatalf("unknown field: %v", err)
	}
}
