package lab

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// readLabEnv reads the plain assignments of test/lab/lab.env (NAME=value, a
// trailing comment dropped, $VAR references expanded from earlier lines).
func readLabEnv(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("../test/lab/lab.env")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, val, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(name, "FTLAB_") || strings.ContainsAny(name, " (") {
			continue
		}
		val, _, _ = strings.Cut(val, "#")
		env[name] = os.Expand(strings.TrimSpace(val), func(k string) string { return env[k] })
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

// TestHostsMatchLabEnv: lab.sh builds the namespaces, addresses and directories
// from lab.env, and the Go side drives them by these constants; a host added or
// renamed on one side only would give agents in namespaces that do not exist.
func TestHostsMatchLabEnv(t *testing.T) {
	env := readLabEnv(t)
	if env["FTLAB_ROOT"] != Root || env["FTLAB_NS_NET"] != NSNet || env["FTLAB_IP_GUEST"] != GuestIP ||
		env["FTLAB_IP_C"] != IPC || env["FTLAB_NS_C"] != NSC {
		t.Errorf("lab.env root %q, net %q, guest %q, client %q in %q; Go: %q, %q, %q, %q in %q",
			env["FTLAB_ROOT"], env["FTLAB_NS_NET"], env["FTLAB_IP_GUEST"], env["FTLAB_IP_C"], env["FTLAB_NS_C"],
			Root, NSNet, GuestIP, IPC, NSC)
	}
	seen := map[string]string{}
	for _, h := range Hypervisors {
		k := strings.ToUpper(h.Name)
		for name, got := range map[string]string{"NS": h.NS, "IP": h.IP, "DIR": h.Dir, "SOCK": h.Socket, "CPUS": h.CPUs} {
			if want := env["FTLAB_"+name+"_"+k]; want != got {
				t.Errorf("host %s: lab.env FTLAB_%s_%s=%q, lab.go %q", h.Name, name, k, want, got)
			}
		}
		for _, v := range []string{h.NS, h.IP, h.Dir} {
			if other, dup := seen[v]; dup {
				t.Errorf("hosts %s and %s share %q", other, h.Name, v)
			}
			seen[v] = h.Name
		}
		if got, ok := HostByName(h.Name); !ok || got != h {
			t.Errorf("HostByName(%q) = %+v, %v", h.Name, got, ok)
		}
	}
	if _, ok := HostByName("c"); ok {
		t.Error("HostByName found the client host c, which runs no agent")
	}
}
