package commands

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clustermesh/clustermesh/cli/mesh"
)

func newConnect(g *globals) *cobra.Command {
	var (
		dstContexts  []string
		dstEndpoints []string
		skipDial     bool
		waitFor      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "connect --context CONTEXT --destination-context CONTEXT...",
		Short: "Connect a cluster with one or more clusters",
		Long: `connect checks that the clusters can form a mesh (unique names and IDs,
shared gossip key, pod CIDRs that do not overlap, stores reachable and
presenting their own cluster's certificate), gives each cluster's agents their
own read-only user (remote-<cluster>) on the other's store with a certificate
of the other's CA, and then writes each cluster's connection into the other's
clustermesh-clusters Secret, which agents mount as their configuration. It
needs both clusters' CA keys and must reach both stores. When a check fails nothing is changed and every problem is
listed with its fix. A store that does not answer yet (a cluster enabled a
moment ago) is retried, with progress, for --wait-duration.`,
		Example: `  clustermesh connect --context c1 --destination-context c2
  clustermesh connect --context c1 --destination-context c2 --destination-context c3
  clustermesh connect --context c1 --destination-context c2 --destination-endpoint https://203.0.113.7:2379`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if len(dstContexts) == 0 {
				return fmt.Errorf("%w: --destination-context is required", mesh.ErrInvalidArgument)
			}
			eps, err := endpointOverrides(dstContexts, dstEndpoints)
			if err != nil {
				return err
			}
			src, err := g.open("")
			if err != nil {
				return err
			}
			var dsts []*mesh.Cluster
			for _, d := range dstContexts {
				c, err := g.open(d)
				if err != nil {
					return err
				}
				dsts = append(dsts, c)
			}
			if waitFor == 0 {
				waitFor = -1 // zero is the library's default; on the command line it means no wait
			}
			if err := mesh.Connect(ctx, src, dsts, mesh.ConnectOptions{DestinationEndpoints: eps, SkipReachability: skipDial, WaitFor: waitFor, Progress: progressTo(cmd), Log: g.logger(cmd)}); err != nil {
				return err
			}
			reach := "stores reachable with the agents' certificates"
			if skipDial {
				reach = "reachability not checked (--skip-reachability-check)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ checks passed: unique names and IDs, shared gossip key, disjoint pod CIDRs, peer users granted, %s\n", reach)
			fmt.Fprintf(cmd.OutOrStdout(), "✓ connected %s with %s; agents follow within a minute (see clustermesh status --context %s --wait)\n",
				src.Context, strings.Join(dstContexts, ", "), src.Context)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&dstContexts, "destination-context", nil, "kubeconfig context of a cluster to connect with (repeatable)")
	f.StringArrayVar(&dstEndpoints, "destination-endpoint", nil, "override a destination's store endpoint: https://HOST:PORT with one destination, else CONTEXT=https://HOST:PORT (repeatable)")
	f.BoolVar(&skipDial, "skip-reachability-check", false, "do not dial the stores from here (when this machine cannot reach them)")
	f.DurationVar(&waitFor, "wait-duration", mesh.DefaultStoreWait, "how long to keep retrying while a store does not answer yet (a cluster just enabled); other problems fail at once; 0 or a negative value checks once")
	_ = cmd.RegisterFlagCompletionFunc("destination-context", g.completeContexts)
	return cmd
}

func endpointOverrides(contexts, flags []string) (map[string]string, error) {
	eps := map[string]string{}
	for _, f := range flags {
		if ctx, ep, ok := strings.Cut(f, "="); ok {
			eps[ctx] = ep
			continue
		}
		if len(contexts) != 1 {
			return nil, fmt.Errorf("%w: --destination-endpoint %q: with several destinations write CONTEXT=https://HOST:PORT", mesh.ErrInvalidArgument, f)
		}
		eps[contexts[0]] = f
	}
	for ctx := range eps {
		found := false
		for _, c := range contexts {
			found = found || c == ctx
		}
		if !found {
			return nil, fmt.Errorf("%w: --destination-endpoint names context %q, which is not a --destination-context", mesh.ErrInvalidArgument, ctx)
		}
	}
	return eps, nil
}

func newDisconnect(g *globals) *cobra.Command {
	var (
		dstContexts []string
		dstClusters []string
	)
	cmd := &cobra.Command{
		Use:   "disconnect --context CONTEXT --destination-context CONTEXT...",
		Short: "Disconnect a cluster from one or more clusters",
		Long: `disconnect removes each cluster's connection from the other's
clustermesh-clusters Secret; agents stop following the peer and drop its
backends and routes. Use --destination-cluster NAME for a peer whose context is
gone (only this cluster's side is edited then).`,
		Example: `  clustermesh disconnect --context c1 --destination-context c2`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(dstContexts) == 0 && len(dstClusters) == 0 {
				return fmt.Errorf("%w: --destination-context or --destination-cluster is required", mesh.ErrInvalidArgument)
			}
			src, err := g.open("")
			if err != nil {
				return err
			}
			var dsts []*mesh.Cluster
			for _, d := range dstContexts {
				c, err := g.open(d)
				if err != nil {
					return err
				}
				dsts = append(dsts, c)
			}
			if err := mesh.Disconnect(cmd.Context(), src, dsts, mesh.DisconnectOptions{Clusters: dstClusters, Log: g.logger(cmd)}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "✓ disconnected %s from %s\n", src.Context, strings.Join(append(dstContexts, dstClusters...), ", "))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&dstContexts, "destination-context", nil, "kubeconfig context of a cluster to disconnect from (repeatable)")
	f.StringArrayVar(&dstClusters, "destination-cluster", nil, "name of a connected cluster to drop from this cluster only (repeatable)")
	_ = cmd.RegisterFlagCompletionFunc("destination-context", g.completeContexts)
	return cmd
}
