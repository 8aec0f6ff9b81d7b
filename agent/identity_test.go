package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

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
	p := testPrimary(a, addr)
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
	p = testPrimary(a, addr)
	if err := p.connectBackup(context.Background()); err != nil {
		t.Fatalf("connectBackup to a distinct backup: %v", err)
	}
	p.runCleanups()
	if p.backupHost != "hostb" {
		t.Fatalf("backupHost %q, want hostb", p.backupHost)
	}
}
