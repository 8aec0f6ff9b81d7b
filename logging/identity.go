package logging

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// Host names are bound to certificates: a host is the name the CA wrote into its
// certificate (IssueHost writes it as the subject CN and as a DNS or IP SAN, plus the
// --ip SANs). Anything a peer says about itself on the wire (a Hello's From, a reply's
// Host, later an epoch claim's owner) is checked against the certificate it
// authenticated with, so one CA-issued key cannot pose as another host.

// CertNames lists the names cert is issued for: its subject CN, its DNS SANs and its
// IP SANs, without duplicates, in that order.
func CertNames(cert *x509.Certificate) []string {
	var names []string
	add := func(n string) {
		if n == "" {
			return
		}
		for _, have := range names {
			if have == n {
				return
			}
		}
		names = append(names, n)
	}
	add(cert.Subject.CommonName)
	for _, d := range cert.DNSNames {
		add(d)
	}
	for _, ip := range cert.IPAddresses {
		add(ip.String())
	}
	return names
}

// CertNamesHost reports whether cert is issued for host: host is its subject CN or
// one of its DNS SANs (byte for byte: the name is also an epoch owner, compared
// exactly; no wildcards), or host is an IP address equal to one of its IP SANs.
func CertNamesHost(cert *x509.Certificate, host string) bool {
	if host == "" {
		return false
	}
	if cert.Subject.CommonName == host {
		return true
	}
	for _, d := range cert.DNSNames {
		if d == host {
			return true
		}
	}
	if ip := net.ParseIP(host); ip != nil {
		for _, have := range cert.IPAddresses {
			if have.Equal(ip) {
				return true
			}
		}
	}
	return false
}

// CheckCertNames returns nil if cert names host, else an ErrIdentity saying who
// claimed what (who: "the peer at 10.0.0.2:7800", "--host").
func CheckCertNames(cert *x509.Certificate, host, who string) error {
	if CertNamesHost(cert, host) {
		return nil
	}
	return fmt.Errorf("%w: %s calls itself %q but its certificate (serial %x) names %s",
		ErrIdentity, who, host, cert.SerialNumber, quoteNames(CertNames(cert)))
}

func quoteNames(names []string) string {
	if len(names) == 0 {
		return "no host at all"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// PeerCertificate returns the certificate conn's peer authenticated with, verified
// against the CA. conn must be a *tls.Conn whose handshake has completed (after the
// first read or write): a plain connection has no identity and is an error.
func PeerCertificate(conn net.Conn) (*x509.Certificate, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return nil, fmt.Errorf("%w: connection from %s is not TLS", ErrIdentity, conn.RemoteAddr())
	}
	st := tc.ConnectionState()
	if !st.HandshakeComplete {
		return nil, errors.New("TLS handshake not complete: no peer certificate yet")
	}
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return nil, fmt.Errorf("%w: %s presented no verified certificate", ErrIdentity, conn.RemoteAddr())
	}
	return st.VerifiedChains[0][0], nil
}

// LoadHostCert reads and parses keyDir/host.crt.
func LoadHostCert(keyDir string) (*x509.Certificate, error) {
	return loadCert(filepath.Join(keyDir, HostCertFile))
}

// LoadCACert reads and parses keyDir/ca.crt.
func LoadCACert(keyDir string) (*x509.Certificate, error) {
	return loadCert(filepath.Join(keyDir, CACertFile))
}

func loadCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return cert, nil
}
