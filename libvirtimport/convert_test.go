package libvirtimport

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/vmspec"
)

func fixture(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func elements(ps []Problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Element
	}
	return out
}

// want is one expected problem: its element exactly, and words of its reason.
type want struct{ el, reason string }

func checkProblems(t *testing.T, got []Problem, wants []want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("%d problems, want %d:\n  got  %q\n  want %q", len(got), len(wants), elements(got), wantElements(wants))
	}
	for i, w := range wants {
		if got[i].Element != w.el {
			t.Errorf("problem %d: element %q, want %q", i, got[i].Element, w.el)
		}
		if got[i].Reason == "" || !strings.Contains(got[i].Reason, w.reason) {
			t.Errorf("problem %d (%s): reason %q, want it to say %q", i, w.el, got[i].Reason, w.reason)
		}
	}
}

func wantElements(ws []want) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.el
	}
	return out
}

// The domain fixtures: the lab guest as libvirt dumps it converts whole; the
// others list every element ftvmd cannot run, in the XML's order.
func TestConvertFixtures(t *testing.T) {
	cases := []struct {
		file     string
		spec     vmspec.Spec // checked when no problems are wanted
		problems []want
	}{
		{file: "lab-guest.xml", spec: vmspec.Spec{
			Name: "web1", MemoryMB: 256, Kernel: "/srv/ftvmd/vmlinuz", Initrd: "/srv/ftvmd/initrd.img",
			Append: "console=ttyS0 quiet panic=-1 ft.ip=10.77.0.100/24", Disk: "/srv/ftvmd/web1.qcow2",
			MAC: "52:54:00:12:34:56", Bridge: "br-lan",
		}},
		{file: "virt-install.xml", problems: []want{
			{"<vcpu>2</vcpu>", "one vCPU"},
			{"<os><type machine='pc-q35-7.2'>", "i440fx"},
			{"<os>", "no <kernel>"},
			{"<cpu mode='host-passthrough'>", "KVM-only"},
			{"<disk device='cdrom'> sda", "CD-ROM"},
			{"<interface type='network'> 52:54:00:5a:11:2b <source network='default'>", "type='bridge'"},
			{"<devices><channel> org.qemu.guest_agent.0", "virtio-serial"},
			{"<devices><channel> com.redhat.spice.0", "virtio-serial"},
			{"<devices><input type='tablet' bus='usb'>", "no such device"},
			{"<devices><graphics type='spice'>", "no display"},
			{"<devices><sound model='ich9'>", "no such device"},
			{"<devices><video><model type='virtio'>", "no display"},
			{"<devices><redirdev type='spicevmc'>", "no such device"},
			{"<devices><redirdev type='spicevmc'>", "no such device"},
			{"<devices><rng model='virtio'>", "no such device"},
		}},
		{file: "many-unsupported.xml", problems: []want{
			{"<memoryBacking><hugepages>", "huge pages"},
			{"<vcpu>4</vcpu>", "record/replay records a single CPU"},
			{"<vcpu cpuset='2-5'>", "host tuning"},
			{"<iothreads>", "I/O threads"},
			{"<cputune>", "host tuning"},
			{"<os><type machine='pc-q35-7.2'>", "i440fx"},
			{"<os firmware='efi'>", "UEFI"},
			{"<os><loader>", "UEFI"},
			{"<os>", "no <kernel>"},
			{"<features><hyperv>", "KVM-only"},
			{"<features><kvm>", "KVM-only"},
			{"<cpu mode='host-passthrough'>", "KVM-only"},
			{"<cpu><topology sockets='1' cores='2' threads='2'>", "one vCPU"},
			{"<clock offset='localtime'>", "UTC"},
			{"<clock><timer name='kvmclock'>", "KVM-only"},
			{"<disk> ×2 (vda, sda)", "at most one disk"},
			{"<disk> vda <driver iothread='1'>", "I/O threads"},
			{"<disk> vda <backingStore> (/var/lib/libvirt/images/db1-base.qcow2)", "backing chain"},
			{"<disk type='block'> sda", "image files"},
			{"<disk> sda <driver type='raw'>", "qcow2"},
			{"<disk> sda <target bus='scsi'>", "virtio-blk"},
			{"<devices><filesystem> share", "host directory"},
			{"<interface> ×2 (52:54:00:aa:bb:01, 52:54:00:aa:bb:02)", "one NIC"},
			{"<interface type='bridge'> 52:54:00:aa:bb:01 <driver name='vhost'>", "vhost"},
			{"<interface type='bridge'> 52:54:00:aa:bb:01 <driver queues='4'>", "does not apply"},
			{"<interface type='direct'> 52:54:00:aa:bb:02", "host bridge"},
			{"<interface type='direct'> 52:54:00:aa:bb:02 <model type='e1000'>", "virtio-net"},
			{"<devices><hostdev type='pci'> 0000:03:00.0", "passthrough"},
			{"<devices><watchdog model='i6300esb'>", "no such device"},
			{"<qemu:commandline>", "command line"},
		}},
		{file: "arm.xml", problems: []want{
			{"<os><type arch='aarch64'>", "x86"},
			{"<os><type machine='virt'>", "i440fx"},
			{"<os><dtb>", "does not apply"},
			{"<features><gic>", "does not apply"},
			{"<cpu><model>cortex-a57</model>", "qemu64"},
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			s, ps, err := ConvertXML(fixture(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			checkProblems(t, ps, c.problems)
			if len(c.problems) == 0 && !reflect.DeepEqual(s, c.spec) {
				t.Fatalf("spec\n  got  %+v\n  want %+v", s, c.spec)
			}
		})
	}
}

// One change at a time to the lab guest's domain, and what it does to the spec or
// which problem it is.
func TestConvertVariants(t *testing.T) {
	type edit struct{ old, new string }
	cases := []struct {
		name     string
		edits    []edit
		check    func(vmspec.Spec) bool // on the spec, when no problems are wanted
		problems []want
	}{
		{name: "memory in MiB", edits: []edit{{"<memory unit='KiB'>262144</memory>", "<memory unit='MiB'>512</memory>"}},
			check: func(s vmspec.Spec) bool { return s.MemoryMB == 512 }},
		{name: "memory in bytes", edits: []edit{{"<memory unit='KiB'>262144</memory>", "<memory unit='bytes'>134217728</memory>"}},
			check: func(s vmspec.Spec) bool { return s.MemoryMB == 128 }},
		{name: "memory in GiB, no unit means KiB", edits: []edit{{"<memory unit='KiB'>262144</memory>", "<memory>1048576</memory>"}},
			check: func(s vmspec.Spec) bool { return s.MemoryMB == 1024 }},
		{name: "memory not whole MiB", edits: []edit{{"<memory unit='KiB'>262144</memory>", "<memory unit='GB'>1</memory>"}},
			problems: []want{{"<memory unit='GB'>1</memory>", "whole number of MiB"}}},
		{name: "no command line", edits: []edit{{"<cmdline>console=ttyS0 quiet panic=-1 ft.ip=10.77.0.100/24</cmdline>", ""}},
			check: func(s vmspec.Spec) bool { return s.Append == "" }},
		{name: "machine pc", edits: []edit{{"machine='pc-i440fx-7.2'", "machine='pc'"}},
			check: func(s vmspec.Spec) bool { return s.Kernel != "" }},
		{name: "no disk", edits: []edit{{"<disk type='file' device='disk'>", "<!--"}, {"</disk>", "-->"}},
			check: func(s vmspec.Spec) bool { return s.Disk == "" }},
		{name: "domain type qemu", edits: []edit{{"<domain type='kvm'>", "<domain type='qemu'>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},
		{name: "cpu qemu64 without mode", edits: []edit{{"<cpu mode='custom' match='exact' check='none'>", "<cpu>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},

		{name: "domain type xen", edits: []edit{{"<domain type='kvm'>", "<domain type='xen'>"}},
			problems: []want{{"<domain type='xen'>", "QEMU"}}},
		{name: "two vcpus", edits: []edit{{"<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>"}},
			problems: []want{{"<vcpu>2</vcpu>", "one vCPU"}}},
		{name: "host-model cpu", edits: []edit{{"<cpu mode='custom' match='exact' check='none'>", "<cpu mode='host-model'>"}},
			problems: []want{{"<cpu mode='host-model'>", "KVM-only"}}},
		{name: "cpu model", edits: []edit{{"qemu64</model>", "Skylake-Client</model>"}},
			problems: []want{{"<cpu><model>Skylake-Client</model>", "qemu64"}}},
		{name: "cpu feature", edits: []edit{{"</cpu>", "<feature policy='require' name='vmx'/></cpu>"}},
			problems: []want{{"<cpu><feature> (require vmx)", "qemu64"}}},
		{name: "no kernel", edits: []edit{{"<kernel>/srv/ftvmd/vmlinuz</kernel>", ""}},
			problems: []want{{"<os>", "no <kernel>"}}},
		{name: "no initrd", edits: []edit{{"<initrd>/srv/ftvmd/initrd.img</initrd>", ""}},
			problems: []want{{"<os>", "no <initrd>"}}},
		{name: "q35", edits: []edit{{"machine='pc-i440fx-7.2'", "machine='q35'"}},
			problems: []want{{"<os><type machine='q35'>", "i440fx"}}},
		{name: "hugepages", edits: []edit{{"<vcpu ", "<memoryBacking><hugepages/></memoryBacking><vcpu "}},
			problems: []want{{"<memoryBacking><hugepages>", "huge pages"}}},
		{name: "shared memory", edits: []edit{{"<vcpu ", "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking><vcpu "}},
			problems: []want{{"<memoryBacking><source>", "memfd"}, {"<memoryBacking><access>", "vhost-user"}}},
		{name: "paravirtual EOI", edits: []edit{{"<apic/>", "<apic eoi='on'/>"}},
			problems: []want{{"<features><apic eoi='on'>", "KVM-only"}}},
		{name: "pmu off is TCG's", edits: []edit{{"<apic/>", "<apic/><pmu state='off'/>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},
		{name: "kvm ioapic", edits: []edit{{"<apic/>", "<apic/><ioapic driver='kvm'/>"}},
			problems: []want{{"<features><ioapic driver='kvm'>", "KVM-only"}}},
		{name: "localtime", edits: []edit{{"<clock offset='utc'>", "<clock offset='localtime'>"}},
			problems: []want{{"<clock offset='localtime'>", "UTC"}}},
		{name: "suspend", edits: []edit{{"<suspend-to-mem enabled='no'/>", "<suspend-to-mem enabled='yes'/>"}},
			problems: []want{{"<pm><suspend-to-mem enabled='yes'>", "suspend"}}},
		{name: "sysinfo", edits: []edit{{"<os>", "<sysinfo type='smbios'><system><entry name='serial'>42</entry></system></sysinfo><os>"}},
			problems: []want{{"<sysinfo>", "SMBIOS"}}},
		{name: "uefi loader", edits: []edit{{"<kernel>", "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader><kernel>"}},
			problems: []want{{"<os><loader>", "UEFI"}}},

		{name: "raw disk", edits: []edit{{"type='qcow2'", "type='raw'"}},
			problems: []want{{"<disk> vda <driver type='raw'>", "qemu-img convert"}}},
		{name: "disk without driver", edits: []edit{{"<driver name='qemu' type='qcow2' cache='none' discard='unmap'/>", ""}},
			problems: []want{{"<disk> vda without <driver type>", "raw"}}},
		{name: "disk without format", edits: []edit{{"<driver name='qemu' type='qcow2' cache='none' discard='unmap'/>", "<driver name='qemu'/>"}},
			problems: []want{{"<disk> vda <driver> without type", "raw"}}},
		{name: "backing chain", edits: []edit{{"<backingStore/>", "<backingStore type='file'><format type='qcow2'/><source file='/srv/base.qcow2'/></backingStore>"}},
			problems: []want{{"<disk> vda <backingStore> (/srv/base.qcow2)", "backing chain"}}},
		{name: "sata disk", edits: []edit{{"bus='virtio'/>", "bus='sata'/>"}},
			problems: []want{{"<disk> vda <target bus='sata'>", "virtio-blk"}}},
		{name: "block disk", edits: []edit{{"<disk type='file' device='disk'>", "<disk type='block' device='disk'>"}, {"<source file='/srv/ftvmd/web1.qcow2'/>", "<source dev='/dev/sdb'/>"}},
			problems: []want{{"<disk type='block'> vda", "image files"}}},
		{name: "network disk", edits: []edit{{"<disk type='file' device='disk'>", "<disk type='network' device='disk'>"}, {"<source file='/srv/ftvmd/web1.qcow2'/>", "<source protocol='nbd' name='web1'><host name='nbd.example' port='10809'/></source>"}},
			problems: []want{{"<disk type='network'> vda", "image files"}}},
		{name: "readonly disk", edits: []edit{{"<backingStore/>", "<readonly/>"}},
			problems: []want{{"<disk> vda <readonly>", "writable"}}},
		{name: "disk serial", edits: []edit{{"<backingStore/>", "<serial>WD-123</serial>"}},
			problems: []want{{"<disk> vda <serial>", "does not apply"}}},
		{name: "disk iotune", edits: []edit{{"<backingStore/>", "<iotune><total_iops_sec>100</total_iops_sec></iotune>"}},
			problems: []want{{"<disk> vda <iotune>", "host tuning"}}},
		{name: "two disks", edits: []edit{{"<controller type='usb'", "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/ftvmd/data.qcow2'/><target dev='vdb' bus='virtio'/></disk><controller type='usb'"}},
			problems: []want{{"<disk> ×2 (vda, vdb)", "at most one disk"}}},
		{name: "cdrom", edits: []edit{{"<controller type='usb'", "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk><controller type='usb'"}},
			problems: []want{{"<disk device='cdrom'> hdc", "CD-ROM"}}},

		{name: "network interface", edits: []edit{{"<interface type='bridge'>", "<interface type='network'>"}, {"<source bridge='br-lan'/>", "<source network='default'/>"}},
			problems: []want{{"<interface type='network'> 52:54:00:12:34:56 <source network='default'>", "type='bridge'"}}},
		{name: "user networking", edits: []edit{{"<interface type='bridge'>", "<interface type='user'>"}, {"<source bridge='br-lan'/>", ""}},
			problems: []want{{"<interface type='user'> 52:54:00:12:34:56", "host bridge"}}},
		{name: "vhost-user", edits: []edit{{"<interface type='bridge'>", "<interface type='vhostuser'>"}, {"<source bridge='br-lan'/>", "<source type='unix' path='/run/vhu.sock' mode='client'/>"}},
			problems: []want{{"<interface type='vhostuser'> 52:54:00:12:34:56", "outside QEMU"}}},
		{name: "bridge without name", edits: []edit{{"<source bridge='br-lan'/>", ""}},
			problems: []want{{"<interface type='bridge'> 52:54:00:12:34:56", "no <source bridge>"}}},
		{name: "vhost", edits: []edit{{"<model type='virtio'/>", "<model type='virtio'/><driver name='vhost'/>"}},
			problems: []want{{"<interface type='bridge'> 52:54:00:12:34:56 <driver name='vhost'>", "host kernel"}}},
		{name: "qemu driver", edits: []edit{{"<model type='virtio'/>", "<model type='virtio'/><driver name='qemu'/>"}},
			check: func(s vmspec.Spec) bool { return s.Bridge == "br-lan" }},
		{name: "e1000", edits: []edit{{"<model type='virtio'/>", "<model type='e1000'/>"}},
			problems: []want{{"<interface type='bridge'> 52:54:00:12:34:56 <model type='e1000'>", "virtio-net"}}},
		{name: "link down", edits: []edit{{"<model type='virtio'/>", "<model type='virtio'/><link state='down'/>"}},
			problems: []want{{"<interface type='bridge'> 52:54:00:12:34:56 <link state='down'>", "does not apply"}}},
		{name: "vlan", edits: []edit{{"<model type='virtio'/>", "<model type='virtio'/><vlan><tag id='42'/></vlan>"}},
			problems: []want{{"<interface type='bridge'> 52:54:00:12:34:56 <vlan>", "does not apply"}}},
		{name: "no interface", edits: []edit{{"<interface type='bridge'>", "<!--"}, {"</interface>", "-->"}},
			problems: []want{{"<devices>", "no <interface>"}}},
		{name: "two interfaces", edits: []edit{{"<serial type='pty'>", "<interface type='bridge'><mac address='52:54:00:00:00:02'/><source bridge='br1'/><model type='virtio'/></interface><serial type='pty'>"}},
			problems: []want{{"<interface> ×2 (52:54:00:12:34:56, 52:54:00:00:00:02)", "one NIC"}}},

		{name: "pci passthrough", edits: []edit{{"<audio id='1' type='none'/>", "<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>"}},
			problems: []want{{"<devices><hostdev type='pci'> 0000:03:00.1", "passthrough"}}},
		{name: "usb passthrough", edits: []edit{{"<audio id='1' type='none'/>", "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>"}},
			problems: []want{{"<devices><hostdev type='usb'>", "passthrough"}}},
		{name: "vnc", edits: []edit{{"<audio id='1' type='none'/>", "<graphics type='vnc' port='-1'/><video><model type='cirrus'/></video>"}},
			problems: []want{{"<devices><graphics type='vnc'>", "no display"}, {"<devices><video><model type='cirrus'>", "no display"}}},
		{name: "video none", edits: []edit{{"<audio id='1' type='none'/>", "<video><model type='none'/></video>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},
		{name: "rng", edits: []edit{{"<audio id='1' type='none'/>", "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"}},
			problems: []want{{"<devices><rng model='virtio'>", "no such device"}}},
		{name: "tpm", edits: []edit{{"<audio id='1' type='none'/>", "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"}},
			problems: []want{{"<devices><tpm model='tpm-crb'>", "no such device"}}},
		{name: "shmem", edits: []edit{{"<audio id='1' type='none'/>", "<shmem name='ivshmem'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>"}},
			problems: []want{{"<devices><shmem>", "outside the recording"}}},
		{name: "vsock", edits: []edit{{"<audio id='1' type='none'/>", "<vsock model='virtio'><cid auto='yes'/></vsock>"}},
			problems: []want{{"<devices><vsock>", "vhost-vsock"}}},
		{name: "virtiofs", edits: []edit{{"<audio id='1' type='none'/>", "<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/x'/><target dir='x'/></filesystem>"}},
			problems: []want{{"<devices><filesystem> x", "host directory"}}},
		{name: "usb tablet", edits: []edit{{"<input type='mouse' bus='ps2'/>", "<input type='tablet' bus='usb'/>"}},
			problems: []want{{"<devices><input type='tablet' bus='usb'>", "no such device"}}},
		{name: "virtio console", edits: []edit{{"<target type='serial' port='0'/>", "<target type='virtio' port='0'/>"}},
			problems: []want{{"<console><target type='virtio'>", "ttyS0"}}},
		{name: "second serial", edits: []edit{{"<console type='pty'>", "<serial type='pty'><target type='isa-serial' port='1'/></serial><console type='pty'>"}},
			problems: []want{{"<serial> ×2", "one serial port"}, {"<serial><target type='isa-serial' port='1'>", "port 0"}}},
		{name: "serial to a file", edits: []edit{{"<serial type='pty'>", "<serial type='file'><source path='/var/log/web1.log'/>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},
		{name: "qemu commandline", edits: []edit{{"<domain type='kvm'>", "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"}, {"<seclabel", "<qemu:commandline><qemu:arg value='-S'/></qemu:commandline><seclabel"}},
			problems: []want{{"<qemu:commandline>", "command line"}}},
		{name: "launch security", edits: []edit{{"<seclabel", "<launchSecurity type='sev'><policy>0x0003</policy></launchSecurity><seclabel"}},
			problems: []want{{"<launchSecurity>", "KVM-only"}}},
		{name: "genid", edits: []edit{{"<title>", "<genid/><title>"}},
			problems: []want{{"<genid>", "does not apply"}}},

		// Elements and attributes newer than libvirtxml's schema are reported too.
		{name: "unknown device", edits: []edit{{"<audio id='1' type='none'/>", "<teleporter model='x' range='far'><coil/></teleporter>"}},
			problems: []want{{"<domain><devices><teleporter>", "not known"}}},
		{name: "unknown attribute", edits: []edit{{"<interface type='bridge'>", "<interface type='bridge' warp='9'>"}},
			problems: []want{{"<domain><devices><interface warp='9'>", "not known"}}},
		{name: "metadata is not checked", edits: []edit{{"<title>", "<metadata><app:x xmlns:app='http://example.org/app'><app:y z='1'/></app:x></metadata><title>"}},
			check: func(s vmspec.Spec) bool { return s.Name == "web1" }},
	}
	base := fixture(t, "lab-guest.xml")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := base
			for _, e := range c.edits {
				if !strings.Contains(doc, e.old) {
					t.Fatalf("fixture has no %q", e.old)
				}
				doc = strings.Replace(doc, e.old, e.new, 1)
			}
			s, ps, err := ConvertXML(doc)
			if err != nil {
				t.Fatal(err)
			}
			checkProblems(t, ps, c.problems)
			if c.check != nil && !c.check(s) {
				t.Fatalf("spec %+v", s)
			}
		})
	}
}

func TestConvertXMLBadInput(t *testing.T) {
	for _, doc := range []string{"", "not xml", "<domain type='kvm'><name>x</name>", "<domain><devices><interface><mac address='x'/></interface></devices></domain>"} {
		if _, _, err := ConvertXML(doc); err == nil {
			t.Errorf("%q: want a parse error", doc)
		}
	}
}
