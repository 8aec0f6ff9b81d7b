package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/libvirtimport"
	"github.com/ftvmd/ftvmd/vmspec"
)

func newVMImportCmd(g *globalOpts) *cobra.Command {
	var uri, out, name string
	c := &cobra.Command{
		Use:   "import <libvirt domain> [--uri qemu:///system] [-o spec.json] [--name vm]",
		Short: "Make a VM spec from a libvirt domain, or list everything in the domain ftvmd cannot run",
		Long: `Reads the domain's definition from libvirt and makes the ftvmd VM spec: name, memory,
kernel, initrd and command line, disk image, MAC and bridge. Without -o the spec is
defined on the local agent (as 'ftvmd vm define' does); with -o it is written to that
file ('-': standard output), to review or to define later with 'ftvmd vm define <name>
--spec <file>'. A domain ftvmd cannot run as defined (more than one vCPU, KVM-only
settings, devices record/replay cannot log, backing chains, several NICs or disks,
...) is refused with one error naming each element.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := libvirtimport.Import(cmd.Context(), libvirtimport.Libvirt{URI: uri}, args[0], name)
			if err != nil {
				return err
			}
			if out != "" {
				return writeSpec(out, s, cmd.OutOrStdout())
			}
			resp, err := call(cmd.Context(), g, control.Request{Op: control.OpDefine, Spec: &s})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (imported from libvirt domain %s)\n", resp.Message, args[0])
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&uri, "uri", envOr("LIBVIRT_DEFAULT_URI", libvirtimport.DefaultURI), "libvirt connection URI, as virsh takes it (env LIBVIRT_DEFAULT_URI)")
	f.StringVarP(&out, "output", "o", "", "write the spec to this file ('-': standard output) instead of defining it on the agent")
	f.StringVar(&name, "name", "", "the VM's name in ftvmd (default: the domain's; ftvmd's names are 1-32 of a-z, 0-9, '-', '_')")
	return c
}

// writeSpec writes s as JSON to path ("-": w), as vmspec.Parse reads it.
func writeSpec(path string, s vmspec.Spec, w io.Writer) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	b = append(b, '\n')
	if path == "-" {
		_, err := w.Write(b)
		return err
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}
