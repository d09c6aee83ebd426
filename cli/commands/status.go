package commands

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
)

func newStatus(g *globals) *cobra.Command {
	var (
		out      output
		opts     mesh.StatusOptions
		wait     bool
		waitFor  time.Duration
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status --context CONTEXT [--wait [--wait-duration 5m]]",
		Short: "Show the mesh as one cluster sees it, and what to do about every problem",
		Long: `status reports the cluster's clustermesh-apiserver (store reachable, initial
export done), every cluster its agents follow and how many agents are
connected and synced to each, and the certificates' expiry. Every problem comes
with its reason and the next step. With --wait it repeats until everything is
ready or --wait-duration passes (exit status 1 then).`,
		Example: `  clustermesh status --context c1
  clustermesh status --context c1 --wait --wait-duration 2m
  clustermesh status --context c1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			var st *mesh.Status
			if wait {
				ctx, cancel := context.WithTimeout(cmd.Context(), waitFor)
				defer cancel()
				last := ""
				st, err = mesh.WaitStatus(ctx, c, opts, interval, func(s *mesh.Status) {
					line := progressLine(s)
					if line != last {
						fmt.Fprintln(cmd.ErrOrStderr(), line)
						last = line
					}
				})
				if st == nil {
					return err
				}
			} else {
				if st, err = mesh.GetStatus(cmd.Context(), c, opts); err != nil {
					return err
				}
			}
			if perr := out.print(cmd.OutOrStdout(), st, func(w io.Writer) { printStatus(w, st) }); perr != nil {
				return perr
			}
			if err != nil {
				return err
			}
			if wait && !st.Ready {
				return fmt.Errorf("%w: %d problem(s)", mesh.ErrNotReady, len(st.Problems))
			}
			return nil
		},
	}
	out.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&wait, "wait", false, "wait until everything is ready")
	f.DurationVar(&waitFor, "wait-duration", 5*time.Minute, "how long --wait waits")
	f.DurationVar(&interval, "wait-interval", 2*time.Second, "how often --wait polls")
	f.StringVar(&opts.Endpoint, "endpoint", "", "reach the store here instead of the recorded endpoint (e.g. a port-forward)")
	return cmd
}

// progressTo prints progress lines of a wait on the command's stderr, as
// status --wait does, so that stdout stays the result.
func progressTo(cmd *cobra.Command) func(string) {
	return func(line string) { fmt.Fprintln(cmd.ErrOrStderr(), line) }
}

func progressLine(s *mesh.Status) string {
	if s.Ready {
		return fmt.Sprintf("%s: ready", s.Cluster)
	}
	return fmt.Sprintf("%s: waiting: %s", s.Cluster, s.Problems[0].Reason)
}

func printStatus(w io.Writer, s *mesh.Status) {
	state := "ready"
	if !s.Ready {
		state = "NOT READY"
	}
	fmt.Fprintf(w, "Cluster %s (ID %d), context %s: %s\n", s.Cluster, s.ID, s.Context, state)
	fmt.Fprintf(w, "Store endpoint: %s\n", s.Endpoint)
	store := "reachable"
	if !s.APIServer.StoreReachable {
		store = "unreachable"
	}
	synced := "initial export done"
	if !s.APIServer.Synced {
		synced = fmt.Sprintf("exported %v", s.APIServer.SyncedKinds)
	}
	fmt.Fprintf(w, "APIServer: statefulset %s, store %s, %s\n", s.APIServer.Workload, store, synced)
	expected := ""
	if s.AgentsExpected > 0 {
		expected = fmt.Sprintf(" of %d scheduled", s.AgentsExpected)
	}
	fmt.Fprintf(w, "Agents: %d reporting%s\n", s.AgentsReporting, expected)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tENDPOINT\tCONNECTED\tSYNCED\tROUTED")
	for _, c := range s.Clusters {
		name := c.Name
		if c.Local {
			name += " (local)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d/%d\t%d/%d\t%d/%d\n", name, c.ID, c.Endpoint, c.Connected, s.AgentsReporting, c.Synced, s.AgentsReporting, c.Routed, s.AgentsReporting)
	}
	tw.Flush()
	if b := s.BGP; b != nil {
		fmt.Fprintf(w, "BGP: %d speakers, %d with every session established, %d learned routes refused\n", b.Agents, b.Established, b.Refused)
	}
	if s.Policies != nil {
		fmt.Fprintf(w, "Network policies: %d enforced, %d refused\n", s.Policies.Enforced, s.Policies.Refused)
	}
	fmt.Fprintln(w, "Certificates:")
	for _, c := range s.Certificates {
		warn := ""
		if c.Expiring {
			warn = "  EXPIRING"
		}
		fmt.Fprintf(w, "  %-26s CN %-18s expires %s%s\n", c.Secret, c.CommonName, c.NotAfter.UTC().Format("2006-01-02"), warn)
	}
	for _, group := range []struct {
		title, mark string
		ps          []mesh.Problem
	}{{"Problems", "✗", s.Problems}, {"Warnings", "!", s.Warnings}} {
		if len(group.ps) == 0 {
			continue
		}
		fmt.Fprintf(w, "%s (%d):\n", group.title, len(group.ps))
		for _, p := range group.ps {
			fmt.Fprintf(w, "  %s %s\n", group.mark, p.Reason)
			if p.Fix != "" {
				fmt.Fprintf(w, "    → %s\n", strings.ReplaceAll(p.Fix, "\n", "\n      "))
			}
		}
	}
}
