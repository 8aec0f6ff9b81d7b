package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/qemu"
)

// Protecting a running VM. A primary that runs unprotected (ftvmd run, or a
// survivor after a failover) brings up a backup from its current state:
//
//  1. snapshot: the guest pauses once for savevm; the VM state goes to the
//     snapshot drive (a file the guest never writes), and the replay section of
//     that state says where in the log, and at which instruction count, a replay
//     of what follows starts (qemu.ReadSnapshotReplayState);
//  2. copying: the disk as of the snapshot (qemu-img convert -U -l from the live
//     image: a snapshot's clusters are never rewritten) and the snapshot drive go
//     to the backup, checksummed and resumable (disk.SendImage), while the guest
//     runs on and its output flows unprotected;
//  3. catching up: the backup loads the snapshot and replays the log from the
//     snapshot's offset (qemu.WithFeedStart), streamed from there;
//  4. once the backup acknowledged the log as it stood a moment before, the
//     output rule holds output from the log's end at that instant (HeldFrom:
//     every frame released before lies below it); once the backup acknowledged
//     HeldFrom too, the VM is protected: the lifecycle arms its arbiter and the
//     backup is told (MsgSynced), from when on it claims a lost primary.
//
// A failure at any step leaves the VM running unprotected (lifecycle SyncFailed,
// or a lost backup while Syncing).

// snapshotStart tells a backup to start from a snapshot of a running VM rather
// than from boot (peerHello.Snapshot).
type snapshotStart struct {
	// Tag is the snapshot's name in the VM state image and the disk.
	Tag string `json:"tag"`
	// Icount is the instruction count at the snapshot (peerHello.StartOffset is
	// its log offset).
	Icount uint64 `json:"icount"`
	// VMState is the snapshot drive holding the VM state, streamed after the disk.
	VMState disk.ImageInfo `json:"vmstate"`
}

// protectTag names the snapshot a protection of a running VM saves.
const protectTag = "ftvmd-protect"

var tagRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func (s *snapshotStart) validate() error {
	if !tagRE.MatchString(s.Tag) {
		return fmt.Errorf("snapshot tag %q: want letters, digits, '.', '_' or '-'", s.Tag)
	}
	if s.VMState.Size <= 0 || !validSHA256(s.VMState.SHA256) {
		return fmt.Errorf("snapshot's VM state image: size %d, sha256 %q", s.VMState.Size, s.VMState.SHA256)
	}
	return nil
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// Sync limits: how long the snapshot may be refused while rr's async queue is
// busy, and how long the backup may take to catch up once it holds the base.
var (
	snapshotBusyFor = 10 * time.Second
	catchUpTimeout  = 3 * time.Minute
	catchUpPoll     = 10 * time.Millisecond
)

// protectRunning starts protecting this running primary with a backup on
// backup (host:port), on the operator's request. It returns once the snapshot is
// saved and the backup accepted the protection; the base is copied and the
// backup catches up in the background (status shows the phase).
func (p *primary) protectRunning(ctx context.Context, backup string) (string, error) {
	if err := p.canProtectRunning(); err != nil {
		return "", err
	}
	first := make(chan error, 1)
	p.mu.Lock()
	p.syncFirst = first
	p.mu.Unlock()
	// The lifecycle decides (Syncing) and asks for the sync (startSync).
	if err := p.life.step(lifecycle.Protect(backup)); err != nil {
		p.mu.Lock()
		p.syncFirst = nil
		p.mu.Unlock()
		return "", err
	}
	select {
	case err := <-first:
		if err != nil {
			return "", err
		}
	case <-ctx.Done():
		return "", fmt.Errorf("protect %s: %w (the protection goes on; see ftvmd status)", p.spec.Name, ctx.Err())
	}
	p.mu.Lock()
	pause := p.sync.PauseMS
	p.mu.Unlock()
	return fmt.Sprintf("vm %s syncing to backup %s: snapshot taken (guest paused %.0f ms); copying its base, then protected (ftvmd status)",
		p.spec.Name, backup, pause), nil
}

// canProtectRunning says why this primary cannot be protected while it runs.
func (p *primary) canProtectRunning() error {
	switch {
	case !p.a.engine.LogStream:
		return fmt.Errorf("protect %s while it runs: needs ftvmd's QEMU build (%s is %s)", p.spec.Name, p.a.engine.Binary, p.a.engine.Name)
	case p.m == nil || p.m.Config().SnapshotDrive == "":
		return fmt.Errorf("protect %s while it runs: its QEMU has no snapshot drive (started by an older ftvmd): stop it and protect it from boot", p.spec.Name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vmCtx == nil {
		return fmt.Errorf("vm %s is still starting", p.spec.Name)
	}
	// The output path is set before the VM's context (startQEMU, startStreams).
	if u, ok := p.out.(unheldPath); ok {
		return fmt.Errorf("protect %s while it runs: its output cannot be held: %s", p.spec.Name, u.why)
	}
	return nil
}

// startSync carries out the lifecycle's StartSync: it runs the protection of the
// running VM with a backup on peer in a goroutine (it must not block). The
// operator's request (protectRunning) hears whether the snapshot was taken; a
// re-protection reports to the lifecycle only.
func (p *primary) startSync(peer, reason string) {
	now := time.Now()
	p.mu.Lock()
	vmCtx, first := p.vmCtx, p.syncFirst
	p.syncFirst = nil
	if first == nil {
		first = make(chan error, 1) // nobody waits
	}
	sctx, cancel := context.WithCancel(vmCtx)
	p.peer, p.syncCancel = peer, cancel
	p.sync = &control.SyncStatus{Backup: peer, Phase: "snapshot", StartedAt: now}
	if strings.HasPrefix(reason, "re-protection") { // lifecycle's automatic re-protections
		s := p.sync
		s.Auto = true
		if !p.faultAt.IsZero() {
			s.FaultAt, s.FailoverMS = p.faultAt, ms(p.aloneAt.Sub(p.faultAt))
		}
		if !p.aloneAt.IsZero() {
			s.WaitMS = ms(now.Sub(p.aloneAt))
		}
	}
	p.mu.Unlock()
	p.go1(func() {
		defer cancel()
		err := p.canProtectRunning()
		if err == nil {
			err = p.syncBackup(sctx, peer, first)
		} else {
			first <- err
		}
		if err == nil {
			return
		}
		if vmCtx.Err() != nil {
			return // the VM stops
		}
		p.log.Error("protection of the running vm failed; it runs on unprotected", "backup", peer, "reason", reason, "err", err)
		p.setSync(func(s *control.SyncStatus) { s.Phase, s.Error = "failed", err.Error() })
		_ = p.life.step(lifecycle.SyncFailed(err))
	})
}

// probePeer sees whether the agent at addr answers, for re-protection: a TLS
// handshake with a certificate of this cluster's CA naming the peer, and a ping
// on the peer port.
func (p *primary) probePeer(ctx context.Context, addr string) error {
	if p.a.isOwnAddr(addr) {
		// A VM's backup hosts may name every host it runs on (one list for all).
		return fmt.Errorf("%s is this host's own agent", addr)
	}
	c, err := p.dialAgent(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	if err := logging.WriteHello(c, peerHello{Op: "ping", From: p.a.cfg.Host, Spec: p.spec}); err != nil {
		return fmt.Errorf("ping %s: %w", addr, err)
	}
	var reply peerReply
	if err := logging.ReadHelloReply(c, &reply); err != nil {
		return fmt.Errorf("ping %s: %w", addr, err)
	}
	if !reply.OK {
		return fmt.Errorf("ping %s: %s", addr, reply.Error)
	}
	return nil
}

// setSync updates the sync status under p.mu.
func (p *primary) setSync(fn func(*control.SyncStatus)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sync != nil {
		fn(p.sync)
	}
}

// syncBackup runs the protection of the running VM; first hears once whether
// the snapshot was taken and the backup accepted.
func (p *primary) syncBackup(ctx context.Context, backup string, first chan<- error) (err error) {
	answered := false
	defer func() {
		if !answered {
			first <- err
		}
	}()
	t0 := time.Now()
	snap, err := p.snapshotForBackup(ctx)
	if err != nil {
		return err
	}
	p.setSync(func(s *control.SyncStatus) {
		s.PauseMS, s.FromOffset, s.SnapshotMS, s.Phase = ms(snap.pause), snap.state.LogOffset, ms(time.Since(t0)), "copying"
		s.ConsoleFrom = snap.console
	})
	p.log.Info("snapshot for the new backup", "pause", snap.pause.Round(time.Millisecond), "log_offset", snap.state.LogOffset,
		"icount", snap.state.Icount, "vmstate_bytes", snap.state.VMStateBytes, "console_at", snap.console)

	conn, reply, err := p.helloBackup(ctx, backup, snap)
	if err != nil {
		return err
	}
	closeConn := true
	defer func() {
		if closeConn {
			conn.Close()
		}
	}()
	answered = true
	first <- nil

	t1 := time.Now()
	total := snap.vmstate.Size
	if snap.disk != nil {
		total += snap.disk.Size
	}
	var sent int64
	progress := func(pr disk.Progress) {
		p.copyProgress(disk.Progress{Done: sent + pr.Done, Total: total, Resumed: pr.Resumed, Rate: pr.Rate})
		p.setSync(func(s *control.SyncStatus) { s.Percent = 100 * float64(sent+pr.Done) / float64(total) })
	}
	if snap.disk != nil {
		if err := disk.SendImage(ctx, conn, snap.diskPath, *snap.disk, disk.CopyConfig{Progress: progress, Logger: p.log}); err != nil {
			return fmt.Errorf("copy the disk at the snapshot to backup %s: %w", backup, err)
		}
		sent += snap.disk.Size
	}
	if err := disk.SendImage(ctx, conn, snap.vmstatePath, snap.vmstate, disk.CopyConfig{Progress: progress, Logger: p.log}); err != nil {
		return fmt.Errorf("copy the snapshot's VM state to backup %s: %w", backup, err)
	}
	_ = os.Remove(snap.vmstatePath)
	if snap.diskPath != "" {
		_ = os.Remove(snap.diskPath)
	}
	p.setSync(func(s *control.SyncStatus) {
		s.Percent, s.BaseBytes, s.CopyMS, s.Phase = 100, total, ms(time.Since(t1)), "catching-up"
	})
	p.log.Info("base copied to the new backup", "bytes", total, "took", time.Since(t1).Round(time.Millisecond))

	// The log channel, from the snapshot's offset.
	t2 := time.Now()
	snd := logging.NewSender(conn, p.rr, logging.SenderConfig{
		StartOffset:       snap.state.LogOffset,
		HeartbeatInterval: p.a.cfg.HeartbeatInterval,
		PeerTimeout:       p.a.cfg.PeerTimeout,
		Logger:            p.log,
	})
	p.mu.Lock()
	p.conn, p.backupHost, p.sender = conn, reply.Host, snd
	b, ic := p.boundary, p.icount
	p.mu.Unlock()
	closeConn = false // the sender owns it now
	p.mu.Lock()
	vmCtx := p.vmCtx
	p.mu.Unlock()
	p.startSender(vmCtx, snd)
	if b > snap.state.LogOffset {
		snd.Publish(b, ic)
	}
	// The acks and the console marks of this channel end with it: the VM may be
	// protected again later, over a new one.
	chCtx, chCancel := context.WithCancel(vmCtx)
	p.mu.Lock()
	senderDone := p.senderDone
	p.mu.Unlock()
	p.go1(func() {
		defer chCancel()
		select {
		case <-senderDone:
		case <-chCtx.Done():
		}
	})
	p.go1(func() { p.ackLoop(chCtx, snd) })
	if reply.ConsoleMarks {
		rot := p.consoleRotator()
		p.go1(func() { p.sendConsoleMarksFrom(chCtx, snd, rot, snap.console) })
	}

	// Catch up: the backup acknowledges the log as it stood a poll ago.
	deadline := time.Now().Add(catchUpTimeout)
	target := int64(-1)
	for {
		p.mu.Lock()
		safe := p.safePoint
		p.mu.Unlock()
		if target >= 0 && snd.Stats().Acked >= target {
			break
		}
		target = safe
		if time.Now().After(deadline) {
			return fmt.Errorf("backup %s did not catch up with the log in %s (acked %d, log at %d)", backup, catchUpTimeout, snd.Stats().Acked, safe)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(catchUpPoll):
		}
	}
	// Hold output from here: every frame released so far left before Protect
	// returned (relay: stamped with at most the log's size then; tap: written to
	// the tap before its frames entered the queue), so at most the log's size now.
	if err := p.out.Protect(); err != nil {
		return fmt.Errorf("hold output from the log's end: %w", err)
	}
	held, err := p.stamp()
	if err != nil {
		return fmt.Errorf("rr log: %w", err)
	}
	p.setSync(func(s *control.SyncStatus) { s.HeldFrom = held })
	for snd.Stats().Acked < held {
		if time.Now().After(deadline) {
			return fmt.Errorf("backup %s did not acknowledge the log up to %d, where output is held from, in %s", backup, held, catchUpTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(catchUpPoll):
		}
	}
	epoch := p.life.state().Epoch
	shared := p.a.store != nil && epoch > 0
	snd.Synced(epoch)
	if err := p.life.step(lifecycle.SyncedWith(epoch, shared, reply.Host)); err != nil {
		return err
	}
	now := time.Now()
	var window time.Duration
	p.mu.Lock()
	if p.sync != nil {
		p.sync.Phase, p.sync.ProtectedAt, p.sync.CatchUpMS = "protected", now, ms(now.Sub(t2))
		if p.sync.Auto && !p.sync.FaultAt.IsZero() {
			window = now.Sub(p.sync.FaultAt)
			p.sync.WindowMS = ms(window)
		}
	}
	pause := snap.pause
	p.mu.Unlock()
	detail := fmt.Sprintf("protected from a running state: backup on %s, guest paused %.0f ms, base %d bytes, output held from log offset %d",
		backup, ms(pause), total, held)
	if window > 0 {
		detail += fmt.Sprintf("; window of vulnerability %.1f s", window.Seconds())
	}
	p.log.Info("vm protected from its running state", "backup", backup, "pause", pause.Round(time.Millisecond),
		"held_from", held, "took", time.Since(t0).Round(time.Millisecond), "window", window.Round(time.Millisecond))
	p.a.record(journal.Event{Kind: journal.KindProtect, Result: journal.ProtectFromRunning, VM: p.spec.Name, Role: "primary", Peer: reply.Host, Epoch: epoch,
		DurationMS: ms(time.Since(t0)), Detail: detail})
	return nil
}

// takenSnapshot is a snapshot of the running VM for a new backup.
type takenSnapshot struct {
	state       qemu.SnapshotReplayState
	pause       time.Duration
	console     int64 // the console's size at the snapshot
	vmstatePath string
	vmstate     disk.ImageInfo
	diskPath    string // the disk as of the snapshot ("" without a disk)
	disk        *disk.ImageInfo
}

// snapshotForBackup pauses the guest, saves a snapshot (retrying while rr's
// async queue is busy: savevm refuses then) and lets it run on; then it copies
// the VM state and exports the disk as of the snapshot while the guest runs.
func (p *primary) snapshotForBackup(ctx context.Context) (takenSnapshot, error) {
	var s takenSnapshot
	cfg := p.m.Config()
	deadline := time.Now().Add(snapshotBusyFor)
	for tries := 1; ; tries++ {
		t0 := time.Now()
		if err := p.guest.Pause(ctx); err != nil {
			return s, fmt.Errorf("pause the guest for the snapshot: %w", err)
		}
		// The vCPU is stopped: the console has all the guest wrote before the
		// snapshot, and nothing after.
		s.console = fileSizeOf(cfg.ConsoleLog)
		out, err := p.m.HMP(ctx, "savevm "+protectTag)
		cerr := p.guest.Cont(context.WithoutCancel(ctx))
		s.pause = time.Since(t0)
		if err != nil {
			return s, fmt.Errorf("savevm: %w", err)
		}
		if cerr != nil {
			return s, fmt.Errorf("resume the guest after the snapshot: %w", cerr)
		}
		out = strings.TrimSpace(out)
		if out == "" {
			if tries > 1 {
				p.log.Info("snapshot saved after retries", "tries", tries)
			}
			break
		}
		if !strings.Contains(out, "Try once more later") || time.Now().After(deadline) {
			return s, fmt.Errorf("savevm: %s", out)
		}
		select {
		case <-ctx.Done():
			return s, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	st, err := qemu.ReadSnapshotReplayState(cfg.SnapshotDrive, protectTag)
	if err != nil {
		return s, err
	}
	s.state = st
	// The snapshot drive is written only by savevm: a private copy is the VM
	// state as saved, whatever a later snapshot does to the drive.
	s.vmstatePath = filepath.Join(p.dir, "protect-vmstate.qcow2")
	_ = os.Remove(s.vmstatePath)
	if _, err := copyFile(cfg.SnapshotDrive, s.vmstatePath); err != nil {
		return s, err
	}
	if s.vmstate, err = disk.Inspect(s.vmstatePath); err != nil {
		return s, err
	}
	if src := p.diskPath(); src != "" {
		s.diskPath = filepath.Join(p.dir, "protect-disk.qcow2")
		_ = os.Remove(s.diskPath)
		// -U: the live QEMU holds the image's lock. The snapshot's tables and
		// clusters are never rewritten (the guest's writes go to new clusters),
		// so reading them while the guest writes is safe.
		cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2",
			"-l", "snapshot.name="+protectTag, src, s.diskPath)
		if out, err := cmd.CombinedOutput(); err != nil {
			return s, fmt.Errorf("export the disk at the snapshot: %w: %s", err, strings.TrimSpace(string(out)))
		}
		info, err := disk.Inspect(s.diskPath)
		if err != nil {
			return s, err
		}
		s.disk = &info
	}
	return s, nil
}

// helloBackup asks the backup host to back this VM up from the snapshot.
func (p *primary) helloBackup(ctx context.Context, backup string, snap takenSnapshot) (conn net.Conn, reply peerReply, err error) {
	p.mu.Lock()
	p.peer = backup
	p.mu.Unlock()
	c, err := p.dialAgent(ctx, backup)
	if err != nil {
		return nil, reply, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	epoch := p.life.state().Epoch
	hello := peerHello{Op: "backup", From: p.a.cfg.Host, Spec: p.spec, StartOffset: snap.state.LogOffset, Epoch: epoch,
		Disk: snap.disk, Engine: p.a.engine.Name, StallReports: true, DataPath: p.dataPath, ReturnAddr: p.a.returnAddr(c),
		Snapshot: &snapshotStart{Tag: protectTag, Icount: snap.state.Icount, VMState: snap.vmstate}}
	if err := logging.WriteHello(c, hello); err != nil {
		return nil, reply, fmt.Errorf("backup %s: %w", backup, err)
	}
	if err := logging.ReadHelloReply(c, &reply); err != nil {
		return nil, reply, fmt.Errorf("backup %s: %w", backup, err)
	}
	if !reply.OK {
		return nil, reply, fmt.Errorf("backup %s refused: %s", backup, reply.Error)
	}
	if err := checkPeer(c, p.a.cfg.Host, reply.Host, "backup"); err != nil {
		err = fmt.Errorf("backup %s: %w", backup, err)
		_ = logging.WriteBye(c, "refused by the primary: "+err.Error())
		return nil, reply, err
	}
	if !reply.Synced {
		err := fmt.Errorf("backup %s cannot start from a running VM's snapshot (an older ftvmd)", backup)
		_ = logging.WriteBye(c, err.Error())
		return nil, reply, err
	}
	return c, reply, nil
}

// returnAddr is this agent's peer address as the agent at the other end of c
// reaches it: the local address of c with the port this agent listens on. A
// backup keeps its primary's, so that after a failover the live copy can
// protect itself again with that host (re-protection).
func (a *Agent) returnAddr(c net.Conn) string {
	host, port, err := net.SplitHostPort(a.cfg.Listen)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		la, ok := c.LocalAddr().(*net.TCPAddr)
		if !ok {
			return ""
		}
		host = la.IP.String()
	}
	return net.JoinHostPort(host, port)
}

// isOwnAddr reports whether addr (host:port) is this agent's peer listener: its
// --listen address, or, when that is unspecified (":7800"), this host's
// interface addresses on the listen port. A host name is not resolved: the
// agent behind it refuses a probe from its own name anyway.
func (a *Agent) isOwnAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	lhost, lport, lerr := net.SplitHostPort(a.cfg.Listen)
	if err != nil || lerr != nil || port != lport {
		return false
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if l := net.ParseIP(lhost); l != nil && !l.IsUnspecified() {
		return l.Equal(ip)
	} else if lhost != "" && l == nil {
		return false // a listener named by host name: not compared
	}
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// fileSizeOf is the size of the file at path (0 when it cannot be read).
func fileSizeOf(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// receiveSnapshot receives the VM state image of a running VM's snapshot (after
// the disk) into the replay's snapshot drive, and gives the disk copy, which is
// the disk as of the snapshot, a snapshot of the same name: loading a snapshot
// reverts every drive to it, and fails on a drive that lacks it.
func (b *backup) receiveSnapshot(ctx context.Context, conn net.Conn) error {
	dst := b.m.Config().SnapshotDrive
	info, err := disk.ReceiveImage(ctx, conn, dst, disk.CopyConfig{
		ResumeDir: filepath.Join(b.a.cfg.StateDir, "partial"), ResumeKey: b.spec.Name + ".vmstate", Logger: b.log,
	})
	if err != nil {
		return fmt.Errorf("VM state copy from primary: %w", err)
	}
	if info.SHA256 != b.snap.VMState.SHA256 {
		return fmt.Errorf("VM state copy from primary: sha256 %s, the primary announced %s", info.SHA256, b.snap.VMState.SHA256)
	}
	b.log.Info("snapshot VM state received", "bytes", info.Size, "sha256", info.SHA256)
	if b.diskPath != "" {
		cmd := exec.CommandContext(ctx, "qemu-img", "snapshot", "-c", b.snap.Tag, b.diskPath)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("mark the disk copy with snapshot %s: %w: %s", b.snap.Tag, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
