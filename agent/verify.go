package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
)

// checksumReply is the backup's answer to a checksum request on a fresh connection.
type checksumReply struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	Icount uint64 `json:"icount,omitempty"`
}

// verify checks that the primary's and the backup's disk copies are byte-identical
// at a quiesced point: the primary's guest is paused, the backup has replayed up to
// the same instruction count, then both images are hashed. The guest resumes after.
// pauseAtSafePoint pauses the guest where everything it executed is in the log up
// to a safe cut point, and returns that instruction count: the backup is fed only up
// to safe cut points, and QEMU writes a vCPU's executed instructions lazily, before its
// next event. A guest paused while its vCPU runs has executed instructions the log does
// not hold yet (nor will while paused), so the backup could never reach its count; one
// paused while idle (halted) has logged them. It pauses, lets the log's tail be read,
// and if the guest's count is beyond the newest safe cut point, resumes it briefly and
// tries again. The guest is left paused, also on error (the caller resumes it).
func (p *primary) pauseAtSafePoint(ctx context.Context) (uint64, error) {
	const settle = 30 * time.Millisecond // the tail reads the log every tailEvery (5 ms)
	deadline := time.Now().Add(20 * time.Second)
	for try := 1; ; try++ {
		if err := p.m.Pause(ctx); err != nil {
			return 0, fmt.Errorf("pause guest: %w", err)
		}
		info, err := p.m.QueryReplay(ctx)
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(settle):
		}
		p.mu.Lock()
		safe := p.safeIcount
		p.mu.Unlock()
		if safe == info.Icount {
			return info.Icount, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("could not pause the guest where its log covers what it executed (%d tries; last: icount %d, log's newest safe point at %d)", try, info.Icount, safe)
		}
		if err := p.m.Cont(ctx); err != nil {
			return 0, fmt.Errorf("resume guest: %w", err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Duration(5+try%20) * time.Millisecond):
		}
	}
}

func (p *primary) verify(ctx context.Context) (string, error) {
	st := p.life.state().State
	if st != lifecycle.Protected || p.snd() == nil {
		return "", fmt.Errorf("vm %s is %s: verify needs a protected VM", p.spec.Name, st)
	}
	if p.diskPath() == "" {
		return "", fmt.Errorf("vm %s has no disk", p.spec.Name)
	}
	target, err := p.pauseAtSafePoint(ctx)
	defer func() {
		if err := p.m.Cont(context.Background()); err != nil {
			p.log.Error("resume guest after verify", "err", err)
		}
	}()
	if err != nil {
		return "", err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p.mu.Lock()
		bk := p.bkIcount
		p.mu.Unlock()
		if bk == target {
			break
		}
		if bk > target {
			return "", fmt.Errorf("backup replayed %d instructions, past the paused primary's %d", bk, target)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("backup did not reach icount %d in time (at %d)", target, bk)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	mine, err := disk.Inspect(p.diskPath())
	if err != nil {
		return "", err
	}
	theirs, err := p.askChecksum(ctx)
	if err != nil {
		return "", err
	}
	if theirs.Icount != target {
		return "", fmt.Errorf("backup hashed its image at icount %d, primary at %d", theirs.Icount, target)
	}
	if theirs.SHA256 != mine.SHA256 {
		return "", fmt.Errorf("disk copies differ at icount %d: primary sha256 %s, backup %s", target, mine.SHA256, theirs.SHA256)
	}
	return fmt.Sprintf("vm %s: disk copies identical at icount %d (sha256 %s, %d bytes)", p.spec.Name, target, mine.SHA256, mine.Size), nil
}

// askChecksum opens a second authenticated connection to the backup's agent.
func (p *primary) askChecksum(ctx context.Context) (checksumReply, error) {
	conn, err := p.dialBackup(ctx)
	if err != nil {
		return checksumReply{}, err
	}
	defer conn.Close()
	if err := logging.WriteHello(conn, peerHello{Op: "checksum", From: p.a.cfg.Host, Spec: p.spec}); err != nil {
		return checksumReply{}, err
	}
	// Hashing a large image takes a while: the reply may come late.
	_ = conn.SetDeadline(time.Now().Add(5 * time.Minute))
	var r checksumReply
	if err := logging.ReadHelloReply(conn, &r); err != nil {
		return r, fmt.Errorf("backup checksum: %w", err)
	}
	if !r.OK {
		return r, fmt.Errorf("backup checksum: %s", r.Error)
	}
	return r, nil
}

// checksum answers a primary's checksum request for a backup this agent runs.
func (a *Agent) checksum(vm string) checksumReply {
	v, found := a.lookup(vm)
	b, isBackup := v.(*backup)
	if !found || !isBackup {
		return checksumReply{Error: fmt.Sprintf("no backup of %q on %s", vm, a.cfg.Host)}
	}
	b.mu.Lock()
	icount, path := b.replayed, b.diskPath
	b.mu.Unlock()
	if path == "" {
		return checksumReply{Error: errors.New("the backup has no disk").Error()}
	}
	info, err := disk.Inspect(path)
	if err != nil {
		return checksumReply{Error: err.Error()}
	}
	// The replayed count is polled every few ms; re-read it after hashing so a
	// replay that moved while we hashed is reported, not hidden.
	b.mu.Lock()
	after := b.replayed
	b.mu.Unlock()
	if after != icount {
		return checksumReply{Error: fmt.Sprintf("replay moved from icount %d to %d while hashing", icount, after)}
	}
	return checksumReply{OK: true, SHA256: info.SHA256, Icount: icount}
}
