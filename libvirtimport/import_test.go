package libvirtimport

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/vmspec"
)

// fakeSource serves one domain, as libvirt would.
type fakeSource struct {
	name string
	dom  Domain
	err  error
}

func (f fakeSource) Domain(_ context.Context, name string) (Domain, error) {
	if f.err != nil {
		return Domain{}, f.err
	}
	if name != f.name {
		return Domain{}, errors.New("Domain not found: no domain with matching name '" + name + "'")
	}
	return f.dom, nil
}

// hostFiles makes the lab guest's kernel, initrd and a standalone qcow2 image, and
// returns the fixture with its paths pointing at them.
func hostFiles(t *testing.T) (doc, dir string) {
	t.Helper()
	qemuImg := needQemuImg(t)
	dir = t.TempDir()
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run(t, qemuImg, "create", "-q", "-f", "qcow2", filepath.Join(dir, "web1.qcow2"), "4M")
	return strings.ReplaceAll(fixture(t, "lab-guest.xml"), "/srv/ftvmd/", dir+"/"), dir
}

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

func run(t *testing.T, bin string, args ...string) {
	t.Helper()
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
}

func TestImport(t *testing.T) {
	doc, dir := hostFiles(t)
	ctx := context.Background()
	s, err := Import(ctx, fakeSource{name: "web1", dom: Domain{XML: doc}}, "web1", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "web1" || s.MemoryMB != 256 || s.Kernel != dir+"/vmlinuz" || s.Initrd != dir+"/initrd.img" ||
		s.Disk != dir+"/web1.qcow2" || s.MAC != "52:54:00:12:34:56" || s.Bridge != "br-lan" ||
		s.Append != "console=ttyS0 quiet panic=-1 ft.ip=10.77.0.100/24" {
		t.Fatalf("spec %+v", s)
	}
	// Normalized: what an operator did not say takes ftvmd's defaults.
	if s.Shift() != vmspec.DefaultIcountShift || s.LagBoundMS != vmspec.DefaultLagBoundMS {
		t.Fatalf("not normalized: %+v", s)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}

	// Another name for ftvmd than libvirt's.
	upper := strings.Replace(doc, "<name>web1</name>", "<name>Web.1</name>", 1)
	_, err = Import(ctx, fakeSource{name: "Web.1", dom: Domain{XML: upper}}, "Web.1", "")
	if err == nil || !strings.Contains(err.Error(), `ftvmd spec: name "Web.1"`) || !strings.Contains(err.Error(), "--name") {
		t.Fatalf("want the name refused with the --name hint, got %v", err)
	}
	if s, err := Import(ctx, fakeSource{name: "Web.1", dom: Domain{XML: upper}}, "Web.1", "web-1"); err != nil || s.Name != "web-1" {
		t.Fatalf("with --name: %+v, %v", s, err)
	}

	// Libvirt cannot tell the source's error apart from ours: it comes back wrapped.
	if _, err := Import(ctx, fakeSource{name: "web1", dom: Domain{XML: doc}}, "web2", ""); err == nil || !strings.Contains(err.Error(), "web2") {
		t.Fatalf("unknown domain: %v", err)
	}
	if _, err := Import(ctx, fakeSource{name: "web1", dom: Domain{XML: "<domain"}}, "web1", ""); err == nil || !strings.Contains(err.Error(), "parse") {
		t.Fatalf("broken XML: %v", err)
	}
}

// Everything is listed in one error: the domain's elements, libvirt's own use of
// the domain, the image, and what the spec's validation finds on this host, each
// once.
func TestImportListsEveryProblemOnce(t *testing.T) {
	doc, dir := hostFiles(t)
	qemuImg := needQemuImg(t)
	// An image with a backing file the XML does not show (libvirt's inactive XML
	// does not probe images).
	run(t, qemuImg, "create", "-q", "-f", "qcow2", "-b", filepath.Join(dir, "web1.qcow2"), "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
	doc = strings.Replace(doc, "web1.qcow2", "top.qcow2", 1)
	doc = strings.Replace(doc, "<vcpu placement='static'>1</vcpu>", "<vcpu placement='static'>2</vcpu>", 1)
	doc = strings.Replace(doc, dir+"/vmlinuz", dir+"/missing-vmlinuz", 1)
	doc = strings.Replace(doc, "<initrd>"+dir+"/initrd.img</initrd>", "", 1)
	_, err := Import(context.Background(), fakeSource{name: "web1", dom: Domain{XML: doc, Active: true, Autostart: true}}, "web1", "")
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("want *UnsupportedError, got %v", err)
	}
	checkProblems(t, ue.Problems, []want{
		{"<vcpu>2</vcpu>", "one vCPU"},
		{"<os>", "no <initrd>"},
		{"libvirt runs the domain", "virsh shutdown web1"},
		{"libvirt autostarts the domain", "virsh autostart --disable web1"},
		{"<disk> image " + dir + "/top.qcow2", "backing file"},
		{"ftvmd spec", "kernel: stat " + dir + "/missing-vmlinuz"},
	})
	msg := err.Error()
	if lines := strings.Split(msg, "\n"); len(lines) != 1+len(ue.Problems) || !strings.HasPrefix(lines[0], `libvirt domain "web1" cannot be protected by ftvmd as defined (6 problems;`) {
		t.Fatalf("error text:\n%s", msg)
	}
	for _, p := range ue.Problems {
		if !strings.Contains(msg, "\n  - "+p.String()) {
			t.Fatalf("error text lacks %q:\n%s", p, msg)
		}
	}
}

// With the backing chain in the XML (a running domain's XML shows it), it is
// reported from there, not a second time from the image.
func TestImportBackingChainOnce(t *testing.T) {
	doc, dir := hostFiles(t)
	run(t, needQemuImg(t), "create", "-q", "-f", "qcow2", "-b", filepath.Join(dir, "web1.qcow2"), "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
	doc = strings.Replace(doc, "web1.qcow2", "top.qcow2", 1)
	doc = strings.Replace(doc, "<backingStore/>", "<backingStore type='file'><format type='qcow2'/><source file='"+dir+"/web1.qcow2'/></backingStore>", 1)
	_, err := Import(context.Background(), fakeSource{name: "web1", dom: Domain{XML: doc}}, "web1", "")
	var ue *UnsupportedError
	if !errors.As(err, &ue) {
		t.Fatalf("want *UnsupportedError, got %v", err)
	}
	checkProblems(t, ue.Problems, []want{{"<disk> vda <backingStore> (" + dir + "/web1.qcow2)", "backing chain"}})
}

func TestLibvirtBadURI(t *testing.T) {
	ctx := context.Background()
	if _, err := (Libvirt{URI: "qemu:///system?socket=" + t.TempDir() + "/no-such.sock"}).Domain(ctx, "x"); err == nil || !strings.Contains(err.Error(), "connect to libvirt") {
		t.Fatalf("no daemon: %v", err)
	}
	if _, err := (Libvirt{URI: "qemu+carrier-pigeon://host/system"}).Domain(ctx, "x"); err == nil {
		t.Fatal("unknown transport: want an error")
	}
	if _, err := (Libvirt{URI: "::"}).Domain(ctx, "x"); err == nil || !strings.Contains(err.Error(), "URI") {
		t.Fatalf("bad URI: %v", err)
	}
}

func TestWithLocalSocket(t *testing.T) {
	only := func(paths ...string) func(string) bool {
		return func(p string) bool {
			for _, x := range paths {
				if p == x {
					return true
				}
			}
			return false
		}
	}
	cases := []struct {
		uri    string
		exists func(string) bool
		want   string
	}{
		{"qemu:///system", only(libvirtdSocket, virtqemudSocket), "qemu:///system"},
		{"qemu:///system", only(virtqemudSocket), "qemu:///system?socket=%2Frun%2Flibvirt%2Fvirtqemud-sock"},
		{"qemu:///system", only(), "qemu:///system"},
		{"qemu:///system?socket=/x/sock", only(virtqemudSocket), "qemu:///system?socket=/x/sock"},
		{"qemu+ssh://root@h/system", only(virtqemudSocket), "qemu+ssh://root@h/system"},
		{"qemu:///session", only(virtqemudSocket), "qemu:///session"},
	}
	for _, c := range cases {
		u, err := url.Parse(c.uri)
		if err != nil {
			t.Fatal(err)
		}
		if got := withLocalSocket(u, c.exists).String(); got != c.want {
			t.Errorf("%s: %s, want %s", c.uri, got, c.want)
		}
	}
}
