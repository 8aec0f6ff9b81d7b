package qemu

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// qemuOpt is one key=value of a QEMU option argument as QEMU reads it.
type qemuOpt struct{ key, value string }

// parseQemuOpts reads an option argument the way QEMU 7.2's QemuOpts parser does
// (util/qemu-option.c opts_do_parse, get_opt_name_value, get_opt_value); keyval,
// which -netdev dgram goes through, splits keys and values the same way. implied
// names the first option when it has no "=" (e.g. -name's "guest"). A value ends at
// the first lone comma; ",," is one comma of the value. A bare "foo" after the
// first option is a flag: foo=on (nofoo: foo=off).
func parseQemuOpts(s, implied string) []qemuOpt {
	var opts []qemuOpt
	for p := s; p != ""; {
		var o qemuOpt
		n := strings.IndexAny(p, "=,")
		switch {
		case n < 0 || p[n] == ',':
			if implied != "" {
				o.key = implied
				o.value, p = qemuOptValue(p)
			} else {
				end := len(p)
				if n >= 0 {
					end = n
				}
				o.key, o.value, p = p[:end], "on", p[end:]
				if k, ok := strings.CutPrefix(o.key, "no"); ok {
					o.key, o.value = k, "off"
				}
			}
		default:
			o.key = p[:n]
			o.value, p = qemuOptValue(p[n+1:])
		}
		implied = ""
		p = strings.TrimPrefix(p, ",")
		opts = append(opts, o)
	}
	return opts
}

// qemuOptValue reads a value up to the first lone comma, undoing ",," escapes; it
// returns the value and the rest, starting at that comma.
func qemuOptValue(p string) (string, string) {
	var b strings.Builder
	for {
		i := strings.IndexByte(p, ',')
		if i < 0 {
			b.WriteString(p)
			return b.String(), ""
		}
		if i+1 < len(p) && p[i+1] == ',' {
			b.WriteString(p[:i+1])
			p = p[i+2:]
			continue
		}
		b.WriteString(p[:i])
		return b.String(), p[i:]
	}
}

// hasProtocol is QEMU's path_has_protocol (block.c): a block-layer file name
// with a colon before any slash names a protocol ("nbd:host:port", "json:{...}")
// instead of a file.
func hasProtocol(name string) bool {
	i := strings.IndexAny(name, ":/\\")
	return i >= 0 && name[i] == ':'
}

// argsCheck verifies one Config's argument list against what it asked for.
type argsCheck struct {
	t    *testing.T
	c    Config
	args []string
	i    int
}

func (k *argsCheck) fail(format string, a ...any) {
	k.t.Helper()
	k.t.Fatalf("config %+v (NIC %+v)\nargs %q\n"+format, append([]any{k.c, k.c.NIC, k.args}, a...)...)
}

// value returns the argument of the option at args[i] and moves past both.
func (k *argsCheck) value(opt string) string {
	k.t.Helper()
	if k.i+1 >= len(k.args) || k.args[k.i] != opt {
		k.fail("at %d: want option %s with a value", k.i, opt)
	}
	v := k.args[k.i+1]
	k.i += 2
	return v
}

// flag moves past an option that takes no value.
func (k *argsCheck) flag(opt string) {
	k.t.Helper()
	if k.i >= len(k.args) || k.args[k.i] != opt {
		k.fail("at %d: want option %s", k.i, opt)
	}
	k.i++
}

// opts checks that the argument of opt reads, in QEMU, as exactly want.
func (k *argsCheck) opts(opt, implied string, want ...qemuOpt) {
	k.t.Helper()
	v := k.value(opt)
	if got := parseQemuOpts(v, implied); !slices.Equal(got, want) {
		k.fail("%s %q reads in QEMU as\n  %q\nwant\n  %q", opt, v, got, want)
	}
}

// file checks a block-layer file name: the file asked for, never a protocol.
func (k *argsCheck) file(what, got, want string) {
	k.t.Helper()
	if hasProtocol(got) {
		k.fail("%s %q names a block protocol, not the file %q", what, got, want)
	}
	if got != want && got != "./"+want {
		k.fail("%s %q is not the file %q", what, got, want)
	}
}

// fileOpts is like opts, for a -drive whose file= must name want.
func (k *argsCheck) drive(wantFile string, rest ...qemuOpt) {
	k.t.Helper()
	v := k.value("-drive")
	got := parseQemuOpts(v, "")
	if len(got) != len(rest)+1 || got[0].key != "file" || !slices.Equal(got[1:], rest) {
		k.fail("-drive %q reads in QEMU as\n  %q\nwant file=%q and %q", v, got, wantFile, rest)
	}
	k.file("-drive file=", got[0].value, wantFile)
}

func o(k, v string) qemuOpt { return qemuOpt{k, v} }

// check walks the argument list in the order Args builds it.
func (k *argsCheck) check() {
	c := k.c
	if c.Name != "" {
		k.opts("-name", "guest", o("guest", c.Name))
	}
	for _, f := range []string{"-M", "-accel", "-cpu", "-smp"} {
		k.value(f)
	}
	if m := k.value("-m"); m != strconv.Itoa(c.MemoryMB) {
		k.fail("-m %q, want %d", m, c.MemoryMB)
	}
	k.value("-rtc")
	k.flag("-nographic")
	k.flag("-nodefaults")
	k.flag("-no-user-config")
	icount := []qemuOpt{o("shift", strconv.Itoa(c.IcountShift))}
	if c.Mode == ModeRecord || c.Mode == ModeReplay {
		icount = append(icount, o("rr", string(c.Mode)), o("rrfile", c.RRFile))
		if c.RRSnapshot != "" {
			icount = append(icount, o("rrsnapshot", c.RRSnapshot))
		}
	}
	k.opts("-icount", "shift", icount...)
	if c.ConsoleLog != "" {
		// The legacy -serial file: form takes the rest of the argument as the path,
		// with no option parsing (chardev/char.c qemu_chr_parse_compat).
		if v := k.value("-serial"); v != "file:"+c.ConsoleLog {
			k.fail("-serial %q, want file:%s", v, c.ConsoleLog)
		}
	}
	for _, f := range []struct{ opt, v string }{{"-kernel", c.Kernel}, {"-initrd", c.Initrd}, {"-append", c.Append}} {
		if f.v != "" {
			if v := k.value(f.opt); v != f.v { // taken whole by QEMU
				k.fail("%s %q, want %q", f.opt, v, f.v)
			}
		}
	}
	if n := c.NIC; n != nil {
		if n.TapName != "" {
			k.opts("-netdev", "type", o("type", "tap"), o("id", "n0"), o("ifname", n.TapName), o("script", "no"), o("downscript", "no"))
		} else {
			k.opts("-netdev", "type", o("type", "dgram"), o("id", "n0"), o("local.type", "unix"), o("local.path", n.LocalPath),
				o("remote.type", "unix"), o("remote.path", n.SocketPath))
		}
		k.opts("-device", "driver", o("driver", "virtio-net-pci"), o("netdev", "n0"), o("mac", n.MAC), o("tx", "timer"))
		k.opts("-object", "qom-type", o("qom-type", "filter-replay"), o("id", "r0"), o("netdev", "n0"))
		if n.TxDump != "" {
			k.opts("-object", "qom-type", o("qom-type", "filter-dump"), o("id", "d0"), o("netdev", "n0"), o("queue", "rx"),
				o("maxlen", "69632"), o("file", n.TxDump))
		}
	}
	// The snapshot drive first: savevm keeps the VM state in the first drive that
	// can hold one (appendSnapshotDrive).
	if c.SnapshotDrive != "" {
		k.drive(c.SnapshotDrive, o("if", "none"), o("id", "snap0"), o("format", "qcow2"), o("cache-clean-interval", "0"))
	}
	for i, d := range c.Disks {
		img, blk := "img"+strconv.Itoa(i), "blk"+strconv.Itoa(i)
		opts := []qemuOpt{o("if", "none"), o("id", img), o("format", "qcow2"), o("cache-clean-interval", "0")}
		if d.NoFlush {
			opts = append(opts, o("cache.no-flush", "on"))
		}
		k.drive(d.Path, opts...)
		k.opts("-drive", "", o("driver", "blkreplay"), o("if", "none"), o("image", img), o("id", blk))
		k.opts("-device", "driver", o("driver", "virtio-blk-pci"), o("drive", blk))
	}
	if c.QMPSocket != "" {
		v := k.value("-qmp")
		rest, ok := strings.CutPrefix(v, "unix:")
		want := []qemuOpt{o("path", c.QMPSocket), o("server", "on"), o("wait", "off")}
		if got := parseQemuOpts(rest, "path"); !ok || !slices.Equal(got, want) {
			k.fail("-qmp %q reads in QEMU as unix: %q, want %q", v, got, want)
		}
	}
	if c.LoadVM != "" {
		if v := k.value("-loadvm"); v != c.LoadVM {
			k.fail("-loadvm %q, want %q", v, c.LoadVM)
		}
	}
	if c.StartPaused {
		k.flag("-S")
	}
	if k.i != len(k.args) {
		k.fail("unexpected arguments from %d", k.i)
	}
}

// FuzzArgs: whatever strings a Config holds (a VM name, paths, a MAC from a spec or
// a peer's Hello), QEMU reads its arguments as exactly the options Args meant, each
// with the value asked for: no string adds an option, changes another one's value,
// or turns a file name into a block protocol.
func FuzzArgs(f *testing.F) {
	f.Add("vm1", "/k", "/i", "console=ttyS0", "/r/log.rr", "", "/r/snap.qcow2", "/d/disk.qcow2",
		"52:54:00:12:34:56", "/r/net-agent.sock", "/r/net-qemu.sock", "", "/r/qmp.sock", "/r/console.log", "", uint8(0), 4, 256, false)
	f.Add("a,b", "/k,x", "/i", "", "/r/a,,b", "init", "/r/s,if=ide", "/d/x,format=raw",
		"52:54:00:12:34:56,romfile=/x", "/s,a", "/q,b", "", "/r/q,server=off", "/r/c,append=on", "live", uint8(1), 2, 128, true)
	f.Add("debug-threads=on", "", "", "", "rr", "", "nbd:evil:10809", "json:{\"file\":\"/etc/shadow\"}",
		"x", "", "", "tap0,script=/bin/evil", "server=off", "", "", uint8(2), 0, 64, false)
	f.Add("", "-S", "-append", "", "", "", "", "relative/disk.qcow2", "", "a", "b", "", "wait=on,x", "", "", uint8(3), 10, 4096, true)
	f.Fuzz(func(t *testing.T, name, kernel, initrd, appnd, rrfile, rrsnap, snapDrive, diskPath,
		mac, sock, local, tap, qmp, console, loadvm string, mode uint8, shift, mem int, paused bool) {
		c := Config{
			Name: name, MemoryMB: mem, Kernel: kernel, Initrd: initrd, Append: appnd,
			Mode: []Mode{ModeRecord, ModeReplay, ModeNone, "bogus"}[mode%4], RRFile: rrfile, IcountShift: shift,
			RRSnapshot: rrsnap, SnapshotDrive: snapDrive, QMPSocket: qmp, ConsoleLog: console,
			LoadVM: loadvm, StartPaused: paused,
		}
		if diskPath != "" {
			c.Disks = []Disk{{Path: diskPath, NoFlush: mode&8 != 0}, {Path: diskPath + "2"}}
		}
		if mode&4 == 0 {
			c.NIC = &NIC{MAC: mac, SocketPath: sock, LocalPath: local, TapName: tap}
			if mode&8 != 0 {
				c.NIC.TxDump = local + ".tx"
			}
		}
		k := &argsCheck{t: t, c: c, args: c.Args()}
		k.check()
	})
}
