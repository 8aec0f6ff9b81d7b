package disk

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// needQemuImg returns qemu-img's path, or skips (fails with FTVMD_REQUIRE_QEMU=1).
func needQemuImg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
			t.Fatalf("qemu-img not found and FTVMD_REQUIRE_QEMU=1: %v", err)
		}
		t.Skipf("qemu-img not found: %v", err)
	}
	return p
}

func qemuImg(t *testing.T, bin string, args ...string) {
	t.Helper()
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Images made by qemu-img that read data from other files are refused by
// CheckStandalone and Inspect (so by define and protect), with the qemu-img convert
// that makes a standalone image; the converted image is accepted.
func TestStandaloneImages(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", p("base.qcow2"), "4M")
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", p("base-v2.qcow2"), "4M")
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-b", p("base.qcow2"), "-F", "qcow2", p("overlay.qcow2"))
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", p("base-v2.qcow2"), "-F", "qcow2", p("overlay-v2.qcow2"))
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-b", p("overlay.qcow2"), "-F", "qcow2", p("chain.qcow2"))
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-o", "data_file="+p("ext.raw"), p("external.qcow2"), "4M")
	qemuImg(t, bin, "create", "-q", "-f", "qcow2", "-o", "data_file="+p("ext2.raw")+",data_file_raw=on", p("external-raw.qcow2"), "4M")
	qemuImg(t, bin, "convert", "-O", "qcow2", p("chain.qcow2"), p("flat.qcow2"))
	qemuImg(t, bin, "convert", "-O", "qcow2", p("external.qcow2"), p("flat-ext.qcow2"))

	for _, tc := range []struct {
		image, names string // names: the file the error must name ("" = accepted)
	}{
		{"base.qcow2", ""},
		{"base-v2.qcow2", ""},
		{"flat.qcow2", ""},
		{"flat-ext.qcow2", ""},
		{"overlay.qcow2", "base.qcow2"},
		{"overlay-v2.qcow2", "base-v2.qcow2"},
		{"chain.qcow2", "overlay.qcow2"},
		{"external.qcow2", "ext.raw"},
		{"external-raw.qcow2", "ext2.raw"},
	} {
		t.Run(tc.image, func(t *testing.T) {
			err := CheckStandalone(p(tc.image))
			_, ierr := Inspect(p(tc.image))
			if tc.names == "" {
				if err != nil || ierr != nil {
					t.Fatalf("a standalone image refused: %v / %v", err, ierr)
				}
				return
			}
			for _, e := range []error{err, ierr} {
				if !errors.Is(e, ErrNotStandalone) || !strings.Contains(e.Error(), p(tc.names)) ||
					!strings.Contains(e.Error(), "qemu-img convert -O qcow2 "+p(tc.image)) {
					t.Fatalf("got %v, want %v naming %s and the qemu-img convert to run", e, ErrNotStandalone, tc.names)
				}
			}
			t.Log(err)
		})
	}
}

// Header fields that point outside the file are a corrupt image, not a panic.
func TestStandaloneCorruptHeader(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, edit func(h []byte)) string {
		h := append([]byte(nil), syntheticHeader...)
		edit(h)
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, append(h, make([]byte, 512)...), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for name, edit := range map[string]func(h []byte){
		"backing-beyond-end": func(h []byte) {
			binary.BigEndian.PutUint64(h[qcow2OffBackingOffset:], 1<<40)
			binary.BigEndian.PutUint32(h[qcow2OffBackingSize:], 10)
		},
		"backing-name-huge": func(h []byte) {
			binary.BigEndian.PutUint64(h[qcow2OffBackingOffset:], 200)
			binary.BigEndian.PutUint32(h[qcow2OffBackingSize:], 1<<31)
		},
		"backing-offset-max": func(h []byte) {
			binary.BigEndian.PutUint64(h[qcow2OffBackingOffset:], ^uint64(0))
			binary.BigEndian.PutUint32(h[qcow2OffBackingSize:], 4)
		},
	} {
		if err := CheckStandalone(write(name, edit)); !errors.Is(err, ErrImageCorrupt) {
			t.Errorf("%s: %v, want %v", name, err, ErrImageCorrupt)
		}
	}
	// An external data file whose name extension is missing is still refused.
	path := write("data-file-unnamed", func(h []byte) { h[qcow2OffIncompatible+7] |= qcow2IncompatDataFile })
	if err := CheckStandalone(path); !errors.Is(err, ErrNotStandalone) {
		t.Errorf("unnamed external data file: %v, want %v", err, ErrNotStandalone)
	}
	// A v3 header cut short.
	short := filepath.Join(dir, "short-v3")
	if err := os.WriteFile(short, syntheticHeader[:80], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckStandalone(short); !errors.Is(err, ErrImageCorrupt) {
		t.Errorf("short v3 header: %v, want %v", err, ErrImageCorrupt)
	}
}
