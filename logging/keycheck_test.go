package logging

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A private key others can read is refused wherever it is loaded, with the file and
// the chmod to run in the error.
func TestKeyReadableByOthersRefused(t *testing.T) {
	k := makeKeys(t, "CA")
	hostKey := filepath.Join(k.server, HostKeyFile)
	caKey := filepath.Join(k.ca, CAKeyFile)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o620, 0o660} {
		if err := os.Chmod(hostKey, mode); err != nil {
			t.Fatal(err)
		}
		for name, load := range map[string]func() error{
			"ServerTLS": func() error { _, err := ServerTLS(k.server); return err },
			"ClientTLS": func() error { _, err := ClientTLS(k.server, "x"); return err },
		} {
			err := load()
			if !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600 "+hostKey) {
				t.Fatalf("%s with host.key mode %04o: %v, want %v with the chmod to run", name, mode, err, ErrKeyPermissions)
			}
		}
	}
	if err := os.Chmod(hostKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(k.server); err != nil {
		t.Fatalf("mode 0600: %v", err)
	}
	if err := os.Chmod(hostKey, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := ServerTLS(k.server); err != nil {
		t.Fatalf("mode 0400: %v", err)
	}

	// The CA's key: issuing a host certificate refuses it too.
	if err := os.Chmod(caKey, 0o644); err != nil {
		t.Fatal(err)
	}
	err := IssueHost(k.ca, filepath.Join(t.TempDir(), "h"), "h", nil)
	if !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600 "+caKey) {
		t.Fatalf("IssueHost with ca.key mode 0644: %v", err)
	}
	t.Log(err)
}

func TestCheckCertValidity(t *testing.T) {
	k := makeKeys(t, "CA")
	dir := filepath.Join(t.TempDir(), "short")
	const validity = 10 * 24 * time.Hour
	if err := IssueHostFor(k.ca, dir, "h", []net.IP{net.IPv4(127, 0, 0, 1)}, validity); err != nil {
		t.Fatal(err)
	}
	cert, err := LoadHostCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	warn, err := CheckCertValidity(cert, "host.crt", now, CertExpiryWarning)
	if err != nil || !strings.Contains(warn, "host.crt expires on") || !strings.Contains(warn, "in 10 days") {
		t.Fatalf("10-day certificate: warning %q, err %v; want an expiry warning", warn, err)
	}
	t.Log(warn)
	// A long-lived one: no warning until its last 30 days.
	long, err := LoadHostCert(k.server)
	if err != nil {
		t.Fatal(err)
	}
	if warn, err := CheckCertValidity(long, "host.crt", now, CertExpiryWarning); warn != "" || err != nil {
		t.Fatalf("5-year certificate: warning %q, err %v", warn, err)
	}
	if warn, _ := CheckCertValidity(long, "host.crt", long.NotAfter.Add(-CertExpiryWarning+time.Hour), CertExpiryWarning); warn == "" {
		t.Fatal("no warning 29 days before the end")
	}
	if warn, _ := CheckCertValidity(long, "host.crt", long.NotAfter.Add(-CertExpiryWarning-time.Hour), CertExpiryWarning); warn != "" {
		t.Fatalf("warning 30 days and an hour before the end: %q", warn)
	}
	// Expired, and not valid yet.
	if _, err := CheckCertValidity(cert, "host.crt", now.Add(validity+time.Hour), CertExpiryWarning); !errors.Is(err, ErrCertValidity) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired: %v", err)
	}
	if _, err := CheckCertValidity(cert, "host.crt", now.Add(-2*time.Hour), CertExpiryWarning); !errors.Is(err, ErrCertValidity) || !strings.Contains(err.Error(), "valid only from") {
		t.Fatalf("not yet valid: %v", err)
	}
	if err := IssueHostFor(k.ca, dir, "h", nil, 0); err == nil {
		t.Fatal("zero validity accepted")
	}
}
