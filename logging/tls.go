package logging

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Key file names.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	HostCertFile = "host.crt"
	HostKeyFile  = "host.key"
)

const (
	caValidity   = 20 * 365 * 24 * time.Hour
	hostValidity = 5 * 365 * 24 * time.Hour
)

// InitCA creates a new ECDSA P-256 certificate authority in dir: ca.crt and
// ca.key (mode 0600). It refuses (ErrExists) to overwrite an existing one.
func InitCA(dir string, name string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating CA dir: %w", err)
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, filepath.Join(dir, f))
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking for existing CA: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"ftvmd"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          keyID(&key.PublicKey),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("signing CA certificate: %w", err)
	}
	// The key first, exclusively: a concurrent InitCA loses here.
	if err := writeKey(filepath.Join(dir, CAKeyFile), key, true); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, CACertFile), "CERTIFICATE", der, 0o644, true)
}

// DefaultHostValidity is how long IssueHost's certificates are valid.
const DefaultHostValidity = hostValidity

// IssueHost issues a host certificate valid for DefaultHostValidity; see
// IssueHostFor.
func IssueHost(caDir, outDir, hostName string, ips []net.IP) error {
	return IssueHostFor(caDir, outDir, hostName, ips, hostValidity)
}

// IssueHostFor issues a host certificate signed by the CA in caDir, valid from an
// hour ago for validity, and writes outDir/host.crt, host.key (0600) and a copy of
// ca.crt. The certificate is valid for both server and client authentication; its
// subject CN is hostName and its SANs are hostName (as a DNS name, or an IP if it
// parses as one) and ips.
func IssueHostFor(caDir, outDir, hostName string, ips []net.IP, validity time.Duration) error {
	if validity <= 0 {
		return fmt.Errorf("certificate validity %s: must be positive", validity)
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return fmt.Errorf("creating key dir: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating host key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostName, Organization: []string{"ftvmd"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  append([]net.IP(nil), ips...),
		SubjectKeyId: keyID(&key.PublicKey),
	}
	if ip := net.ParseIP(hostName); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if hostName != "" {
		tmpl.DNSNames = []string{hostName}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("signing host certificate: %w", err)
	}
	if err := writeKey(filepath.Join(outDir, HostKeyFile), key, false); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(outDir, HostCertFile), "CERTIFICATE", der, 0o644, false); err != nil {
		return err
	}
	return writePEM(filepath.Join(outDir, CACertFile), "CERTIFICATE", caCert.Raw, 0o644, false)
}

// ServerTLS returns a TLS 1.3-only server config that presents
// keyDir/host.crt and requires a client certificate signed by keyDir/ca.crt.
func ServerTLS(keyDir string) (*tls.Config, error) {
	cert, pool, err := loadHost(keyDir)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientTLS returns a TLS 1.3-only client config that presents
// keyDir/host.crt and verifies the server (as serverName) against
// keyDir/ca.crt.
func ClientTLS(keyDir string, serverName string) (*tls.Config, error) {
	cert, pool, err := loadHost(keyDir)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// Dial connects to addr and completes the TLS handshake, both within timeout (0:
// ctx's) of ctx. The TLS runs over BatchWrites's conn.
func Dial(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	tc := tls.Client(BatchWrites(raw), cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// ServerHandshake wraps an accepted conn in TLS and completes the handshake
// within ctx. On failure it closes conn.
func ServerHandshake(ctx context.Context, conn net.Conn, cfg *tls.Config) (*tls.Conn, error) {
	tc := tls.Server(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", conn.RemoteAddr(), err)
	}
	return tc, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func keyID(pub *ecdsa.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

func writeKey(path string, key *ecdsa.PrivateKey, exclusive bool) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600, exclusive)
}

// writePEM writes one PEM block. exclusive refuses an existing file;
// otherwise the file is replaced atomically.
func writePEM(path, typ string, der []byte, mode os.FileMode, exclusive bool) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if exclusive {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, path)
		}
		if err != nil {
			return fmt.Errorf("creating %s: %w", path, err)
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return fmt.Errorf("writing %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("syncing %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("closing %s: %w", path, err)
		}
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("creating temp file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("installing %s: %w", path, err)
	}
	return nil
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		return nil, fmt.Errorf("%s: no %s PEM block", path, typ)
	}
	return b.Bytes, nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	der, err := readPEM(filepath.Join(dir, CACertFile), "CERTIFICATE")
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	if err := CheckKeyFile(filepath.Join(dir, CAKeyFile)); err != nil {
		return nil, nil, err
	}
	kder, err := readPEM(filepath.Join(dir, CAKeyFile), "PRIVATE KEY")
	if err != nil {
		return nil, nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kder)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing CA key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("CA key is %T, want ECDSA", k)
	}
	return cert, key, nil
}

func loadHost(dir string) (tls.Certificate, *x509.CertPool, error) {
	if err := CheckKeyFile(filepath.Join(dir, HostKeyFile)); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, HostCertFile), filepath.Join(dir, HostKeyFile))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("loading host key pair from %s: %w", dir, err)
	}
	caDER, err := readPEM(filepath.Join(dir, CACertFile), "CERTIFICATE")
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("parsing %s: %w", filepath.Join(dir, CACertFile), err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return cert, pool, nil
}
