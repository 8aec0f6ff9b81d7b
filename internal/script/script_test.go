package script

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func write(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.txt")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParse(t *testing.T) {
	path := write(t, "# about a\n\na x=1\n----\nout 1\nout 2\n\nb\n----\n")
	got, err := Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []Block{
		{Comments: []string{"# about a", ""}, Cmd: "a x=1", Line: 3, Want: "out 1\nout 2\n"},
		{Cmd: "b", Line: 8},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("blocks %+v, want %+v", got, want)
	}
	for text, msg := range map[string]string{
		"----\nx\n":      ":1: ---- without a command",
		"a\nb\n----\n\n": `:2: expected ---- after command "a"`,
		"a\n":            `:1: command "a" without ----`,
	} {
		if _, err := Parse(write(t, text)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", text, err, msg)
		}
	}
}

func TestArgs(t *testing.T) {
	pos, kv := Args([]string{"a", "k=v", "b", "e="})
	if !reflect.DeepEqual(pos, []string{"a", "b"}) || !reflect.DeepEqual(kv, map[string]string{"k": "v", "e": ""}) {
		t.Fatalf("pos %q kv %q", pos, kv)
	}
}
