package libvirtimport

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/vmspec"
)

// DefaultURI is the local system libvirt daemon, where `virsh` looks by default.
const DefaultURI = "qemu:///system"

// Domain is what Import reads about a domain from libvirt.
type Domain struct {
	XML       string // the persistent definition (virsh dumpxml --inactive)
	Active    bool   // libvirt runs it now
	Autostart bool   // libvirt starts it when the host boots
}

// Source reads domains from libvirt. Libvirt is the real one; tests use fakes.
type Source interface {
	Domain(ctx context.Context, name string) (Domain, error)
}

// Libvirt reads domains from the libvirt daemon at URI through go-libvirt (which
// speaks libvirt's RPC protocol itself: no libvirt C library on the host running
// ftvmd). URIs as virsh takes them: qemu:///system, qemu:///system?socket=/path,
// qemu+ssh://root@host/system, qemu+tls://host/system.
type Libvirt struct{ URI string }

// Domain reads one domain's definition and state.
func (l Libvirt) Domain(ctx context.Context, name string) (Domain, error) {
	u, err := url.Parse(l.URI)
	if err != nil {
		return Domain{}, fmt.Errorf("libvirt URI %q: %w", l.URI, err)
	}
	u = withLocalSocket(u, fileExists)
	// go-libvirt's calls take no context: its dialers time out by themselves, and
	// a disconnect when ctx ends fails the call under way.
	conn, err := golibvirt.ConnectToURI(u)
	if err != nil {
		return Domain{}, fmt.Errorf("connect to libvirt at %s: %w", l.URI, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Disconnect() })
	defer func() {
		if stop() {
			_ = conn.Disconnect()
		}
	}()
	wrap := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("libvirt domain %q: %s: %w", name, what, ctx.Err())
		}
		return fmt.Errorf("libvirt domain %q: %s: %w", name, what, err)
	}
	dom, err := conn.DomainLookupByName(name)
	if err != nil {
		return Domain{}, wrap("look up", err)
	}
	var d Domain
	if d.XML, err = conn.DomainGetXMLDesc(dom, golibvirt.DomainXMLInactive); err != nil {
		return Domain{}, wrap("read XML", err)
	}
	active, err := conn.DomainIsActive(dom)
	if err != nil {
		return Domain{}, wrap("read state", err)
	}
	auto, err := conn.DomainGetAutostart(dom)
	if err != nil {
		return Domain{}, wrap("read autostart", err)
	}
	d.Active, d.Autostart = active != 0, auto != 0
	return d, nil
}

// Local sockets of qemu:///system: libvirtd's, and virtqemud's on hosts that run
// libvirt's modular daemons (Debian 13's default), where libvirt's own client
// finds it by itself but go-libvirt dials libvirtd's path.
const (
	libvirtdSocket  = "/run/libvirt/libvirt-sock"
	virtqemudSocket = "/run/libvirt/virtqemud-sock"
)

// withLocalSocket names virtqemud's socket in a local qemu:///system URI that
// names none, when libvirtd's is absent and virtqemud's is there.
func withLocalSocket(u *url.URL, exists func(string) bool) *url.URL {
	q := u.Query()
	if u.Scheme != "qemu" || u.Host != "" || u.Path != "/system" || q.Get("socket") != "" {
		return u
	}
	if exists(libvirtdSocket) || !exists(virtqemudSocket) {
		return u
	}
	v := *u
	q.Set("socket", virtqemudSocket)
	v.RawQuery = q.Encode()
	return &v
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// UnsupportedError lists everything that keeps ftvmd from running a domain as
// libvirt defines it: one error, one line per problem.
type UnsupportedError struct {
	Domain   string
	Problems []Problem
}

func (e *UnsupportedError) Error() string {
	var b strings.Builder
	n := len(e.Problems)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	fmt.Fprintf(&b, "libvirt domain %q cannot be protected by ftvmd as defined (%d problem%s; change the domain, e.g. with 'virsh edit %s', and import it again):", e.Domain, n, plural, e.Domain)
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Import reads domain from src and returns its VM spec, normalized and valid, or
// an *UnsupportedError naming every problem at once: the domain's elements ftvmd
// cannot run (Convert), a domain libvirt runs or would start itself, a disk image
// that is not standalone, and what the spec's validation finds on this host
// (kernel and initrd files, the name). name, if not empty, names the VM instead of
// the domain's name (ftvmd's names are stricter than libvirt's).
func Import(ctx context.Context, src Source, domain, name string) (vmspec.Spec, error) {
	d, err := src.Domain(ctx, domain)
	if err != nil {
		return vmspec.Spec{}, err
	}
	var x libvirtxml.Domain
	if err := x.Unmarshal(d.XML); err != nil {
		return vmspec.Spec{}, fmt.Errorf("libvirt domain %q: parse its XML: %w", domain, err)
	}
	s, problems := Convert(&x)
	if d.Active {
		problems = append(problems, Problem{Element: "libvirt runs the domain",
			Reason: fmt.Sprintf("shut it down first ('virsh shutdown %s'): ftvmd runs the VM itself, and two copies on one disk image and one MAC corrupt the image and confuse the network", domain)})
	}
	if d.Autostart {
		problems = append(problems, Problem{Element: "libvirt autostarts the domain",
			Reason: fmt.Sprintf("libvirt would start its own copy when the host boots: 'virsh autostart --disable %s'", domain)})
	}
	if name != "" {
		s.Name = name
	}
	s.Normalize()
	// The image itself: a disk problem already reported means the disk part of the
	// domain changes anyway, and the image is checked on the next import.
	if s.Disk != "" && !hasField(problems, "disk") {
		if err := disk.CheckStandalone(s.Disk); err != nil {
			problems = append(problems, Problem{Element: "<disk> image " + s.Disk, Reason: err.Error(), field: "disk"})
		}
	}
	problems = append(problems, specProblems(s, problems)...)
	if len(problems) > 0 {
		return vmspec.Spec{}, &UnsupportedError{Domain: domain, Problems: problems}
	}
	return s, nil
}

func hasField(ps []Problem, field string) bool {
	for _, p := range ps {
		if p.field == field {
			return true
		}
	}
	return false
}

// specProblems is what vmspec's validation finds in s, less what the problems
// already say about the same fields (a missing kernel is reported once, with the
// reason from the domain).
func specProblems(s vmspec.Spec, already []Problem) []Problem {
	err := s.Validate()
	var inv *vmspec.InvalidError
	if err == nil {
		return nil
	}
	if !errors.As(err, &inv) {
		return []Problem{{Element: "ftvmd spec", Reason: err.Error()}}
	}
	var out []Problem
	for _, p := range inv.Problems {
		msg := p.Error()
		field, _, _ := strings.Cut(msg, " ")
		field = strings.TrimSuffix(field, ":")
		if hasField(already, field) {
			continue
		}
		if field == "name" {
			msg += " (give it another with --name)"
		}
		out = append(out, Problem{Element: "ftvmd spec", Reason: msg, field: field})
	}
	return out
}
