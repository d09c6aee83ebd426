package commands

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/observe"
)

func newObserve(g *globals) *cobra.Command {
	var (
		opts          mesh.ObserveOptions
		since, format string
	)
	cmd := &cobra.Command{
		Use:   "observe [--follow] [filters]",
		Short: "Print the flows of every node of every connected cluster, merged in time order",
		Long: `observe asks every agent of this cluster and of each connected cluster (their
nodes are read from the clusters' stores) for the flows it recorded: service
translations (to which backend, cluster and node, preferred or fallback),
connects refused for lack of a backend, policy denials. It prints them merged
in time order; with --follow it keeps printing new ones (held up to one second
so that flows from several nodes come out in order).

Agents answer over mutual TLS on their --observe-addr (port 4245), and only
to observers their cluster allows: this cluster's own, and the clusters its
operator allowed with 'clustermesh observe allow'. The CLI signs a
short-lived observer certificate with this cluster's observe CA for each run.

A node or cluster that cannot be asked (unreachable, store down, observers of
this cluster not allowed) is named on stderr, and the output goes on without
it. Flows are a sample of the datapath's decisions (per-CPU rates set by the
agents' --flow-rate-* flags); the clustermesh_flow_events_total metric counts
every event.`,
		Example: `  clustermesh observe --context c1 --last 20
  clustermesh observe --context c1 --follow --service default/echo
  clustermesh observe --context c1 --verdict dropped --since 5m -o json
  clustermesh observe --context c1 --from-cluster c1 --to-cluster c2`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("%w: output format %q: must be text or json", mesh.ErrInvalidArgument, format)
			}
			if since != "" {
				d, err := time.ParseDuration(since)
				if err != nil || d <= 0 {
					return fmt.Errorf("%w: --since %q: want a duration such as 5m", mesh.ErrInvalidArgument, since)
				}
				opts.Request.Filter.Since = time.Now().Add(-d)
			}
			if opts.Request.Last < 0 {
				return fmt.Errorf("%w: --last %d: want a count", mesh.ErrInvalidArgument, opts.Request.Last)
			}
			switch v := opts.Request.Filter.Verdict; v {
			case "", "forwarded", "dropped":
			default:
				return fmt.Errorf("%w: --verdict %q: must be forwarded or dropped", mesh.ErrInvalidArgument, v)
			}
			switch k := opts.Request.Filter.Kind; k {
			case "", "translate", "no-backend", "policy-deny":
			default:
				return fmt.Errorf("%w: --kind %q: must be translate, no-backend or policy-deny", mesh.ErrInvalidArgument, k)
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			opts.Log = g.logger(cmd)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			w, ew := cmd.OutOrStdout(), cmd.ErrOrStderr()
			emit := func(f observe.Flow) {
				if format == "json" {
					b, _ := json.Marshal(&f)
					fmt.Fprintln(w, string(b))
					return
				}
				fmt.Fprintln(w, f.Text())
			}
			missing := func(m mesh.Missing) {
				fmt.Fprintf(ew, "! missing %s: %v\n", m.Target, m.Err)
			}
			sum, err := mesh.Observe(ctx, c, opts, emit, missing)
			if sum != nil && !opts.Request.Follow {
				var names []string
				for _, m := range sum.Missing {
					names = append(names, m.Target.String())
				}
				line := fmt.Sprintf("%d flows from %d of %d agents", sum.Flows, sum.Answered, sum.Asked)
				if len(names) > 0 {
					line += "; missing: " + strings.Join(names, ", ")
				}
				fmt.Fprintln(ew, line)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&format, "output", "o", "text", "text (one aligned line per flow) or json (one object per line)")
	f.BoolVarP(&opts.Request.Follow, "follow", "f", false, "keep printing new flows until interrupted")
	f.IntVar(&opts.Request.Last, "last", 0, "only the last N flows of the mesh (0: all the agents hold)")
	f.StringVar(&since, "since", "", "only flows newer than this duration ago (5m)")
	f.StringVar(&opts.Request.Filter.Kind, "kind", "", "translate, no-backend or policy-deny")
	f.StringVar(&opts.Request.Filter.Verdict, "verdict", "", "forwarded or dropped")
	f.StringVar(&opts.Request.Filter.Service, "service", "", "namespace/name of a service")
	f.StringVar(&opts.Request.Filter.FromCluster, "from-cluster", "", "the source's cluster")
	f.StringVar(&opts.Request.Filter.ToCluster, "to-cluster", "", "the destination's cluster")
	f.StringVar(&opts.Request.Filter.Namespace, "namespace", "", "a namespace of either side")
	f.StringVar(&opts.Request.Filter.Pod, "pod", "", "a pod name of either side")
	f.StringSliceVar(&opts.Clusters, "clusters", nil, "ask only the agents of these clusters (default: this one and every connected one)")
	f.IntVar(&opts.Port, "agent-port", observe.DefaultPort, "the agents' observe port (their --observe-addr)")
	f.DurationVar(&opts.DialTimeout, "dial-timeout", 3*time.Second, "how long to wait for each agent to answer")
	f.StringVar(&opts.StoreEndpoint, "store-endpoint", "", "reach this cluster's store here instead of the endpoint recorded by enable (e.g. a port-forward)")
	cmd.AddCommand(newObserveAllow(g), newObserveRevoke(g), newObserveCA(g))
	return cmd
}

func newObserveAllow(g *globals) *cobra.Command {
	var fromContext, cluster, caFile string
	cmd := &cobra.Command{
		Use:   "allow --context CONTEXT (--from-context PEER_CONTEXT | --cluster PEER --ca-file FILE)",
		Short: "Let the observers of another cluster read this cluster's flows",
		Long: `allow adds a peer cluster's observe CA to the CAs this cluster's agents accept
observers from (the clustermesh-observe-clients Secret); the agents apply it
within a second of the kubelet's update of their mount. Without it, a peer's
'clustermesh observe' sees none of this cluster's flows.

With both contexts at hand, --from-context reads the peer's observe CA
itself; otherwise its operator sends it ('clustermesh observe ca').`,
		Example: `  clustermesh observe allow --context c2 --from-context c1
  clustermesh observe ca --context c1 > c1-observe-ca.crt   # operator of c1
  clustermesh observe allow --context c2 --cluster c1 --ca-file c1-observe-ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open("")
			if err != nil {
				return err
			}
			var caPEM []byte
			switch {
			case fromContext != "" && caFile == "":
				peer, err := g.open(fromContext)
				if err != nil {
					return err
				}
				info, err := peer.ReadInfo(cmd.Context())
				if err != nil {
					return err
				}
				if cluster != "" && cluster != info.Name {
					return fmt.Errorf("%w: context %s is cluster %s, not %s", mesh.ErrInvalidArgument, fromContext, info.Name, cluster)
				}
				cluster = info.Name
				if caPEM, err = peer.ObserveCA(cmd.Context()); err != nil {
					return err
				}
			case fromContext == "" && caFile != "" && cluster != "":
				if caPEM, err = os.ReadFile(caFile); err != nil {
					return fmt.Errorf("%w: --ca-file: %w", mesh.ErrInvalidArgument, err)
				}
			default:
				return fmt.Errorf("%w: give --from-context, or --cluster with --ca-file", mesh.ErrInvalidArgument)
			}
			if err := c.AllowObservers(cmd.Context(), cluster, caPEM); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ observers of cluster %s may read the flows of context %s\n", cluster, c.Context)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&fromContext, "from-context", "", "kubeconfig context of the cluster whose observers to allow")
	f.StringVar(&cluster, "cluster", "", "name of the cluster whose observers to allow (with --ca-file)")
	f.StringVar(&caFile, "ca-file", "", "that cluster's observe CA (PEM), from 'clustermesh observe ca'")
	return cmd
}

func newObserveRevoke(g *globals) *cobra.Command {
	var cluster string
	cmd := &cobra.Command{
		Use:   "revoke --context CONTEXT --cluster PEER",
		Short: "Stop serving this cluster's flows to the observers of another cluster",
		Long: `revoke removes a peer's observe CA from this cluster's allowed observers. New
connections are refused within a second of the kubelet's update of the
agents' mount; a stream already open runs until it ends.`,
		Example: `  clustermesh observe revoke --context c2 --cluster c1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cluster == "" {
				return fmt.Errorf("%w: --cluster is required", mesh.ErrInvalidArgument)
			}
			c, err := g.open("")
			if err != nil {
				return err
			}
			info, err := c.ReadInfo(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.RevokeObservers(cmd.Context(), info.Name, cluster); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ observers of cluster %s may no longer read the flows of context %s\n", cluster, c.Context)
			return nil
		},
	}
	cmd.Flags().StringVar(&cluster, "cluster", "", "name of the cluster whose observers to refuse")
	return cmd
}

func newObserveCA(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ca --context CONTEXT",
		Short: "Print this cluster's observe CA certificate (for a peer's 'observe allow')",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.open("")
			if err != nil {
				return err
			}
			pem, err := c.ObserveCA(cmd.Context())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	}
}
