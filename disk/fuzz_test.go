package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzClaimFile: whatever a claim file on shared storage holds (a torn write,
// another tool's file, a hand edit), decoding it never panics; content it accepts
// is a claim for the VM and epoch its file name says, with an owner, and encodes
// back to a file that decodes to the same claim.
func FuzzClaimFile(f *testing.F) {
	good, err := encodeClaim(Claim{VM: "vm1", Epoch: 3, Owner: "hosta", ClaimedAt: time.Unix(1700000000, 5).UTC(), Reason: "peer silent"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, "vm1", uint64(3))
	f.Add(good, "vm1", uint64(4))
	f.Add(good[:len(good)/2], "vm1", uint64(3))
	f.Add([]byte(`{"claim":{"version":1,"vm":"vm1","epoch":1,"owner":"x","extra":1},"sha256":"00"}`), "vm1", uint64(1))
	f.Add([]byte("   \n"), "vm1", uint64(1))
	f.Add(bytes.ToUpper(good), "VM1", uint64(3))
	f.Fuzz(func(t *testing.T, data []byte, vm string, epoch uint64) {
		c, problem := decodeClaim(data, vm, epoch)
		if problem != "" {
			if c != (Claim{}) {
				t.Fatalf("a corrupt file (%s) gave claim %+v", problem, c)
			}
			return
		}
		if c.VM != vm || c.Epoch != epoch || c.Owner == "" || c.Corrupt {
			t.Fatalf("file for VM %q epoch %d decoded as %+v", vm, epoch, c)
		}
		enc, err := encodeClaim(c)
		if err != nil {
			// The only claims that do not encode carry a time JSON cannot hold.
			if c.ClaimedAt.Year() >= 0 && c.ClaimedAt.Year() <= 9999 {
				t.Fatalf("claim %+v does not encode: %v", c, err)
			}
			return
		}
		back, problem := decodeClaim(enc, vm, epoch)
		if problem != "" || back.Owner != c.Owner || back.Reason != c.Reason || !back.ClaimedAt.Equal(c.ClaimedAt) {
			t.Fatalf("claim %+v encoded and decoded as %+v (%s)", c, back, problem)
		}
	})
}

// FuzzEpochNames: a VM name the epoch store accepts is one directory right under
// the store's, and claim file names map one to one to epochs: every epoch from 1
// has one name, and every name the store reads as an epoch is that epoch's name
// (so no stray file counts as a claim, and no epoch can be claimed twice under two
// names).
func FuzzEpochNames(f *testing.F) {
	f.Add("vm1", "epoch-00000000000000000001.json", uint64(1))
	f.Add("..", "epoch-18446744073709551615.json", uint64(18446744073709551615))
	f.Add("a/b", "epoch-+0000000000000000001.json", uint64(0))
	f.Add(".hidden", "epoch-99999999999999999999.json", uint64(42))
	f.Fuzz(func(t *testing.T, vm, name string, epoch uint64) {
		if ValidateVM(vm) == nil {
			const dir = "/shared/epochs"
			if p := filepath.Join(dir, vm); filepath.Dir(p) != dir || filepath.Base(p) != vm {
				t.Fatalf("VM %q is not one directory under the store: %s", vm, p)
			}
		} else if !errors.Is(ValidateVM(vm), ErrInvalidVM) {
			t.Fatalf("ValidateVM(%q) = %v, want ErrInvalidVM", vm, ValidateVM(vm))
		}
		if e, ok := parseEpochFileName(name); ok {
			if e == 0 || epochFileName(e) != name {
				t.Fatalf("file %q read as epoch %d, whose file is %q", name, e, epochFileName(e))
			}
		}
		if epoch > 0 {
			if e, ok := parseEpochFileName(epochFileName(epoch)); !ok || e != epoch {
				t.Fatalf("epoch %d: file %q reads back as %d, %v", epoch, epochFileName(epoch), e, ok)
			}
		}
	})
}

// claimOutcome is what a claim returned, for comparing stores.
type claimOutcome struct {
	err     string // the sentinel it wraps, or "other"
	epoch   uint64
	owner   string
	corrupt bool
}

func outcome(c Claim, err error) claimOutcome {
	o := claimOutcome{epoch: c.Epoch, owner: c.Owner, corrupt: c.Corrupt}
	switch {
	case err == nil:
	case errors.Is(err, ErrLost):
		o.err = "lost"
	case errors.Is(err, ErrEpochRegressed):
		o.err = "regressed"
	case errors.Is(err, ErrNoEpoch):
		o.err = "none"
	case errors.Is(err, ErrInvalidVM), errors.Is(err, ErrInvalidOwner), errors.Is(err, ErrInvalidEpoch):
		o.err, o.epoch, o.owner = "invalid", 0, ""
	default:
		o.err = "other: " + err.Error()
	}
	return o
}

// fastDir is a temporary directory on tmpfs when there is one (/dev/shm), where the
// store's fsyncs cost nothing.
func fastDir(t *testing.T) string {
	d, err := os.MkdirTemp("/dev/shm", "ftvmd-fuzz-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// FuzzClaims runs one sequence of claims (owners, epochs seen, reasons from the
// fuzzer) on a DirStore and a MemStore, which must agree on every outcome, and
// checks the rules of the epoch claim on the way: a claim is won only for the epoch
// after the one seen, each epoch has one owner for ever, a retry by the owner of
// the epoch after the one seen gets that claim back, and any other claim on a taken
// epoch is lost to its owner.
func FuzzClaims(f *testing.F) {
	f.Add("hosta", "hostb", "reason", []byte{0, 0, 1, 0, 1, 1, 0, 1})
	f.Add("a", "a", "", []byte{0, 0, 1, 0, 0, 4, 1, 9})
	f.Add("h\xffa", "hostb", "r\xfe", []byte{0, 0, 0, 0})
	f.Add("hosta", strings.Repeat("b", 256), strings.Repeat("r", 1025), []byte{1, 0, 0, 0, 1, 2})
	f.Fuzz(func(t *testing.T, ownerA, ownerB, reason string, ops []byte) {
		const vm = "vm1"
		dir, err := NewDirStore(fastDir(t), WithSettle(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		mem := NewMemStore()
		ctx := context.Background()
		owners := map[uint64]string{} // epoch -> owner, as won
		var highest uint64
		for i := 0; i+1 < len(ops) && i < 24; i += 2 {
			owner := ownerA
			if ops[i]&1 == 1 {
				owner = ownerB
			}
			// Seen: the highest epoch, or a little behind or ahead of it.
			seen := highest + uint64(ops[i+1]%4) - 1
			if ops[i+1]%4 == 0 && highest == 0 {
				seen = 0
			}
			dc, derr := dir.ClaimNext(ctx, vm, seen, owner, reason)
			mc, merr := mem.ClaimNext(ctx, vm, seen, owner, reason)
			do, mo := outcome(dc, derr), outcome(mc, merr)
			if do != mo {
				t.Fatalf("claim %d (seen %d, owner %q): DirStore %+v (%v), MemStore %+v (%v)", i/2, seen, owner, do, derr, mo, merr)
			}
			switch {
			case derr == nil:
				if dc.Epoch != seen+1 || dc.Owner != owner {
					t.Fatalf("claim after %d by %q won %+v", seen, owner, dc)
				}
				if prev, ok := owners[dc.Epoch]; ok && prev != owner {
					t.Fatalf("epoch %d won by %q, already won by %q", dc.Epoch, owner, prev)
				}
				owners[dc.Epoch] = owner
				highest = max(highest, dc.Epoch)
			case errors.Is(derr, ErrLost):
				if prev, ok := owners[seen+1]; !ok || (prev == owner && seen+1 == highest) {
					t.Fatalf("claim after %d by %q lost (%v), epoch %d owned by %q (%v)", seen, owner, derr, seen+1, prev, ok)
				}
			case errors.Is(derr, ErrEpochRegressed):
				if seen <= highest {
					t.Fatalf("claim after %d refused as regressed, store at %d", seen, highest)
				}
			}
		}
		dcur, derr := dir.Current(ctx, vm)
		mcur, merr := mem.Current(ctx, vm)
		if outcome(dcur, derr) != outcome(mcur, merr) || dcur.Epoch != highest {
			t.Fatalf("Current: DirStore %+v (%v), MemStore %+v (%v), highest won %d", dcur, derr, mcur, merr, highest)
		}
	})
}

// imageStream is what SendImage writes for data cut into chunks of the given sizes.
func imageStream(data []byte, sizes []byte) []byte {
	sum := sha256.Sum256(data)
	js, _ := json.Marshal(ImageInfo{Name: "disk.qcow2", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
	b := []byte(headerMagic)
	b = binary.BigEndian.AppendUint16(b, wireVersion)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(js)))
	b = append(b, js...)
	tab := crc32.MakeTable(crc32.Castagnoli)
	for i, rest := 0, data; len(rest) > 0; i++ {
		n := len(rest)
		if len(sizes) > 0 {
			n = min(n, 1+int(sizes[i%len(sizes)]))
		}
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = binary.BigEndian.AppendUint32(b, crc32.Checksum(rest[:n], tab))
		b = append(b, rest[:n]...)
		rest = rest[n:]
	}
	body := binary.BigEndian.AppendUint64(nil, uint64(len(data)))
	body = append(body, sum[:]...)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(body, tab))
	return append(b, body...)
}

// streamConn is a net.Conn that reads a fixed stream (then EOF: the sender hung
// up) and keeps what is written to it.
type streamConn struct {
	r io.Reader
	w bytes.Buffer
}

func (c *streamConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *streamConn) Close() error                     { return nil }
func (c *streamConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "backup", Net: "unix"} }
func (c *streamConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "primary", Net: "unix"} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzReceiveImage: an image copy stream, whole or with one byte changed or cut
// short (mode), or any bytes at all (mode 3). The backup keeps an image only when
// it is exactly the data sent (size and SHA-256 of the header, which the stream
// cannot change without failing); it never leaves a file at the destination after
// an error; an intact stream is always received; every reply it sends is a valid
// one, the last saying OK with the size after a success; and it fails with the
// errors its contract names.
func FuzzReceiveImage(f *testing.F) {
	f.Add([]byte("a tiny disk image"), []byte{3}, uint8(0), uint16(0), uint8(0))
	f.Add(bytes.Repeat([]byte{0xab}, 3000), []byte{255, 17, 0}, uint8(1), uint16(70), uint8(1))
	f.Add(bytes.Repeat([]byte("qcow"), 100), []byte{9}, uint8(1), uint16(5), uint8(0x40))
	f.Add([]byte("cut short"), []byte{}, uint8(2), uint16(40), uint8(0))
	f.Add([]byte("FTVMDIMG\x00\x01\x00\x00\x00\x00\x00\x02{}"), []byte{}, uint8(3), uint16(0), uint8(0))
	f.Add([]byte{}, []byte{}, uint8(0), uint16(0), uint8(0))
	f.Fuzz(func(t *testing.T, data, sizes []byte, mode uint8, pos uint16, x uint8) {
		if len(data) > 1<<16 {
			return
		}
		stream := imageStream(data, sizes)
		intact := true
		switch mode % 4 {
		case 1:
			stream[int(pos)%len(stream)] ^= x
			intact = x == 0
		case 2:
			stream = stream[:int(pos)%len(stream)]
			intact = false
		case 3:
			stream, intact = data, false
		}
		dst := filepath.Join(fastDir(t), "disk.qcow2")
		c := &streamConn{r: bytes.NewReader(stream)}
		info, err := ReceiveImage(context.Background(), c, dst, CopyConfig{Timeout: time.Second})

		var replies []reply
		for r := bytes.NewReader(c.w.Bytes()); r.Len() > 0; {
			rep, rerr := readReply(r)
			if rerr != nil {
				t.Fatalf("the backup sent a bad reply: %v", rerr)
			}
			replies = append(replies, rep)
		}
		got, ferr := os.ReadFile(dst)
		if err != nil {
			if ferr == nil {
				t.Fatalf("%s exists after %v", dst, err)
			}
			documented := []error{ErrNoSpace, ErrChecksum, ErrProtocol, ErrPeerRefused, ErrTruncated, ErrCopyTimeout, ErrLocalIO}
			known := false
			for _, d := range documented {
				known = known || errors.Is(err, d)
			}
			if !known {
				t.Fatalf("undocumented error %v", err)
			}
			if intact {
				t.Fatalf("an intact stream of %d bytes was refused: %v", len(data), err)
			}
			return
		}
		sum := sha256.Sum256(data)
		if ferr != nil || !bytes.Equal(got, data) || info.Size != int64(len(data)) || info.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("kept %d bytes (%v) with info %+v, sent %d bytes", len(got), ferr, info, len(data))
		}
		if len(replies) != 2 || replies[0].typ != replyAccept || replies[1].typ != replyOK || replies[1].value != uint64(len(data)) {
			t.Fatalf("replies after a success: %+v", replies)
		}
		if _, err := os.Stat(dst + ".partial"); err == nil {
			t.Fatal("partial file left after a success")
		}
	})
}

// FuzzReply: the copy's replies. Any bytes read as a reply are refused with
// ErrProtocol or a read error, or read exactly one reply and no further; every
// reply the backup can send reads back as sent (its message cut to the limit).
func FuzzReply(f *testing.F) {
	f.Add(uint8(replyOK), uint8(0), uint64(1<<30), "", []byte{})
	f.Add(uint8(replyFail), uint8(codeNoSpace), uint64(0), ErrNoSpace.Error()+": 3 GiB free", []byte("FTVR"))
	f.Add(uint8(replyRefuse), uint8(codeProtocol), uint64(0), strings.Repeat("x", 5000), []byte("FTVR\x09\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, typ, code uint8, value uint64, msg string, raw []byte) {
		r := bytes.NewReader(raw)
		if rep, err := readReply(r); err == nil {
			if rep.typ < replyAccept || rep.typ > replyResume || len(rep.msg) > maxReplyMsg {
				t.Fatalf("read impossible reply %+v", rep)
			}
			if used := len(raw) - r.Len(); used != replyFixedLen+len(rep.msg) {
				t.Fatalf("read %d bytes for a reply with a %d-byte message", used, len(rep.msg))
			}
		} else if !errors.Is(err, ErrProtocol) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("readReply: %v", err)
		}
		sent := reply{typ: replyType(typ%5 + 1), code: replyCode(code), value: value, msg: msg}
		enc := encodeReply(sent)
		back, err := readReply(bytes.NewReader(append(enc, "trailing"...)))
		want := sent
		want.msg = truncateMsg(msg)
		if err != nil || back != want {
			t.Fatalf("reply %+v read back as %+v, %v", want, back, err)
		}
		if err := back.peerErr(); !errors.Is(err, ErrPeerRefused) {
			t.Fatalf("peerErr %v does not wrap ErrPeerRefused", err)
		}
	})
}

// FuzzQcow2Header: whatever an image file starts with, the standalone check never
// panics or reads more than a bounded name; it passes an image only when it is a
// qcow2 version 2 or 3 header that names no backing file (offset 0) and, in version
// 3, does not set the external-data-file bit: the two ways QEMU reads guest data
// from another file than the one ftvmd copies and verifies.
func FuzzQcow2Header(f *testing.F) {
	f.Add(append([]byte(nil), syntheticHeader...))
	v2 := append([]byte(nil), syntheticHeader[:qcow2V2HeaderSize]...)
	binary.BigEndian.PutUint32(v2[4:], 2)
	f.Add(v2)
	backing := append(append([]byte(nil), syntheticHeader...), "base.qcow2"...)
	binary.BigEndian.PutUint64(backing[qcow2OffBackingOffset:], uint64(len(syntheticHeader)))
	binary.BigEndian.PutUint32(backing[qcow2OffBackingSize:], 10)
	f.Add(backing)
	data := append([]byte(nil), syntheticHeader...)
	data[qcow2OffIncompatible+7] |= qcow2IncompatDataFile
	data = binary.BigEndian.AppendUint32(data, qcow2ExtDataFile)
	data = binary.BigEndian.AppendUint32(data, 4)
	data = append(data, "data\x00\x00\x00\x00"...)
	f.Add(data)
	f.Add([]byte("QFI\xfb"))
	f.Fuzz(func(t *testing.T, img []byte) {
		h, err := readQcow2Header(bytes.NewReader(img), int64(len(img)), "img")
		if err != nil {
			if !errors.Is(err, ErrImageCorrupt) {
				t.Fatalf("undocumented error %v", err)
			}
			return
		}
		if len(h.backingFile) > maxNameLen || len(h.dataFile) > maxNameLen {
			t.Fatalf("name of %d/%d bytes", len(h.backingFile), len(h.dataFile))
		}
		standalone := h.backingFile == "" && !h.externalData
		if len(img) < qcow2V2HeaderSize || string(img[:4]) != "QFI\xfb" {
			t.Fatalf("%d bytes read as a qcow2 header %+v", len(img), h)
		}
		version := binary.BigEndian.Uint32(img[4:])
		backingOff := binary.BigEndian.Uint64(img[qcow2OffBackingOffset:])
		dataBit := version == 3 && binary.BigEndian.Uint64(img[qcow2OffIncompatible:])&qcow2IncompatDataFile != 0
		if h.version != version || (version != 2 && version != 3) {
			t.Fatalf("version %d read as %+v", version, h)
		}
		if standalone != (backingOff == 0 && !dataBit) {
			t.Fatalf("backing offset %d, data file bit %v: standalone %v (%+v)", backingOff, dataBit, standalone, h)
		}
	})
}
