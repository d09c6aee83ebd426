package bgp

import (
	"net/netip"
	"sort"
)

// RefusalReason says why a learned route was not installed.
type RefusalReason string

const (
	// RefusedLocalPodCIDR: the route overlaps one of this node's pod CIDRs.
	RefusedLocalPodCIDR RefusalReason = "overlaps-local-pod-cidr"
	// RefusedNodeSubnet: the route overlaps a subnet the node sits on, so
	// installing it could cut the node off its own fabric.
	RefusedNodeSubnet RefusalReason = "overlaps-node-subnet"
	// RefusedLearnedRoute: the route overlaps a prefix already installed
	// towards another next hop (another cluster's CIDR learned from
	// elsewhere). The first one learned wins; the refused one is retried
	// when the installed one goes away.
	RefusedLearnedRoute RefusalReason = "overlaps-learned-route"
	// RefusedOwnNextHop: the next hop is this node itself.
	RefusedOwnNextHop RefusalReason = "own-next-hop"
)

// Refusal is one learned route that is not installed, and why.
type Refusal struct {
	Prefix  netip.Prefix  `json:"prefix"`
	NextHop netip.Addr    `json:"nextHop"`
	Peer    string        `json:"peer"`
	Reason  RefusalReason `json:"reason"`
	// Conflict is the local or learned prefix it overlaps.
	Conflict netip.Prefix `json:"conflict,omitzero"`
}

type candidate struct {
	prefix  netip.Prefix
	nextHop netip.Addr
	peer    string
	seq     uint64
}

// routeTable decides which learned best paths may be installed. It is pure
// logic, owned by one goroutine.
type routeTable struct {
	podCIDRs []netip.Prefix
	subnets  []netip.Prefix
	ownIPs   []netip.Addr

	seq      uint64
	cands    map[netip.Prefix]*candidate
	accepted map[netip.Prefix]*candidate
	refused  map[netip.Prefix]Refusal
	// under counts, for every strict ancestor of an accepted prefix, the
	// accepted prefixes below it, so the overlap check costs one lookup per
	// prefix length instead of a scan of every accepted route.
	under map[netip.Prefix]int
}

// tableChange is what the kernel layer must do after an update.
type tableChange struct {
	install []candidate
	remove  []candidate
	refused []Refusal
}

func newRouteTable(podCIDRs, subnets []netip.Prefix, ownIPs []netip.Addr) *routeTable {
	return &routeTable{
		podCIDRs: podCIDRs,
		subnets:  subnets,
		ownIPs:   ownIPs,
		cands:    map[netip.Prefix]*candidate{},
		accepted: map[netip.Prefix]*candidate{},
		refused:  map[netip.Prefix]Refusal{},
		under:    map[netip.Prefix]int{},
	}
}

func (t *routeTable) accept(c *candidate) {
	t.accepted[c.prefix] = c
	for b := 0; b < c.prefix.Bits(); b++ {
		t.under[netip.PrefixFrom(c.prefix.Addr(), b).Masked()]++
	}
}

func (t *routeTable) unaccept(p netip.Prefix) {
	delete(t.accepted, p)
	for b := 0; b < p.Bits(); b++ {
		a := netip.PrefixFrom(p.Addr(), b).Masked()
		if t.under[a]--; t.under[a] <= 0 {
			delete(t.under, a)
		}
	}
}

// overlapping returns an accepted prefix other than c's that overlaps it
// and has another next hop.
func (t *routeTable) overlapping(c *candidate) (netip.Prefix, bool) {
	// Accepted prefixes containing c's.
	for b := 0; b < c.prefix.Bits(); b++ {
		if a, ok := t.accepted[netip.PrefixFrom(c.prefix.Addr(), b).Masked()]; ok && a.nextHop != c.nextHop {
			return a.prefix, true
		}
	}
	// Accepted prefixes inside c's: rare, so a scan only when there are any.
	if t.under[c.prefix] == 0 {
		return netip.Prefix{}, false
	}
	for p, a := range t.accepted {
		if p != c.prefix && p.Bits() > c.prefix.Bits() && c.prefix.Contains(p.Addr()) && a.nextHop != c.nextHop {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func (t *routeTable) check(c *candidate) (RefusalReason, netip.Prefix, bool) {
	for _, a := range t.ownIPs {
		if a == c.nextHop {
			return RefusedOwnNextHop, netip.Prefix{}, false
		}
	}
	for _, p := range t.podCIDRs {
		if p.Overlaps(c.prefix) {
			return RefusedLocalPodCIDR, p, false
		}
	}
	for _, p := range t.subnets {
		if p.Overlaps(c.prefix) {
			return RefusedNodeSubnet, p, false
		}
	}
	if p, ok := t.overlapping(c); ok {
		return RefusedLearnedRoute, p, false
	}
	return "", netip.Prefix{}, true
}

// upsert records the best path for prefix.
func (t *routeTable) upsert(prefix netip.Prefix, nextHop netip.Addr, peer string) tableChange {
	var ch tableChange
	if old, ok := t.cands[prefix]; ok {
		if old.nextHop == nextHop {
			old.peer = peer
			return ch
		}
		// A new next hop is a new decision: drop the old one first, but
		// keep it in the kernel if the new one is accepted (replace).
		ch = t.withdraw(prefix)
	}
	t.seq++
	c := &candidate{prefix: prefix, nextHop: nextHop, peer: peer, seq: t.seq}
	t.cands[prefix] = c
	t.admit(c, &ch)
	// A replaced route needs no removal.
	ch.remove = dropPrefix(ch.remove, prefix, t.accepted)
	return ch
}

func (t *routeTable) admit(c *candidate, ch *tableChange) {
	reason, conflict, ok := t.check(c)
	if !ok {
		r := Refusal{Prefix: c.prefix, NextHop: c.nextHop, Peer: c.peer, Reason: reason, Conflict: conflict}
		t.refused[c.prefix] = r
		ch.refused = append(ch.refused, r)
		return
	}
	delete(t.refused, c.prefix)
	t.accept(c)
	ch.install = append(ch.install, *c)
}

// withdraw forgets prefix and admits refused routes it was blocking.
func (t *routeTable) withdraw(prefix netip.Prefix) tableChange {
	var ch tableChange
	c, ok := t.cands[prefix]
	if !ok {
		return ch
	}
	delete(t.cands, prefix)
	delete(t.refused, prefix)
	if _, ok := t.accepted[prefix]; !ok {
		return ch
	}
	t.unaccept(prefix)
	ch.remove = append(ch.remove, *c)
	// Retry refused routes in the order they were learned.
	retry := make([]*candidate, 0, len(t.refused))
	for p, r := range t.refused {
		if r.Reason == RefusedLearnedRoute && p.Overlaps(prefix) {
			retry = append(retry, t.cands[p])
		}
	}
	sort.Slice(retry, func(i, j int) bool { return retry[i].seq < retry[j].seq })
	for _, r := range retry {
		t.admit(r, &ch)
	}
	return ch
}

func dropPrefix(cs []candidate, p netip.Prefix, accepted map[netip.Prefix]*candidate) []candidate {
	if _, ok := accepted[p]; !ok {
		return cs
	}
	out := cs[:0]
	for _, c := range cs {
		if c.prefix != p {
			out = append(out, c)
		}
	}
	return out
}

func (t *routeTable) refusals() []Refusal {
	out := make([]Refusal, 0, len(t.refused))
	for _, r := range t.refused {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix.String() < out[j].Prefix.String() })
	return out
}
