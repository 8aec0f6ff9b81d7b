package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/lab"
	"github.com/ftvmd/ftvmd/vmspec"
)

const labCmdline = "console=ttyS0 quiet panic=-1 ft.ip=" + lab.GuestIP + "/24"

// labDomainXML is the lab guest as an operator would define it in libvirt: direct
// kernel boot, one virtio NIC on bridge br0 with the lab guest's MAC, a qcow2 disk.
// Type 'qemu' (TCG): a domain of type 'kvm' defines only where libvirt finds KVM.
func labDomainXML(name, kernel, initrd, disk string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='%s'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
  </devices>
</domain>
`, name, kernel, initrd, labCmdline, disk, lab.GuestMAC)
}

// badDomainXML asks for much that ftvmd cannot run.
func badDomainXML(name, kernel, top, base string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>512</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%s</kernel>
  </os>
  <features><acpi/><apic/><kvm><hidden state='on'/></kvm></features>
  <cpu mode='host-passthrough'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='%s'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/%s-data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:00:0b:01'/>
      <source bridge='br0'/>
      <model type='virtio'/>
      <driver name='vhost'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:00:0b:02'/>
      <source network='default'/>
      <model type='e1000'/>
    </interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>
    <graphics type='vnc' port='-1'/>
  </devices>
</domain>
`, name, kernel, top, base, name)
}

// importCmd runs `ftvmd vm import` of the repository's build against a libvirtd.
func importCmd(ctx context.Context, bin string, d *libvirtd, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, bin, append([]string{"vm", "import", "--uri", d.uri}, args...)...).CombinedOutput()
	return string(out), err
}

// TestLibvirtImport: domains made with `virsh define` in a real libvirtd (with
// what libvirt adds to them) are imported by the ftvmd CLI through go-libvirt. The
// supported one becomes the spec it describes; the other is refused with one error
// naming each element ftvmd cannot run; libvirt's autostart is refused too.
func TestLibvirtImport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	d := startLibvirtd(ctx, t)
	repo, err := lab.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Check(repo); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(repo, "build/ftvmd")
	kernel, initrd := filepath.Join(repo, "build/guest/vmlinuz"), filepath.Join(repo, "build/guest/initrd.img")
	dir := t.TempDir()
	img := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		if out, err := exec.Command("qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, args...), p, "16M")...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img: %v: %s", err, out)
		}
		return p
	}
	disk := img("ok.qcow2")
	base := img("base.qcow2")
	top := img("top.qcow2", "-b", base, "-F", "qcow2")

	d.define(ctx, "ftimport-ok", labDomainXML("ftimport-ok", kernel, initrd, disk))
	d.define(ctx, "ftimport-bad", badDomainXML("ftimport-bad", kernel, top, base))
	if xml, err := d.virsh(ctx, "dumpxml", "--inactive", "ftimport-ok"); err == nil {
		t.Logf("libvirt's definition of ftimport-ok:\n%s", xml)
	}

	// The supported domain: the spec is the domain.
	specPath := filepath.Join(dir, "ok.json")
	t0 := time.Now()
	if out, err := importCmd(ctx, bin, d, "ftimport-ok", "-o", specPath); err != nil {
		t.Fatalf("import ftimport-ok: %v\n%s", err, out)
	}
	t.Logf("import took %s", time.Since(t0).Round(time.Millisecond))
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	s, err := vmspec.Parse(b)
	if err != nil {
		t.Fatalf("the written spec does not parse: %v\n%s", err, b)
	}
	want := vmspec.Spec{Name: "ftimport-ok", MemoryMB: 256, Kernel: kernel, Initrd: initrd, Append: labCmdline,
		Disk: disk, MAC: lab.GuestMAC, Bridge: "br0"}
	want.Normalize()
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("spec\n  got  %+v\n  want %+v\n%s", s, want, b)
	}

	// The other: one error, every element named.
	out, err := importCmd(ctx, bin, d, "ftimport-bad", "-o", filepath.Join(dir, "bad.json"))
	if err == nil {
		t.Fatalf("import ftimport-bad succeeded:\n%s", out)
	}
	t.Logf("import ftimport-bad:\n%s", out)
	if _, err := os.Stat(filepath.Join(dir, "bad.json")); err == nil {
		t.Fatal("a refused import wrote a spec")
	}
	for _, el := range []string{
		"<memoryBacking><hugepages>: huge pages",
		"<vcpu>2</vcpu>: ftvmd runs one vCPU",
		"<os><type machine='pc-q35-",
		"<os>: no <initrd>",
		"<features><kvm>: KVM-only",
		"<cpu mode='host-passthrough'>: KVM-only",
		"<disk> ×2 (vda, vdb)",
		"<disk> vda <backingStore> (" + base + "): a backing chain",
		"<disk> vdb <driver type='raw'>",
		"<interface> ×2 (52:54:00:00:0b:01, 52:54:00:00:0b:02)",
		"<interface type='bridge'> 52:54:00:00:0b:01 <driver name='vhost'>: vhost",
		"<interface type='network'> 52:54:00:00:0b:02 <source network='default'>",
		"<interface type='network'> 52:54:00:00:0b:02 <model type='e1000'>",
		"<devices><hostdev type='pci'> 0000:03:00.0: device passthrough",
		"<devices><graphics type='vnc'>: ftvmd's VMs have no display",
	} {
		if !strings.Contains(out, "\n  - "+el) {
			t.Errorf("the error does not name %q", el)
		}
	}
	var n int
	if _, err := fmt.Sscanf(out[strings.Index(out, "as defined (")+len("as defined ("):], "%d problems", &n); err != nil {
		t.Fatalf("no problem count in %q: %v", out, err)
	}
	if lines := strings.Count(out, "\n  - "); strings.Count(out, "cannot be protected") != 1 || lines != n {
		t.Fatalf("want one error with %d problem lines, got %d lines:\n%s", n, lines, out)
	}

	// Libvirt would start its own copy at boot.
	if _, err := d.virsh(ctx, "autostart", "ftimport-ok"); err != nil {
		t.Fatal(err)
	}
	out, err = importCmd(ctx, bin, d, "ftimport-ok", "-o", "-")
	if err == nil || !strings.Contains(out, "libvirt autostarts the domain: libvirt would start its own copy when the host boots: 'virsh autostart --disable ftimport-ok'") {
		t.Fatalf("import of an autostarted domain: %v\n%s", err, out)
	}
	if _, err := d.virsh(ctx, "autostart", "--disable", "ftimport-ok"); err != nil {
		t.Fatal(err)
	}
	if out, err := importCmd(ctx, bin, d, "ftimport-ok", "-o", "-"); err != nil || !strings.Contains(out, `"bridge": "br0"`) {
		t.Fatalf("import to stdout: %v\n%s", err, out)
	}

	out, err = importCmd(ctx, bin, d, "no-such-domain", "-o", "-")
	if err == nil || !strings.Contains(out, `libvirt domain "no-such-domain": look up`) {
		t.Fatalf("import of a missing domain: %v\n%s", err, out)
	}
}

// TestLibvirtImportFailover: the lab guest, defined as a domain in a real libvirtd,
// is imported into the agent on host A, protected, and every process of host A is
// killed under client load writing durable records: the backup goes live with no
// request lost and every acknowledged record on its disk. The agents run with a
// --bridge that does not exist, so the VM reaches the network only through the
// bridge its imported spec names, on both hosts.
func TestLibvirtImportFailover(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not installed (test/setup.sh installs Debian's package): %v", err)
	}
	s := drillLab(ctx, t, append(agentArgs(), "--bridge", "ftvmd-nobr0", "--metrics-listen", fmt.Sprintf(":%d", metricsPort))...)
	// A real Prometheus scrapes both agents through the import, the protect and the
	// failover; the failover must show in what it scraped.
	prom := startPrometheus(t, promBin)
	d := startLibvirtd(ctx, t)
	const vm = "ftimport-fo"
	img, err := lab.CreateImage(lab.HostA, vm, "64M")
	if err != nil {
		t.Fatal(err)
	}
	d.define(ctx, vm, labDomainXML(vm, s.Lab.Kernel, s.Lab.Initrd, img))
	out, err := s.Lab.Run(ctx, "a", "vm", "import", vm, "--uri", d.uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out))
	rep, err := bench.RunDrillOpts(ctx, s, bench.NewEnv("e2e"),
		bench.DrillOpts{VM: vm, Kind: bench.KillPrimary, Disk: img, Defined: true}, rand.New(rand.NewSource(seed)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if rep.RecordsAcked == 0 {
		t.Fatal("no record was acknowledged before the fault")
	}
	if rep.RecordsMissing != 0 || rep.RequestsLost != 0 || rep.Inconsistent != 0 {
		t.Fatalf("%d acknowledged records missing, %d requests lost, %d inconsistent", rep.RecordsMissing, rep.RequestsLost, rep.Inconsistent)
	}
	if rep.Owner != "b" || rep.OwnerState != "unprotected" || !rep.ConnSurvived {
		t.Fatalf("owner %s (%s), connection survived %v", rep.Owner, rep.OwnerState, rep.ConnSurvived)
	}
	if rep.GuestRebooted || rep.CounterAfter <= rep.CounterBefore {
		t.Fatalf("guest counter %d -> %d: the guest lost its memory", rep.CounterBefore, rep.CounterAfter)
	}
	if rep.NewConns == 0 {
		t.Fatal("no new connection reached the guest during the drill")
	}
	expectScraped(ctx, t, prom, promFailoverChecks(vm))
}
