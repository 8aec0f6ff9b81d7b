package qemu

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestFeedWatch: a real reader process (cat) on a FIFO is seen blocked once it has
// read everything written, and not while it is busy elsewhere (here: stopped
// before reading anything, so it is in no read at all).
func TestFeedWatch(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "rr.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cat", fifo)
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	fw := NewFeedWatch(cmd.Process.Pid, fifo)
	if _, err := w.Write([]byte("some log bytes\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := fw.Drained()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reader blocked on the FIFO never seen")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A process that holds the FIFO open but waits elsewhere (the shell waits for
	// its sleep child) is not drained.
	sh := exec.Command("sh", "-c", "exec 3<"+fifo+"; sleep 30")
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sh.Process.Kill(); _ = sh.Wait() }()
	sw := NewFeedWatch(sh.Process.Pid, fifo)
	deadline = time.Now().Add(10 * time.Second)
	for sw.fd == 0 { // until the shell has opened the FIFO
		if _, err := sw.Drained(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("shell never opened the FIFO")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // let it reach its wait
	if ok, err := sw.Drained(); err != nil || ok {
		t.Fatalf("waiting shell reported drained=%v err=%v", ok, err)
	}
}

func TestFeedWatchNoProcess(t *testing.T) {
	if _, err := NewFeedWatch(1<<30, "/nonexistent").Drained(); err == nil {
		t.Fatal("want an error for a process that does not exist")
	}
}

// The watch keeps its threads' files open and reads them anew each time: a reader
// that leaves its read of the FIFO (here: cat, stuck writing to a full pipe) is no
// longer drained, and is again once it is back in the read.
func TestFeedWatchRereads(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "rr.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cat", fifo)
	out, err := cmd.StdoutPipe() // not read until below: cat blocks writing to it
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fw := NewFeedWatch(cmd.Process.Pid, fifo)
	defer fw.Close()
	wait := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ok, err := fw.Drained()
			if err != nil {
				t.Fatal(err)
			}
			if ok == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("drained never became %v", want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	wait(true)
	opened, listed := append([]int(nil), fw.threads...), fw.listed
	// More than the stdout pipe holds: cat ends up blocked in write(2).
	go func() { _, _ = w.Write(make([]byte, 1<<20)) }()
	wait(false)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	wait(true)
	if fw.listed.Equal(listed) && !slices.Equal(opened, fw.threads) {
		t.Errorf("threads changed without a new listing")
	}
	if !fw.listed.Equal(listed) && time.Since(listed) < watchRelistEvery {
		t.Errorf("threads listed again (%v, then %v) within %s", opened, fw.threads, watchRelistEvery)
	}
}
