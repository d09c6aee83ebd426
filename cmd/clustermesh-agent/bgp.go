package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/prometheus/client_golang/prometheus"
)

// ownNode waits until the store lists this node.
func ownNode(ctx context.Context, a *agent.Agent, cluster, name string) (*api.Node, error) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		for _, n := range a.Nodes() {
			if n.Cluster == cluster && n.Name == name {
				return n, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s/%s: waiting for the node in the store: %w", cluster, name, ctx.Err())
		case <-t.C:
		}
	}
}

// runBGP runs the node's BGP speaker: it announces the node's pod CIDRs (as
// the store lists them) to its cluster's route reflector (as the cluster
// config names it) and installs the routes it learns. Both are re-read every
// few seconds; the speaker keeps its sessions when nothing changed.
func runBGP(ctx context.Context, a *agent.Agent, o options, reg prometheus.Registerer, log *slog.Logger, sec *bgpSection) error {
	local, err := a.LocalCluster(ctx)
	if err != nil {
		return err
	}
	node, err := ownNode(ctx, a, o.clusterName, o.nodeName)
	if err != nil {
		return err
	}
	base := o.bgpCfg
	base.Logger, base.Registerer = log, reg
	cfg, err := bgp.NodeConfig(base, *node, *local)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	sp, err := bgp.NewSpeaker(cfg)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	if err := sp.Start(ctx); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	sec.set(sp, nil)
	defer func() {
		sec.set(nil, nil)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sp.Stop(sctx)
	}()

	var peers []bgp.Peer
	var announced []string
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if c, err := a.LocalCluster(ctx); err == nil {
			want, perr := bgp.NodePeers(*c)
			if perr != nil && peers == nil {
				log.Warn("bgp: no route reflector to peer with yet", "error", perr)
			}
			if perr == nil && !slices.Equal(want, peers) {
				if err := sp.SetPeers(ctx, want); err != nil {
					log.Error("bgp: set peers", "peers", want, "error", err)
				} else {
					peers = want
				}
			}
		}
		if n, err := ownNode(ctx, a, o.clusterName, o.nodeName); err == nil {
			var cidrs []string
			for _, p := range n.PodCIDRs {
				cidrs = append(cidrs, p.String())
			}
			if !slices.Equal(cidrs, announced) {
				if err := sp.Announce(ctx, n.PodCIDRs); err != nil {
					log.Error("bgp: announce", "pod_cidrs", n.PodCIDRs, "error", err)
				} else {
					announced = cidrs
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
