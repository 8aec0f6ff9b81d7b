package agent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"testing"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/vmspec"
)

// afterHello is what a primary sends right after its Hello (the disk image copy
// starts with "FTVMDIMG"): a reader that takes more than the Hello eats it.
var afterHello = []byte("FTVMDIMG-next-message")

// readHelloFrom runs logging.ReadHello on a connection that carries b and then
// afterHello, and returns what ReadHello left unread.
func readHelloFrom(t *testing.T, b []byte, v any) ([]byte, error) {
	t.Helper()
	c1, c2 := net.Pipe()
	go func() {
		// A write fails once the reader gives up and closes its end.
		_, _ = c1.Write(append(append([]byte(nil), b...), afterHello...))
		c1.Close()
	}()
	err := logging.ReadHello(c2, v)
	var rest []byte
	if err == nil {
		rest, _ = io.ReadAll(c2)
	}
	c2.Close()
	return rest, err
}

// FuzzHello: what a backup reads as a primary's Hello (with the VM spec it
// carries) or a primary reads as the backup's reply. ReadHello takes exactly one
// message, whatever it holds, so the disk copy and the log that follow on the
// connection are read from their first byte; a refusal is one of the documented
// errors; what it accepts encodes back to the same Hello; and a Hello the backup
// would act on names a valid spec, a data path and a start offset it knows.
func FuzzHello(f *testing.F) {
	shift := 4
	hellos := []peerHello{
		{Op: "backup", From: "hosta", Spec: vmspec.Spec{Name: "vm1", MemoryMB: 256, Kernel: "/k", Initrd: "/i", MAC: "52:54:00:12:34:56", IcountShift: &shift, LagBoundMS: 100},
			StartOffset: 12, Epoch: 3, Disk: &disk.ImageInfo{Name: "disk.qcow2", Size: 1 << 20, SHA256: "00"}, Engine: "ftvmd QEMU 7.2.22", StallReports: true, DataPath: DataPathTap},
		{Op: "checksum", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}},
	}
	for _, h := range hellos {
		var buf bytes.Buffer
		c1, c2 := net.Pipe()
		go func() { _ = logging.WriteHello(c1, h); c1.Close() }()
		_, _ = io.Copy(&buf, c2)
		f.Add(buf.Bytes())
	}
	f.Add(logging.AppendMessage(nil, logging.MsgHello, []byte(`{"op":"backup","spec":{"icount_shift":null,"name":7}}`)))
	f.Add(logging.AppendMessage(nil, logging.MsgHello, []byte(`{"op":"backup"} {"op":"x"}`)))
	f.Add(logging.AppendMessage(nil, logging.MsgError, []byte("refused")))
	f.Add(logging.AppendMessage(nil, logging.MsgFrame, make([]byte, 30)))
	f.Add([]byte{byte(logging.MsgHello), 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h peerHello
		rest, err := readHelloFrom(t, b, &h)
		if err != nil {
			switch {
			case errors.Is(err, logging.ErrProtocol), errors.Is(err, logging.ErrPeerClosed), errors.Is(err, logging.ErrPeerRefused),
				errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.ErrClosedPipe):
			default:
				t.Fatalf("ReadHello: undocumented error %v", err)
			}
			return
		}
		// Exactly the first message is read: its header says how long it is.
		want := append(b[logging.HeaderSize+int(binary.BigEndian.Uint32(b[1:5])):], afterHello...)
		if !bytes.Equal(rest, want) {
			t.Fatalf("ReadHello left %q unread, want %q", rest, want)
		}
		// What was read is what a primary would have sent to mean it.
		var back peerHello
		c1, c2 := net.Pipe()
		go func() {
			if err := logging.WriteHello(c1, h); err != nil {
				c1.Close()
			}
		}()
		if err := logging.ReadHello(c2, &back); err != nil {
			t.Fatalf("re-encoded Hello %+v: %v", h, err)
		}
		c1.Close()
		c2.Close()
		if !reflect.DeepEqual(back, h) {
			t.Fatalf("Hello round trip: %+v, want %+v", back, h)
		}
		// The checks the backup applies before it acts (servePeer, startBackup).
		h.Spec.Normalize()
		if h.Op != "backup" || checkPeerName("hostb", h.From, "primary") != nil || h.Spec.Validate() != nil {
			return
		}
		if _, err := ParseDataPath(string(h.DataPath)); err != nil {
			return
		}
		if !vmspec.ValidName(h.Spec.Name) || h.From == "" || h.From == "hostb" {
			t.Fatalf("the backup would act on Hello %+v", h)
		}
	})
}
