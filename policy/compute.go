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
	// Rule names the rule the entry comes from (the one whose name sorts
	// first, when several give the same entry).
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
// the difference. To compute many endpoints against the same identities,
// use a Computer.
func Compute(endpoint *api.Identity, policies []*Policy, identities []*api.Identity, opts Options) EndpointPolicy {
	return NewComputer(identities, opts).Compute(endpoint, policies)
}

// Computer computes endpoint policies against one set of identities. It
// builds every identity's selection labels once and remembers which
// identities each distinct peer selector matches, so that the cost of a
// selector is paid once per Computer however many policies and endpoints
// use it. Not safe for concurrent use; build a new one when identities
// change.
type Computer struct {
	opts       Options
	identities []*api.Identity
	sets       []labels.Set
	matches    map[string][]uint32
}

// NewComputer prepares identities (those of every cluster) for Compute.
func NewComputer(identities []*api.Identity, opts Options) *Computer {
	c := &Computer{opts: opts, identities: identities, sets: make([]labels.Set, len(identities)), matches: map[string][]uint32{}}
	for i, id := range identities {
		c.sets[i] = selectionLabels(id)
	}
	return c
}

// Compute returns the policy of endpoint under policies; see the function
// Compute.
func (c *Computer) Compute(endpoint *api.Identity, policies []*Policy) EndpointPolicy {
	var out EndpointPolicy
	var sets [2][2]entrySet // direction, deny
	own := selectionLabels(endpoint)
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
			deny := 0
			if r.Deny {
				deny = 1
			}
			c.expand(r, &sets[r.Direction][deny])
		}
	}
	for _, d := range []Direction{Ingress, Egress} {
		dp := out.Direction(d)
		dp.Allow, dp.Deny = sets[d][0].sorted(), sets[d][1].sorted()
	}
	return out
}

// entryKey identifies an entry up to the rule it comes from.
type entryKey struct {
	identity uint32
	cidr     netip.Prefix
	except   string
	port     Port
}

// entrySet gathers entries without repeats: the same peer and port from
// several rules is one entry, named for the rule whose name sorts first
// (so the result does not depend on the order policies were listed in).
type entrySet struct {
	index   map[entryKey]int
	entries []Entry
}

func (s *entrySet) add(e Entry) {
	k := entryKey{identity: e.Identity, cidr: e.CIDR, port: e.Port}
	for _, x := range e.Except {
		k.except += x.String() + ","
	}
	if s.index == nil {
		s.index = map[entryKey]int{}
	}
	if i, ok := s.index[k]; ok {
		if e.Rule < s.entries[i].Rule {
			s.entries[i].Rule = e.Rule
		}
		return
	}
	s.index[k] = len(s.entries)
	s.entries = append(s.entries, e)
}

func (s *entrySet) sorted() []Entry {
	slices.SortFunc(s.entries, compareEntry)
	return s.entries
}

// selected returns the identities a peer selector matches, from the memo
// when the same selector was resolved before.
func (c *Computer) selected(p Peer) []uint32 {
	local := !p.NamesCluster && !c.opts.AllClusters
	key := p.Selector.String()
	if local {
		key = "local|" + key
	}
	if ids, ok := c.matches[key]; ok {
		return ids
	}
	var ids []uint32
	for i, id := range c.identities {
		if local && id.Cluster != c.opts.LocalCluster {
			continue
		}
		if p.Selector.Matches(c.sets[i]) {
			ids = append(ids, id.ID)
		}
	}
	c.matches[key] = ids
	return ids
}

// expand adds the entries of one rule to set: each peer resolved, times
// each port.
func (c *Computer) expand(r Rule, set *entrySet) {
	ports := r.Ports
	if len(ports) == 0 {
		ports = []Port{{}}
	}
	add := func(e Entry) {
		for _, port := range ports {
			e.Port, e.Rule = port, r.Name
			set.add(e)
		}
	}
	if len(r.Peers) == 0 {
		add(Entry{Identity: IdentityAny})
	}
	for _, p := range r.Peers {
		switch {
		case p.Selector != nil:
			for _, id := range c.selected(p) {
				add(Entry{Identity: id})
			}
		case p.Entity == EntityAll:
			add(Entry{Identity: IdentityAny})
		case p.Entity == EntityWorld:
			add(Entry{Identity: IdentityWorld})
		case p.Entity == EntityHost:
			add(Entry{Identity: IdentityHost})
		case p.Entity == EntityCluster:
			add(Entry{Identity: IdentityHost})
			for _, id := range c.identities {
				if id.Cluster == c.opts.LocalCluster {
					add(Entry{Identity: id.ID})
				}
			}
		case p.CIDR.IsValid():
			add(Entry{CIDR: p.CIDR, Except: p.Except})
		}
	}
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
