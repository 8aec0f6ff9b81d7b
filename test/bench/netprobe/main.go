// Command netprobe is the client half of test/bench/ab-net.sh: from the lab's client
// host it runs one measurement against the guest's service and prints one JSON line.
//
//	netprobe rtt N   N `seq` round trips on one connection: p10/p50/p90/p99/max in ms
//	netprobe get MB  a guest->client transfer of MB MiB: MB/s
//	netprobe put MB  a client->guest transfer of MB MiB: MB/s
//
// `ftvmd bench net` is the benchmark of record; this probe exists so two builds can
// be compared on one lab, round after round, without rebooting guests for each figure.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "netprobe:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: netprobe rtt|get|put N")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		return fmt.Errorf("bad count %q", args[1])
	}
	c, err := lab.NewClient(context.Background(), time.Minute)
	if err != nil {
		return err
	}
	defer c.Close()
	for i := 0; i < 20; i++ { // warm up
		if _, err := c.Do("ping", 30*time.Second); err != nil {
			return err
		}
	}
	out := map[string]any{"op": args[0], "n": n}
	switch args[0] {
	case "rtt":
		r := make([]float64, 0, n)
		for i := 1; i <= n; i++ {
			t := time.Now()
			resp, err := c.Do(fmt.Sprintf("seq %d probe", i), 30*time.Second)
			if err != nil || !strings.HasPrefix(resp, fmt.Sprintf("ok %d ", i)) {
				return fmt.Errorf("request %d: %q %v", i, resp, err)
			}
			r = append(r, float64(time.Since(t).Microseconds())/1000)
		}
		sort.Float64s(r)
		q := func(p float64) float64 { return r[min(len(r)-1, int(p*float64(len(r))))] }
		out["p10_ms"], out["p50_ms"], out["p90_ms"], out["p99_ms"], out["max_ms"] = q(0.10), q(0.50), q(0.90), q(0.99), r[len(r)-1]
	case "get":
		nb := int64(n) << 20
		_ = c.Conn.SetDeadline(time.Now().Add(10 * time.Minute))
		t := time.Now()
		if _, err := fmt.Fprintf(c.Conn, "get %d\n", nb); err != nil {
			return err
		}
		if hdr, err := c.ReadLine(); err != nil || hdr != fmt.Sprintf("data %d", nb) {
			return fmt.Errorf("get: header %q %v", hdr, err)
		}
		if _, err := io.CopyN(io.Discard, c.Reader(), nb); err != nil {
			return fmt.Errorf("get: %w", err)
		}
		out["MB_s"] = float64(n) / time.Since(t).Seconds()
	case "put":
		nb := int64(n) << 20
		_ = c.Conn.SetDeadline(time.Now().Add(10 * time.Minute))
		t := time.Now()
		if _, err := fmt.Fprintf(c.Conn, "put %d\n", nb); err != nil {
			return err
		}
		buf := make([]byte, 64<<10)
		for left := nb; left > 0; left -= int64(len(buf)) {
			if _, err := c.Conn.Write(buf[:min(left, int64(len(buf)))]); err != nil {
				return fmt.Errorf("put: %w", err)
			}
		}
		if got, err := c.ReadLine(); err != nil || !strings.HasPrefix(got, fmt.Sprintf("got %d ", nb)) {
			return fmt.Errorf("put: %q %v", got, err)
		}
		out["MB_s"] = float64(n) / time.Since(t).Seconds()
	default:
		return fmt.Errorf("unknown op %q", args[0])
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
