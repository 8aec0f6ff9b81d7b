package rrcheck

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
)

// ManifestName is the manifest's file name in a VM's run directory.
const ManifestName = "record.json"

// ManifestFormat is the manifest's format version.
const ManifestFormat = 1

// ErrNoManifest: the directory holds no record.json.
var ErrNoManifest = errors.New("no " + ManifestName)

// Manifest is what a check needs to know about a recording besides its log and
// console: how QEMU was run, on which engine, with which boot files, and where
// the disks' pre-record copies are.
type Manifest struct {
	Format int `json:"format"`
	// Engine names the QEMU build that recorded (qemu.Engine.Name); Binary is its path.
	Engine string `json:"engine"`
	Binary string `json:"binary"`
	// Args are the exact arguments QEMU ran with. Config produces them: a check
	// rebuilds them from Config and refuses to replay when they differ, since the
	// replay must run the machine the recording ran.
	Args   []string    `json:"args"`
	Config qemu.Config `json:"config"`
	// Started is when the recording started (just before QEMU).
	Started time.Time `json:"started"`
	// Files are the boot files with their checksums at record start: a kernel or
	// initrd changed since makes the replay diverge for a reason the check names.
	Files []FileSum `json:"files,omitempty"`
	// Disks, one per Config.Disks, say where each image's pre-record copy is.
	Disks []DiskCopy `json:"disks,omitempty"`
}

// FileSum is a file's size and SHA-256.
type FileSum struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// DiskCopy names a disk image and its copy as it was when recording started.
type DiskCopy struct {
	Image string `json:"image"`
	// PreRecord is the copy's path, relative to the manifest's directory unless
	// absolute; empty when none was kept.
	PreRecord string `json:"pre_record,omitempty"`
}

// NewManifest describes a recording that is about to start with cfg on engine.
// preRecord holds, per disk of cfg, the path of its pre-record copy ("" for none).
func NewManifest(cfg qemu.Config, engine string, preRecord []string) (Manifest, error) {
	if cfg.Mode != qemu.ModeRecord {
		return Manifest{}, fmt.Errorf("rrcheck: manifest of a QEMU in mode %q, want record", cfg.Mode)
	}
	if len(preRecord) != 0 && len(preRecord) != len(cfg.Disks) {
		return Manifest{}, fmt.Errorf("rrcheck: %d pre-record copies for %d disks", len(preRecord), len(cfg.Disks))
	}
	m := Manifest{Format: ManifestFormat, Engine: engine, Binary: cfg.Binary, Args: cfg.Args(), Config: cfg, Started: time.Now().UTC()}
	if m.Binary == "" {
		m.Binary = qemu.DefaultBinary
	}
	for _, p := range []string{cfg.Kernel, cfg.Initrd} {
		if p == "" {
			continue
		}
		fs, err := SumFile(p)
		if err != nil {
			return Manifest{}, err
		}
		m.Files = append(m.Files, fs)
	}
	for i, d := range cfg.Disks {
		dc := DiskCopy{Image: d.Path}
		if len(preRecord) > 0 {
			dc.PreRecord = preRecord[i]
		}
		m.Disks = append(m.Disks, dc)
	}
	return m, nil
}

// SumFile returns a file's size and SHA-256.
func SumFile(path string) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, fmt.Errorf("rrcheck: checksum: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return FileSum{}, fmt.Errorf("rrcheck: checksum %s: %w", path, err)
	}
	return FileSum{Path: path, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// Write stores the manifest as dir/record.json (through a temporary file, so a
// reader never sees half of it).
func (m Manifest) Write(dir string) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("rrcheck: encode manifest: %w", err)
	}
	tmp := filepath.Join(dir, ManifestName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("rrcheck: write manifest: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, ManifestName)); err != nil {
		return fmt.Errorf("rrcheck: write manifest: %w", err)
	}
	return nil
}

// ReadManifest reads and checks a manifest file.
func ReadManifest(path string) (Manifest, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Manifest{}, fmt.Errorf("rrcheck: %s: %w", path, ErrNoManifest)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("rrcheck: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Manifest{}, fmt.Errorf("rrcheck: %s is not a recording manifest: %w", path, err)
	}
	if err := m.validate(); err != nil {
		return Manifest{}, fmt.Errorf("rrcheck: %s: %w", path, err)
	}
	return m, nil
}

func (m Manifest) validate() error {
	switch {
	case m.Format != ManifestFormat:
		return fmt.Errorf("manifest format %d, this ftvmd reads %d", m.Format, ManifestFormat)
	case m.Config.Mode != qemu.ModeRecord:
		return fmt.Errorf("manifest describes a QEMU in mode %q, not a recording", m.Config.Mode)
	case len(m.Args) == 0:
		return errors.New("manifest has no QEMU args")
	case len(m.Disks) != len(m.Config.Disks):
		return fmt.Errorf("manifest lists %d disk copies for %d disks", len(m.Disks), len(m.Config.Disks))
	}
	return nil
}

// ArgsMatch reports whether the manifest's config still produces the args the
// recording ran with; if not, it says where they first differ. A difference
// means this ftvmd builds QEMU's command line differently from the one that
// recorded, so a replay from the config would not run the recorded machine.
func (m Manifest) ArgsMatch() error {
	got := m.Config.Args()
	if slices.Equal(got, m.Args) {
		return nil
	}
	i := 0
	for i < len(got) && i < len(m.Args) && got[i] == m.Args[i] {
		i++
	}
	at := func(a []string) string {
		if i < len(a) {
			return fmt.Sprintf("%q", a[i])
		}
		return "(end)"
	}
	return fmt.Errorf("the recording ran QEMU with other args than this ftvmd builds from its config: arg %d is %s there, %s here (recorded: %s)",
		i, at(m.Args), at(got), strings.Join(m.Args, " "))
}

// CheckFiles compares the boot files with their checksums at record start.
func (m Manifest) CheckFiles() error {
	var errs []error
	for _, f := range m.Files {
		now, err := SumFile(f.Path)
		switch {
		case err != nil:
			errs = append(errs, err)
		case now.SHA256 != f.SHA256:
			errs = append(errs, fmt.Errorf("%s changed since the recording (sha256 %s then, %s now)", f.Path, short(f.SHA256), short(now.SHA256)))
		}
	}
	return errors.Join(errs...)
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Recording is a manifest with its files located.
type Recording struct {
	Manifest Manifest
	Log      string
	Console  string
	// DiskCopies holds, per disk, the pre-record copy to replay on ("" if none).
	DiskCopies []string
}

// FromDir locates a recording in a VM's run directory (the agent's
// <state-dir>/run/<vm>.primary): record.json there, and the log, console and
// pre-record copies beside it under the names the manifest gives. The
// directory may have been moved or copied since.
func FromDir(dir string) (Recording, error) {
	m, err := ReadManifest(filepath.Join(dir, ManifestName))
	if err != nil {
		return Recording{}, err
	}
	r := Recording{Manifest: m,
		Log:     filepath.Join(dir, filepath.Base(m.Config.RRFile)),
		Console: filepath.Join(dir, filepath.Base(m.Config.ConsoleLog)),
	}
	for _, d := range m.Disks {
		p := d.PreRecord
		if p != "" && !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		r.DiskCopies = append(r.DiskCopies, p)
	}
	return r, nil
}

// FromFiles is a recording given file by file: the manifest (--args-file) and
// the log and console wherever they are now. diskCopies, if given, replace the
// manifest's pre-record copies (relative ones resolve against the manifest's
// directory).
func FromFiles(manifest, log, console string, diskCopies []string) (Recording, error) {
	m, err := ReadManifest(manifest)
	if err != nil {
		return Recording{}, err
	}
	r := Recording{Manifest: m, Log: log, Console: console}
	if len(diskCopies) > 0 && len(diskCopies) != len(m.Disks) {
		return Recording{}, fmt.Errorf("rrcheck: %d disk copies given for the recording's %d disks", len(diskCopies), len(m.Disks))
	}
	for i, d := range m.Disks {
		p := d.PreRecord
		if len(diskCopies) > 0 {
			p = diskCopies[i]
		}
		if p != "" && !filepath.IsAbs(p) && len(diskCopies) == 0 {
			p = filepath.Join(filepath.Dir(manifest), p)
		}
		r.DiskCopies = append(r.DiskCopies, p)
	}
	return r, nil
}
