package qemu

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestAppenders(t *testing.T) {
	tests := []struct {
		name string
		fn   func(Config) []string
		cfg  Config
		want string
	}{
		{"name", appendName, Config{Name: "vm,1"}, "-name vm,,1"},
		{"name empty", appendName, Config{}, ""},
		{"name with =", appendName, Config{Name: "debug-threads=on"}, "-name guest=debug-threads=on"},
		{"machine", appendMachine, Config{MemoryMB: 256},
			"-M pc -accel tcg -cpu qemu64 -smp 1 -m 256 -rtc clock=vm -nographic -nodefaults -no-user-config"},
		{"icount record", appendIcount, Config{Mode: ModeRecord, IcountShift: 4, RRFile: "/l/rr.bin"},
			"-icount shift=4,rr=record,rrfile=/l/rr.bin"},
		{"icount replay snapshot", appendIcount, Config{Mode: ModeReplay, IcountShift: 2, RRFile: "/l/a,b", RRSnapshot: "init"},
			"-icount shift=2,rr=replay,rrfile=/l/a,,b,rrsnapshot=init"},
		{"icount none", appendIcount, Config{Mode: ModeNone, IcountShift: 0}, "-icount shift=0"},
		{"console", appendConsole, Config{ConsoleLog: "/l/console.log"}, "-serial file:/l/console.log"},
		{"kernel", appendKernel, Config{Kernel: "/k", Initrd: "/i", Append: "console=ttyS0 quiet"},
			"-kernel /k -initrd /i -append console=ttyS0 quiet"},
		{"nic dgram", appendNIC, Config{NIC: &NIC{MAC: "52:54:00:00:00:01", SocketPath: "/s/agent", LocalPath: "/s/qemu"}},
			"-netdev dgram,id=n0,local.type=unix,local.path=/s/qemu,remote.type=unix,remote.path=/s/agent " +
				"-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,tx=timer -object filter-replay,id=r0,netdev=n0"},
		{"nic tap", appendNIC, Config{NIC: &NIC{MAC: "52:54:00:00:00:01", TapName: "ft0"}},
			"-netdev tap,id=n0,ifname=ft0,script=no,downscript=no " +
				"-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,tx=timer -object filter-replay,id=r0,netdev=n0"},
		{"nic tx dump", appendNIC, Config{NIC: &NIC{MAC: "52:54:00:00:00:01", TapName: "ft0", TxDump: "/r/a,b/nic-tx.pcap"}},
			"-netdev tap,id=n0,ifname=ft0,script=no,downscript=no " +
				"-device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,tx=timer -object filter-replay,id=r0,netdev=n0 " +
				"-object filter-dump,id=d0,netdev=n0,queue=rx,maxlen=69632,file=/r/a,,b/nic-tx.pcap"},
		{"disks", appendDisks, Config{Disks: []Disk{{Path: "/d/a.qcow2"}, {Path: "/d/b.qcow2"}}},
			"-drive file=/d/a.qcow2,if=none,id=img0,format=qcow2,cache-clean-interval=0 -drive driver=blkreplay,if=none,image=img0,id=blk0 -device virtio-blk-pci,drive=blk0 " +
				"-drive file=/d/b.qcow2,if=none,id=img1,format=qcow2,cache-clean-interval=0 -drive driver=blkreplay,if=none,image=img1,id=blk1 -device virtio-blk-pci,drive=blk1"},
		{"disk without host flushes", appendDisks, Config{Disks: []Disk{{Path: "/w/o.qcow2", NoFlush: true}}},
			"-drive file=/w/o.qcow2,if=none,id=img0,format=qcow2,cache-clean-interval=0,cache.no-flush=on -drive driver=blkreplay,if=none,image=img0,id=blk0 -device virtio-blk-pci,drive=blk0"},
		{"snapshot drive", appendSnapshotDrive, Config{SnapshotDrive: "/d/snap.qcow2"},
			"-drive file=/d/snap.qcow2,if=none,id=snap0,format=qcow2,cache-clean-interval=0"},
		{"qmp", appendQMP, Config{QMPSocket: "/r/qmp.sock"}, "-qmp unix:/r/qmp.sock,server=on,wait=off"},
		{"qmp with =", appendQMP, Config{QMPSocket: "/r/a=b,c/qmp.sock"}, "-qmp unix:path=/r/a=b,,c/qmp.sock,server=on,wait=off"},
		{"disk named like a protocol", appendSnapshotDrive, Config{SnapshotDrive: "nbd:h:1"}, "-drive file=./nbd:h:1,if=none,id=snap0,format=qcow2,cache-clean-interval=0"},
		{"loadvm", appendLoadVM, Config{LoadVM: "live"}, "-loadvm live"},
		{"paused", appendPaused, Config{StartPaused: true}, "-S"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(tc.fn(tc.cfg), " "); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestArgsOrder(t *testing.T) {
	c := Config{
		Name: "pri", MemoryMB: 128, Mode: ModeRecord, IcountShift: 4, RRFile: "/l/rr.bin",
		ConsoleLog: "/l/c.log", QMPSocket: "/l/q.sock", SnapshotDrive: "/l/s.qcow2", Disks: []Disk{{Path: "/l/d.qcow2"}},
		StartPaused: true, ExtraArgs: []string{"-d", "guest_errors"},
	}
	// The snapshot drive before the disk: savevm keeps the VM state in the first
	// drive that can hold one, and it must not be the guest's disk.
	want := "-name pri -M pc -accel tcg -cpu qemu64 -smp 1 -m 128 -rtc clock=vm -nographic -nodefaults -no-user-config " +
		"-icount shift=4,rr=record,rrfile=/l/rr.bin -serial file:/l/c.log " +
		"-drive file=/l/s.qcow2,if=none,id=snap0,format=qcow2,cache-clean-interval=0 " +
		"-drive file=/l/d.qcow2,if=none,id=img0,format=qcow2,cache-clean-interval=0 -drive driver=blkreplay,if=none,image=img0,id=blk0 -device virtio-blk-pci,drive=blk0 " +
		"-qmp unix:/l/q.sock,server=on,wait=off -S -d guest_errors"
	if got := strings.Join(c.Args(), " "); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestEnv(t *testing.T) {
	c := Config{Mode: ModeRecord, RRFile: "/l/rr.bin", FlushLib: "/b/libftflush.so", FlushInterval: 2 * time.Millisecond}
	want := []string{"LD_PRELOAD=/b/libftflush.so", "FTVMD_RRFILE=/l/rr.bin", "FTVMD_FLUSH_US=2000"}
	if got := c.Env(); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q want %q", got, want)
	}
	c.Mode = ModeReplay
	if got := c.Env(); got != nil {
		t.Errorf("replay env = %q, want none", got)
	}
	c.Mode, c.LogStream = ModeRecord, true
	if got := c.Env(); got != nil {
		t.Errorf("record env of a QEMU that streams its log = %q, want none", got)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel, initrd, lib, rr := file("vmlinuz"), file("initrd.img"), file("libftflush.so"), file("rr.bin")
	good := func() Config {
		return Config{
			Binary: "sh", MemoryMB: 128, Kernel: kernel, Initrd: initrd,
			Mode: ModeRecord, RRFile: filepath.Join(dir, "new.bin"), IcountShift: 4, FlushLib: lib,
			QMPSocket: filepath.Join(dir, "q.sock"),
			NIC:       &NIC{MAC: "52:54:00:12:34:56", SocketPath: "/a", LocalPath: "/b"},
		}
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"replay valid", func(c *Config) { c.Mode, c.RRFile, c.FlushLib = ModeReplay, rr, "" }, ""},
		{"missing kernel", func(c *Config) { c.Kernel = filepath.Join(dir, "nope") }, "kernel: stat"},
		{"missing initrd", func(c *Config) { c.Initrd = filepath.Join(dir, "nope") }, "initrd: stat"},
		{"kernel is dir", func(c *Config) { c.Kernel = dir }, "not a regular file"},
		{"bad mac", func(c *Config) { c.NIC.MAC = "52:54:00:12:34" }, "not a 6-byte MAC"},
		{"multicast mac", func(c *Config) { c.NIC.MAC = "01:54:00:12:34:56" }, "multicast"},
		{"nic half dgram", func(c *Config) { c.NIC.LocalPath = "" }, "needs both SocketPath and LocalPath"},
		{"nic both", func(c *Config) { c.NIC.TapName = "t0" }, "not both"},
		{"memory", func(c *Config) { c.MemoryMB = 32 }, "below the minimum of 64 MB"},
		{"shift high", func(c *Config) { c.IcountShift = 11 }, "icount shift 11 outside 0..10"},
		{"shift negative", func(c *Config) { c.IcountShift = -1 }, "outside 0..10"},
		{"bad mode", func(c *Config) { c.Mode = "play" }, `mode "play" is not one of`},
		{"rr without file", func(c *Config) { c.RRFile = "" }, "needs RRFile"},
		{"record without lib", func(c *Config) { c.FlushLib = "" }, "needs FlushLib"},
		{"record streaming without lib", func(c *Config) { c.FlushLib, c.LogStream = "", true }, ""},
		{"replay missing log", func(c *Config) { c.Mode, c.FlushLib = ModeReplay, "" }, "replay log: stat"},
		{"rrsnapshot without drive", func(c *Config) { c.RRSnapshot = "init" }, "need a SnapshotDrive"},
		{"loadvm without drive", func(c *Config) { c.LoadVM = "t" }, "need a SnapshotDrive"},
		{"rrsnapshot with drive", func(c *Config) { c.RRSnapshot, c.SnapshotDrive = "init", filepath.Join(dir, "s.qcow2") }, ""},
		{"no qmp", func(c *Config) { c.QMPSocket = "" }, "QMPSocket is required"},
		{"missing disk", func(c *Config) { c.Disks = []Disk{{Path: filepath.Join(dir, "d.qcow2")}} }, "disk 0: stat"},
		{"append without kernel", func(c *Config) { c.Kernel, c.Initrd, c.Append = "", "", "quiet" }, "without a kernel"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.mod(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("no error, want %q", tc.wantErr)
			case tc.wantErr != "":
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tc.wantErr)
				}
				if !errors.Is(err, ErrInvalidConfig) {
					t.Fatalf("error %v is not ErrInvalidConfig", err)
				}
			}
		})
	}
}

func TestValidateQEMUNotFound(t *testing.T) {
	c := Config{Binary: "ftvmd-no-such-qemu", MemoryMB: 128, Mode: ModeNone, QMPSocket: "/q"}
	err := c.Validate()
	if !errors.Is(err, ErrQEMUNotFound) {
		t.Fatalf("err = %v, want ErrQEMUNotFound", err)
	}
	if errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v: a missing binary alone must not also be ErrInvalidConfig", err)
	}
	want := `qemu binary not found: "ftvmd-no-such-qemu" (install Debian package qemu-system-x86 or set Config.Binary)`
	if err.Error() != want {
		t.Fatalf("err = %q\nwant  %q", err, want)
	}
}

func TestHandlerList(t *testing.T) {
	l := DefaultHandlers()
	names := func(l HandlerList) string {
		var s []string
		for _, h := range l {
			s = append(s, h.Name)
		}
		return strings.Join(s, ",")
	}
	if got := names(l); got != "validate,create-snapshot-drive,start-process,place-cgroup,connect-qmp" {
		t.Fatalf("default = %s", got)
	}
	l2 := l.AppendAfter(StartProcessHandlerName, Handler{Name: "x"}).Remove(ValidateHandlerName)
	if got := names(l2); got != "create-snapshot-drive,start-process,x,place-cgroup,connect-qmp" {
		t.Fatalf("edited = %s", got)
	}
	if names(l) != "validate,create-snapshot-drive,start-process,place-cgroup,connect-qmp" || !l.Has("validate") || l2.Has("validate") {
		t.Fatal("edits changed the original list")
	}
}
