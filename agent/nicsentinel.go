package agent

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/nicdump"
	"github.com/ftvmd/ftvmd/sentinel"
)

// The NIC half of the divergence sentinel. Each QEMU hands a pcap of every frame its
// guest transmits to its agent through a FIFO (qemu.NIC.TxDump, package nicdump),
// captured before anything can drop it: on the primary before the frame reaches the
// relay or the tap, on the replay before filter-replay swallows it. The primary
// sends a digest per frame (logging.MsgNIC: number, length, CRC-64, its log size)
// on the log channel; the backup compares them with its replay's frames, number by
// number (sentinel.FrameComparer). Neither side's output waits for any of it: the
// output rule releases on acks of the log alone.

// nicCaptureName is the FIFO each copy's QEMU dumps its guest's transmitted frames to.
const nicCaptureName = "nic-tx.pcap"

// nicBatchQueue is how many NIC messages from the primary wait for the backup's
// checker; beyond it they are dropped (their frames are skipped, not compared).
const nicBatchQueue = 1024

// openNICCapture creates the FIFO in dir (before the QEMU that writes it starts) and
// pushes its removal on the cleanups.
func openNICCapture(dir string, cleanups *cleanupStack) (*nicdump.Capture, error) {
	c, err := nicdump.Create(filepath.Join(dir, nicCaptureName))
	if err != nil {
		return nil, fmt.Errorf("divergence sentinel: %w", err)
	}
	cleanups.push(c.Close)
	return c, nil
}

// nicHashFor is the frame checksum a backup uses for the NIC digests of the primary
// that sent hello: the one the primary offered if this build knows it, else
// CRC-64, what a primary that offers none computes. The reply names it.
func nicHashFor(hello peerHello) string {
	if _, ok := sentinel.HashFunc(hello.NICHash); ok {
		return hello.NICHash
	}
	return sentinel.HashCRC64
}

// toWire turns a batch of digests, numbered consecutively, into a NIC message.
func toWire(ds []sentinel.Digest) logging.NICDigests {
	m := logging.NICDigests{First: ds[0].Seq, At: ds[len(ds)-1].At, Frames: make([]logging.NICFrame, len(ds))}
	for i, d := range ds {
		m.Frames[i] = logging.NICFrame{Len: d.Len, Hash: d.Hash}
	}
	return m
}

// sendNICDigests is the primary's half: it reads its QEMU's capture and queues the
// digests on the log channel (s.NIC never blocks) until the channel ends or ctx does,
// then closes the capture: QEMU stops dumping at its next frame, so an unprotected
// VM costs nothing.
func (p *primary) sendNICDigests(ctx context.Context, s *logging.Sender, c *nicdump.Capture, senderDone <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.go1(func() {
		select {
		case <-senderDone:
			cancel()
		case <-ctx.Done():
		}
	})
	at := func() int64 {
		st, err := p.rr.Stat()
		if err != nil {
			return 0
		}
		return st.Size()
	}
	err := c.Run(ctx, logging.MaxNICFrames, p.nicHash, at, func(ds []sentinel.Digest) { s.NIC(toWire(ds)) })
	if err != nil {
		p.log.Warn("divergence sentinel: the NIC capture is unreadable; no more frame digests", "err", err)
	}
}

// checkNIC is the backup's half: it reads its replay's capture and compares it with
// the primary's digests (from prim). It compares only while the log channel runs
// (recvDone open): once it ends, a replay that goes live transmits frames of a new
// execution under the numbers of frames the dead primary sent past the backup's
// last log. On a divergence it reports where and steps down.
func (b *backup) checkNIC(ctx context.Context, prim <-chan logging.NICDigests, recvDone <-chan struct{}) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rep := make(chan []sentinel.Digest, 64)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		err := b.nicCap.Run(ctx, 256, b.nicHash, nil, func(ds []sentinel.Digest) {
			select {
			case rep <- ds:
			case <-ctx.Done():
			}
		})
		if err != nil {
			b.log.Warn("divergence sentinel: the replay's NIC capture is unreadable; no more frame checks", "err", err)
		}
	}()
	cmp := sentinel.NewFrameComparer(sentinel.FrameConfig{})
	var warned bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-recvDone:
			return
		case ds := <-rep:
			select {
			case <-recvDone:
				return // possibly frames of a replay gone live
			default:
			}
			for _, d := range ds {
				cmp.Replay(d)
			}
		case m := <-prim:
			for i, f := range m.Frames {
				_, err := cmp.Primary(sentinel.Digest{Seq: m.First + uint64(i), Len: f.Len, Hash: f.Hash, At: m.At})
				if err != nil && !warned {
					warned = true
					b.log.Warn("divergence sentinel: the primary's frame digests are out of order; ignored", "err", err)
				}
			}
		}
		st := cmp.Stats()
		b.mu.Lock()
		b.nic.FrameStats = st
		b.mu.Unlock()
		if d := cmp.Diverged(); d != nil {
			b.reportDivergence(d.String(), "frame", d.Primary.Seq, "replay_len", d.Replay.Len,
				"replay_checksum", fmt.Sprintf("%016x", d.Replay.Hash), "primary_len", d.Primary.Len,
				"primary_checksum", fmt.Sprintf("%016x", d.Primary.Hash), "checksum", b.nicHashName, "primary_log_size", d.Primary.At,
				"frames_matched", d.Matched)
			return
		}
	}
}

// nicSentinel is the backup's NIC comparison as status shows it.
type nicSentinel struct {
	sentinel.FrameStats
	// Dropped: NIC messages from the primary dropped on a full queue.
	Dropped uint64
}

// onNIC takes the primary's NIC digests on the receiver's goroutine: it must not
// block, so a full queue drops them (those frames are skipped).
func (b *backup) onNIC(q chan<- logging.NICDigests) func(logging.NICDigests) {
	return func(m logging.NICDigests) {
		select {
		case q <- m:
		default:
			b.mu.Lock()
			b.nic.Dropped++
			b.mu.Unlock()
		}
	}
}
