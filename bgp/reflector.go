package bgp

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Reflector is a cluster's BGP route reflector, hosted by
// clustermesh-apiserver. Node speakers are its iBGP clients; the reflectors
// of connected clusters are its eBGP peers, sent routes with next hops
// unchanged. It originates nothing and programs no kernel routes. Every
// session negotiates graceful restart and LLGR, so a reflector outage
// withdraws no route; a starting reflector peers with other clusters'
// reflectors only once its own nodes are back (see remoteHold).
type Reflector struct {
	cfg     Config
	core    *core
	metrics *metrics

	mu      sync.Mutex
	running bool
	ran     bool
	// leaveSessions: see StopForRestart.
	leaveSessions bool
}

// NewReflector checks cfg and returns a reflector that is not yet running.
// Config.PodCIDRs and route-installation fields are ignored; ListenPort
// should be the port of the cluster's api.Cluster.RouteReflector.
func NewReflector(cfg Config) (*Reflector, error) {
	cfg.InstallRoutes = false
	cfg.PodCIDRs = nil
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Reflector{cfg: cfg, core: newCore(cfg, false)}
	m, err := newMetrics("reflector", cfg.Registerer, r.Status)
	if err != nil {
		return nil, fmt.Errorf("reflector %s: register metrics: %w", cfg.Name, err)
	}
	r.metrics = m
	return r, nil
}

// Run serves BGP until ctx is cancelled. It may be called once. When it
// ends, it closes every session with a Cease (peers withdraw what it
// relayed at once), unless the reflector was told StopForRestart.
func (r *Reflector) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.ran {
		r.mu.Unlock()
		return ErrAlreadyStarted
	}
	r.ran = true
	r.mu.Unlock()
	if err := r.core.start(ctx, nil); err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	r.mu.Lock()
	r.running = true
	r.mu.Unlock()
	r.cfg.Logger.Info("bgp route reflector started", "cluster", r.cfg.Name, "asn", r.cfg.ASN, "router_id", r.cfg.RouterID, "port", r.cfg.ListenPort)
	defer func() {
		r.mu.Lock()
		r.running = false
		leave := r.leaveSessions
		r.mu.Unlock()
		if leave {
			r.core.stopWatch()
		} else {
			r.core.stop()
		}
	}()
	// Other clusters' reflectors wait until this one's nodes are back (see
	// remoteHold).
	holding := r.core.holdRemote
	started := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if !holding {
				continue
			}
			synced, err := r.core.clientsSynced(ctx)
			if err != nil {
				r.cfg.Logger.Warn("bgp: reflector: read client sessions", "cluster", r.cfg.Name, "error", err)
			}
			if !synced && time.Since(started) < r.remoteHold() {
				continue
			}
			holding = false
			r.cfg.Logger.Info("bgp reflector peers with other clusters' reflectors", "cluster", r.cfg.Name,
				"nodes_back", synced, "waited", time.Since(started).Round(time.Millisecond))
			if err := r.core.releaseRemote(ctx); err != nil {
				r.cfg.Logger.Error("bgp: reflector: add other clusters' reflectors", "cluster", r.cfg.Name, "error", err)
			}
		case <-r.core.events.signal:
			for _, ev := range r.core.events.drain() {
				switch ev.kind {
				case evPeer:
					r.cfg.Logger.Info("bgp session state", "cluster", r.cfg.Name, "peer", ev.peer, "established", ev.up)
					r.core.peerState(ctx, ev.peer, ev.up)
				case evPrefixLimit:
					if r.core.cutOffPeer(ctx, ev.peer) {
						r.metrics.limitCutOffs.WithLabelValues(ev.peer.String()).Inc()
					}
				}
			}
		}
	}
}

// StopForRestart makes Run, when its context ends, leave GoBGP's sessions to
// end with the process instead of closing them with a Cease: for a process
// that exits right after (clustermesh-apiserver on SIGTERM: a rolling
// update, a drain, the store-down drill scaling it to zero). Peers then see
// the connections close as after a crash and keep the routes by graceful
// restart and LLGR; a Cease (a Hard Reset) would make every node withdraw
// every route relayed through this reflector at once.
func (r *Reflector) StopForRestart() {
	r.mu.Lock()
	r.leaveSessions = true
	r.mu.Unlock()
}

// remoteHold bounds how long a starting reflector keeps other clusters'
// reflectors waiting for its own nodes. A restarted reflector hands a peer
// its table and End-of-RIB as soon as the session is up, and the peer then
// drops as stale every route not in it: towards another cluster's
// reflector, before this cluster's nodes are back, that would withdraw
// their routes from the whole other cluster. So those sessions come up once
// every node is back in session and has sent End-of-RIB, or after this
// bound (a node that is down). Meanwhile this cluster's nodes keep the other
// clusters' routes through the speakers' SessionLossGrace (they got this
// reflector's End-of-RIB without them), hence half of it: the other half
// is for the reflectors' session to come up and deliver.
func (r *Reflector) remoteHold() time.Duration { return r.cfg.SessionLossGrace / 2 }

// SetPeers replaces the reflector's dynamic peers (see ReflectorPeers). It
// may be called before Run; peers are applied when Run starts.
func (r *Reflector) SetPeers(ctx context.Context, peers []Peer) error {
	if err := r.core.setPeers(ctx, peers); err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	return nil
}

// SetImportPolicy makes the reflector accept, and so relay, only the routes
// rules allow (see Speaker.SetImportPolicy). It may be called before Run.
func (r *Reflector) SetImportPolicy(ctx context.Context, rules []ImportRule) error {
	if err := r.core.setImportPolicy(ctx, rules); err != nil {
		return fmt.Errorf("reflector: %w", err)
	}
	return nil
}

// Status reports the reflector's sessions and prefix counters.
func (r *Reflector) Status(ctx context.Context) (Status, error) {
	r.mu.Lock()
	running := r.running
	r.mu.Unlock()
	if !running {
		return Status{}, ErrNotStarted
	}
	peers, err := r.core.peerStatus(ctx)
	if err != nil {
		return Status{}, err
	}
	return Status{Role: "reflector", Name: r.cfg.Name, ASN: r.cfg.ASN, RouterID: r.cfg.RouterID, Peers: peers}, nil
}
