// Package libvirtimport turns a libvirt domain into an ftvmd VM spec, and names
// everything in the domain that ftvmd cannot run as defined. Convert is the pure
// part (parsed domain XML in, spec and problems out); Import reads the domain
// from a libvirt daemon (go-libvirt) and adds what only the host can tell.
//
// ftvmd runs one kind of VM: QEMU's i440fx "pc" machine under TCG with one vCPU
// and the qemu64 CPU, booted directly from a kernel and an initrd, one virtio-net
// NIC on a host bridge, at most one virtio-blk disk (a standalone qcow2 image
// behind blkreplay) and a serial console logged to a file. A domain converts when
// it asks for nothing else; what libvirt adds to every domain and the guest does
// not miss (controllers, a memory balloon, PS/2 input, the emulator path) is
// dropped.
package libvirtimport

import (
	"fmt"
	"reflect"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/ftvmd/ftvmd/vmspec"
)

// Problem is one thing in a domain that ftvmd cannot run as the domain defines it.
type Problem struct {
	// Element is where it is, written as in the domain XML:
	// "<cpu mode='host-passthrough'>", "<devices><hostdev type='pci'> 0000:03:00.0".
	Element string
	// Reason says why ftvmd cannot run it, and what to do where there is a way.
	Reason string
	// field is the spec field the problem leaves unset or wrong ("kernel", "mac"),
	// so that Import does not report it a second time from the spec's validation.
	field string
}

func (p Problem) String() string { return p.Element + ": " + p.Reason }

// Reasons shared by several elements.
const (
	reasonKVM = "KVM-only: ftvmd runs guests under TCG (QEMU record/replay does not support KVM)"
	// reasonDevice is for devices ftvmd's VM does not have.
	reasonDevice = "ftvmd's VMs have no such device (they get one virtio NIC, at most one virtio disk and a serial console)"
	reasonHost   = "host tuning ftvmd does not apply (the agent's --cpus pins a VM's QEMU, and its throttle sets the CPU quota)"
	reasonSet    = "ftvmd does not apply this setting"
	reasonNoDisp = "ftvmd's VMs have no display: the console is the serial port, logged to a file (console.log)"
	reasonPass   = "device passthrough: the device's DMA and interrupts bypass QEMU, where record/replay cannot log them, and the backup host has no such device"
)

// conv collects the problems of one conversion.
type conv struct{ problems []Problem }

func (c *conv) add(element, reason string) {
	c.problems = append(c.problems, Problem{Element: element, Reason: reason})
}

func (c *conv) addField(field, element, reason string) {
	c.problems = append(c.problems, Problem{Element: element, Reason: reason, field: field})
}

// Convert maps a parsed libvirt domain to a VM spec. The spec holds what the
// domain gives (name, memory, kernel, initrd, command line, disk, MAC, bridge),
// not yet normalized or validated; the problems list everything ftvmd cannot run,
// each naming its element, in the order of the XML. No problems: the spec is the
// domain, minus what libvirt adds that the guest does not miss.
func Convert(d *libvirtxml.Domain) (vmspec.Spec, []Problem) {
	c := &conv{}
	s := vmspec.Spec{Name: d.Name}
	for _, f := range present(d) {
		switch f.name {
		case "type":
			if d.Type != "qemu" && d.Type != "kvm" {
				c.add(fmt.Sprintf("<domain type='%s'>", d.Type), "ftvmd runs VMs on QEMU (libvirt domain type 'qemu' or 'kvm'; either runs under TCG)")
			}
		case "id", "name", "uuid", "hwuuid", "title", "description", "metadata",
			"currentMemory", "on_poweroff", "on_reboot", "on_crash", "seclabel":
			// Identity, annotations, the balloon's start size (ftvmd's VMs have no
			// balloon), libvirt's lifecycle actions and security labels: nothing the
			// guest runs on.
		case "memory":
			s.MemoryMB = c.memory(d.Memory)
		case "maxMemory":
			c.add("<maxMemory>", "memory hotplug: ftvmd's VMs have a fixed memory size")
		case "memoryBacking":
			c.memoryBacking(d.MemoryBacking)
		case "vcpu":
			c.vcpu(d.VCPU)
		case "vcpus":
			c.add("<vcpus>", "per-vCPU settings (hotplug, order): ftvmd runs one vCPU")
		case "iothreads", "iothreadids", "defaultiothread":
			c.add(f.String(), "I/O threads: ftvmd's QEMU runs device emulation in its main loop")
		case "cputune", "numatune", "blkiotune", "memtune":
			c.add(f.String(), reasonHost)
		case "resource":
			// libvirt's default cgroup partition is what a running domain shows.
			if d.Resource.Partition != "/machine" || d.Resource.FibreChannel != nil {
				c.add("<resource>", reasonHost)
			}
		case "os":
			c.os(d.OS, &s)
		case "features":
			c.features(d.Features)
		case "cpu":
			c.cpu(d.CPU)
		case "clock":
			c.clock(d.Clock)
		case "pm":
			c.pm(d.PM)
		case "devices":
			c.devices(d.Devices, &s)
		case "launchSecurity":
			c.add("<launchSecurity>", reasonKVM+" (memory encryption)")
		case "qemu:commandline", "qemu:capabilities", "qemu:override", "qemu:deprecation":
			c.add(f.String(), "QEMU arguments or capabilities set by hand: ftvmd builds its QEMU's command line itself")
		case "sysinfo":
			c.add(f.String(), "SMBIOS strings for the guest: "+reasonSet)
		default:
			c.add(f.String(), reasonSet)
		}
	}
	if d.Memory == nil {
		c.addField("memory_mb", "<memory>", "missing")
	}
	if d.OS == nil {
		c.noKernel()
	}
	if d.Devices == nil {
		c.noNIC()
	}
	return s, c.problems
}

// memUnits are the units libvirt accepts for memory sizes, in bytes. No unit
// means KiB.
var memUnits = map[string]uint64{
	"b": 1, "bytes": 1,
	"": 1 << 10, "k": 1 << 10, "KiB": 1 << 10, "KB": 1e3,
	"M": 1 << 20, "MiB": 1 << 20, "MB": 1e6,
	"G": 1 << 30, "GiB": 1 << 30, "GB": 1e9,
	"T": 1 << 40, "TiB": 1 << 40, "TB": 1e12,
}

func (c *conv) memory(m *libvirtxml.DomainMemory) int {
	el := fmt.Sprintf("<memory unit='%s'>%d</memory>", m.Unit, m.Value)
	mul, ok := memUnits[m.Unit]
	if !ok {
		c.addField("memory_mb", el, "unknown unit")
		return 0
	}
	b := uint64(m.Value) * mul
	if b%(1<<20) != 0 {
		c.addField("memory_mb", el, "not a whole number of MiB (ftvmd sizes guest memory in MiB)")
		return 0
	}
	return int(b >> 20)
}

func (c *conv) memoryBacking(mb *libvirtxml.DomainMemoryBacking) {
	for _, f := range present(mb) {
		el := "<memoryBacking><" + f.name + ">"
		switch f.name {
		case "hugepages":
			c.add(el, "huge pages: ftvmd's QEMU allocates guest memory from ordinary pages")
		case "source":
			c.add(el, "guest memory from a file or memfd (shared with other processes, outside the recording): ftvmd's QEMU allocates anonymous memory")
		case "access":
			c.add(el, "shared guest memory (used by vhost-user devices) changes outside the recording")
		default:
			c.add(el, reasonSet)
		}
	}
}

func (c *conv) vcpu(v *libvirtxml.DomainVCPU) {
	if v.Value > 1 || v.Current > 1 {
		c.add(fmt.Sprintf("<vcpu>%d</vcpu>", v.Value), "ftvmd runs one vCPU: QEMU record/replay records a single CPU")
	}
	if v.CPUSet != "" {
		c.add(fmt.Sprintf("<vcpu cpuset='%s'>", v.CPUSet), reasonHost)
	}
	if v.Placement == "auto" {
		c.add("<vcpu placement='auto'>", reasonHost)
	}
}

func (c *conv) noKernel() {
	c.addField("kernel", "<os>", "no <kernel>: ftvmd boots a guest directly from a kernel and an initrd "+
		"(<os><kernel>, <initrd>, <cmdline>); booting through a boot loader on the disk is not supported")
}

func (c *conv) os(o *libvirtxml.DomainOS, s *vmspec.Spec) {
	for _, f := range present(o) {
		switch f.name {
		case "type":
			c.osType(o.Type)
		case "kernel":
			s.Kernel = o.Kernel
		case "initrd":
			s.Initrd = o.Initrd
		case "cmdline":
			s.Append = o.Cmdline
		case "boot", "bootmenu", "bios":
			// Boot order and BIOS menu: unused when the kernel is given directly.
		case "firmware", "loader", "nvram", "varstore":
			if f.attr && o.Firmware == "bios" {
				continue
			}
			c.add(inside("os", f), "UEFI firmware: ftvmd boots guests through SeaBIOS with the kernel given directly")
		default:
			c.add(inside("os", f), reasonSet)
		}
	}
	if o.Kernel == "" {
		c.noKernel()
	} else if o.Initrd == "" {
		c.addField("initrd", "<os>", "no <initrd>: ftvmd boots a guest from a kernel and an initrd")
	}
}

func (c *conv) osType(t *libvirtxml.DomainOSType) {
	if t.Type != "hvm" {
		c.add(fmt.Sprintf("<os><type>%s</type>", t.Type), "ftvmd runs full virtual machines (hvm)")
	}
	switch t.Arch {
	case "", "x86_64", "i686":
	default:
		c.add(fmt.Sprintf("<os><type arch='%s'>", t.Arch), "ftvmd runs x86 guests (qemu-system-x86_64)")
	}
	m := t.Machine
	if m != "" && m != "pc" && !strings.HasPrefix(m, "pc-i440fx-") {
		c.add(fmt.Sprintf("<os><type machine='%s'>", m), "ftvmd runs guests on QEMU's i440fx machine 'pc': on it the guest would find other hardware than this machine gives it")
	}
}

func (c *conv) features(fl *libvirtxml.DomainFeatureList) {
	for _, f := range present(fl) {
		el := "<features><" + f.name + ">"
		switch f.name {
		case "acpi", "pae", "vmport", "ps2":
			// ftvmd's pc machine has ACPI, PAE, the VMware port and PS/2; a guest
			// told they are off does not need them.
		case "apic":
			if fl.APIC.EOI != "" {
				c.add(fmt.Sprintf("<features><apic eoi='%s'>", fl.APIC.EOI), reasonKVM+" (paravirtual EOI)")
			}
		case "ioapic":
			if fl.IOAPIC.Driver == "kvm" {
				c.add("<features><ioapic driver='kvm'>", reasonKVM)
			}
		case "pmu":
			// TCG has no PMU: a guest without one is what ftvmd gives.
			if fl.PMU.State != "off" {
				c.add(el, reasonKVM+" (host performance counters)")
			}
		case "smm":
			// QEMU's pc machine has SMM under TCG.
			if fl.SMM.State == "off" || fl.SMM.TSeg != nil {
				c.add(el, reasonSet)
			}
		case "hyperv":
			c.add(el, reasonKVM+" (Hyper-V enlightenments)")
		case "kvm", "pvspinlock", "msrs", "hap", "nested-hv":
			c.add(el, reasonKVM)
		default:
			c.add(el, reasonSet)
		}
	}
}

func (c *conv) cpu(cpu *libvirtxml.DomainCPU) {
	switch cpu.Mode {
	case "", "custom":
		if cpu.Model != nil && cpu.Model.Value != "" && cpu.Model.Value != "qemu64" {
			c.add(fmt.Sprintf("<cpu><model>%s</model>", cpu.Model.Value), "ftvmd's guests see the qemu64 CPU")
		}
	case "host-passthrough", "host-model":
		c.add(fmt.Sprintf("<cpu mode='%s'>", cpu.Mode), reasonKVM+" (the guest would see the host's CPU; ftvmd's guests see qemu64)")
	default:
		c.add(fmt.Sprintf("<cpu mode='%s'>", cpu.Mode), "ftvmd's guests see the qemu64 CPU")
	}
	for _, f := range present(cpu) {
		switch f.name {
		case "mode", "model", "match", "check", "migratable":
		case "topology":
			t := cpu.Topology
			if n := max(t.Sockets, 1) * max(t.Dies, 1) * max(t.Clusters, 1) * max(t.Cores, 1) * max(t.Threads, 1); n > 1 {
				c.add(fmt.Sprintf("<cpu><topology sockets='%d' cores='%d' threads='%d'>", t.Sockets, t.Cores, t.Threads), "ftvmd runs one vCPU: QEMU record/replay records a single CPU")
			}
		case "feature":
			var names []string
			for _, ft := range cpu.Features {
				names = append(names, ft.Policy+" "+ft.Name)
			}
			c.add("<cpu><feature> ("+strings.Join(names, ", ")+")", "ftvmd's guests see the qemu64 CPU as it is")
		case "numa":
			c.add("<cpu><numa>", "guest NUMA cells: ftvmd runs one vCPU in one memory node")
		default:
			c.add(inside("cpu", f), reasonSet)
		}
	}
}

func (c *conv) clock(cl *libvirtxml.DomainClock) {
	if cl.Offset != "" && cl.Offset != "utc" {
		c.add(fmt.Sprintf("<clock offset='%s'>", cl.Offset), "ftvmd's guest RTC runs in UTC, on the guest's instruction clock")
	}
	for _, t := range cl.Timer {
		switch t.Name {
		case "rtc", "pit", "hpet":
			// Guest time runs on instructions (-icount) and the RTC on the virtual
			// clock: tick policies for a host clock have nothing to act on.
		case "kvmclock", "hypervclock":
			if t.Present != "no" {
				c.add(fmt.Sprintf("<clock><timer name='%s'>", t.Name), reasonKVM)
			}
		default:
			c.add(fmt.Sprintf("<clock><timer name='%s'>", t.Name), reasonSet)
		}
	}
}

func (c *conv) pm(pm *libvirtxml.DomainPM) {
	for _, f := range present(pm) {
		if p := f.v.Interface().(*libvirtxml.DomainPMPolicy); p.Enabled == "yes" {
			c.add(fmt.Sprintf("<pm><%s enabled='yes'>", f.name), "guest suspend: ftvmd's VMs run until stopped")
		}
	}
}

func (c *conv) noNIC() {
	c.addField("mac", "<devices>", "no <interface>: ftvmd gives a VM one NIC on a host bridge (its frames leave only under the output rule)")
}

func (c *conv) devices(dl *libvirtxml.DomainDeviceList, s *vmspec.Spec) {
	for _, f := range present(dl) {
		switch f.name {
		case "emulator", "controller", "audio", "memballoon":
			// ftvmd runs its own QEMU build; controllers are only there for the
			// devices they hold (refused below when ftvmd has none); an audio
			// backend without a sound card does nothing; the guest does without a
			// balloon.
		case "disk":
			c.disks(dl.Disks, s)
		case "interface":
			c.nics(dl.Interfaces, s)
		case "serial":
			c.serials(dl.Serials)
		case "console":
			c.consoles(dl.Consoles)
		case "input":
			for _, in := range dl.Inputs {
				if (in.Type == "mouse" || in.Type == "keyboard") && (in.Bus == "" || in.Bus == "ps2") {
					continue // the pc machine's own PS/2 ports
				}
				c.add(fmt.Sprintf("<devices><input type='%s' bus='%s'>", in.Type, in.Bus), reasonDevice)
			}
		case "video":
			for _, v := range dl.Videos {
				if v.Model.Type != "none" {
					c.add(fmt.Sprintf("<devices><video><model type='%s'>", v.Model.Type), reasonNoDisp)
				}
			}
		case "graphics":
			for i := range dl.Graphics {
				c.add(fmt.Sprintf("<devices><graphics type='%s'>", union(&dl.Graphics[i])), reasonNoDisp)
			}
		case "hostdev":
			for i := range dl.Hostdevs {
				c.add(hostdevElement(&dl.Hostdevs[i]), reasonPass)
			}
		case "filesystem":
			for _, fs := range dl.Filesystems {
				target := ""
				if fs.Target != nil {
					target = " " + fs.Target.Dir
				}
				c.add("<devices><filesystem>"+target, "a host directory shared with the guest lives outside the VM's disk image and outside the recording: the backup host would replay against other files")
			}
		case "channel":
			for _, ch := range dl.Channels {
				c.add("<devices><channel>"+channelName(ch), "a host-guest channel (guest agent, SPICE): ftvmd's VMs have no virtio-serial channel; talk to the guest over its network")
			}
		case "shmem":
			c.add("<devices><shmem>", "memory shared with the host or other VMs changes outside the recording")
		case "memory":
			c.add("<devices><memory>", "memory hotplug: ftvmd's VMs have a fixed memory size")
		case "vsock":
			c.add("<devices><vsock>", "vhost-vsock runs in the host kernel, where record/replay cannot log it; talk to the guest over its network")
		default:
			n := f.v.Len()
			if f.v.Kind() != reflect.Slice {
				n = 1
			}
			for i := 0; i < n; i++ {
				v := f.v
				if v.Kind() == reflect.Slice {
					v = v.Index(i).Addr()
				}
				c.add("<devices>"+deviceElement(f.name, v), reasonDevice)
			}
		}
	}
	if len(dl.Interfaces) == 0 {
		c.noNIC()
	}
}

// inside renders a field of the element parent: "<os firmware='efi'>" for an
// attribute, "<os><loader>" for an element.
func inside(parent string, f field) string {
	if f.attr {
		return "<" + parent + " " + f.String() + ">"
	}
	return "<" + parent + ">" + f.String()
}

// deviceElement renders a device element with its type or model attribute, or
// the type libvirtxml read into a union field: "<rng model='virtio'>".
func deviceElement(name string, v reflect.Value) string {
	for _, f := range present(v.Interface()) {
		if f.attr && (f.name == "type" || f.name == "model") {
			return "<" + name + " " + f.String() + ">"
		}
	}
	if u := union(v.Interface()); u != "" {
		return fmt.Sprintf("<%s type='%s'>", name, u)
	}
	// A character device's type is its source's (<redirdev type='spicevmc'>).
	if src := reflect.Indirect(v).FieldByName("Source"); src.IsValid() {
		if u := union(src.Interface()); u != "" {
			return fmt.Sprintf("<%s type='%s'>", name, u)
		}
	}
	return "<" + name + ">"
}

func hostdevElement(h *libvirtxml.DomainHostdev) string {
	el := fmt.Sprintf("<devices><hostdev type='%s'>", union(h))
	if p := h.SubsysPCI; p != nil && p.Source != nil && p.Source.Address != nil {
		a := p.Source.Address
		if a.Domain != nil && a.Bus != nil && a.Slot != nil && a.Function != nil {
			el += fmt.Sprintf(" %04x:%02x:%02x.%x", *a.Domain, *a.Bus, *a.Slot, *a.Function)
		}
	}
	return el
}

func channelName(ch libvirtxml.DomainChannel) string {
	if ch.Target != nil && ch.Target.VirtIO != nil && ch.Target.VirtIO.Name != "" {
		return " " + ch.Target.VirtIO.Name
	}
	return ""
}

// diskName is a disk's target device, which is how virsh names it (vda).
func diskName(d libvirtxml.DomainDisk) string {
	if d.Target != nil && d.Target.Dev != "" {
		return d.Target.Dev
	}
	return "(no target)"
}

func (c *conv) disks(ds []libvirtxml.DomainDisk, s *vmspec.Spec) {
	var disks []libvirtxml.DomainDisk
	for _, d := range ds {
		if d.Device != "" && d.Device != "disk" {
			c.add(fmt.Sprintf("<disk device='%s'> %s", d.Device, diskName(d)), "ftvmd gives a VM at most one virtio disk, and no CD-ROM, floppy or SCSI LUN")
			continue
		}
		disks = append(disks, d)
	}
	if len(disks) > 1 {
		names := make([]string, len(disks))
		for i, d := range disks {
			names[i] = diskName(d)
		}
		c.addField("disk", fmt.Sprintf("<disk> ×%d (%s)", len(disks), strings.Join(names, ", ")),
			"ftvmd gives a VM at most one disk (copied to the backup host at protect, then replayed in step)")
	}
	for i, d := range disks {
		path := c.disk(d)
		if i == 0 {
			s.Disk = path
		}
	}
}

// disk checks one disk and returns its image path ("" if it has no image file).
func (c *conv) disk(d libvirtxml.DomainDisk) string {
	el := "<disk> " + diskName(d)
	path := ""
	if t := union(d.Source); t != "file" {
		c.addField("disk", fmt.Sprintf("<disk type='%s'> %s", t, diskName(d)), "ftvmd runs disks from qcow2 image files (type='file'), which it copies to the backup host at protect")
	} else if path = d.Source.File.File; path == "" {
		c.addField("disk", el, "no <source file>: ftvmd needs the image file")
	}
	for _, f := range present(d.Source) {
		switch f.name {
		case "index":
		case "dataStore":
			c.addField("disk", el+" <source><dataStore>", "an external data file: ftvmd copies and verifies one standalone image file")
		default:
			c.addField("disk", el+" "+inside("source", f), reasonSet)
		}
	}
	if d.Driver == nil {
		c.addField("disk", el+" without <driver type>", "libvirt runs such an image as raw; "+reasonQcow2)
	}
	for _, f := range present(&d) {
		switch f.name {
		case "device", "source", "boot", "acpi", "alias", "address":
		case "driver":
			c.diskDriver(el, d.Driver)
		case "backingStore":
			// An empty <backingStore/> says there is none (libvirt writes it so).
			bs := d.BackingStore
			t := union(bs.Source)
			if bs.Format != nil || bs.BackingStore != nil || (t != "" && (t != "file" || bs.Source.File.File != "")) {
				from := ""
				if bs.Source != nil && bs.Source.File != nil {
					from = " (" + bs.Source.File.File + ")"
				}
				c.addField("disk", el+" <backingStore>"+from, "a backing chain: ftvmd copies and verifies one standalone image; "+
					"flatten it with 'qemu-img convert -O qcow2 <top image> <new image>'")
			}
		case "target":
			if b := d.Target.Bus; b != "" && b != "virtio" {
				c.add(fmt.Sprintf("%s <target bus='%s'>", el, b), "ftvmd attaches the disk as virtio-blk (/dev/vda in the guest): switch the domain to bus='virtio' and check the guest boots from it")
			}
		case "readonly":
			c.add(el+" <readonly>", "ftvmd's disk is writable")
		case "shareable":
			c.add(el+" <shareable>", "a disk shared with other VMs changes outside the recording")
		case "iotune", "throttlefilters":
			c.add(el+" "+f.String(), reasonHost)
		default:
			c.add(el+" "+f.String(), reasonSet)
		}
	}
	return path
}

const reasonQcow2 = "ftvmd runs qcow2 images (behind QEMU's blkreplay): convert it with 'qemu-img convert -O qcow2 <image> <new image>'"

func (c *conv) diskDriver(el string, dr *libvirtxml.DomainDiskDriver) {
	switch dr.Type {
	case "qcow2":
	case "":
		c.addField("disk", el+" <driver> without type", "libvirt runs such an image as raw; "+reasonQcow2)
	default:
		c.addField("disk", fmt.Sprintf("%s <driver type='%s'>", el, dr.Type), reasonQcow2)
	}
	for _, f := range present(dr) {
		switch f.name {
		case "name", "type", "cache", "io", "discard", "detect_zeroes", "error_policy", "rerror_policy":
			// Host-side caching and error handling: ftvmd's QEMU chooses its own.
		case "iothread", "iothreads":
			c.add(el+" "+inside("driver", f), "I/O threads: ftvmd's QEMU runs device emulation in its main loop")
		default:
			c.add(el+" "+inside("driver", f), reasonSet)
		}
	}
}

func (c *conv) nics(ns []libvirtxml.DomainInterface, s *vmspec.Spec) {
	if len(ns) > 1 {
		macs := make([]string, len(ns))
		for i, n := range ns {
			macs[i] = nicMAC(n)
		}
		c.add(fmt.Sprintf("<interface> ×%d (%s)", len(ns), strings.Join(macs, ", ")), "ftvmd gives a VM one NIC")
	}
	for i, n := range ns {
		mac, bridge := c.nic(n)
		if i == 0 {
			s.MAC, s.Bridge = mac, bridge
		}
	}
}

func nicMAC(n libvirtxml.DomainInterface) string {
	if n.MAC != nil && n.MAC.Address != "" {
		return n.MAC.Address
	}
	return "no MAC"
}

// nic checks one interface and returns its MAC and bridge.
func (c *conv) nic(n libvirtxml.DomainInterface) (mac, bridge string) {
	typ := union(n.Source)
	el := fmt.Sprintf("<interface type='%s'> %s", typ, nicMAC(n))
	switch src := n.Source; typ {
	case "bridge":
		if bridge = src.Bridge.Bridge; bridge == "" {
			c.addField("bridge", el, "no <source bridge>: ftvmd needs the name of the host bridge")
		}
	case "network":
		c.addField("bridge", fmt.Sprintf("%s <source network='%s'>", el, src.Network.Network),
			"a libvirt network: ftvmd puts the VM's tap on a host bridge itself; use <interface type='bridge'><source bridge='...'/> with a bridge both hosts have")
	case "vhostuser", "vdpa":
		c.addField("bridge", el, "the NIC's data path runs outside QEMU, where record/replay cannot log it")
	case "hostdev":
		c.addField("bridge", el, reasonPass)
	default:
		c.addField("bridge", el, "ftvmd puts the VM's tap on a host bridge: use <interface type='bridge'>")
	}
	if n.MAC == nil || n.MAC.Address == "" {
		c.addField("mac", el, "no <mac address>")
	} else {
		mac = n.MAC.Address
	}
	for _, f := range present(&n) {
		switch f.name {
		case "source", "mac", "target", "alias", "address", "acpi", "boot", "rom":
			// The tap's name, addresses and boot ROM are ftvmd's or the guest's own.
		case "model":
			if n.Model.Type != "virtio" {
				c.add(fmt.Sprintf("%s <model type='%s'>", el, n.Model.Type), "ftvmd gives the guest a virtio-net NIC: switch the domain to model type='virtio' and check the guest has its driver")
			}
		case "driver":
			c.nicDriver(el, n.Driver)
		case "link":
			if n.Link.State != "up" {
				c.add(fmt.Sprintf("%s <link state='%s'>", el, n.Link.State), reasonSet)
			}
		default:
			c.add(el+" "+f.String(), reasonSet)
		}
	}
	return mac, bridge
}

func (c *conv) nicDriver(el string, dr *libvirtxml.DomainInterfaceDriver) {
	for _, f := range present(dr) {
		switch {
		case f.name == "name" && dr.Name == "vhost":
			c.add(el+" <driver name='vhost'>", "vhost moves the NIC's data path into the host kernel, where QEMU's record/replay cannot log it")
		case f.name == "name" && dr.Name == "qemu":
		case f.name == "queues" && dr.Queues == 1:
		default:
			c.add(el+" "+inside("driver", f), reasonSet)
		}
	}
}

// ftvmd's console: the one 16550 UART, ttyS0, logged to a file. Where libvirt
// sends its output (a pty, a file, a socket) makes no difference to the guest.
func (c *conv) serials(ss []libvirtxml.DomainSerial) {
	if len(ss) > 1 {
		c.add(fmt.Sprintf("<serial> ×%d", len(ss)), "ftvmd gives a VM one serial port (ttyS0, its console)")
	}
	for _, s := range ss {
		if t := s.Target; t != nil && ((t.Type != "" && t.Type != "isa-serial") || (t.Port != nil && *t.Port != 0)) {
			port := uint(0)
			if t.Port != nil {
				port = *t.Port
			}
			c.add(fmt.Sprintf("<serial><target type='%s' port='%d'>", t.Type, port), "ftvmd's serial port is the ISA UART ttyS0 (port 0)")
		}
	}
}

func (c *conv) consoles(cs []libvirtxml.DomainConsole) {
	for _, con := range cs {
		if t := con.Target; t != nil && t.Type != "" && t.Type != "serial" {
			c.add(fmt.Sprintf("<console><target type='%s'>", t.Type), "ftvmd's console is the serial port ttyS0; it has no "+t.Type+" console")
		}
	}
}
