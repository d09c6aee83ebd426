package remote

import (
	"errors"
	"fmt"
	"sync"

	"github.com/clustermesh/clustermesh/api"
)

// Sentinel errors of the package.
var (
	// ErrConflict is wrapped by refusals of a cluster whose ID or pod CIDRs
	// collide with another accepted cluster.
	ErrConflict = errors.New("conflicts with another cluster")
	// ErrMismatch is wrapped by refusals of a cluster whose config does not
	// describe the cluster its connection file names.
	ErrMismatch = errors.New("cluster config mismatch")
	// ErrNoConfig is returned while a cluster's store holds no cluster config.
	ErrNoConfig = errors.New("no cluster config in store")
)

// Registry holds the configs of accepted clusters and refuses a new one
// whose ID or pod CIDRs collide with them. It is safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	accepted map[string]*api.Cluster
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{accepted: map[string]*api.Cluster{}} }

// Claim accepts cfg unless it conflicts with another accepted cluster. A
// cluster may claim again (its config changed): its previous claim is
// replaced.
func (r *Registry) Claim(cfg *api.Cluster) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	maxID := func(c *api.Cluster) uint32 {
		if c.MaxClusterID == 0 {
			return api.DefaultMaxClusterID
		}
		return c.MaxClusterID
	}
	for name, other := range r.accepted {
		if name == cfg.Name {
			continue
		}
		if other.ID == cfg.ID {
			return fmt.Errorf("cluster %s: %w: cluster ID %d is already used by cluster %s", cfg.Name, ErrConflict, cfg.ID, name)
		}
		if maxID(other) != maxID(cfg) {
			return fmt.Errorf("cluster %s: %w: max cluster ID %d differs from %d of cluster %s", cfg.Name, ErrConflict, maxID(cfg), maxID(other), name)
		}
		for _, p := range cfg.PodCIDRs {
			for _, q := range other.PodCIDRs {
				if p.Overlaps(q) {
					return fmt.Errorf("cluster %s: %w: pod CIDR %s overlaps %s of cluster %s", cfg.Name, ErrConflict, p, q, name)
				}
			}
		}
	}
	r.accepted[cfg.Name] = cfg
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
	return c, ok
}
