package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/route"
)

// Route is a remote pod CIDR reached through a node's IP.
type Route = route.Route

// RouteWriter installs and removes routes in the kernel (or elsewhere).
// Implementations must be idempotent: Upsert of an existing route replaces
// it, Delete of a missing one succeeds.
type RouteWriter interface {
	Upsert(ctx context.Context, r Route) error
	Delete(ctx context.Context, r Route) error
}

// RouteLister is implemented by RouteWriters that can list the routes they
// own (e.g. left by a previous run), so StaticRoutes can remove stale ones.
type RouteLister interface {
	List(ctx context.Context) ([]Route, error)
}

// StaticRoutes turns the nodes of remote clusters (and, with OwnCluster,
// the other nodes of the agent's own cluster) into routes to their pod CIDRs
// via their first address, for meshes without BGP. It is a
// NodeObserver; a goroutine (Run) applies changes so observer calls never
// block, and retries failed writes every second.
type StaticRoutes struct {
	local string
	// self and own: with own set (OwnCluster), nodes of the local cluster
	// other than self are routed too.
	self string
	own  bool
	w    RouteWriter
	log  *slog.Logger

	mu      sync.Mutex
	desired map[netip.Prefix]Route
	applied map[netip.Prefix]Route
	byNode  map[[2]string][]netip.Prefix
	kick    chan struct{}
	// gate, once closed, allows deleting adopted routes that are not
	// desired; before, the desired state may still be incomplete.
	gate   <-chan struct{}
	gateOK bool

	// drain is how long the routes of a drained cluster stay; draining
	// holds, per drained cluster, when its routes may go.
	drain    time.Duration
	draining map[string]time.Time
	now      func() time.Time
}

var _ DrainObserver = (*StaticRoutes)(nil)

// NewStaticRoutes returns the route reconciler of the agent of cluster local.
func NewStaticRoutes(local string, w RouteWriter, log *slog.Logger) *StaticRoutes {
	log = logging.OrDiscard(log)
	return &StaticRoutes{
		local: local, w: w, log: log,
		desired:  map[netip.Prefix]Route{},
		applied:  map[netip.Prefix]Route{},
		byNode:   map[[2]string][]netip.Prefix{},
		kick:     make(chan struct{}, 1),
		drain:    DefaultRouteDrain,
		draining: map[string]time.Time{},
		now:      time.Now,
	}
}

// DefaultRouteDrain is how long a disconnected cluster's routes stay.
// `clustermesh disconnect` edits both clusters' connection files, and each
// side's agents see the change when their kubelet refreshes the Secret
// mount, tens of seconds apart. Until the other side has dropped this
// cluster too, its pods still connect to this cluster's backends, whose
// replies need the routes back.
const DefaultRouteDrain = 2 * time.Minute

// Drain sets how long the routes of a drained cluster (disconnected, or its
// config refused) stay after its services stopped being balanced to; 0
// removes them at once. A node deleted by its own cluster loses its routes
// at once either way. Call before Run.
func (s *StaticRoutes) Drain(d time.Duration) { s.drain = d }

// ClusterDrained implements DrainObserver: the cluster's routes stay until
// the drain has passed, unless its nodes come back first.
func (s *StaticRoutes) ClusterDrained(cluster string) {
	if s.drain <= 0 {
		return
	}
	s.mu.Lock()
	s.draining[cluster] = s.now().Add(s.drain)
	s.mu.Unlock()
	s.log.Info("cluster drained: its routes stay while its traffic drains", "cluster", cluster, "drain", s.drain)
}

// RoutesByCluster counts the routes in the kernel by the cluster whose
// node is their next hop (status Cluster.Routes).
func (s *StaticRoutes) RoutesByCluster() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, r := range s.applied {
		out[r.Cluster]++
	}
	return out
}

// OwnCluster makes the reconciler route the other nodes of the agent's own
// cluster too (self is this node), for clusters whose CNI does not route
// between nodes (kind without kindnet, a bare ptp configuration). A route
// another owner (the CNI) installed first is never replaced: the route
// package reports the conflict instead. Call before Run.
func (s *StaticRoutes) OwnCluster(self string) { s.self, s.own = self, true }

// AdoptAfter sets when routes adopted from a previous run (RouteLister) may
// be pruned: once ch is closed, typically (*Agent).InitialSync(). Until then
// only additions and changes are applied. Without it, adopted routes are
// pruned at once. Call before Run.
func (s *StaticRoutes) AdoptAfter(ch <-chan struct{}) { s.gate = ch }

// NodeUpserted implements NodeObserver.
func (s *StaticRoutes) NodeUpserted(n *api.Node) {
	if (n.Cluster == s.local && (!s.own || n.Name == s.self)) || len(n.Addresses) == 0 {
		return
	}
	s.mu.Lock()
	delete(s.draining, n.Cluster)
	id := [2]string{n.Cluster, n.Name}
	for _, p := range s.byNode[id] {
		delete(s.desired, p)
	}
	s.byNode[id] = nil
	for _, p := range n.PodCIDRs {
		s.desired[p] = Route{Prefix: p, NextHop: n.Addresses[0], Cluster: n.Cluster, Node: n.Name}
		s.byNode[id] = append(s.byNode[id], p)
	}
	s.mu.Unlock()
	s.signal()
}

// NodeDeleted implements NodeObserver.
func (s *StaticRoutes) NodeDeleted(cluster, name string) {
	s.mu.Lock()
	id := [2]string{cluster, name}
	for _, p := range s.byNode[id] {
		delete(s.desired, p)
	}
	delete(s.byNode, id)
	s.mu.Unlock()
	s.signal()
}

func (s *StaticRoutes) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run applies route changes until ctx ends. Routes stay installed when it
// returns.
func (s *StaticRoutes) Run(ctx context.Context) {
	if l, ok := s.w.(RouteLister); ok {
		routes, err := l.List(ctx)
		if err != nil {
			s.log.Warn("cannot list routes of a previous run; they will not be pruned", "error", err)
		}
		s.mu.Lock()
		for _, r := range routes {
			s.applied[r.Prefix] = r
		}
		s.mu.Unlock()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
		s.reconcile(ctx)
	}
}

func (s *StaticRoutes) reconcile(ctx context.Context) {
	if !s.gateOK {
		s.gateOK = s.gate == nil
		if !s.gateOK {
			select {
			case <-s.gate:
				s.gateOK = true
			default:
			}
		}
	}
	s.mu.Lock()
	now := s.now()
	var up, down []Route
	for p, r := range s.desired {
		if s.applied[p] != r {
			up = append(up, r)
		}
	}
	for p, r := range s.applied {
		if _, ok := s.desired[p]; ok || !s.gateOK {
			continue
		}
		if until, ok := s.draining[r.Cluster]; ok && now.Before(until) {
			continue // kept for the drain; the ticker comes back
		}
		down = append(down, r)
	}
	for c, until := range s.draining {
		if !now.Before(until) {
			delete(s.draining, c)
		}
	}
	s.mu.Unlock()
	for _, r := range down {
		if err := s.w.Delete(ctx, r); err != nil {
			s.log.Warn("cannot delete route", "prefix", r.Prefix, "cluster", r.Cluster, "node", r.Node, "error", err)
			continue
		}
		s.mu.Lock()
		delete(s.applied, r.Prefix)
		s.mu.Unlock()
	}
	for _, r := range up {
		if err := s.w.Upsert(ctx, r); err != nil {
			if errors.Is(err, route.ErrConflict) {
				continue // reported by the writer, once; retried
			}
			s.log.Warn("cannot install route", "prefix", r.Prefix, "via", r.NextHop, "cluster", r.Cluster, "node", r.Node, "error", err)
			continue
		}
		s.mu.Lock()
		s.applied[r.Prefix] = r
		s.mu.Unlock()
	}
}
