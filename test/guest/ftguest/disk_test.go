package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestRecordEncoding(t *testing.T) {
	for _, p := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0xff}, maxPayload)} {
		b, err := encodeRecord(7, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != slotSize || string(b[:4]) != "FTRC" {
			t.Fatalf("bad slot image: len %d magic %q", len(b), b[:4])
		}
		if binary.LittleEndian.Uint64(b[4:]) != 7 || int(binary.LittleEndian.Uint16(b[12:])) != len(p) {
			t.Fatalf("bad header % x", b[:recHeader])
		}
		if !bytes.Equal(b[recHeader+len(p):], make([]byte, slotSize-recHeader-len(p))) {
			t.Fatal("padding not zero")
		}
		got, ok := decodeRecord(b, 7)
		if !ok || !bytes.Equal(got, p) {
			t.Fatalf("decode(%q) = %q, %v", p, got, ok)
		}
		if _, ok := decodeRecord(b, 8); ok {
			t.Fatal("record 7 decoded as slot 8")
		}
	}
	if _, err := encodeRecord(1, make([]byte, maxPayload+1)); err == nil {
		t.Fatal("over-long payload accepted")
	}

	good, _ := encodeRecord(3, []byte("payload"))
	for name, mut := range map[string]func(b []byte){
		"zero":    func(b []byte) { clear(b) },
		"magic":   func(b []byte) { b[0] = 'X' },
		"crc":     func(b []byte) { b[14]++ },
		"payload": func(b []byte) { b[recHeader]++ },
		"length":  func(b []byte) { binary.LittleEndian.PutUint16(b[12:], 6) },
		"too long": func(b []byte) {
			binary.LittleEndian.PutUint16(b[12:], maxPayload+1)
		},
	} {
		b := bytes.Clone(good)
		mut(b)
		if p, ok := decodeRecord(b, 3); ok {
			t.Errorf("%s: corrupted slot decoded as %q", name, p)
		}
	}
	if _, ok := decodeRecord(good[:100], 3); ok {
		t.Error("short buffer decoded")
	}
}

// diskServer returns a server whose record device is a fresh zero file of slots slots.
func diskServer(t *testing.T, slots int) (*server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vda")
	if err := os.WriteFile(path, make([]byte, slots*slotSize), 0o644); err != nil {
		t.Fatal(err)
	}
	s := newServer()
	s.diskPath = path
	t.Cleanup(func() {
		if s.disk != nil {
			s.disk.Close()
		}
	})
	return s, path
}

func TestRecProtocol(t *testing.T) {
	s, path := diskServer(t, 16)
	c, r, _ := dial(t, s)
	long := strings.Repeat("x", maxPayload)
	for _, tc := range []struct{ req, want string }{
		{"disk", "disk 8192"},
		{"reccount", "reccount 0"},
		{"recget 0", "rec 0 missing"},
		{"rec 0 hello world", "rec ok 0"},
		{"rec 1 " + long, "rec ok 1"},
		{"rec 2", "rec ok 2"}, // empty payload
		{"rec 1 " + long + "y", "err rec: payload 481 bytes over limit 480"},
		{"rec 16 x", "err rec: slot 16 out of range (disk has 16 slots)"},
		{"rec -1 x", `err rec: bad slot "-1"`},
		{"rec", "err usage: rec <n> <payload>"},
		{"recget", "err usage: recget <n>"},
		{"recget x", `err recget: bad slot "x"`},
		{"recget 99", "err recget: slot 99 out of range (disk has 16 slots)"},
		{"recget 0", "rec 0 hello world"},
		{"recget 1", "rec 1 " + long},
		{"recget 2", "rec 2 "},
		{"recget 3", "rec 3 missing"},
		{"reccount", "reccount 3"},
		{"rec 4 gap", "rec ok 4"},
		{"reccount", "reccount 3"},
		{"rec 3 fill", "rec ok 3"},
		{"reccount", "reccount 5"},
		{"rec 0 again", "rec ok 0"}, // overwrite
		{"recget 0", "rec 0 again"},
		{"ping", "pong"},
	} {
		if got := send(t, c, r, tc.req); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.req, got, tc.want)
		}
	}

	// The records are on the "device" at offset n*512, readable by a fresh server.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := decodeRecord(raw[4*slotSize:5*slotSize], 4); !ok || string(p) != "gap" {
		t.Fatalf("slot 4 on disk: %q %v", p, ok)
	}
	s2 := newServer()
	s2.diskPath = path
	c2, r2, _ := dial(t, s2)
	if got := send(t, c2, r2, "reccount"); got != "reccount 5" {
		t.Errorf("fresh server: %q", got)
	}
	s2.disk.Close()

	// A corrupted slot reads as missing and ends the count.
	raw[2*slotSize+recHeader-1] = 1 // inside the header's zero area: still valid
	raw[2*slotSize+14] ^= 0xff      // the crc: invalid
	os.WriteFile(path, raw, 0o644)
	if got := send(t, c, r, "recget 2"); got != "rec 2 missing" {
		t.Errorf("corrupted slot: %q", got)
	}
	if got := send(t, c, r, "reccount"); got != "reccount 2" {
		t.Errorf("reccount after corruption: %q", got)
	}
}

func TestRecCountFullDisk(t *testing.T) {
	// More slots than one 128-slot read chunk, and not a multiple of it.
	const slots = 300
	s, _ := diskServer(t, slots)
	for i := 0; i < slots; i++ {
		if got := s.recPut(fmt.Sprintf("%d r%d", i, i)); got != fmt.Sprint("rec ok ", i) {
			t.Fatalf("rec %d: %q", i, got)
		}
	}
	if got := s.recCount(); got != fmt.Sprint("reccount ", slots) {
		t.Fatalf("full disk: %q", got)
	}
	if got := s.recGet("299"); got != "rec 299 r299" {
		t.Fatalf("last slot: %q", got)
	}
}

func TestRecConcurrent(t *testing.T) {
	s, _ := diskServer(t, 64)
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := s.recPut(fmt.Sprintf("%d p%d", i, i)); got != fmt.Sprint("rec ok ", i) {
				t.Errorf("rec %d: %q", i, got)
			}
		}()
	}
	wg.Wait()
	if got := s.recCount(); got != "reccount 64" {
		t.Fatalf("%q", got)
	}
}

func TestNoDisk(t *testing.T) {
	s := newServer()
	s.diskPath = filepath.Join(t.TempDir(), "absent")
	c, r, _ := dial(t, s)
	for _, tc := range []struct{ req, want string }{
		{"disk", "disk none"},
		{"rec 1 x", "err no disk"},
		{"recget 1", "err no disk"},
		{"reccount", "err no disk"},
		{"ping", "pong"},
	} {
		if got := send(t, c, r, tc.req); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.req, got, tc.want)
		}
	}
	// The device appearing later is picked up.
	os.WriteFile(s.diskPath, make([]byte, 4*slotSize), 0o644)
	if got := send(t, c, r, "rec 1 x"); got != "rec ok 1" {
		t.Errorf("after the disk appeared: %q", got)
	}
	s.disk.Close()
}
