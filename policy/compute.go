package policy

import (
	"cmp"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/clustermesh/clustermesh/api"
)

// Options are the mesh-wide settings of policy computation.
type Options struct {
	// LocalCluster is the agent's cluster: endpoints are its identities,
	// and selectors that name no cluster select only its identities.
	LocalCluster string
	// AllClusters makes selectors that name no cluster select identities
	// of every cluster (Cilium before 1.19).
	AllClusters bool
}

// Entry is one allowed or denied peer of an endpoint for one direction: an
// identity (IdentityAny: every peer) or a CIDR (with exceptions), on Port.
type Entry struct {
	Identity uint32
	CIDR     netip.Prefix
	Except   []netip.Prefix
	Port     Port
	// Rule names the rule the entry comes from (the first one, when
	// several give the same entry).
	Rule string
}

// DirectionPolicy is an endpoint's policy for one direction. When Enforced
// is false everything passes; otherwise only Allow minus Deny.
type DirectionPolicy struct {
	Enforced bool
	Allow    []Entry
	Deny     []Entry
}

// EndpointPolicy is what an agent enforces for one local endpoint.
type EndpointPolicy struct {
	Ingress DirectionPolicy
	Egress  DirectionPolicy
}

// Direction returns the policy of one direction.
func (e *EndpointPolicy) Direction(d Direction) *DirectionPolicy {
	if d == Egress {
		return &e.Egress
	}
	return &e.Ingress
}

// selectionLabels are the labels selectors see for an identity: its own,
// its namespace and its cluster.
func selectionLabels(id *api.Identity) labels.Set {
	set := make(labels.Set, len(id.Labels)+2)
	for k, v := range id.Labels {
		set[k] = v
	}
	set[LabelNamespace] = id.Namespace
	set[LabelCluster] = id.Cluster
	return set
}

// Compute returns the policy of endpoint (an identity of the local cluster)
// under policies, with peer selectors resolved against identities (those of
// every cluster). It is a pure function of its inputs: callers recompute
// when a policy, an identity or the endpoint's labels change, and program
// the difference.
func Compute(endpoint *api.Identity, policies []*Policy, identities []*api.Identity, opts Options) EndpointPolicy {
	var out EndpointPolicy
	own := selectionLabels(endpoint)
	peerSets := make([]labels.Set, len(identities))
	for i, id := range identities {
		peerSets[i] = selectionLabels(id)
	}
	for _, p := range policies {
		if (p.Namespace != "" && p.Namespace != endpoint.Namespace) || !p.Subject.Matches(own) {
			continue
		}
		for _, d := range []Direction{Ingress, Egress} {
			if p.Enforces[d] {
				out.Direction(d).Enforced = true
			}
		}
		for _, r := range p.Rules {
			dp := out.Direction(r.Direction)
			entries := expand(r, identities, peerSets, opts)
			if r.Deny {
				dp.Deny = append(dp.Deny, entries...)
			} else {
				dp.Allow = append(dp.Allow, entries...)
			}
		}
	}
	for _, dp := range []*DirectionPolicy{&out.Ingress, &out.Egress} {
		dp.Allow, dp.Deny = normalize(dp.Allow), normalize(dp.Deny)
	}
	return out
}

// expand lists the entries of one rule: each peer resolved, times each port.
func expand(r Rule, identities []*api.Identity, sets []labels.Set, opts Options) []Entry {
	var peers []Entry
	if len(r.Peers) == 0 {
		peers = append(peers, Entry{Identity: IdentityAny})
	}
	for _, p := range r.Peers {
		switch {
		case p.Selector != nil:
			for i, id := range identities {
				if !p.NamesCluster && !opts.AllClusters && id.Cluster != opts.LocalCluster {
					continue
				}
				if p.Selector.Matches(sets[i]) {
					peers = append(peers, Entry{Identity: id.ID})
				}
			}
		case p.Entity == EntityAll:
			peers = append(peers, Entry{Identity: IdentityAny})
		case p.Entity == EntityWorld:
			peers = append(peers, Entry{Identity: IdentityWorld})
		case p.Entity == EntityHost:
			peers = append(peers, Entry{Identity: IdentityHost})
		case p.Entity == EntityCluster:
			peers = append(peers, Entry{Identity: IdentityHost})
			for _, id := range identities {
				if id.Cluster == opts.LocalCluster {
					peers = append(peers, Entry{Identity: id.ID})
				}
			}
		case p.CIDR.IsValid():
			peers = append(peers, Entry{CIDR: p.CIDR, Except: p.Except})
		}
	}
	ports := r.Ports
	if len(ports) == 0 {
		ports = []Port{{}}
	}
	out := make([]Entry, 0, len(peers)*len(ports))
	for _, e := range peers {
		for _, port := range ports {
			e.Port, e.Rule = port, r.Name
			out = append(out, e)
		}
	}
	return out
}

func compareEntry(a, b Entry) int {
	if c := cmp.Compare(a.Identity, b.Identity); c != 0 {
		return c
	}
	if c := a.CIDR.Addr().Compare(b.CIDR.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.CIDR.Bits(), b.CIDR.Bits()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port.Protocol, b.Port.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port.Port, b.Port.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.Port.EndPort, b.Port.EndPort)
}

// normalize sorts entries and drops repeats of the same peer and port,
// keeping the first rule's name.
func normalize(es []Entry) []Entry {
	slices.SortStableFunc(es, compareEntry)
	return slices.CompactFunc(es, func(a, b Entry) bool {
		return compareEntry(a, b) == 0 && slices.Equal(a.Except, b.Except)
	})
}
