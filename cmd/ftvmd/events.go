package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
)

func newEventsCmd(g *globalOpts) *cobra.Command {
	var limit int
	var asJSON bool
	c := &cobra.Command{
		Use:               "events [<vm>]",
		Short:             "Show the agent's journal: epoch claims, failovers, go-lives, throttle, pacing and replay stall episodes, peers up and down",
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeVMs(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 || limit > control.MaxEventLimit {
				return fmt.Errorf("--limit %d: want 1 to %d (0: %d)", limit, control.MaxEventLimit, control.DefaultEventLimit)
			}
			req := control.Request{Op: control.OpEvents, Limit: limit}
			if len(args) == 1 {
				req.VM = args[0]
			}
			resp, err := call(cmd.Context(), g, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				// JSON lines, as the journal keeps them.
				for _, e := range resp.Events {
					b, err := json.Marshal(e)
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "%s\n", b)
				}
				return nil
			}
			printEvents(out, resp.Host, req.VM, resp.Events)
			return nil
		},
	}
	c.Flags().IntVar(&limit, "limit", control.DefaultEventLimit, fmt.Sprintf("show the newest N events (at most %d)", control.MaxEventLimit))
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per event")
	return c
}

// printEvents shows events oldest first, one per line.
func printEvents(w io.Writer, host, vm string, evs []journal.Event) {
	if len(evs) == 0 {
		if vm != "" {
			fmt.Fprintf(w, "host %s: no events for vm %s\n", host, vm)
		} else {
			fmt.Fprintf(w, "host %s: no events\n", host)
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tVM\tROLE\tEVENT\tEPOCH\tPEER\tDETAIL")
	for _, e := range evs {
		epoch := ""
		if e.Epoch > 0 {
			epoch = fmt.Sprint(e.Epoch)
		}
		kind := e.Kind
		if e.Result != "" {
			kind += " " + e.Result
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"),
			dash(e.VM), dash(e.Role), kind, dash(epoch), dash(e.Peer), eventDetail(e))
	}
	tw.Flush()
}

// eventDetail is the event's detail with how long it took or lasted.
func eventDetail(e journal.Event) string {
	d := strings.ReplaceAll(e.Detail, "\n", " ")
	if e.DurationMS > 0 {
		took := time.Duration(e.DurationMS * float64(time.Millisecond))
		if took < time.Second {
			took = took.Round(100 * time.Microsecond)
		} else {
			took = took.Round(time.Millisecond)
		}
		if d != "" {
			d += " "
		}
		d += fmt.Sprintf("(%s)", took)
	}
	return d
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
