package conffile

import (
	"maps"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// flagValues is every flag's value as text.
func flagValues(fs *pflag.FlagSet) map[string]string {
	m := map[string]string{}
	fs.VisitAll(func(f *pflag.Flag) { m[f.Name] = f.Value.String() })
	return m
}

// FuzzApply: whatever an agent's config file holds, Apply either refuses it and
// changes no flag, or sets exactly the flags it reports (each once, from a line of
// the file), the same way every time. (TestDefaultsRoundTrip covers the file ftvmd
// writes.)
func FuzzApply(f *testing.F) {
	f.Add([]byte("bridge = \"br1\"\nheartbeat = \"20ms\"\npace-queue-bytes = 4194304\ncheck-invariant = true\nratio = 2\npeers = [\"a\", \"b\"]\n"))
	f.Add([]byte("heartbeat = \"20 parsecs\"\nbridge = 7\n"))
	f.Add([]byte("config = \"/etc/x\"\n"))
	f.Add([]byte("[table]\nbridge = \"x\"\n"))
	f.Add([]byte("peers = []\nratio = 1e308\npace-queue-bytes = 9223372036854775807\n"))
	f.Add([]byte("brige = \"br0\"\n"))
	f.Add([]byte("bridge = \"a\"\nbridge = \"b\"\n"))
	f.Add([]byte("peers = [1, \"a\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl := newFlags()
		before := flagValues(fl.fs)
		origins, err := Apply(fl.fs, "agent.toml", data, Options{Skip: []string{"config"}})
		after := flagValues(fl.fs)
		if err != nil {
			if !maps.Equal(before, after) {
				t.Fatalf("a refused file (%v) changed flags: %v -> %v", err, before, after)
			}
			if err.Error() == "" || !strings.HasPrefix(err.Error(), "agent.toml") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for name, v := range after {
			if _, set := origins[name]; !set && v != before[name] {
				t.Fatalf("flag %s changed (%q -> %q) but is not reported as set", name, before[name], v)
			}
		}
		for name, at := range origins {
			if fl.fs.Lookup(name) == nil || at.File != "agent.toml" || at.Line < 1 || name == "config" {
				t.Fatalf("reported %s set from %v", name, at)
			}
			if fl.fs.Changed(name) {
				t.Fatalf("flag %s set from the file counts as given on the command line", name)
			}
		}
		again := newFlags()
		if _, err := Apply(again.fs, "agent.toml", data, Options{Skip: []string{"config"}}); err != nil || !maps.Equal(flagValues(again.fs), after) {
			t.Fatalf("the same file applied again: %v, values %v, first time %v", err, flagValues(again.fs), after)
		}
	})
}
