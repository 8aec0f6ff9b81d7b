package bench

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

// The samples in testdata are Debian 12's iperf3 3.12 client's --json output,
// recorded on this machine over loopback against `iperf3 -s` (-t 2 -b 20M, and the
// same with -R; the refused one against a port nobody listened on).

func readSample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(math.Abs(a), math.Abs(b)) }

func TestParseIperf3Samples(t *testing.T) {
	for _, tc := range []struct {
		file, dir                     string
		clientSeconds, bytes          float64
		recvMbit, sendMbit, recvS, sS float64
	}{
		// Client to guest: the client sends, so its own clock is sum_sent's.
		{"iperf3-client-to-guest.json", IperfToGuest, 2.000152, 5111808, 20.4398838617517, 20.445678128462236, 2.000719, 2.000152},
		// -R: the client receives; sum_received is on its clock.
		{"iperf3-guest-to-client.json", IperfToClient, 2.000094, 5111808, 20.446271025261816, 20.433704887364566, 2.000094, 2.001324},
	} {
		t.Run(tc.dir, func(t *testing.T) {
			run, err := ParseIperf3(readSample(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if run.Direction != tc.dir {
				t.Errorf("direction %q, want %q", run.Direction, tc.dir)
			}
			if want := tc.bytes * 8 / 1e6 / tc.clientSeconds; !near(run.MbitS, want) {
				t.Errorf("mbit_s %v, want %v", run.MbitS, want)
			}
			if !near(run.ReceiverMbitS, tc.recvMbit) || !near(run.SenderMbitS, tc.sendMbit) {
				t.Errorf("iperf3's own lines %v / %v, want %v / %v", run.ReceiverMbitS, run.SenderMbitS, tc.recvMbit, tc.sendMbit)
			}
			if !near(run.ReceiverSeconds, tc.recvS) || !near(run.SenderSeconds, tc.sS) || run.ReceivedBytes != int64(tc.bytes) {
				t.Errorf("seconds %v / %v, bytes %d", run.ReceiverSeconds, run.SenderSeconds, run.ReceivedBytes)
			}
			if run.iperf3Version != "iperf 3.12" {
				t.Errorf("version %q", run.iperf3Version)
			}
		})
	}
}

// edit decodes a sample, lets f change it and encodes it again.
func edit(t *testing.T, name string, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(readSample(t, name), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func endSum(m map[string]any, key string) map[string]any {
	return m["end"].(map[string]any)[key].(map[string]any)
}

// The compared figure is on the client's clock whichever way the bytes go: a
// guest clock running slow (its side's seconds short) must not inflate it.
func TestParseIperf3ClientClock(t *testing.T) {
	fwd := edit(t, "iperf3-client-to-guest.json", func(m map[string]any) {
		r := endSum(m, "sum_received") // the guest's side
		r["seconds"], r["bytes"], r["bits_per_second"] = 1.0, 4e6, 32e6
	})
	run, err := ParseIperf3(fwd)
	if err != nil {
		t.Fatal(err)
	}
	if want := 4e6 * 8 / 1e6 / 2.000152; !near(run.MbitS, want) {
		t.Errorf("client to guest: mbit_s %v, want %v (received bytes over the client's seconds)", run.MbitS, want)
	}
	if run.ReceiverMbitS != 32 {
		t.Errorf("iperf3 receiver line %v, want 32 as iperf3 reported it", run.ReceiverMbitS)
	}
	rev := edit(t, "iperf3-guest-to-client.json", func(m map[string]any) {
		endSum(m, "sum_sent")["seconds"] = 1.0 // the guest's side
	})
	run, err = ParseIperf3(rev)
	if err != nil {
		t.Fatal(err)
	}
	if want := 5111808 * 8 / 1e6 / 2.000094; !near(run.MbitS, want) {
		t.Errorf("guest to client: mbit_s %v, want %v", run.MbitS, want)
	}
}

func TestParseIperf3Errors(t *testing.T) {
	_, err := ParseIperf3(readSample(t, "iperf3-refused.json"))
	if !errors.Is(err, errIperf) || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused: %v, want iperf3's own error", err)
	}
	for name, b := range map[string][]byte{
		"not json": []byte("iperf3: error - unable to connect to server\n"),
		"empty":    nil,
		"no end":   edit(t, "iperf3-client-to-guest.json", func(m map[string]any) { delete(m, "end") }),
		"no bytes": edit(t, "iperf3-client-to-guest.json", func(m map[string]any) { endSum(m, "sum_received")["bytes"] = 0 }),
		"two streams": edit(t, "iperf3-client-to-guest.json", func(m map[string]any) {
			m["start"].(map[string]any)["test_start"].(map[string]any)["num_streams"] = 2
		}),
		"udp": edit(t, "iperf3-client-to-guest.json", func(m map[string]any) {
			m["start"].(map[string]any)["test_start"].(map[string]any)["protocol"] = "UDP"
		}),
		"sender flags disagree": edit(t, "iperf3-client-to-guest.json", func(m map[string]any) { endSum(m, "sum_sent")["sender"] = false }),
		"reverse but client sent": edit(t, "iperf3-client-to-guest.json", func(m map[string]any) {
			m["start"].(map[string]any)["test_start"].(map[string]any)["reverse"] = 1
		}),
	} {
		if run, err := ParseIperf3(b); err == nil {
			t.Errorf("%s: parsed as %+v, want an error", name, run)
		} else if errors.Is(err, errIperf) {
			t.Errorf("%s: %v reported as iperf3's own error", name, err)
		}
	}
}

func TestCheckIperfGuest(t *testing.T) {
	dir := t.TempDir()
	with := dir + "/with.log"
	without := dir + "/without.log"
	if err := os.WriteFile(with, []byte("ftguest init: eth0 10.77.0.100/24\n"+IperfConsoleLine+"\nftguest ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(without, []byte("ftguest init: eth0 10.77.0.100/24\nftguest ready\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkIperfGuest(with); err != nil {
		t.Errorf("console with the line: %v", err)
	}
	if err := checkIperfGuest(without); err == nil || !strings.Contains(err.Error(), "test/guest/build.sh") {
		t.Errorf("console without the line: %v, want an error naming the image build", err)
	}
	if err := checkIperfGuest(dir + "/missing.log"); err == nil {
		t.Error("missing console: no error")
	}
}

func TestIperfRatio(t *testing.T) {
	up, p := IperfRun{MbitS: 200}, IperfRun{MbitS: 50}
	if got := iperfRatio(up, p); got != 0.25 {
		t.Errorf("ratio %v, want 0.25", got)
	}
	// A failed run gives no ratio (and none that JSON cannot carry, like NaN).
	for name, c := range map[string][2]IperfRun{
		"protected failed":   {up, {Error: "iperf3: control socket has closed unexpectedly"}},
		"unprotected failed": {{Error: "x"}, p},
		"nothing moved":      {{}, p},
	} {
		if got := iperfRatio(c[0], c[1]); got != 0 {
			t.Errorf("%s: ratio %v, want 0", name, got)
		}
	}
}

// A run the guest's server cut short: recorded offline against the lab guest
// under -icount shift=4 with a 20 s -R run on a tap without offloads; the guest's
// clock ran ahead of real time and its server's end-of-test guard fired 16 s in.
func TestParseIperf3CutShort(t *testing.T) {
	run, err := ParseIperf3(readSample(t, "iperf3-guest-to-client-cut.json"))
	if err != nil {
		t.Fatal(err)
	}
	if run.Direction != IperfToClient || !strings.Contains(run.Error, "control socket has closed unexpectedly") {
		t.Errorf("direction %q, error %q", run.Direction, run.Error)
	}
	// 16 one-second intervals, 1201209720 bytes received in all.
	if !near(run.ClientSeconds, 16.000081956386566) {
		t.Errorf("client seconds %v", run.ClientSeconds)
	}
	if want := 1201209720 * 8 / 1e6 / run.ClientSeconds; !near(run.MbitS, want) {
		t.Errorf("mbit_s %v, want %v", run.MbitS, want)
	}
}

// Errors that say the guest's server was not ready for a test are retried;
// others are findings.
func TestRetryableIperf(t *testing.T) {
	for msg, want := range map[string]bool{
		"iperf3: error - unable to connect to server: Connection refused":     true,
		"iperf3: unable to receive control message: Connection reset by peer": true,
		"iperf3: error - the server is busy running a test. try again later":  true,
		"iperf3: unable to write to stream socket: Broken pipe":               false,
		"iperf3: control socket has closed unexpectedly":                      false,
	} {
		if got := retryableIperf(msg); got != want {
			t.Errorf("retryableIperf(%q) = %v, want %v", msg, got, want)
		}
	}
}
