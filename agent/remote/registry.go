package remote

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// Sentinel errors of the package.
var (
	// ErrConflict is wrapped by refusals of a cluster whose ID or pod CIDRs
	// collide with another accepted cluster.
	ErrConflict = errors.New("conflicts with another cluster")
	// ErrMismatch is wrapped by refusals of a cluster whose config does not
	// describe the cluster its connection file names (the store's check,
	// kvstore.ErrClusterMismatch, and the registry's).
	ErrMismatch = kvstore.ErrClusterMismatch
	// ErrNoConfig is returned while a cluster's store holds no cluster config.
	ErrNoConfig = kvstore.ErrNoClusterConfig
)

// Registry holds the configs of accepted clusters and refuses a new one
// whose ID or pod CIDRs collide with them. The first accepted cluster keeps
// its place, except against the agent's own cluster: a local claim evicts
// the peers it conflicts with. It is safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	accepted map[string]claim
}

type claim struct {
	cfg   *api.Cluster
	local bool
	evict func(error)
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{accepted: map[string]claim{}} }

func maxClusterID(c *api.Cluster) uint32 {
	if c.MaxClusterID == 0 {
		return api.DefaultMaxClusterID
	}
	return c.MaxClusterID
}

// conflict describes why cfg cannot coexist with other, or returns nil.
func conflict(cfg, other *api.Cluster) error {
	if other.ID == cfg.ID {
		return fmt.Errorf("cluster %s: %w: cluster ID %d is already used by cluster %s", cfg.Name, ErrConflict, cfg.ID, other.Name)
	}
	if maxClusterID(other) != maxClusterID(cfg) {
		return fmt.Errorf("cluster %s: %w: max cluster ID %d differs from %d of cluster %s", cfg.Name, ErrConflict, maxClusterID(cfg), maxClusterID(other), other.Name)
	}
	for _, p := range cfg.PodCIDRs {
		for _, q := range other.PodCIDRs {
			if p.Overlaps(q) {
				return fmt.Errorf("cluster %s: %w: pod CIDR %s overlaps %s of cluster %s", cfg.Name, ErrConflict, p, q, other.Name)
			}
		}
	}
	return nil
}

// Claim accepts cfg unless it conflicts with another accepted cluster. A
// cluster may claim again (its config changed): its previous claim is
// replaced. A local claim (the agent's own cluster) wins: the peers it
// conflicts with lose their claims and their evict functions are called,
// outside the registry's lock, with the reason. evict may be nil.
func (r *Registry) Claim(cfg *api.Cluster, local bool, evict func(error)) error {
	r.mu.Lock()
	var evicted []func()
	for name, other := range r.accepted {
		if name == cfg.Name {
			continue
		}
		err := conflict(cfg, other.cfg)
		if err == nil {
			continue
		}
		if !local || other.local {
			r.mu.Unlock()
			return err
		}
		reason := conflict(other.cfg, cfg)
		delete(r.accepted, name)
		if other.evict != nil {
			f := other.evict
			evicted = append(evicted, func() { f(reason) })
		}
	}
	r.accepted[cfg.Name] = claim{cfg: cfg, local: local, evict: evict}
	r.mu.Unlock()
	for _, f := range evicted {
		f()
	}
	return nil
}

// Release forgets a cluster's claim.
func (r *Registry) Release(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.accepted, name)
}

// Lookup returns the accepted config of a cluster.
func (r *Registry) Lookup(name string) (*api.Cluster, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.accepted[name]
	return c.cfg, ok
}

// Accepted returns the accepted clusters' configs, sorted by name.
func (r *Registry) Accepted() []api.Cluster {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.Cluster, 0, len(r.accepted))
	for _, c := range r.accepted {
		out = append(out, *c.cfg)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// LocalPodCIDRs are the pod CIDRs of the accepted local cluster, if any.
func (r *Registry) LocalPodCIDRs() []netip.Prefix {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.accepted {
		if c.local {
			return c.cfg.PodCIDRs
		}
	}
	return nil
}
