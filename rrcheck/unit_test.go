package rrcheck

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
)

func TestCompareConsoles(t *testing.T) {
	long := strings.Repeat("a", 100)
	tests := []struct {
		name           string
		rec, rep       string
		identical      bool
		first          int
		recEx, repEx   string
		recLen, repLen int
	}{
		{"identical", "boot\nready\n", "boot\nready\n", true, -1, "", "", 11, 11},
		{"both empty", "", "", true, -1, "", "", 0, 0},
		{"byte differs", "counter 1\n", "counter 2\n", false, 8, "counter 1\n", "counter 2\n", 10, 10},
		{"replay short", "boot\nready\n", "boot\n", false, 5, "boot\nready\n", "boot\n", 11, 5},
		{"replay long", "boot\n", "boot\nmore\n", false, 5, "boot\n", "boot\nmore\n", 5, 10},
		{"replay empty", "boot\n", "", false, 0, "boot\n", "", 5, 0},
		{"excerpt window", long + "X" + long, long + "Y" + long, false, 100,
			long[:ExcerptBefore] + "X" + long[:ExcerptAfter-1], long[:ExcerptBefore] + "Y" + long[:ExcerptAfter-1], 201, 201},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := CompareConsoles([]byte(tc.rec), []byte(tc.rep))
			if d.Identical != tc.identical || d.FirstDiff != tc.first || d.RecordBytes != tc.recLen || d.ReplayBytes != tc.repLen {
				t.Fatalf("got %+v", d)
			}
			if d.RecordExcerpt != tc.recEx || d.ReplayExcerpt != tc.repEx {
				t.Fatalf("excerpts %q / %q, want %q / %q", d.RecordExcerpt, d.ReplayExcerpt, tc.recEx, tc.repEx)
			}
		})
	}
}

func TestDecide(t *testing.T) {
	same := CompareConsoles([]byte("a\nb\n"), []byte("a\nb\n"))
	prefix := CompareConsoles([]byte("a\nb\n"), []byte("a\n"))
	differ := CompareConsoles([]byte("a\nb\n"), []byte("a\nc\n"))
	longer := CompareConsoles([]byte("a\n"), []byte("a\nb\n"))
	tests := []struct {
		name string
		o    Outcome
		want Verdict
		why  []string // substrings of the reasons, in order
	}{
		{"deterministic", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 100, Console: same}, Deterministic, nil},
		{"paused at the shutdown", Outcome{End: EndLogEnd, RecordedIcount: 100, ShutdownIcount: 90, ReplayedIcount: 90, Console: same}, Deterministic, nil},
		{"paused after the shutdown", Outcome{End: EndLogEnd, RecordedIcount: 100, ShutdownIcount: 90, ReplayedIcount: 95, Console: same}, Deterministic, nil},
		{"short of the shutdown", Outcome{End: EndLogEnd, RecordedIcount: 100, ShutdownIcount: 90, ReplayedIcount: 89, Console: same}, Diverged,
			[]string{"the replay reached the log's end at icount 89 of the log's 100 (89.0%)"}},
		{"icount short at end", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 90, Console: same}, Diverged,
			[]string{"reached the log's end at icount 90 of the log's 100"}},
		{"console differs", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 100, Console: differ}, Diverged,
			[]string{"consoles differ at byte 2"}},
		{"console longer", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 100, Console: longer}, Diverged,
			[]string{"runs 2 bytes past"}},
		{"console short at end", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 100, Console: prefix}, Diverged,
			[]string{"console stops at byte 2 of the recording's 4"}},
		{"emitted", Outcome{End: EndLogEnd, RecordedIcount: 100, ReplayedIcount: 100, Console: same, Emitted: 3}, Diverged,
			[]string{"emitted 3 network frames"}},
		{"stalled", Outcome{End: EndStalled, RecordedIcount: 100, ReplayedIcount: 40, Console: prefix, Stall: 20 * time.Second, Status: "running"}, Stalled,
			[]string{"no progress for 20s at icount 40 of the log's 100 (40.0%), run state running", "console stops at byte 2"}},
		{"stalled on the host's disk", Outcome{End: EndStalled, RecordedIcount: 100, ReplayedIcount: 40, Console: prefix, Stall: 20 * time.Second, Status: "running",
			HostWaits: []string{"thread 7 in fdatasync"}}, Stalled,
			[]string{"run state running; QEMU was blocked in this host's I/O then (thread 7 in fdatasync): the replay waited on the host's disk, not on the log", "console stops at byte 2"}},
		{"stalled after diverging", Outcome{End: EndStalled, RecordedIcount: 100, ReplayedIcount: 40, Console: differ, Stall: 20 * time.Second}, Diverged,
			[]string{"consoles differ", "no progress"}},
		{"exited with error", Outcome{End: EndExited, RecordedIcount: 100, ReplayedIcount: 40, Console: prefix, ExitErr: "exit status 1", QEMUError: "Missing character write event in the replay log"}, Diverged,
			[]string{"QEMU exited before the log's end, last seen at icount 40 of the log's 100 (40.0%): exit status 1: Missing character write", "console stops"}},
		{"exited cleanly at the end", Outcome{End: EndExited, RecordedIcount: 100, ReplayedIcount: 100, Console: same}, Deterministic, nil},
		{"unknown end", Outcome{End: "odd", RecordedIcount: 1, ReplayedIcount: 1, Console: same}, Diverged, []string{`unknown end "odd"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, why := Decide(tc.o)
			if v != tc.want {
				t.Fatalf("verdict %s, want %s (reasons %q)", v, tc.want, why)
			}
			if len(why) != len(tc.why) {
				t.Fatalf("reasons %q, want %d like %q", why, len(tc.why), tc.why)
			}
			for i, w := range tc.why {
				if !strings.Contains(why[i], w) {
					t.Errorf("reason %d %q lacks %q", i, why[i], w)
				}
			}
		})
	}
}

func recordConfig() qemu.Config {
	return qemu.Config{
		Name: "vm1", Binary: "/opt/q/bin/qemu-system-x86_64", MemoryMB: 256,
		Kernel: "/k", Initrd: "/i", Append: "console=ttyS0",
		Mode: qemu.ModeRecord, RRFile: "/run/vm1/log.rr", IcountShift: 4,
		NIC:        &qemu.NIC{MAC: "52:54:00:12:34:56", SocketPath: "/run/vm1/net-agent.sock", LocalPath: "/run/vm1/net-qemu.sock"},
		QMPSocket:  "/run/vm1/qmp.sock",
		ConsoleLog: "/run/vm1/console.log",
		FlushLib:   "/lib/libftflush.so", FlushInterval: time.Millisecond,
		Dir:       "/run/vm1",
		Disks:     []qemu.Disk{{Path: "/img/vm1.qcow2"}},
		ExtraArgs: []string{"-global", "x=y"},
	}
}

func TestReplayConfig(t *testing.T) {
	rec := recordConfig()
	recArgs := rec.Args()
	p := ReplayPaths{Log: "/copy/log.rr", Work: "/w", Overlays: []string{"/w/disk0.overlay.qcow2"}}
	c, err := ReplayConfig(rec, p)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec.Args(), recArgs) || rec.NIC.SocketPath != "/run/vm1/net-agent.sock" {
		t.Fatal("ReplayConfig changed the recording's config")
	}
	want := strings.Join([]string{
		"-name vm1 -M pc -accel tcg -cpu qemu64 -smp 1 -m 256 -rtc clock=vm -nographic -nodefaults -no-user-config",
		"-icount shift=4,rr=replay,rrfile=/copy/log.rr",
		"-serial file:/w/console.replay",
		"-kernel /k -initrd /i -append console=ttyS0",
		"-netdev dgram,id=n0,local.type=unix,local.path=/w/net-qemu.sock,remote.type=unix,remote.path=/w/net-sink.sock",
		"-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,tx=timer -object filter-replay,id=r0,netdev=n0",
		"-drive file=/w/disk0.overlay.qcow2,if=none,id=img0,format=qcow2,cache-clean-interval=0,cache.no-flush=on -drive driver=blkreplay,if=none,image=img0,id=blk0 -device virtio-blk-pci,drive=blk0",
		"-qmp unix:/w/qmp.sock,server=on,wait=off",
		"-global x=y -action shutdown=pause",
	}, " ")
	if got := strings.Join(c.Args(), " "); got != want {
		t.Fatalf("replay args\n got %s\nwant %s", got, want)
	}
	if len(c.Env()) != 0 || c.Binary != rec.Binary || c.Dir != "/w" {
		t.Fatalf("env %q binary %q dir %q", c.Env(), c.Binary, c.Dir)
	}

	// The same recording with a tap NIC, another binary and a paused start.
	rec.NIC = &qemu.NIC{MAC: rec.NIC.MAC, TapName: "ft-vm1"}
	rec.StartPaused = true
	p.Tap, p.Binary = "ftrc1", "/usr/bin/qemu-system-x86_64"
	c, err = ReplayConfig(rec, p)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(c.Args(), " ")
	if !strings.Contains(got, "-netdev tap,id=n0,ifname=ftrc1,") || strings.Contains(got, " -S") || c.Binary != p.Binary {
		t.Fatalf("tap replay: binary %s args %s", c.Binary, got)
	}

	for _, bad := range []struct {
		name string
		mod  func(*qemu.Config, *ReplayPaths)
		want string
	}{
		{"replay config", func(c *qemu.Config, _ *ReplayPaths) { c.Mode = qemu.ModeReplay }, "not a recording"},
		{"snapshot", func(c *qemu.Config, _ *ReplayPaths) { c.RRSnapshot = "init" }, "snapshot"},
		{"overlays", func(_ *qemu.Config, p *ReplayPaths) { p.Overlays = nil }, "0 replay disks for the recording's 1"},
		{"no tap", func(_ *qemu.Config, p *ReplayPaths) { p.Tap = "" }, "needs a tap"},
		{"no work", func(_ *qemu.Config, p *ReplayPaths) { p.Work = "" }, "required"},
	} {
		r, pp := rec, p
		bad.mod(&r, &pp)
		if _, err := ReplayConfig(r, pp); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err %v, want %q", bad.name, err, bad.want)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
	}{
		{"1", []int{1}}, {"0,2", []int{0, 2}}, {"2-3", []int{2, 3}}, {" 0 , 4-5 ", []int{0, 4, 5}},
	} {
		set, err := ParseCPUList(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		var got []int
		for c := range 8 {
			if set.IsSet(c) {
				got = append(got, c)
			}
		}
		if !slices.Equal(got, tc.want) || set.Count() != len(tc.want) {
			t.Errorf("%q: got %v (count %d), want %v", tc.in, got, set.Count(), tc.want)
		}
	}
	for _, bad := range []string{"", "x", "3-1", "-1", "1,", "5000"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestManifest(t *testing.T) {
	dir := t.TempDir()
	cfg := recordConfig()
	cfg.Kernel = writeFile(t, filepath.Join(dir, "vmlinuz"), "kernel")
	cfg.Initrd = writeFile(t, filepath.Join(dir, "initrd"), "initrd")
	cfg.RRFile, cfg.ConsoleLog = "/elsewhere/log.rr", "/elsewhere/console.log"
	m, err := NewManifest(cfg, "ftvmd-qemu 7.2", []string{"disk0.prerecord.qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Write(dir); err != nil {
		t.Fatal(err)
	}
	r, err := FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if r.Log != filepath.Join(dir, "log.rr") || r.Console != filepath.Join(dir, "console.log") ||
		!slices.Equal(r.DiskCopies, []string{filepath.Join(dir, "disk0.prerecord.qcow2")}) {
		t.Fatalf("located %+v", r)
	}
	if r.Manifest.Engine != "ftvmd-qemu 7.2" || !slices.Equal(r.Manifest.Args, cfg.Args()) || len(r.Manifest.Files) != 2 {
		t.Fatalf("manifest %+v", r.Manifest)
	}
	if err := r.Manifest.ArgsMatch(); err != nil {
		t.Fatal(err)
	}
	if err := r.Manifest.CheckFiles(); err != nil {
		t.Fatal(err)
	}

	// The file form: explicit copies replace the manifest's.
	r2, err := FromFiles(filepath.Join(dir, ManifestName), "/x/log.rr", "/x/con", []string{"/x/d.qcow2"})
	if err != nil || r2.Log != "/x/log.rr" || !slices.Equal(r2.DiskCopies, []string{"/x/d.qcow2"}) {
		t.Fatalf("FromFiles: %+v %v", r2, err)
	}
	if _, err := FromFiles(filepath.Join(dir, ManifestName), "/x/log.rr", "/x/con", []string{"a", "b"}); err == nil {
		t.Fatal("two copies for one disk accepted")
	}

	// Args this ftvmd would build differently, a changed kernel.
	m2 := r.Manifest
	m2.Args = slices.Clone(m2.Args)
	m2.Args[len(m2.Args)-1] = "z=z"
	if err := m2.ArgsMatch(); err == nil || !strings.Contains(err.Error(), `"z=z" there, "x=y" here`) {
		t.Fatalf("args mismatch: %v", err)
	}
	writeFile(t, cfg.Kernel, "other kernel")
	if err := r.Manifest.CheckFiles(); err == nil || !strings.Contains(err.Error(), "vmlinuz changed since the recording") {
		t.Fatalf("changed kernel: %v", err)
	}

	// Bad manifests.
	if _, err := FromDir(t.TempDir()); !errors.Is(err, ErrNoManifest) {
		t.Fatalf("empty dir: %v", err)
	}
	bad := filepath.Join(t.TempDir(), ManifestName)
	writeFile(t, bad, "{not json")
	if _, err := ReadManifest(bad); err == nil || !strings.Contains(err.Error(), "not a recording manifest") {
		t.Fatalf("garbage: %v", err)
	}
	writeFile(t, bad, `{"format":1,"args":["-x"],"config":{"Mode":"replay"}}`)
	if _, err := ReadManifest(bad); err == nil || !strings.Contains(err.Error(), "not a recording") {
		t.Fatalf("replay manifest: %v", err)
	}
	if _, err := NewManifest(cfg, "e", []string{"a", "b"}); err == nil {
		t.Fatal("two copies for one disk accepted")
	}
}

// rrLog builds an rr log: a header (version or zero) and events.
func rrLog(version uint32, events ...[]byte) []byte {
	b := make([]byte, replay.HeaderSize)
	binary.BigEndian.PutUint32(b, version)
	for _, e := range events {
		b = append(b, e...)
	}
	return b
}

func instr(n uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{byte(replay.KindInstruction)}, n)
}

func TestCheckLog(t *testing.T) {
	dir := t.TempDir()
	end := []byte{byte(replay.KindShutdownHostSignal), byte(replay.KindEnd)}
	good := rrLog(replay.Version, instr(1000), instr(234), end)
	path := filepath.Join(dir, "log.rr")
	writeFile(t, path, string(good))
	s, err := checkLog(path)
	if err != nil || s.Icount != 1234 {
		t.Fatalf("good log: icount %d, %v", s.Icount, err)
	}
	for _, tc := range []struct {
		name string
		log  []byte
		want string
	}{
		{"recording", rrLog(0, instr(5)), "still recording it or was killed"},
		{"truncated", good[:len(good)-len(end)-2], "ends inside an event at offset 17"},
		{"no end", rrLog(replay.Version, instr(5)), "no END event"},
		{"corrupt", rrLog(replay.Version, instr(5), []byte{0xfe}), "corrupt log at offset 17"},
		{"short header", []byte{0, 0xe0}, "header"},
	} {
		writeFile(t, path, string(tc.log))
		if _, err := checkLog(path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := checkLog(filepath.Join(dir, "none")); err == nil {
		t.Error("missing log accepted")
	}
	// A whole log whose prefix was freed (bounded logs) is refused, saying why: its
	// zeros would parse as events of no instructions.
	var events [][]byte
	for i := 0; i < 3000; i++ {
		events = append(events, instr(1))
	}
	writeFile(t, path, string(rrLog(replay.Version, append(events, end)...)))
	fr, err := logspace.NewFreer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	if _, err := fr.FreeTo(8192); err != nil {
		t.Skipf("cannot punch holes here: %v", err)
	}
	if _, err := checkLog(path); err == nil || !strings.Contains(err.Error(), "lost its first 8192 bytes to bounded logs") {
		t.Errorf("log with a freed prefix: %v", err)
	}
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 32}
	for _, s := range []string{"first line\n", "\n", "qemu: error one\n", "qemu: error two\n"} {
		_, _ = tb.Write([]byte(s))
	}
	if got := tb.lastLines(2); got != "qemu: error one | qemu: error two" {
		t.Fatalf("last lines %q", got)
	}
	if len(tb.b) > 32 {
		t.Fatalf("kept %d bytes", len(tb.b))
	}
}

func TestHostWaits(t *testing.T) {
	task := func(state, syscall string) map[string]string {
		return map[string]string{"stat": "7 (qemu-system-x86) " + state + " 1 2 3", "syscall": syscall}
	}
	proc := fstest.MapFS{}
	for tid, f := range map[string]map[string]string{
		"100": task("S", "7 0x5 0x0"), // the main loop in poll: not the host's disk
		"101": task("D", "75 0xd 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
		"102": task("R", "running"),
		"103": task("D", "17 0xd"),
		"104": task("D", "999 0x1"),
		"105": task("D", "running"),
	} {
		for name, body := range f {
			proc["100/task/"+tid+"/"+name] = &fstest.MapFile{Data: []byte(body)}
		}
	}
	// A command name with spaces and parentheses must not shift the state field.
	proc["100/task/106/stat"] = &fstest.MapFile{Data: []byte("106 (a) D (b) S 1 2")}
	proc["100/task/106/syscall"] = &fstest.MapFile{Data: []byte("74 0x3")}
	// A thread that exited between the listing and the read is skipped.
	proc["100/task/107/syscall"] = &fstest.MapFile{Data: []byte("75 0x3")}

	got := HostWaits(proc, 100)
	want := []string{"thread 101 in fdatasync", "thread 103 in pread64", "thread 104 in system call 999", "thread 105 in an unknown system call"}
	if !slices.Equal(got, want) {
		t.Fatalf("HostWaits\n got %q\nwant %q", got, want)
	}
	if w := HostWaits(proc, 200); w != nil {
		t.Fatalf("a process that is gone: %q", w)
	}
}
