package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/rrcheck"
)

// Exit codes of `ftvmd rr check` besides 0 (deterministic) and 1 (the check
// could not run).
const (
	exitDiverged = 2
	exitStalled  = 3
)

func newRRCmd() *cobra.Command {
	rr := &cobra.Command{Use: "rr", Short: "Record/replay tools"}
	var (
		logPath, console, argsFile, workDir, qemuBin, cpus, stateDir string
		diskCopies                                                   []string
		stall, poll                                                  time.Duration
		keep, quiet                                                  bool
	)
	check := &cobra.Command{
		Use:   "check [<run-dir> | <vm>]",
		Short: "Replay a finished recording offline and check it is deterministic (the last output line is JSON)",
		Long: `Replays a finished recording in a QEMU of its own, with the machine args, engine
and netdev type it was recorded with, and compares: the replay must reach the
log's end at the instruction count the log records, with a byte-identical
console, and emit no frame.

The recording is a VM's run directory as the agent leaves it after 'ftvmd run'
or 'ftvmd protect' and 'ftvmd stop' (<state-dir>/run/<vm>.primary: log.rr,
console.log, record.json; a VM with a disk also needs the pre-record copy kept
with --keep-disk-copy), given as a path or a VM name; or its files one by one
with --log, --console and --args-file (record.json, the recording's QEMU args).

Exit status: 0 deterministic, 2 diverged, 3 stalled, 1 the check could not run.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var rec rrcheck.Recording
			var err error
			switch {
			case len(args) == 1 && (logPath != "" || console != "" || argsFile != ""):
				return errors.New("give a run directory or --log/--console/--args-file, not both")
			case len(args) == 1:
				dir := args[0]
				if st, serr := os.Stat(dir); serr != nil || !st.IsDir() {
					dir = filepath.Join(stateDir, "run", args[0]+".primary")
					if st, serr := os.Stat(dir); serr != nil || !st.IsDir() {
						return fmt.Errorf("%s is neither a run directory nor a VM with one in %s", args[0], filepath.Join(stateDir, "run"))
					}
				}
				if rec, err = rrcheck.FromDir(dir); err != nil {
					return err
				}
				if len(diskCopies) > 0 {
					if len(diskCopies) != len(rec.DiskCopies) {
						return fmt.Errorf("%d --disk-copy for the recording's %d disks", len(diskCopies), len(rec.DiskCopies))
					}
					rec.DiskCopies = diskCopies
				}
			case logPath == "" || console == "" || argsFile == "":
				return errors.New("give a run directory, or all of --log, --console and --args-file")
			default:
				if rec, err = rrcheck.FromFiles(argsFile, logPath, console, diskCopies); err != nil {
					return err
				}
			}
			cfg := rrcheck.Config{
				Recording: rec, Binary: qemuBin, WorkDir: workDir, KeepWorkDir: keep,
				CPUs: cpus, StallTimeout: stall, PollEvery: poll,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
			}
			if !quiet {
				cfg.Progress = func(p rrcheck.Progress) {
					fmt.Fprintf(os.Stderr, "\rreplaying: icount %d of %d (%.1f%%) after %s ", p.ReplayedIcount, p.RecordedIcount,
						100*float64(p.ReplayedIcount)/float64(max(p.RecordedIcount, 1)), p.Elapsed.Round(time.Second))
				}
			}
			res, err := rrcheck.Check(cmd.Context(), cfg)
			if !quiet {
				fmt.Fprintln(os.Stderr)
			}
			if err != nil {
				return err
			}
			fmt.Print(res.String())
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			fmt.Println(string(b))
			switch res.Verdict {
			case rrcheck.Diverged:
				return exitError{exitDiverged}
			case rrcheck.Stalled:
				return exitError{exitStalled}
			}
			return nil
		},
	}
	f := check.Flags()
	f.StringVar(&logPath, "log", "", "the rr log (with --console and --args-file)")
	f.StringVar(&console, "console", "", "the recording's console capture")
	f.StringVar(&argsFile, "args-file", "", "the recording's "+rrcheck.ManifestName+" (its QEMU args and config)")
	f.StringSliceVar(&diskCopies, "disk-copy", nil, "a disk image as it was when recording started, one per disk in order (default: the copies the manifest names)")
	f.StringVar(&qemuBin, "qemu", "", "replay with this QEMU instead of the recording's (a different engine is allowed, with a warning)")
	f.StringVar(&cpus, "cpus", "", "pin the replaying QEMU to these CPUs, e.g. 1 or 2-3")
	f.DurationVar(&stall, "stall", rrcheck.DefaultStallTimeout, "end the replay as stalled when its icount has not moved for this long")
	f.DurationVar(&poll, "poll", rrcheck.DefaultPollEvery, "query-replay period")
	f.StringVar(&workDir, "work-dir", "", "directory for the replay's files (kept); default a temporary one, kept only when the verdict is not deterministic")
	f.BoolVar(&keep, "keep", false, "keep the temporary replay files even when deterministic")
	f.BoolVar(&quiet, "quiet", false, "no progress on stderr")
	f.StringVar(&stateDir, "state-dir", defaultStateDir, "the agent's state directory, where a VM name is looked up")
	rr.AddCommand(check)
	return rr
}
