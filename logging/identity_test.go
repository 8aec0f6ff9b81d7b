package logging

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestCertNamesHost(t *testing.T) {
	k := makeKeys(t, "CA")
	cert, err := LoadHostCert(k.server) // "backup.test", IP 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	if got, want := CertNames(cert), []string{"backup.test", "127.0.0.1"}; !slices.Equal(got, want) {
		t.Fatalf("CertNames %q, want %q", got, want)
	}
	for host, want := range map[string]bool{
		"backup.test":      true,
		"127.0.0.1":        true,
		"::ffff:127.0.0.1": true, // the same address
		"BACKUP.test":      false,
		"backup":           false,
		"primary.test":     false,
		"127.0.0.2":        false,
		"":                 false,
	} {
		if got := CertNamesHost(cert, host); got != want {
			t.Errorf("CertNamesHost(%q) = %v, want %v", host, got, want)
		}
	}
	if err := CheckCertNames(cert, "primary.test", "the peer"); !errors.Is(err, ErrIdentity) {
		t.Fatalf("CheckCertNames: %v, want ErrIdentity", err)
	} else {
		t.Log(err)
	}

	// A host issued by address: the CN is the address and so is its IP SAN.
	dir := filepath.Join(t.TempDir(), "ip")
	if err := IssueHost(k.ca, dir, "10.1.2.3", nil); err != nil {
		t.Fatal(err)
	}
	ipCert, err := LoadHostCert(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !CertNamesHost(ipCert, "10.1.2.3") || CertNamesHost(ipCert, "10.1.2.4") {
		t.Fatalf("address certificate names %q", CertNames(ipCert))
	}

	// A wildcard SAN (IssueHost never writes one; another issuer might) names no host.
	caCert, caKey, err := loadCA(k.ca)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "wild"},
		DNSNames: []string{"*.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	wild, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if CertNamesHost(wild, "backup.test") || !CertNamesHost(wild, "*.test") {
		t.Fatal("a wildcard SAN matched a host name")
	}
}

func TestPeerCertificate(t *testing.T) {
	k := makeKeys(t, "CA")
	srv, cli, serr, cerr := tlsDial(t, serverCfg(t, k.server), clientCfg(t, k.client))
	if serr != nil || cerr != nil {
		t.Fatalf("server %v, client %v", serr, cerr)
	}
	defer srv.Close()
	defer cli.Close()
	for _, c := range []struct {
		conn net.Conn
		peer string
	}{{srv, "primary.test"}, {cli, "backup.test"}} {
		cert, err := PeerCertificate(c.conn)
		if err != nil {
			t.Fatal(err)
		}
		if !CertNamesHost(cert, c.peer) {
			t.Fatalf("peer certificate names %q, want %s", CertNames(cert), c.peer)
		}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := PeerCertificate(a); !errors.Is(err, ErrIdentity) {
		t.Fatalf("plain conn: %v, want ErrIdentity", err)
	}
}
