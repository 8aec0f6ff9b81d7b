// Command ftguest is the service that runs inside the ftvmd lab guest.
//
// It listens on TCP :7000 and speaks a one-line-per-request text protocol.
// Every answer is a deterministic function of the request history, so a
// backup that replays the primary's log produces exactly the same answers,
// and any divergence (a lost or duplicated request) shows in the counts.
//
//	seq <n> <payload>  -> ok <n> <count> <payload>   (count: requests served this boot)
//	md5 <MB>           -> md5 <hex>                  (md5 of MB MiB of a fixed pattern)
//	ping               -> pong
//	get <bytes>        -> data <bytes>\n + exactly <bytes> bytes of pattern
//	put <bytes>        -> reads exactly <bytes> bytes, then: got <bytes> <crc32 hex>
//	counter            -> counter <N>     (console counter, read from /run/counter)
//	uptime             -> uptime <contents of /proc/uptime>
//
// Durable records on the disk (/dev/vda; see disk.go for the slot layout):
//
//	rec <n> <payload>  -> rec ok <n>        (written to 512-byte slot n at offset n*512;
//	                                         answered only after the write is durable)
//	recget <n>         -> rec <n> <payload>  or  rec <n> missing  (empty/invalid slot)
//	reccount           -> reccount <k>      (slots 0..k-1 valid, slot k missing or end of disk)
//	disk               -> disk <size bytes>  or  disk none
//
// The payload is the rest of the line (may be empty, at most 480 bytes). n must be
// below <disk size>/512. Errors: "err rec: <reason>" (likewise recget, reccount);
// every record command answers "err no disk" when the device does not exist.
// Disk access is serialized; the device is opened O_RDWR|O_SYNC on first use.
//
// Unknown or malformed requests get "err <reason>". "quit" closes the
// connection. Stdlib only; built statically with CGO_ENABLED=0.
package main

import (
	"bufio"
	"crypto/md5"
	"encoding/hex"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Limits keep a misbehaving client from exhausting the guest's small memory.
const (
	maxMD5MB     = 1024    // md5 works in 1 MiB chunks, so memory use is bounded anyway
	maxBulkBytes = 1 << 30 // get/put transfer cap
	maxLine      = 64 << 10
)

// server holds the per-boot state shared by all connections.
type server struct {
	mu          sync.Mutex
	served      uint64 // number of seq requests served this boot
	counterPath string // file the console counter loop writes its value to
	uptimePath  string

	dmu      sync.Mutex // serializes all disk access
	diskPath string     // record device, default /dev/vda
	disk     *os.File   // opened on first use (see openDisk)
	diskSize int64
}

func newServer() *server {
	return &server{counterPath: "/run/counter", uptimePath: "/proc/uptime", diskPath: "/dev/vda"}
}

// next returns the new global count after serving one more seq request.
func (s *server) next() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.served++
	return s.served
}

// pattern fills b with the deterministic byte pattern starting at offset off:
// byte i of the stream is (i*7 + i>>8) mod 256. Cheap and not periodic at 256.
func pattern(b []byte, off int64) {
	for i := range b {
		x := off + int64(i)
		b[i] = byte(x*7 + x>>8)
	}
}

// handle serves one connection until EOF, "quit" or an I/O error.
func (s *server) handle(rw io.ReadWriter) error {
	r := bufio.NewReaderSize(rw, 64<<10)
	w := bufio.NewWriterSize(rw, 64<<10)
	for {
		line, err := readLine(r)
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		quit, err := s.serve(line, r, w)
		if err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if quit {
			return nil
		}
	}
}

// readLine reads one '\n'-terminated line (CR stripped). A final line without
// a newline is still returned; an over-long line is an error.
func readLine(r *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		frag, err := r.ReadSlice('\n')
		sb.Write(frag)
		if sb.Len() > maxLine {
			return "", fmt.Errorf("line longer than %d bytes", maxLine)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && sb.Len() > 0 {
			break
		}
		if err != nil {
			return "", err
		}
		break
	}
	return strings.TrimRight(sb.String(), "\r\n"), nil
}

// serve answers one request line. Bulk commands read from / write to r and w
// directly. It returns quit=true when the client asked to close.
func (s *server) serve(line string, r *bufio.Reader, w *bufio.Writer) (quit bool, err error) {
	cmd, rest, _ := strings.Cut(line, " ")
	switch cmd {
	case "ping":
		_, err = w.WriteString("pong\n")
	case "seq":
		n, payload, _ := strings.Cut(rest, " ")
		if n == "" {
			_, err = w.WriteString("err usage: seq <n> <payload>\n")
			break
		}
		_, err = fmt.Fprintf(w, "ok %s %d %s\n", n, s.next(), payload)
	case "md5":
		mb, perr := parseSize(rest, maxMD5MB)
		if perr != nil {
			_, err = fmt.Fprintf(w, "err md5: %v\n", perr)
			break
		}
		_, err = fmt.Fprintf(w, "md5 %s\n", md5Pattern(mb))
	case "get":
		n, perr := parseSize(rest, maxBulkBytes)
		if perr != nil {
			_, err = fmt.Fprintf(w, "err get: %v\n", perr)
			break
		}
		if _, err = fmt.Fprintf(w, "data %d\n", n); err != nil {
			break
		}
		err = writePattern(w, n)
	case "put":
		n, perr := parseSize(rest, maxBulkBytes)
		if perr != nil {
			_, err = fmt.Fprintf(w, "err put: %v\n", perr)
			break
		}
		h := crc32.NewIEEE()
		if _, err = io.CopyN(h, r, n); err != nil {
			return true, fmt.Errorf("put: short body: %w", err)
		}
		_, err = fmt.Fprintf(w, "got %d %08x\n", n, h.Sum32())
	case "counter":
		_, err = fmt.Fprintf(w, "counter %s\n", readTrim(s.counterPath))
	case "uptime":
		_, err = fmt.Fprintf(w, "uptime %s\n", readTrim(s.uptimePath))
	case "rec":
		_, err = fmt.Fprintln(w, s.recPut(rest))
	case "recget":
		_, err = fmt.Fprintln(w, s.recGet(strings.TrimSpace(rest)))
	case "reccount":
		_, err = fmt.Fprintln(w, s.recCount())
	case "disk":
		_, err = fmt.Fprintln(w, s.diskInfo())
	case "quit":
		_, err = w.WriteString("bye\n")
		return true, err
	case "":
		// Blank lines are ignored so "printf '\n'" probes do no harm.
	default:
		_, err = fmt.Fprintf(w, "err unknown command %q\n", cmd)
	}
	return false, err
}

// parseSize parses a non-negative decimal integer not larger than max.
func parseSize(s string, max int64) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	if n > max {
		return 0, fmt.Errorf("size %d over limit %d", n, max)
	}
	return n, nil
}

// md5Pattern hashes mb MiB of the pattern, one 1 MiB chunk at a time.
func md5Pattern(mb int64) string {
	h := md5.New()
	buf := make([]byte, 1<<20)
	for i := int64(0); i < mb; i++ {
		pattern(buf, i<<20)
		h.Write(buf)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writePattern writes n bytes of the pattern to w.
func writePattern(w io.Writer, n int64) error {
	buf := make([]byte, 64<<10)
	for off := int64(0); off < n; {
		c := min(int64(len(buf)), n-off)
		pattern(buf[:c], off)
		if _, err := w.Write(buf[:c]); err != nil {
			return err
		}
		off += c
	}
	return nil
}

// readTrim returns a file's contents without surrounding space, or "?" if unreadable.
func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func main() {
	addr := flag.String("listen", ":7000", "TCP address to listen on")
	disk := flag.String("disk", "/dev/vda", "block device (or file) holding the record slots")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("ftguest: ")

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	s := newServer()
	s.diskPath = *disk
	// The marker the launcher and smoke test wait for on the console.
	fmt.Println("ftguest ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("accept: %v", err)
			continue
		}
		go func() {
			defer c.Close()
			if err := s.handle(c); err != nil {
				log.Printf("%v: %v", c.RemoteAddr(), err)
			}
		}()
	}
}
