// Package script runs the data-driven tests of ftvmd's pure state machines
// (lifecycle, outputrule): files of commands, each with the transcript it must
// produce. It is test support: only _test.go files import it.
//
// A file is a list of blocks: one command line, a line "----", then the
// expected transcript, ended by a blank line. Lines starting with '#' and
// blank lines between blocks are comments, kept when the file is rewritten.
package script

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Block is one command and the transcript it must produce.
type Block struct {
	Comments []string // the lines before it
	Cmd      string
	Line     int // the command's line number
	Want     string
}

// Parse reads the blocks of the file at path.
func Parse(path string) ([]Block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var blocks []Block
	var cur *Block
	var pending []string
	inOutput := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case inOutput && line == "":
			inOutput = false
			blocks = append(blocks, *cur)
			cur = nil
		case inOutput:
			cur.Want += line + "\n"
		case line == "----":
			if cur == nil {
				return nil, fmt.Errorf("%s:%d: ---- without a command", path, n)
			}
			inOutput = true
		case cur != nil:
			return nil, fmt.Errorf("%s:%d: expected ---- after command %q", path, n, cur.Cmd)
		case strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "":
			pending = append(pending, line)
		default:
			cur = &Block{Comments: pending, Cmd: line, Line: n}
			pending = nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cur != nil {
		if !inOutput {
			return nil, fmt.Errorf("%s:%d: command %q without ----", path, cur.Line, cur.Cmd)
		}
		blocks = append(blocks, *cur)
	}
	return blocks, nil
}

// RunDir runs every testdata/*.txt as a subtest named after the file. For each
// file newEnv makes a fresh handler, which gets the file's commands in order
// and returns each one's transcript; a transcript that differs from the
// file's fails the test. With rewrite the files are written anew with the
// transcripts the commands produced (read the diff before committing it).
func RunDir(t *testing.T, rewrite bool, newEnv func() func(cmd string) string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) { run(t, file, rewrite, newEnv()) })
	}
}

func run(t *testing.T, path string, rewrite bool, handle func(cmd string) string) {
	blocks, err := Parse(path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for _, b := range blocks {
		got := handle(b.Cmd)
		if rewrite {
			for _, c := range b.Comments {
				out.WriteString(c + "\n")
			}
			fmt.Fprintf(&out, "%s\n----\n%s\n", b.Cmd, got)
			continue
		}
		if got != b.Want {
			t.Errorf("%s:%d: %s\ngot:\n%swant:\n%s", path, b.Line, b.Cmd, got, b.Want)
		}
	}
	if rewrite {
		if err := os.WriteFile(path, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// Args splits a command's arguments into positional ones and key=value pairs.
func Args(args []string) (pos []string, kv map[string]string) {
	kv = map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			pos = append(pos, a)
		}
	}
	return pos, kv
}
