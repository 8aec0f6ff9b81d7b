package conffile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// flags is a flag set like the agent's: one of each type it uses.
type flags struct {
	fs       *pflag.FlagSet
	bridge   string
	hb       time.Duration
	queue    int
	check    bool
	ratio    float64
	peers    []string
	dataPath string
	config   string
}

func newFlags() *flags {
	f := &flags{fs: pflag.NewFlagSet("agent", pflag.ContinueOnError)}
	f.fs.StringVar(&f.bridge, "bridge", "br0", "host bridge that VM taps join")
	f.fs.DurationVar(&f.hb, "heartbeat", 50*time.Millisecond, "heartbeat interval")
	f.fs.IntVar(&f.queue, "pace-queue-bytes", 0, "pacing queue")
	f.fs.BoolVar(&f.check, "check-invariant", false, "verify the output rule")
	f.fs.Float64Var(&f.ratio, "ratio", 0.5, "a fraction")
	f.fs.StringSliceVar(&f.peers, "peers", nil, "peer hosts")
	f.fs.StringVar(&f.dataPath, "data-path", "relay", "relay or tap")
	_ = f.fs.SetAnnotation("data-path", EnvAnnotation, []string{"CONFFILE_TEST_DATA_PATH"})
	f.fs.StringVar(&f.config, "config", "", "config file")
	return f
}

func TestApplySetsEveryType(t *testing.T) {
	f := newFlags()
	src := `# comment
bridge = "br1"
heartbeat = "20ms"

pace-queue-bytes = 4194304
check-invariant = true
ratio = 2
peers = ["a", "b"]
`
	origins, err := Apply(f.fs, "agent.toml", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if f.bridge != "br1" || f.hb != 20*time.Millisecond || f.queue != 4194304 || !f.check || f.ratio != 2 ||
		strings.Join(f.peers, ",") != "a,b" {
		t.Fatalf("flags not set from the file: %+v", f)
	}
	if got := origins["pace-queue-bytes"]; got != (Origin{"agent.toml", 5}) {
		t.Errorf("origin of pace-queue-bytes = %v, want agent.toml:5", got)
	}
	if got := origins["bridge"].String(); got != "agent.toml:2" {
		t.Errorf("origin of bridge = %s", got)
	}
	if f.fs.Changed("bridge") {
		t.Error("a value from the file must not count as given on the command line")
	}
}

func TestCommandLineAndEnvironmentWin(t *testing.T) {
	f := newFlags()
	if err := f.fs.Parse([]string{"--bridge", "cli0"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONFFILE_TEST_DATA_PATH", "tap")
	f.dataPath = "tap" // as the flag's default would have read it from the environment
	origins, err := Apply(f.fs, "agent.toml", []byte("bridge = \"file0\"\ndata-path = \"relay\"\nheartbeat = \"1s\"\n"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if f.bridge != "cli0" {
		t.Errorf("bridge = %q: the command line must override the file", f.bridge)
	}
	if f.dataPath != "tap" {
		t.Errorf("data-path = %q: the environment must override the file", f.dataPath)
	}
	if f.hb != time.Second {
		t.Errorf("heartbeat = %s: the file must apply where nothing overrides it", f.hb)
	}
	if _, ok := origins["bridge"]; ok {
		t.Error("an overridden key must not be reported as applied")
	}
}

func TestErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{"unknown key", "bridge = \"br0\"\n\nbrige = \"br1\"\n", []string{`agent.toml:3: brige: unknown key (did you mean "bridge"?)`}},
		{"unknown, no suggestion", "zzzzzzzzzz = 1\n", []string{"agent.toml:1: zzzzzzzzzz: unknown key"}},
		{"string for bool", "check-invariant = \"yes\"\n", []string{"agent.toml:1: check-invariant: want true or false; got a string"}},
		{"integer for duration", "heartbeat = 50\n", []string{`agent.toml:1: heartbeat: want a duration in quotes, e.g. "50ms" or "2s"; got an integer`}},
		{"bad duration", "\nheartbeat = \"50 parsecs\"\n", []string{"agent.toml:2: heartbeat: ", "50 parsecs"}},
		{"string for int", "pace-queue-bytes = \"4M\"\n", []string{"agent.toml:1: pace-queue-bytes: want an integer"}},
		{"integer for string", "bridge = 0\n", []string{"agent.toml:1: bridge: want a string in quotes"}},
		{"array of integers", "peers = [1, 2]\n", []string{"agent.toml:1: peers: want an array of strings", "holding an integer"}},
		{"table", "[agent]\nbridge = \"br0\"\n", []string{"agent.toml:1: agent: unknown key (the file has no tables"}},
		{"skipped key", "config = \"/x\"\n", []string{"agent.toml:1: config: cannot be set in the config file (use --config)"}},
		{"syntax", "bridge = \"br0\"\nheartbeat = \n", []string{"agent.toml:2: "}},
		{"duplicate", "bridge = \"a\"\nbridge = \"b\"\n", []string{"agent.toml:2: ", "bridge"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFlags()
			_, err := Apply(f.fs, "agent.toml", []byte(c.src), Options{Skip: []string{"config"}})
			if err == nil {
				t.Fatalf("no error for %q", c.src)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestAllProblemsReportedAndNothingApplied(t *testing.T) {
	f := newFlags()
	src := "bridge = \"br9\"\nbogus = 1\nheartbeat = \"x\"\ncheck-invariant = 1\n"
	_, err := Apply(f.fs, "a.toml", []byte(src), Options{})
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "a.toml:2: bogus:") || !strings.HasPrefix(lines[1], "a.toml:3: heartbeat:") ||
		!strings.HasPrefix(lines[2], "a.toml:4: check-invariant:") {
		t.Fatalf("want the problems of lines 2, 3 and 4, in order; got:\n%s", err)
	}
	if f.bridge != "br0" || f.hb != 50*time.Millisecond || f.check {
		t.Errorf("bridge %q heartbeat %s check %v: a file with problems must change nothing", f.bridge, f.hb, f.check)
	}
}

func TestLoad(t *testing.T) {
	f := newFlags()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if _, err := Load(f.fs, p, Options{}); !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("missing file: err = %v, want a not-exist error", err)
	}
	if err := os.WriteFile(p, []byte("bridge = \"br7\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(f.fs, p, Options{}); err != nil || f.bridge != "br7" {
		t.Fatalf("err %v bridge %q", err, f.bridge)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

// TestDefaultsRoundTrip: the written file, every line uncommented, sets every flag
// to its default; as written (all commented) it sets nothing.
func TestDefaultsRoundTrip(t *testing.T) {
	src := newFlags()
	_ = src.fs.MarkHidden("ratio")
	var b bytes.Buffer
	if err := WriteDefaults(&b, src.fs, "ftvmd agent settings\n\nsecond line", []string{"config"},
		map[string]Default{"bridge": {Value: "br-example", Note: "the machine's bridge"}}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, w := range []string{"# ftvmd agent settings\n#\n# second line\n", "# host bridge that VM taps join\n# default: the machine's bridge\n#bridge = \"br-example\"\n",
		"#heartbeat = \"50ms\"\n", "#pace-queue-bytes = 0\n", "#check-invariant = false\n", "#peers = []\n"} {
		if !strings.Contains(out, w) {
			t.Errorf("defaults file lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "ratio") || strings.Contains(out, "config") {
		t.Errorf("hidden and skipped flags must not be written:\n%s", out)
	}
	f := newFlags()
	if o, err := Apply(f.fs, "d.toml", b.Bytes(), Options{}); err != nil || len(o) != 0 {
		t.Fatalf("commented file: origins %v err %v", o, err)
	}
	var un strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#") && strings.Contains(l, " = ") {
			l = strings.TrimPrefix(l, "#")
		}
		un.WriteString(l + "\n")
	}
	f = newFlags()
	f.bridge, f.hb, f.queue, f.check = "x", time.Hour, 9, true
	f.peers = []string{"stale"}
	origins, err := Apply(f.fs, "d.toml", []byte(un.String()), Options{})
	if err != nil {
		t.Fatalf("uncommented defaults: %v\n%s", err, un.String())
	}
	if f.bridge != "br-example" || f.hb != 50*time.Millisecond || f.queue != 0 || f.check || len(f.peers) != 0 || f.dataPath != "relay" {
		t.Fatalf("uncommented defaults did not restore the defaults: %+v", f)
	}
	if len(origins) != 6 {
		t.Errorf("origins %v: want the 6 written keys", origins)
	}
}
