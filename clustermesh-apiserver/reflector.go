package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
)

// ErrReflectorNotRunning is returned by ReflectorStatus when this apiserver
// hosts no route reflector (BGP off, a standby replica, or not started yet).
var ErrReflectorNotRunning = errors.New("route reflector not running")

// reflectorHost runs the cluster's BGP route reflector and keeps its peers
// equal to what the stores say: the local cluster's nodes (as exported) as
// iBGP clients, and the reflectors published by the clusters of the
// connection files in ClustersDir as eBGP peers. It lives for one run call.
type reflectorHost struct {
	log       *slog.Logger
	cluster   string
	dir       string
	poll      time.Duration
	rr        *bgp.Reflector
	local     func() api.Cluster
	nodes     func() []api.Node
	refreshed chan struct{} // a remote cluster's config changed

	// drain keeps a disconnected cluster's reflector a peer this long
	// (Config.BGPPeerDrain); now is the clock.
	drain time.Duration
	now   func() time.Time

	mu      sync.Mutex
	remotes map[string]*remoteCluster
	// draining holds the last config of clusters no longer followed, until
	// their drain ends.
	draining map[string]drainingCluster
}

// drainingCluster is a disconnected cluster's last config and when its
// reflector stops being a peer.
type drainingCluster struct {
	cluster api.Cluster
	until   time.Time
}

// remoteCluster follows one connected cluster's config in its store.
type remoteCluster struct {
	digest string
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	cluster *api.Cluster // nil until read, or after deletion
}

func newReflectorHost(cfg *Config, log, bgpLog *slog.Logger, reg prometheus.Registerer, local func() api.Cluster, nodes func() []api.Node) (*reflectorHost, error) {
	addr, err := cfg.reflectorAddress()
	if err != nil {
		return nil, err
	}
	base := bgp.DefaultConfig()
	if cfg.BGPShortTimers {
		base = bgp.DefaultKindConfig()
	}
	base.Logger, base.Registerer = bgpLog, reg
	rcfg, err := bgp.ReflectorConfig(base, api.Cluster{Name: cfg.ClusterName, RouteReflector: addr, ASN: cfg.BGPASN})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cfg.ClusterName, err)
	}
	rr, err := bgp.NewReflector(rcfg)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cfg.ClusterName, err)
	}
	// The reflector stops when the process does (SIGTERM, lost
	// leadership): its peers keep the routes by graceful restart.
	rr.StopForRestart()
	return &reflectorHost{
		log: log, cluster: cfg.ClusterName, dir: cfg.ClustersDir, poll: cfg.ClustersDirPoll,
		rr: rr, local: local, nodes: nodes,
		drain: cfg.BGPPeerDrain, now: time.Now,
		refreshed: make(chan struct{}, 1),
		remotes:   map[string]*remoteCluster{},
		draining:  map[string]drainingCluster{},
	}, nil
}

// run serves BGP and converges the reflector's peers until ctx is done.
// Nodes are re-read every second (the export changes them), connection
// files every poll interval; a remote cluster's config change is applied at
// once.
func (h *reflectorHost) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- h.rr.Run(ctx) }()
	defer func() {
		cancel()
		h.mu.Lock()
		remotes := h.remotes
		h.remotes = map[string]*remoteCluster{}
		h.mu.Unlock()
		for _, r := range remotes {
			<-r.done
		}
	}()

	if h.dir == "" {
		h.log.Warn("bgp: no --clusters-dir: the route reflector peers with local nodes only")
	}
	var peers []bgp.Peer
	var lastErr string
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastScan time.Time
	for {
		if h.dir != "" && time.Since(lastScan) >= h.poll {
			h.scanDir(ctx)
			lastScan = time.Now()
		}
		want, perr := bgp.ReflectorPeers(h.local(), h.nodes(), h.remoteClusters())
		if msg := fmt.Sprint(perr); perr != nil && msg != lastErr {
			h.log.Warn("bgp: store values skipped as reflector peers", "error", perr)
		}
		lastErr = fmt.Sprint(perr)
		if !slices.Equal(want, peers) {
			if err := h.rr.SetPeers(ctx, want); err != nil {
				if ctx.Err() == nil {
					h.log.Error("bgp: set reflector peers", "peers", len(want), "error", err)
				}
			} else {
				h.log.Info("bgp: reflector peers", "peers", peerNames(want))
				peers = want
			}
		}
		select {
		case <-ctx.Done():
			return <-errc
		case err := <-errc:
			return fmt.Errorf("cluster %s: %w", h.cluster, err)
		case <-tick.C:
		case <-h.refreshed:
		}
	}
}

func peerNames(ps []bgp.Peer) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// remoteClusters returns the configs read from the connected clusters'
// stores, and the last ones of clusters still draining (unless followed
// again and read), sorted by name.
func (h *reflectorHost) remoteClusters() []api.Cluster {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []api.Cluster
	live := map[string]bool{}
	for name, r := range h.remotes {
		r.mu.Lock()
		if r.cluster != nil {
			out = append(out, *r.cluster)
			live[name] = true
		}
		r.mu.Unlock()
	}
	now := h.now()
	for name, d := range h.draining {
		switch {
		case live[name] || !now.Before(d.until):
			delete(h.draining, name)
			if !live[name] {
				h.log.Info("bgp: drain of a disconnected cluster ended: its reflector is no longer a peer", "remote", name)
			}
		default:
			out = append(out, d.cluster)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// scanDir starts, restarts or stops following clusters to match the
// connection files in the directory. A directory that cannot be read keeps
// the current clusters (a Secret volume being swapped).
func (h *reflectorHost) scanDir(ctx context.Context) {
	conns, err := kvstore.ReadConnectionDir(h.dir)
	if err != nil {
		h.log.Error("bgp: cannot read clusters directory", "dir", h.dir, "error", err)
		return
	}
	wanted := map[string]kvstore.Connection{}
	for name, c := range conns {
		if name == h.cluster {
			continue
		}
		if c.Err != nil {
			h.log.Warn("bgp: connection file skipped", "cluster", name, "error", c.Err)
			continue
		}
		wanted[name] = c
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	for name, r := range h.remotes {
		if w, ok := wanted[name]; ok && w.Digest == r.digest {
			continue
		}
		r.cancel()
		<-r.done
		delete(h.remotes, name)
		// Its reflector stays a peer for the drain (a changed file, such
		// as a rotated certificate, is followed again at once and its
		// config read back, which ends the drain).
		r.mu.Lock()
		last := r.cluster
		r.mu.Unlock()
		if last != nil && h.drain > 0 {
			h.draining[name] = drainingCluster{cluster: *last, until: h.now().Add(h.drain)}
			h.log.Info("bgp: stopped following cluster; its reflector stays a peer while it drains", "remote", name, "drain", h.drain)
		} else {
			h.log.Info("bgp: stopped following cluster", "remote", name)
		}
		h.signal()
	}
	for name, w := range wanted {
		if _, ok := h.remotes[name]; ok {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &remoteCluster{digest: w.Digest, cancel: cancel, done: make(chan struct{})}
		h.remotes[name] = r
		h.log.Info("bgp: following cluster", "cluster", name, "store", w.Config.Endpoints)
		go func() {
			defer close(r.done)
			h.follow(rctx, name, w.Config, r)
		}()
	}
}

func (h *reflectorHost) signal() {
	select {
	case h.refreshed <- struct{}{}:
	default:
	}
}

// follow keeps r.cluster equal to the cluster config in the store of
// cluster name until ctx is done, reconnecting with backoff.
func (h *reflectorHost) follow(ctx context.Context, name string, cfg kvstore.Config, r *remoteCluster) {
	log := h.log.With("remote", name)
	retry := backoff.New(200*time.Millisecond, 10*time.Second)
	for {
		client, err := kvstore.New(ctx, cfg)
		if err == nil {
			h.watchCluster(ctx, name, client, r, log)
			client.Close()
			return
		}
		if ctx.Err() != nil {
			return
		}
		delay := retry.Next()
		log.Warn("bgp: cannot reach the cluster's store; retrying", "error", err, "retry_in", delay)
		if backoff.Sleep(ctx, delay) != nil {
			return
		}
	}
}

func (h *reflectorHost) watchCluster(ctx context.Context, name string, client *kvstore.Client, r *remoteCluster, log *slog.Logger) {
	key := api.ClusterKey(name)
	for ev := range kvstore.NewReader(client, name, &kvstore.ReaderOptions{Logger: log}).Watch(ctx, api.KindCluster) {
		var next *api.Cluster
		switch ev.Type {
		case kvstore.EventUpsert:
			c, ok := ev.Object.(*api.Cluster)
			if !ok || ev.Key != key {
				continue
			}
			next = c
		case kvstore.EventDelete:
			if ev.Key != key {
				continue
			}
		default:
			if ev.Err != nil {
				log.Warn("bgp: reading the cluster's config", "error", ev.Err)
			}
			continue
		}
		r.mu.Lock()
		r.cluster = next
		r.mu.Unlock()
		if next != nil {
			log.Info("bgp: cluster config", "reflector", next.RouteReflector, "asn", next.ASN)
		} else {
			log.Info("bgp: cluster config deleted")
		}
		h.signal()
	}
}

// Status reports the reflector's sessions and prefix counters.
func (h *reflectorHost) status(ctx context.Context) (bgp.Status, error) {
	return h.rr.Status(ctx)
}
