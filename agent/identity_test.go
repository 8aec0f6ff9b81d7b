package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/vmspec"
)

// Two hosts that both run under the default --host, their machine's hostname, and
// got certificates for that one name: each refuses the other. (An epoch claim held by
// one's own name counts as one's own retry, so one name on both sides makes two
// winners.)
func TestSameHostNameRefusedByBackup(t *testing.T) {
	ca := newTestCA(t)
	bk := testAgent(t, "debian", ca.issue("debian"))
	addr := servePeersTLS(t, bk)
	primaryKeys := ca.issue("debian") // the other machine, same hostname

	r, err := helloAs(t, addr, primaryKeys, peerHello{Op: "backup", From: "debian", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !strings.Contains(r.Error, errSameName.Error()) || !strings.Contains(r.Error, `"debian"`) {
		t.Fatalf("backup answered %+v, want a refusal naming the shared host name", r)
	}
	t.Logf("refused: %s", r.Error)

	// Control: a primary with its own name gets past the name check (and is refused
	// for its empty spec instead).
	r, err = helloAs(t, addr, ca.issue("hosta"), peerHello{Op: "backup", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || strings.Contains(r.Error, errSameName.Error()) || !strings.Contains(r.Error, "invalid vm spec") {
		t.Fatalf("backup answered %+v, want a refusal of the spec only", r)
	}
}

func TestSameHostNameRefusedByPrimary(t *testing.T) {
	ca := newTestCA(t)
	a := testAgent(t, "debian", ca.issue("debian"))

	// A backup that accepts under the primary's own name (it does not check, or lies).
	addr, next := fakeBackup(t, ca.issue("debian"), peerReply{OK: true, Host: "debian"})
	p := testPrimary(t, a, addr)
	err := p.connectBackup(context.Background())
	if !errors.Is(err, errSameName) {
		t.Fatalf("connectBackup: %v, want %v", err, errSameName)
	}
	t.Logf("refused: %v", err)
	p.runCleanups()
	// The backup accepted, so it must hear an orderly Bye (a dropped connection
	// would read as a lost primary and make it claim the next epoch).
	if m, ok := <-next; !ok || m.Type != logging.MsgBye {
		t.Fatalf("backup got %v (ok %v) after the refusal, want a Bye", m.Type, ok)
	}

	// Control: a backup with its own name is accepted.
	addr, _ = fakeBackup(t, ca.issue("hostb"), peerReply{OK: true, Host: "hostb"})
	p = testPrimary(t, a, addr)
	if err := p.connectBackup(context.Background()); err != nil {
		t.Fatalf("connectBackup to a distinct backup: %v", err)
	}
	p.runCleanups()
	if p.backupHost != "hostb" {
		t.Fatalf("backupHost %q, want hostb", p.backupHost)
	}
}

// A primary whose certificate is from the CA but names another host cannot say it is
// host A: the backup refuses it and logs why.
func TestPeerPosingAsAnotherHostRefusedByBackup(t *testing.T) {
	ca := newTestCA(t)
	bk := testAgent(t, "hostb", ca.issue("hostb"))
	logs := captureLog(t, bk)
	addr := servePeersTLS(t, bk)

	r, err := helloAs(t, addr, ca.issue("hostc"), peerHello{Op: "backup", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !strings.Contains(r.Error, `calls itself "hosta" but its certificate`) || !strings.Contains(r.Error, `"hostc"`) {
		t.Fatalf("backup answered %+v, want a refusal naming the claimed and the certified name", r)
	}
	waitLog(t, logs, "peer refused", `calls itself \"hosta\"`)

	// The checksum request is refused the same way.
	r, err = helloAs(t, addr, ca.issue("hostc"), peerHello{Op: "checksum", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !strings.Contains(r.Error, "but its certificate") {
		t.Fatalf("checksum request answered %+v, want a refusal", r)
	}

	// Control: the certificate's holder under its own name gets past the identity
	// check (and is refused for its empty spec).
	r, err = helloAs(t, addr, ca.issue("hosta"), peerHello{Op: "backup", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || strings.Contains(r.Error, "certificate") || !strings.Contains(r.Error, "invalid vm spec") {
		t.Fatalf("backup answered %+v, want a refusal of the spec only", r)
	}
}

// A backup whose certificate names host C cannot answer as host B (the primary would
// hand a planned failover's epoch to host B).
func TestPeerPosingAsAnotherHostRefusedByPrimary(t *testing.T) {
	ca := newTestCA(t)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	addr, next := fakeBackup(t, ca.issue("hostc"), peerReply{OK: true, Host: "hostb"})
	p := testPrimary(t, a, addr)
	err := p.connectBackup(context.Background())
	if !errors.Is(err, logging.ErrIdentity) || !strings.Contains(err.Error(), `"hostb"`) {
		t.Fatalf("connectBackup: %v, want %v naming hostb", err, logging.ErrIdentity)
	}
	t.Logf("refused: %v", err)
	p.runCleanups()
	if m, ok := <-next; !ok || m.Type != logging.MsgBye {
		t.Fatalf("backup got %v (ok %v) after the refusal, want a Bye", m.Type, ok)
	}
	if p.backupHost != "" {
		t.Fatalf("backupHost %q set from a refused reply", p.backupHost)
	}
}

// An agent refuses to start under a --host its certificate does not name, before it
// opens its control socket.
func TestAgentRefusesHostNotInCertificate(t *testing.T) {
	ca := newTestCA(t)
	keys := ca.issue("hosta")
	a := testAgent(t, "debian", keys)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := a.Run(ctx)
	if !errors.Is(err, logging.ErrIdentity) || !strings.Contains(err.Error(), `--host "debian"`) || !strings.Contains(err.Error(), `"hosta"`) {
		t.Fatalf("Run: %v, want %v naming --host and the certificate's names", err, logging.ErrIdentity)
	}
	t.Logf("refused: %v", err)
	if _, serr := os.Stat(a.cfg.Socket); !os.IsNotExist(serr) {
		t.Fatalf("control socket exists after a refused start: %v", serr)
	}
	// Any name the certificate carries is accepted: its CN and its IP SAN.
	for _, host := range []string{"hosta", "127.0.0.1"} {
		a := testAgent(t, host, keys)
		if err := a.checkKeys(time.Now()); err != nil {
			t.Errorf("--host %s: %v", host, err)
		}
	}
}

// waitLog waits until the log has a line containing every one of parts.
func waitLog(t *testing.T, logs *logCopy, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(line, p)
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line with %q in:\n%s", parts, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// validSpec is a spec that passes vmspec validation (its kernel and initrd are empty
// files made in the test).
func validSpec(t *testing.T, name string) vmspec.Spec {
	t.Helper()
	dir := t.TempDir()
	s := vmspec.Spec{Name: name, MAC: "52:54:00:12:34:56", Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img")}
	for _, p := range []string{s.Kernel, s.Initrd} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.Normalize()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	return s
}

// The epoch in a Hello is the primary's word too: the backup checks it is the latest
// claim on shared storage, owned by the primary, before it becomes that primary's
// backup (its lifecycle claims the epoch after it).
func TestHelloEpochCheckedAgainstStore(t *testing.T) {
	ca := newTestCA(t)
	bk := testAgent(t, "hostb", ca.issue("hostb"))
	bk.cfg.QEMU = "/nonexistent/qemu-system-x86_64" // a backup that got this far could not start
	store := disk.NewMemStore()
	bk.store = store
	addr := servePeersTLS(t, bk)
	primaryKeys := ca.issue("hosta")
	spec := validSpec(t, "vm1")
	if _, err := store.ClaimNext(context.Background(), "vm1", 0, "hostc", "protect"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.ClaimNext(context.Background(), "vm1", 1, "hosta", "protect"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		epoch uint64
		want  string
	}{
		{"epoch-of-another-owner", 1, `latest claim on shared storage is epoch 2 by "hosta"`},
		{"epoch-never-claimed", 7, `says it holds epoch 7`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := helloAs(t, addr, primaryKeys, peerHello{Op: "backup", From: "hosta", Spec: spec, Epoch: tc.epoch, StartOffset: 12})
			if err != nil {
				t.Fatal(err)
			}
			if r.OK || !strings.Contains(r.Error, tc.want) {
				t.Fatalf("backup answered %+v, want a refusal containing %q", r, tc.want)
			}
			t.Logf("refused: %s", r.Error)
		})
	}
	// The primary's own latest epoch passes.
	if err := bk.checkHelloEpoch(context.Background(), peerHello{From: "hosta", Spec: spec, Epoch: 2}); err != nil {
		t.Fatalf("the latest epoch, held by the primary: %v", err)
	}
	// Shared storage that does not answer refuses too (the ctx bounds the check).
	store.SetHung(true)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := bk.checkHelloEpoch(ctx, peerHello{From: "hosta", Spec: spec, Epoch: 2}); err == nil {
		t.Fatal("hung storage: the epoch was accepted")
	}
	store.SetHung(false)
}

// The agent refuses to start with a private key others can read, and names the file
// and the chmod to run.
func TestAgentRefusesReadableKey(t *testing.T) {
	ca := newTestCA(t)
	keys := ca.issue("hosta")
	key := filepath.Join(keys, logging.HostKeyFile)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	a := testAgent(t, "hosta", keys)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := a.Run(ctx)
	if !errors.Is(err, logging.ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600 "+key) {
		t.Fatalf("Run: %v, want %v with the chmod to run", err, logging.ErrKeyPermissions)
	}
	t.Logf("refused: %v", err)
}

// The agent warns at start when its certificate expires within 30 days, and refuses
// an expired one.
func TestAgentWarnsOfCertificateExpiry(t *testing.T) {
	ca := newTestCA(t)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := logging.IssueHostFor(ca.dir, keys, "hosta", nil, 20*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	a := testAgent(t, "hosta", keys)
	logs := captureLog(t, a)
	if err := a.checkKeys(time.Now()); err != nil {
		t.Fatal(err)
	}
	waitLog(t, logs, "WARN", "certificate expires soon", "host.crt expires on", "in 20 days")

	// With a five-year certificate it says nothing.
	a = testAgent(t, "hosta", ca.issue("hosta"))
	logs = captureLog(t, a)
	if err := a.checkKeys(time.Now()); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "expires") {
		t.Fatalf("warned about a five-year certificate: %s", logs.String())
	}

	// Expired: refused.
	a = testAgent(t, "hosta", keys)
	err := a.checkKeys(time.Now().Add(21 * 24 * time.Hour))
	if !errors.Is(err, logging.ErrCertValidity) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired certificate: %v", err)
	}
}

// A running agent checks its certificates' dates again (before: only at start): it
// warns again as the end nears, and says ERROR once the certificate has ended.
func TestRunningAgentRechecksCertificates(t *testing.T) {
	ca := newTestCA(t)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := logging.IssueHostFor(ca.dir, keys, "hosta", nil, 40*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	a := testAgent(t, "hosta", keys)
	logs := captureLog(t, a)
	a.recheckCerts(time.Now())
	if strings.Contains(logs.String(), "certificate") {
		t.Fatalf("40 days before the end: %s", logs.String())
	}
	a.recheckCerts(time.Now().Add(15 * 24 * time.Hour))
	waitLog(t, logs, "WARN", "certificate expires soon", "in 25 days")
	a.recheckCerts(time.Now().Add(41 * 24 * time.Hour))
	waitLog(t, logs, "ERROR", "certificate check", "expired")
}

// A primary that fails to start after its backup accepted (here: no such bridge for
// its tap) ends the channel with a Bye: a dropped connection would read as a lost
// primary, and the backup would claim the next epoch and go live from no log at all.
func TestPrimaryStartFailureSaysBye(t *testing.T) {
	ca := newTestCA(t)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	a.cfg.Bridge = "ftvmd-nobr0" // does not exist: create-tap fails before creating anything
	addr, next := fakeBackup(t, ca.issue("hostb"), peerReply{OK: true, Host: "hostb"})
	err := a.startPrimary(context.Background(), validSpec(t, "vm1"), addr, nil)
	if err == nil || !strings.Contains(err.Error(), "create-tap") {
		t.Fatalf("startPrimary: %v, want a create-tap failure", err)
	}
	t.Logf("start failed: %v", err)
	m, ok := <-next
	if !ok || m.Type != logging.MsgBye {
		t.Fatalf("backup got %v (ok %v) after the failed start, want a Bye", m.Type, ok)
	}
	t.Logf("backup heard: %s %q", m.Type, m.Payload)
	if _, found := a.lookup("vm1"); found {
		t.Fatal("the failed VM is still registered")
	}
}

// The spec's bridge wins over the agent's --bridge (an imported libvirt domain
// names its own): here both are missing, and create-tap fails on the spec's.
func TestPrimaryTapJoinsSpecBridge(t *testing.T) {
	ca := newTestCA(t)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	a.cfg.Bridge = "ftvmd-nobr0"
	addr, _ := fakeBackup(t, ca.issue("hostb"), peerReply{OK: true, Host: "hostb"})
	spec := validSpec(t, "vm1")
	spec.Bridge = "ftvmd-nobr1"
	err := a.startPrimary(context.Background(), spec, addr, nil)
	if err == nil || !strings.Contains(err.Error(), "create-tap") || !strings.Contains(err.Error(), `"ftvmd-nobr1"`) || strings.Contains(err.Error(), "ftvmd-nobr0") {
		t.Fatalf("startPrimary: %v, want create-tap to fail on the spec's bridge ftvmd-nobr1", err)
	}
}
