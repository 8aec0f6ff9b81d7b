// Package conffile reads a command's settings from a TOML file whose keys are the
// command's flag names (`bridge = "br0"` for --bridge), so every flag has a key
// without a second list of settings to keep in step, and writes such a file with
// every setting commented out at its default.
//
// Precedence, highest first: the command line, a flag's environment variable
// (EnvAnnotation), the file, the flag's default.
package conffile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"
)

// EnvAnnotation is the pflag annotation naming the environment variable a flag's
// default comes from: when that variable is set, the file does not override it.
const EnvAnnotation = "ftvmd_env"

// Origin is where a setting was read: file and line.
type Origin struct {
	File string
	Line int
}

func (o Origin) String() string { return fmt.Sprintf("%s:%d", o.File, o.Line) }

// Options tune Apply.
type Options struct {
	// Skip names flags the file may not set (e.g. the flag that names the file).
	Skip []string
}

// Load reads the file at path and applies it to fs (see Apply).
func Load(fs *pflag.FlagSet, path string, opt Options) (map[string]Origin, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return Apply(fs, path, data, opt)
}

// Apply parses data (the TOML file name) and sets each flag of fs it has a key for,
// unless the flag was given on the command line or its environment variable is set.
// It returns where each applied key was read. Every problem in the file (a syntax
// error, an unknown key, a value of the wrong type or one the flag refuses) is
// reported, one per line, as "file:line: key: what is wrong"; on any problem no flag
// is changed.
func Apply(fs *pflag.FlagSet, name string, data []byte, opt Options) (map[string]Origin, error) {
	var raw map[string]toml.Primitive
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", name, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	skip := map[string]bool{}
	for _, s := range opt.Skip {
		skip[s] = true
	}
	type setting struct {
		flag  *pflag.Flag
		value value
		at    Origin
	}
	var (
		probs    []problem
		settings []setting
	)
	for key, prim := range raw {
		at := Origin{File: name, Line: lineOf(&md, prim)}
		fail := func(format string, args ...any) {
			probs = append(probs, problem{at, key, fmt.Sprintf(format, args...)})
		}
		f := fs.Lookup(key)
		switch {
		case f == nil:
			msg := "unknown key"
			var v value
			if s := closest(fs, key); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			} else if md.PrimitiveDecode(prim, &v) == nil && tomlType(v.v) == "a table" {
				msg += " (the file has no tables: every setting is a top-level key = value line)"
			}
			fail("%s", msg)
			continue
		case skip[key]:
			fail("cannot be set in the config file (use --%s)", key)
			continue
		}
		var v value
		if err := md.PrimitiveDecode(prim, &v); err != nil {
			fail("%s", err)
			continue
		}
		if err := check(f, v); err != nil {
			fail("%s", err)
			continue
		}
		// The flag's own parser judges the value (a bad duration, say) before any
		// flag changes, so a file with a problem changes nothing.
		if err := trySet(f, v); err != nil {
			fail("%s", err)
			continue
		}
		settings = append(settings, setting{f, v, at})
	}
	if len(probs) > 0 {
		return nil, joinProblems(probs)
	}
	origins := map[string]Origin{}
	for _, s := range settings {
		if s.flag.Changed || envSet(s.flag) {
			continue // the command line or the environment wins
		}
		if err := set(s.flag, s.value); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", s.at, s.flag.Name, err)
		}
		origins[s.flag.Name] = s.at
	}
	return origins, nil
}

// problem is one thing wrong in the file.
type problem struct {
	at  Origin
	key string
	msg string
}

func joinProblems(ps []problem) error {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].at.Line != ps[j].at.Line {
			return ps[i].at.Line < ps[j].at.Line
		}
		return ps[i].key < ps[j].key
	})
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = fmt.Sprintf("%s: %s: %s", p.at, p.key, p.msg)
	}
	return errors.New(strings.Join(lines, "\n"))
}

// errProbe is what lineProbe answers, so the decoder reports the key's position.
var errProbe = errors.New("probe")

// lineProbe fails on purpose: the TOML decoder wraps an Unmarshaler's error in a
// ParseError that carries the position of the key being decoded, which the
// decoder does not otherwise expose.
type lineProbe struct{}

func (lineProbe) UnmarshalTOML(any) error { return errProbe }

// lineOf is the line of prim's key in the file (0 if the decoder does not say).
func lineOf(md *toml.MetaData, prim toml.Primitive) int {
	var pe toml.ParseError
	if err := md.PrimitiveDecode(prim, &lineProbe{}); errors.As(err, &pe) {
		return pe.Position.Line
	}
	return 0
}

// value is one key's TOML value as decoded: string, int64, float64, bool, a
// []any of those, or a table (map[string]any).
type value struct{ v any }

func (v *value) UnmarshalTOML(data any) error { v.v = data; return nil }

// tomlType names a decoded value's TOML type for messages.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any, []map[string]any:
		return "a table"
	}
	return fmt.Sprintf("a %T", v)
}

// want says what TOML value a flag of this pflag type takes, with an example.
func want(typ string) string {
	switch {
	case typ == "bool":
		return "true or false"
	case typ == "duration":
		return `a duration in quotes, e.g. "50ms" or "2s"`
	case isInt(typ):
		return "an integer, e.g. 4194304"
	case isFloat(typ):
		return "a number, e.g. 0.5"
	case isSlice(typ):
		return `an array of strings, e.g. ["a", "b"]`
	}
	return `a string in quotes, e.g. "br0"`
}

func isInt(typ string) bool {
	return strings.HasPrefix(typ, "int") && !strings.HasSuffix(typ, "Slice") ||
		strings.HasPrefix(typ, "uint") && !strings.HasSuffix(typ, "Slice") || typ == "count"
}
func isFloat(typ string) bool { return typ == "float32" || typ == "float64" }
func isSlice(typ string) bool {
	return strings.HasSuffix(typ, "Slice") || strings.HasSuffix(typ, "Array")
}

// check refuses a value whose TOML type the flag does not take.
func check(f *pflag.Flag, v value) error {
	typ := f.Value.Type()
	ok := false
	switch x := v.v.(type) {
	case bool:
		ok = typ == "bool"
	case int64:
		ok = isInt(typ) || isFloat(typ)
	case float64:
		ok = isFloat(typ)
	case string:
		ok = typ != "bool" && !isInt(typ) && !isFloat(typ) && !isSlice(typ)
	case []any:
		ok = isSlice(typ)
		for _, e := range x {
			if _, s := e.(string); !s && ok {
				return fmt.Errorf("want %s; got an array holding %s", want(typ), tomlType(e))
			}
		}
	}
	if !ok {
		return fmt.Errorf("want %s; got %s", want(typ), tomlType(v.v))
	}
	return nil
}

// text is the value as the flag parses it from a command line.
func text(v value) []string {
	switch x := v.v.(type) {
	case string:
		return []string{x}
	case bool:
		return []string{strconv.FormatBool(x)}
	case int64:
		return []string{strconv.FormatInt(x, 10)}
	case float64:
		return []string{strconv.FormatFloat(x, 'g', -1, 64)}
	case []any:
		out := make([]string, len(x))
		for i, e := range x {
			out[i] = e.(string) // check made sure
		}
		return out
	}
	return nil
}

// set gives the flag the file's value (a slice flag's whole list, replaced).
func set(f *pflag.Flag, v value) error {
	t := text(v)
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.Replace(t)
	}
	return f.Value.Set(t[0])
}

// trySet checks that the flag takes the value without changing it: it sets the
// value and puts the old one back.
func trySet(f *pflag.Flag, v value) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		old := sv.GetSlice()
		err := sv.Replace(text(v))
		_ = sv.Replace(old)
		return err
	}
	old := f.Value.String()
	err := f.Value.Set(text(v)[0])
	_ = f.Value.Set(old)
	return err
}

func envSet(f *pflag.Flag) bool {
	for _, e := range f.Annotations[EnvAnnotation] {
		if os.Getenv(e) != "" {
			return true
		}
	}
	return false
}

// closest is the flag name nearest to key, if it is a likely typo.
func closest(fs *pflag.FlagSet, key string) string {
	best, bestD := "", 3
	fs.VisitAll(func(f *pflag.Flag) {
		if d := distance(strings.ToLower(key), f.Name); d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Default describes a flag whose default depends on the machine, for WriteDefaults.
type Default struct {
	Value any    // the value written (commented out)
	Note  string // what the default really is
}

// WriteDefaults writes a config file for fs: a header, then every flag that is not
// hidden or skipped, its usage as a comment and its key commented out at its
// default (or at dynamic[name].Value with its note, for defaults that depend on the
// machine). Uncommenting a line sets the flag to the value shown.
func WriteDefaults(w io.Writer, fs *pflag.FlagSet, header string, skip []string, dynamic map[string]Default) error {
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	var b bytes.Buffer
	for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		b.WriteString(strings.TrimRight("# "+l, " ") + "\n")
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Hidden || skipped[f.Name] {
			return
		}
		b.WriteString("\n")
		for _, l := range wrap(f.Usage, 78) {
			b.WriteString("# " + l + "\n")
		}
		var v any
		if d, ok := dynamic[f.Name]; ok {
			v = d.Value
			if d.Note != "" {
				b.WriteString("# default: " + d.Note + "\n")
			}
		} else if v, err = defaultValue(f); err != nil {
			return
		}
		var line bytes.Buffer
		if err = toml.NewEncoder(&line).Encode(map[string]any{f.Name: v}); err != nil {
			err = fmt.Errorf("%s: %w", f.Name, err)
			return
		}
		b.WriteString("#" + line.String())
	})
	if err != nil {
		return err
	}
	_, err = w.Write(b.Bytes())
	return err
}

// wrap breaks text into lines of at most width bytes where it can, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	for _, para := range strings.Split(text, "\n") {
		line := ""
		for _, w := range strings.Fields(para) {
			if line != "" && len(line)+1+len(w) > width {
				lines = append(lines, line)
				line = ""
			}
			if line != "" {
				line += " "
			}
			line += w
		}
		lines = append(lines, line)
	}
	return lines
}

// defaultValue is the flag's default as the TOML value that sets it.
func defaultValue(f *pflag.Flag) (any, error) {
	typ := f.Value.Type()
	switch {
	case typ == "bool":
		return strconv.ParseBool(f.DefValue)
	case isInt(typ):
		return strconv.ParseInt(f.DefValue, 10, 64)
	case isFloat(typ):
		return strconv.ParseFloat(f.DefValue, 64)
	case isSlice(typ):
		s := strings.Trim(f.DefValue, "[]")
		if s == "" {
			return []string{}, nil
		}
		return strings.Split(s, ","), nil
	}
	return f.DefValue, nil
}
