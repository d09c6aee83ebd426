// Package admit decides what the agent takes from a peer cluster's store.
//
// Clusters in a mesh are run by different teams; any of them may be
// misconfigured or compromised. The rule: whatever a peer writes into its own
// store, it can change only the backends of its own exported services, within
// its own pod CIDRs (or at its own nodes' addresses, for host-network
// endpoints), and the routes to its own nodes' pod CIDRs, within the pod
// CIDRs it was accepted with. Everything else is refused field by field: a bad
// backend is dropped from its slice and the rest of the slice is kept, so one
// bad value never freezes a service. Each refusal names the cluster, key,
// field and reason, for logs, metrics and status.
//
// The checks here are pure functions of what the peer was accepted with (a
// Scope) and the local ranges no peer may claim (a Policy); the agent's
// cluster connection applies them to every object before it reaches the
// merger, the routes or the health checker. The local cluster is trusted and
// not checked.
package admit

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/api"
)

// Default bounds of a Policy.
const (
	// DefaultMinBitsV4 and DefaultMinBitsV6 are the shortest prefixes a
	// peer's cluster pod CIDRs may have: anything broader would let one peer
	// claim a large share of the address space (and a default route).
	DefaultMinBitsV4 = 8
	DefaultMinBitsV6 = 32
)

// Scope is what a peer cluster was accepted with.
type Scope struct {
	Cluster      string
	ClusterID    uint32
	MaxClusterID uint32
	// PodCIDRs are the cluster's pod CIDRs from its accepted config.
	PodCIDRs []netip.Prefix
}

// ScopeOf is the scope of an accepted cluster config.
func ScopeOf(cfg *api.Cluster) Scope {
	maxID := cfg.MaxClusterID
	if maxID == 0 {
		maxID = api.DefaultMaxClusterID
	}
	return Scope{Cluster: cfg.Name, ClusterID: cfg.ID, MaxClusterID: maxID, PodCIDRs: cfg.PodCIDRs}
}

// Policy holds what no peer may claim.
type Policy struct {
	// Protected are the local ranges no peer address or prefix may fall in
	// or overlap: the local cluster's pod CIDRs, its service range and its
	// node network.
	Protected []netip.Prefix
	// MinBitsV4 and MinBitsV6 bound how broad a peer's cluster pod CIDR
	// may be; zero means the defaults.
	MinBitsV4, MinBitsV6 int
}

// Refusal names one refused object or field.
type Refusal struct {
	Cluster string
	Key     string
	// Field is the refused field ("" when the whole object is refused).
	Field string
	// Reason is a short, stable class for metrics ("outside-pod-cidrs",
	// "special-address", "protected-range", "foreign-identity",
	// "over-broad-prefix", "quota"); Detail says what exactly.
	Reason string
	Detail string
}

func (r Refusal) Error() string {
	field := r.Field
	if field == "" {
		field = "(object)"
	}
	return fmt.Sprintf("cluster %s: key %s: field %s: %s: %s", r.Cluster, r.Key, field, r.Reason, r.Detail)
}

// Reasons of refusals.
const (
	ReasonOutsidePodCIDRs = "outside-pod-cidrs"
	ReasonSpecialAddress  = "special-address"
	ReasonProtectedRange  = "protected-range"
	ReasonForeignIdentity = "foreign-identity"
	ReasonOverBroad       = "over-broad-prefix"
	ReasonQuota           = "quota"
)

func (p *Policy) minBits(pfx netip.Prefix) int {
	if pfx.Addr().Is4() {
		if p.MinBitsV4 > 0 {
			return p.MinBitsV4
		}
		return DefaultMinBitsV4
	}
	if p.MinBitsV6 > 0 {
		return p.MinBitsV6
	}
	return DefaultMinBitsV6
}

// Cluster checks a peer's cluster config before it is accepted: its pod
// CIDRs must be neither over-broad nor overlap a protected range. Overlaps
// with other peers are the registry's business.
func (p *Policy) Cluster(cfg *api.Cluster) error {
	key := api.ClusterKey(cfg.Name)
	for i, c := range cfg.PodCIDRs {
		field := fmt.Sprintf("podCIDRs[%d]", i)
		if c.Bits() < p.minBits(c) {
			return Refusal{cfg.Name, key, field, ReasonOverBroad, fmt.Sprintf("%s is broader than /%d", c, p.minBits(c))}
		}
		if q, ok := p.overlapsProtected(c); ok {
			return Refusal{cfg.Name, key, field, ReasonProtectedRange, fmt.Sprintf("%s overlaps local range %s", c, q)}
		}
	}
	return nil
}

func (p *Policy) overlapsProtected(c netip.Prefix) (netip.Prefix, bool) {
	for _, q := range p.Protected {
		if q.Overlaps(c) {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// special reports why a is never a valid peer address, or "".
func special(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return "unspecified address"
	case a.IsLoopback():
		return "loopback address"
	case a.IsLinkLocalUnicast():
		return "link-local address"
	case a.IsMulticast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast():
		return "multicast address"
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast address"
	}
	return ""
}

// address checks one peer address that is not a pod address (a node's).
func (p *Policy) address(a netip.Addr) (reason, detail string) {
	if why := special(a); why != "" {
		return ReasonSpecialAddress, fmt.Sprintf("%s is a %s", a, why)
	}
	for _, q := range p.Protected {
		if q.Contains(a.Unmap()) {
			return ReasonProtectedRange, fmt.Sprintf("%s is in local range %s", a, q)
		}
	}
	return "", ""
}

// podAddress checks an address a peer says one of its pods (or, with
// isNode, one of its nodes) has: it must pass address and lie in the
// scope's pod CIDRs or be a node address of the peer.
func (p *Policy) podAddress(s *Scope, a netip.Addr, isNode func(netip.Addr) bool) (reason, detail string) {
	if r, d := p.address(a); r != "" {
		return r, d
	}
	a = a.Unmap()
	for _, c := range s.PodCIDRs {
		if c.Contains(a) {
			return "", ""
		}
	}
	if isNode != nil && isNode(a) {
		return "", ""
	}
	return ReasonOutsidePodCIDRs, fmt.Sprintf("%s is neither in pod CIDRs %v nor a node address of cluster %s", a, s.PodCIDRs, s.Cluster)
}

// within reports whether c lies inside one of outer.
func within(c netip.Prefix, outer []netip.Prefix) bool {
	for _, o := range outer {
		if o.Bits() <= c.Bits() && o.Contains(c.Addr()) {
			return true
		}
	}
	return false
}

// Object returns obj reduced to what the peer of scope s may change, and
// what was refused. The result is nil when nothing of the object is
// admissible. obj is not modified: a reduced object is a copy. isNode
// reports whether an address belongs to one of the peer's admitted nodes
// (host-network endpoints); it may be nil.
func (p *Policy) Object(s *Scope, obj api.Object, isNode func(netip.Addr) bool) (api.Object, []Refusal) {
	key := obj.Key()
	var refused []Refusal
	refuse := func(field, reason, detail string) {
		refused = append(refused, Refusal{s.Cluster, key, field, reason, detail})
	}
	switch o := obj.(type) {
	case *api.Node:
		n := *o
		n.Addresses = slices.DeleteFunc(slices.Clone(o.Addresses), func(a netip.Addr) bool {
			if r, d := p.address(a); r != "" {
				refuse("addresses", r, d)
				return true
			}
			return false
		})
		n.PodCIDRs = slices.DeleteFunc(slices.Clone(o.PodCIDRs), func(c netip.Prefix) bool {
			if !within(c, s.PodCIDRs) {
				refuse("podCIDRs", ReasonOutsidePodCIDRs, fmt.Sprintf("%s is not inside the cluster's accepted pod CIDRs %v", c, s.PodCIDRs))
				return true
			}
			return false
		})
		if n.BGPAddress.IsValid() {
			if r, d := p.address(n.BGPAddress); r != "" {
				refuse("bgpAddress", r, d)
				n.BGPAddress = netip.Addr{}
			}
		}
		if n.GossipAddress.IsValid() {
			if r, d := p.address(n.GossipAddress.Addr()); r != "" {
				refuse("gossipAddress", r, d)
				n.GossipAddress = netip.AddrPort{}
			}
		}
		return &n, refused
	case *api.EndpointSlice:
		es := *o
		es.Endpoints = make([]api.Endpoint, 0, len(o.Endpoints))
		for i, ep := range o.Endpoints {
			ep.Addresses = slices.DeleteFunc(slices.Clone(ep.Addresses), func(a netip.Addr) bool {
				if r, d := p.podAddress(s, a, isNode); r != "" {
					refuse(fmt.Sprintf("endpoints[%d].addresses", i), r, d)
					return true
				}
				return false
			})
			if len(ep.Addresses) > 0 {
				es.Endpoints = append(es.Endpoints, ep)
			}
		}
		return &es, refused
	case *api.Service:
		if o.ClusterID != 0 && o.ClusterID != s.ClusterID {
			refuse("clusterID", ReasonForeignIdentity, fmt.Sprintf("service claims cluster ID %d, the cluster was accepted with %d", o.ClusterID, s.ClusterID))
			return nil, refused
		}
		return o, nil
	case *api.Identity:
		if got := api.IdentityClusterID(o.ID, s.MaxClusterID); got != s.ClusterID {
			refuse("id", ReasonForeignIdentity, fmt.Sprintf("identity %d carries cluster ID %d, the cluster was accepted with %d", o.ID, got, s.ClusterID))
			return nil, refused
		}
		return o, nil
	case *api.IPCacheEntry:
		if got := api.IdentityClusterID(o.Identity, s.MaxClusterID); got != s.ClusterID {
			refuse("identity", ReasonForeignIdentity, fmt.Sprintf("identity %d carries cluster ID %d, the cluster was accepted with %d", o.Identity, got, s.ClusterID))
			return nil, refused
		}
		if r, d := p.podAddress(s, o.IP, isNode); r != "" {
			refuse("ip", r, d)
			return nil, refused
		}
		return o, nil
	}
	return obj, nil
}
