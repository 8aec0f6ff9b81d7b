package logging

import (
	"crypto/x509"
	"fmt"
	"math"
	"os"
	"time"
)

// CheckKeyFile refuses a private key file that its owner's group or other users
// can read or write (any of the mode bits 0077), as ssh does: anyone who reads a
// host's key can pose as that host. The error names the file and the chmod to run.
func CheckKeyFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("private key: %w", err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", ErrKeyPermissions, path, perm, path)
	}
	return nil
}

// CertExpiryWarning is how long before its end a certificate is reported as
// expiring soon.
const CertExpiryWarning = 30 * 24 * time.Hour

// CheckCertValidity returns an ErrCertValidity if cert is not valid at now (expired,
// or not valid yet: the clock is behind the issuer's), and otherwise a warning
// ("" when none) if it expires within warnWithin. what names it in messages.
func CheckCertValidity(cert *x509.Certificate, what string, now time.Time, warnWithin time.Duration) (warning string, err error) {
	switch {
	case now.After(cert.NotAfter):
		return "", fmt.Errorf("%w: %s expired on %s", ErrCertValidity, what, cert.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(cert.NotBefore):
		return "", fmt.Errorf("%w: %s is valid only from %s (is this host's clock behind?)", ErrCertValidity, what, cert.NotBefore.UTC().Format(time.RFC3339))
	case cert.NotAfter.Sub(now) <= warnWithin:
		days := int(math.Round(cert.NotAfter.Sub(now).Hours() / 24))
		return fmt.Sprintf("%s expires on %s, in %d days: issue a new one before then (peers refuse an expired certificate)",
			what, cert.NotAfter.UTC().Format(time.RFC3339), days), nil
	}
	return "", nil
}
