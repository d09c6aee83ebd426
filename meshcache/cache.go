// Package meshcache keeps, in a cluster's own store, a copy of what every
// connected peer exports, so that the cluster's agents read the whole mesh
// from one store: each peer's store then serves one client per cluster (the
// cache) instead of one per node, and a peer's checks (its config against
// the other clusters', each object against what the peer was accepted with,
// the limits) run once per cluster instead of once per node.
//
// The copy lives at the peer's own keys (every key names its cluster, so
// nothing collides with the local cluster's exports): an agent follows peer
// c2 exactly as before, only through the local store (see agent.Config's
// PeersViaLocalStore). The cache follows each peer with the agents' own
// follower (package remote: validation, admission, limits,
// stale-while-unreachable) and writes with a kvstore.Writer per peer, which
// carries the initial-sync contract through: a kind's synced canary is
// written in the local store only once the peer's was seen and everything
// listed was copied, and leftovers of an earlier copy are pruned then, not
// before. While a peer is unreachable its copy stays as it was. A peer
// removed from the clusters directory (disconnect) or refused is purged
// after DrainGrace, unless it comes back first.
package meshcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
)

// DefaultDrainGrace is how long a disconnected peer's copy is kept before
// it is purged (a refused peer's is purged at once).
const DefaultDrainGrace = 30 * time.Second

// Config configures a Cache.
type Config struct {
	// Cluster is the local cluster's name; Local is a client of its store
	// allowed to write every peer's prefixes (the admin user): the store's
	// in-process client (kvstore.Server.InProcessClient) when it runs in
	// this process, which spares every copy a network client's and
	// server's costs.
	Cluster string
	Local   *kvstore.Client
	// ClustersDir holds one connection file per cluster, as mounted for
	// the agents (the local cluster's own file is skipped).
	ClustersDir string
	// DirPoll is how often ClustersDir is rescanned (0: 2 s).
	DirPoll time.Duration
	// DrainGrace: see DefaultDrainGrace (0: the default).
	DrainGrace time.Duration
	// LeaseTTL of the copied keys (0: kvstore.DefaultLeaseTTL).
	LeaseTTL time.Duration
	// Registerer receives the followers' per-peer metrics, named
	// clustermesh_meshcache_* (the agents' clustermesh_agent_* set: state,
	// synced, objects, events, refusals); StoreMetrics records the copies'
	// writes and the followers' reads. Either may be nil.
	Registerer   prometheus.Registerer
	StoreMetrics *kvstore.Metrics
	Logger       *slog.Logger
}

// Cache follows every peer of ClustersDir into the local store. Create
// with New, run with Run.
type Cache struct {
	cfg      Config
	log      *slog.Logger
	registry *remote.Registry
	rmetrics *remote.Metrics
	smetrics *kvstore.Metrics

	mu    sync.Mutex
	peers map[string]*peer
}

// peer is one followed cluster.
type peer struct {
	name   string
	digest string
	c      *remote.Cluster
	m      *mirror
	cancel context.CancelFunc
	done   chan struct{}
	// drainAt is set while the copy waits to be purged.
	drainAt time.Time
}

// New checks the config; nothing is followed until Run.
func New(cfg Config) (*Cache, error) {
	if cfg.Local == nil || cfg.ClustersDir == "" {
		return nil, errors.New("meshcache: config needs the local store and a clusters directory")
	}
	if err := api.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("meshcache: %w", err)
	}
	if cfg.DirPoll <= 0 {
		cfg.DirPoll = 2 * time.Second
	}
	if cfg.DrainGrace <= 0 {
		cfg.DrainGrace = DefaultDrainGrace
	}
	c := &Cache{cfg: cfg, log: logging.OrDiscard(cfg.Logger).With("component", "meshcache"), registry: remote.NewRegistry(), peers: map[string]*peer{}}
	c.smetrics = cfg.StoreMetrics
	if cfg.Registerer != nil {
		var err error
		if c.rmetrics, err = remote.NewMetricsFor(cfg.Registerer, remote.PrefixMeshCache, cfg.StoreMetrics); err != nil {
			return nil, fmt.Errorf("meshcache: %w", err)
		}
	}
	return c, nil
}

// Run claims the local cluster's config (peers colliding with it are
// refused), then follows the directory until ctx ends. Copies stay in the
// store when it returns: a restarted cache takes them over.
func (c *Cache) Run(ctx context.Context) error {
	if err := c.claimLocal(ctx); err != nil {
		return err
	}
	t := time.NewTicker(c.cfg.DirPoll)
	defer t.Stop()
	defer c.stopAll()
	for {
		c.scan(ctx)
		c.purgeDue(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// claimLocal waits for the local cluster's config in the local store and
// claims its name, ID and pod CIDRs in the registry.
func (c *Cache) claimLocal(ctx context.Context) error {
	b := backoff.New(200*time.Millisecond, 5*time.Second)
	for {
		cfg, _, err := c.cfg.Local.ClusterConfig(ctx, c.cfg.Cluster)
		if err == nil {
			if err := c.registry.Claim(cfg, true, nil); err != nil {
				return fmt.Errorf("meshcache: local cluster %s: %w", c.cfg.Cluster, err)
			}
			return nil
		}
		c.log.Info("waiting for the local cluster config", "cluster", c.cfg.Cluster, "error", err)
		if err := b.Wait(ctx); err != nil {
			return err
		}
	}
}

// scan starts, restarts and stops followers to match the directory.
func (c *Cache) scan(ctx context.Context) {
	wanted, err := kvstore.ReadConnectionDir(c.cfg.ClustersDir)
	if err != nil {
		// A Secret volume being swapped: keep what runs.
		c.log.Error("cannot read clusters directory", "dir", c.cfg.ClustersDir, "error", err)
		return
	}
	delete(wanted, c.cfg.Cluster)
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, p := range c.peers {
		if _, ok := wanted[name]; !ok && p.done != nil {
			c.log.Info("peer disconnected: its copy is kept for the drain grace", "cluster", name, "grace", c.cfg.DrainGrace)
			p.cancel()
			<-p.done
			p.done = nil
			p.drainAt = time.Now().Add(c.cfg.DrainGrace)
		}
	}
	for name, w := range wanted {
		p := c.peers[name]
		switch {
		case p == nil:
			if err := api.ValidateClusterName(name); err != nil {
				c.log.Error("connection file skipped", "cluster", name, "error", err)
				continue
			}
			p = &peer{name: name, m: newMirror(ctx, c, name)}
			p.c = remote.New(remote.Options{
				Name: name, Config: w.Config, ConfigErr: w.Err, Registry: c.registry, Delegate: p.m,
				// The default admission (the local pod CIDRs protected)
				// and limits: the agents add their own protected ranges.
				Metrics: c.rmetrics, Logger: c.cfg.Logger,
			})
			c.peers[name] = p
			c.log.Info("following peer into the local store", "cluster", name)
		case p.done == nil:
			// Back within the grace: the copy is kept and reconciled.
			c.log.Info("peer reconnected within the drain grace", "cluster", name)
			p.drainAt = time.Time{}
			p.c.SetConfig(w.Config, w.Err)
		case p.digest != w.Digest:
			c.log.Info("connection file changed: reconnecting peer", "cluster", name)
			p.cancel()
			<-p.done
			p.c.SetConfig(w.Config, w.Err)
		default:
			continue
		}
		p.digest = w.Digest
		c.start(ctx, p)
	}
}

// start runs the peer's follower.
func (c *Cache) start(ctx context.Context, p *peer) {
	pctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		p.c.Run(pctx)
	}()
}

// purgeDue purges the copies whose drain grace is over.
func (c *Cache) purgeDue(ctx context.Context) {
	c.mu.Lock()
	var due []*peer
	for name, p := range c.peers {
		if p.done == nil && !p.drainAt.IsZero() && time.Now().After(p.drainAt) {
			due = append(due, p)
			delete(c.peers, name)
		}
	}
	c.mu.Unlock()
	for _, p := range due {
		// Drain releases the peer's claim and purges its copy (mirror.Drain).
		p.c.Drain()
		p.m.close()
	}
}

func (c *Cache) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.peers {
		if p.done != nil {
			p.cancel()
			<-p.done
		}
		p.m.close()
	}
}
