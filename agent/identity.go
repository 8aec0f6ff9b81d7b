package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/logging"
)

// errSameName: the peer runs under this host's own name.
var errSameName = errors.New("a primary and its backup must run under different host names")

// checkPeerName refuses a peer whose host name is empty or this host's own. Epoch
// claims are owned by host names, and a claim held by one's own name counts as one's
// own earlier retry (disk.decideClaim): with one name on both sides both copies win
// the same epoch in a partition, and the backup takes the primary's `unprotect` claim
// for a planned failover and goes live beside it. role is what the peer is ("primary"
// or "backup"), for the message.
func checkPeerName(own, peer, role string) error {
	switch peer {
	case "":
		return fmt.Errorf("the %s gave no host name", role)
	case own:
		return fmt.Errorf("%w: the %s calls itself %q, this host's own name (start each agent with its own --host)", errSameName, role, peer)
	}
	return nil
}

// checkPeer refuses a peer that calls itself a name its certificate does not name
// (mTLS only proves the certificate is from the CA: without this, host B could say it
// is host C), or this host's own name.
func checkPeer(conn net.Conn, own, claimed, role string) error {
	cert, err := logging.PeerCertificate(conn)
	if err != nil {
		return err
	}
	if err := logging.CheckCertNames(cert, claimed, fmt.Sprintf("the %s at %s", role, conn.RemoteAddr())); err != nil {
		return err
	}
	return checkPeerName(own, claimed, role)
}

// checkKeys checks this host's TLS keys before the agent starts. It refuses a private
// key others can read (logging.CheckKeyFile), a --host the certificate does not name
// (the peer would refuse every connection, and the name is this host's epoch owner)
// and a certificate that is not valid now; it warns when the host's or the CA's
// certificate expires within logging.CertExpiryWarning. A running agent checks the
// dates again every certRecheckEvery (watchCerts).
func (a *Agent) checkKeys(now time.Time) error {
	if err := logging.CheckKeyFile(filepath.Join(a.cfg.KeysDir, logging.HostKeyFile)); err != nil {
		return err
	}
	cert, err := logging.LoadHostCert(a.cfg.KeysDir)
	if err != nil {
		return fmt.Errorf("peer TLS (run 'ftvmd keys' first): %w", err)
	}
	certPath := filepath.Join(a.cfg.KeysDir, logging.HostCertFile)
	if !logging.CertNamesHost(cert, a.cfg.Host) {
		names := logging.CertNames(cert)
		return fmt.Errorf("%w: --host %q is not a name in this host's certificate %s, which names %q: start the agent with --host set to one of those, or issue a certificate for this name (ftvmd keys issue %s ...)",
			logging.ErrIdentity, a.cfg.Host, certPath, names, a.cfg.Host)
	}
	return a.checkCertDates(now, cert)
}

// checkCertDates warns (a WARN) when this host's certificate, cert, or the CA's
// expires within logging.CertExpiryWarning, and returns an error for one that is not
// valid at now.
func (a *Agent) checkCertDates(now time.Time, cert *x509.Certificate) error {
	caCert, err := logging.LoadCACert(a.cfg.KeysDir)
	if err != nil {
		return err
	}
	certPath := filepath.Join(a.cfg.KeysDir, logging.HostCertFile)
	for _, c := range []struct {
		cert *x509.Certificate
		what string
	}{
		{cert, "this host's certificate " + certPath},
		{caCert, "the CA certificate " + filepath.Join(a.cfg.KeysDir, logging.CACertFile)},
	} {
		warn, err := logging.CheckCertValidity(c.cert, c.what, now, logging.CertExpiryWarning)
		if err != nil {
			return fmt.Errorf("%w: issue a new one (ftvmd keys issue %s ...)", err, a.cfg.Host)
		}
		if warn != "" {
			a.log.Warn("certificate expires soon", "detail", warn, "not_after", c.cert.NotAfter)
		}
	}
	return nil
}

// certRecheckEvery is how often a running agent checks its certificates' dates again.
const certRecheckEvery = 12 * time.Hour

// recheckCerts is the periodic check of a running agent: the warning comes again
// while the certificate nears its end (every certRecheckEvery), and an ERROR once it
// has ended (every new connection to or from the peer then fails, and with it
// protection). It reads the files again, so a certificate replaced meanwhile counts.
func (a *Agent) recheckCerts(now time.Time) {
	cert, err := logging.LoadHostCert(a.cfg.KeysDir)
	if err == nil {
		err = a.checkCertDates(now, cert)
	}
	if err != nil {
		a.log.Error("certificate check: peers will refuse this host's connections", "err", err)
	}
}

// watchCerts runs recheckCerts every certRecheckEvery until ctx ends.
func (a *Agent) watchCerts(ctx context.Context) {
	t := time.NewTicker(certRecheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			a.recheckCerts(now)
		}
	}
}

// checkHelloEpoch refuses a protection whose Hello names an epoch the primary does
// not hold on shared storage: the backup's lifecycle claims the epoch after it, so it
// must be the latest claim, owned by the (certified) primary.
func (a *Agent) checkHelloEpoch(ctx context.Context, hello peerHello) error {
	if hello.Epoch == 0 || a.store == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := a.store.Current(cctx, hello.Spec.Name)
	if err != nil {
		return fmt.Errorf("checking the primary's epoch %d on shared storage: %w", hello.Epoch, err)
	}
	if c.Corrupt || c.Epoch != hello.Epoch || c.Owner != hello.From {
		return fmt.Errorf("the primary %q says it holds epoch %d of vm %s, but the latest claim on shared storage is epoch %d by %s",
			hello.From, hello.Epoch, hello.Spec.Name, c.Epoch, claimOwner(c))
	}
	return nil
}

func claimOwner(c disk.Claim) string {
	if c.Corrupt {
		return "an unknown owner (corrupt claim)"
	}
	return fmt.Sprintf("%q", c.Owner)
}
