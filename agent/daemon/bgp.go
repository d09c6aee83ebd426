package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
)

// bgpRetryInterval paces retries of a peer set or announcement the speaker
// refused.
const bgpRetryInterval = 2 * time.Second

// bgpFeed follows the agent's own node and own cluster config for the
// speaker through the agent's observer seam (like static routes and
// health), so a new pod CIDR or route reflector reaches BGP at once. Every
// other node and cluster change kicks it too: the import policy follows the
// whole registry.
type bgpFeed struct {
	cluster, node string
	kick          chan struct{}

	mu    sync.Mutex
	own   *api.Node
	local *api.Cluster
	// drained holds when each drained cluster was drained, until one of
	// its nodes comes back (importHold reads it).
	drained map[string]time.Time
}

var (
	_ agent.ClusterObserver = (*bgpFeed)(nil)
	_ agent.DrainObserver   = (*bgpFeed)(nil)
)

func newBGPFeed(cluster, node string) *bgpFeed {
	return &bgpFeed{cluster: cluster, node: node, kick: make(chan struct{}, 1), drained: map[string]time.Time{}}
}

func (f *bgpFeed) NodeUpserted(n *api.Node) {
	f.mu.Lock()
	if n.Cluster == f.cluster && n.Name == f.node {
		f.own = n
	}
	delete(f.drained, n.Cluster)
	f.mu.Unlock()
	f.signal()
}

// ClusterDrained implements agent.DrainObserver: the cluster's import rule
// is held for the drain (importHold).
func (f *bgpFeed) ClusterDrained(cluster string) {
	f.mu.Lock()
	f.drained[cluster] = time.Now()
	f.mu.Unlock()
	f.signal()
}

// drainedAt returns a copy of when each drained cluster was drained.
func (f *bgpFeed) drainedAt() map[string]time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.drained)
}

// NodeDeleted keeps the last announcement: the node's pod CIDRs are still
// its own while its exporter is away. The import policy loses the node.
func (f *bgpFeed) NodeDeleted(string, string) { f.signal() }

func (f *bgpFeed) ClusterAccepted(c *api.Cluster) {
	if c.Name == f.cluster {
		f.mu.Lock()
		f.local = c
		f.mu.Unlock()
	}
	f.signal()
}

// importRules derives the BGP import policy from the agent's registry: the
// configs the clusters were accepted with and their admitted nodes.
func importRules(a *agent.Agent) []bgp.ImportRule {
	nodes := a.Nodes()
	vals := make([]api.Node, 0, len(nodes))
	for _, n := range nodes {
		vals = append(vals, *n)
	}
	return bgp.ImportRules(a.Clusters(), vals)
}

// importHold keeps a drained (disconnected) cluster's last import rule for
// the drain (--route-drain), as static routes keep its routes: each side's
// agents see `clustermesh disconnect` when their kubelet refreshes the
// connection Secret, tens of seconds apart, and until the other side has
// let go its pods still connect to this cluster's backends, whose replies
// need the routes back to them. Without the hold the import policy would
// refuse the drained cluster's pod CIDRs at once and the speaker would
// withdraw them, whatever the reflectors still announce. Only the rule the
// cluster was last accepted with is held, never widened; a cluster whose
// own store deletes its nodes loses them at once (no drain is signalled).
type importHold struct {
	drain time.Duration
	last  map[string]bgp.ImportRule
}

func newImportHold(drain time.Duration) *importHold {
	return &importHold{drain: drain, last: map[string]bgp.ImportRule{}}
}

// rules returns current plus the held rules of clusters drained less than
// the drain ago and absent from current, sorted by cluster as
// bgp.ImportRules sorts them; held names those clusters (sorted), next is
// when the earliest hold ends (zero: none held).
func (h *importHold) rules(current []bgp.ImportRule, drainedAt map[string]time.Time, now time.Time) (out []bgp.ImportRule, held []string, next time.Time) {
	out = slices.Clone(current)
	present := map[string]bool{}
	for _, r := range current {
		present[r.Cluster] = true
		h.last[r.Cluster] = r
	}
	for c, r := range h.last {
		if present[c] {
			continue
		}
		at, ok := drainedAt[c]
		end := at.Add(h.drain)
		if !ok || h.drain <= 0 || !now.Before(end) {
			delete(h.last, c)
			continue
		}
		out = append(out, r)
		held = append(held, c)
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	slices.SortFunc(out, func(a, b bgp.ImportRule) int { return strings.Compare(a.Cluster, b.Cluster) })
	slices.Sort(held)
	return out, held, next
}

func (f *bgpFeed) signal() { signal(f.kick) }

func (f *bgpFeed) get() (*api.Node, *api.Cluster) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.own, f.local
}

// runBGP runs the node's BGP speaker: it announces the node's pod CIDRs (as
// the store lists them) to its cluster's route reflector (as the cluster
// config names it) and installs the routes it learns. Both follow the
// store through the feed; the speaker keeps its sessions when nothing
// changed.
func runBGP(ctx context.Context, a *agent.Agent, cfg Config, reg prometheus.Registerer, log *slog.Logger, sec *bgpSection, verdicts *healthVerdicts) error {
	feed := newBGPFeed(cfg.ClusterName, cfg.NodeName)
	a.AddNodeObserver(feed)
	node, local := feed.get()
	for node == nil || local == nil {
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s/%s: waiting for the node and its cluster config in the store: %w", cfg.ClusterName, cfg.NodeName, ctx.Err())
		case <-feed.kick:
		}
		node, local = feed.get()
	}
	base := cfg.BGPConfig
	base.Logger, base.Registerer = log, reg
	bc, err := bgp.NodeConfig(base, *node, *local)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	sp, err := bgp.NewSpeaker(bc)
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	// The import policy is in place before the first session: a cluster's
	// nodes may announce only that cluster's accepted pod CIDRs.
	hold := newImportHold(cfg.RouteDrain)
	rules, held, _ := hold.rules(importRules(a), feed.drainedAt(), time.Now())
	if err := sp.SetImportPolicy(ctx, rules); err != nil {
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
		// The process is exiting (SIGTERM: a restart, an upgrade, a node
		// drain): peers keep this node's routes by graceful restart until
		// it is back; `clustermesh disable` removes them for good, and a
		// node that does not come back is withdrawn by health gossip.
		_ = sp.StopForRestart(sctx)
	}()

	var peers []bgp.Peer
	var announced []string
	var dead []netip.Addr
	for {
		failed := false
		if hops := verdicts.deadNextHops(); !slices.Equal(hops, dead) {
			if err := sp.SetDeadNextHops(ctx, hops); err != nil {
				log.Error("bgp: withhold routes via dead nodes", "next_hops", hops, "error", err)
				failed = true
			} else {
				if len(hops) > 0 || len(dead) > 0 {
					log.Info("bgp: routes via dead nodes withheld", "next_hops", hops)
				}
				dead = hops
			}
		}
		wasHeld := held
		var holdEnd time.Time
		rules, held, holdEnd = hold.rules(importRules(a), feed.drainedAt(), time.Now())
		if !slices.Equal(held, wasHeld) {
			log.Info("bgp: drained clusters' pod CIDRs still accepted while their traffic drains", "clusters", held, "drain", cfg.RouteDrain)
		}
		if err := sp.SetImportPolicy(ctx, rules); err != nil {
			log.Error("bgp: update import policy", "error", err)
			failed = true
		} else {
			sec.setRules(rules)
		}
		node, local := feed.get()
		want, perr := bgp.NodePeers(*local)
		if perr != nil && peers == nil {
			log.Warn("bgp: no route reflector to peer with yet", "error", perr)
		}
		if perr == nil && !slices.Equal(want, peers) {
			if err := sp.SetPeers(ctx, want); err != nil {
				log.Error("bgp: set peers", "peers", want, "error", err)
				failed = true
			} else {
				peers = want
			}
		}
		var cidrs []string
		for _, p := range node.PodCIDRs {
			cidrs = append(cidrs, p.String())
		}
		if !slices.Equal(cidrs, announced) {
			if err := sp.Announce(ctx, node.PodCIDRs); err != nil {
				log.Error("bgp: announce", "pod_cidrs", node.PodCIDRs, "error", err)
				failed = true
			} else {
				announced = cidrs
			}
		}
		var again, holdOver <-chan time.Time
		if failed {
			again = time.After(bgpRetryInterval)
		}
		if !holdEnd.IsZero() {
			holdOver = time.After(time.Until(holdEnd))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-feed.kick:
		case <-verdicts.kick:
		case <-again:
		case <-holdOver:
		}
	}
}
