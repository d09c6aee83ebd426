package bgp

import (
	"iter"
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
	// The overlap check looks for accepted prefixes containing a
	// candidate's, and accepted prefixes inside it. Both look only at the
	// prefix lengths in use: a mesh announces a handful of lengths (a /24
	// per node, say), and a lookup per length from 0 to 24 and 24 counts to
	// keep per route cost more than the kernel's own route insert.
	//
	// acceptedLens counts accepted prefixes by family and length: the
	// containing prefixes are looked up at those lengths only.
	acceptedLens lengthCounts
	// candLens counts candidates by family and length, and under counts,
	// for every prefix of such a length, the accepted prefixes strictly
	// inside it: the overlap check of a candidate is one lookup. A length
	// that gains its first candidate is indexed then, from every accepted
	// prefix (rare: a new prefix length in the mesh).
	candLens lengthCounts
	under    map[netip.Prefix]int
}

// lengthCounts counts prefixes by family (IPv4, IPv6) and length.
type lengthCounts [2][129]int

func (l *lengthCounts) of(p netip.Prefix) *int {
	return &l.family(p)[p.Bits()]
}

func (l *lengthCounts) family(p netip.Prefix) *[129]int {
	if p.Addr().Is4() {
		return &l[0]
	}
	return &l[1]
}

// ancestors yields p's strict ancestors (p's address masked to a shorter
// length) at the lengths with a count in l.
func (l *lengthCounts) ancestors(p netip.Prefix) iter.Seq[netip.Prefix] {
	counts := l.family(p)
	return func(yield func(netip.Prefix) bool) {
		for b := 0; b < p.Bits(); b++ {
			if counts[b] > 0 && !yield(netip.PrefixFrom(p.Addr(), b).Masked()) {
				return
			}
		}
	}
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
	*t.acceptedLens.of(c.prefix)++
	for a := range t.candLens.ancestors(c.prefix) {
		t.under[a]++
	}
}

func (t *routeTable) unaccept(p netip.Prefix) {
	delete(t.accepted, p)
	*t.acceptedLens.of(p)--
	for a := range t.candLens.ancestors(p) {
		t.countUnder(a, -1)
	}
}

// countUnder adds d to the count of accepted prefixes inside a.
func (t *routeTable) countUnder(a netip.Prefix, d int) {
	if t.under[a] += d; t.under[a] <= 0 {
		delete(t.under, a)
	}
}

// addCand makes c a candidate, and indexes its prefix length if it is the
// first candidate of that length.
func (t *routeTable) addCand(c *candidate) {
	t.cands[c.prefix] = c
	n := t.candLens.of(c.prefix)
	if *n++; *n == 1 {
		t.indexLength(c.prefix, 1)
	}
}

// dropCand forgets the candidate for p, and the index of its length with
// the last candidate of that length.
func (t *routeTable) dropCand(p netip.Prefix) {
	delete(t.cands, p)
	n := t.candLens.of(p)
	if *n--; *n == 0 {
		t.indexLength(p, -1)
	}
}

// indexLength adds d, for every accepted prefix longer than like (and of
// its family), to the count of its ancestor of like's length.
func (t *routeTable) indexLength(like netip.Prefix, d int) {
	for p := range t.accepted {
		if p.Bits() > like.Bits() && p.Addr().Is4() == like.Addr().Is4() {
			t.countUnder(netip.PrefixFrom(p.Addr(), like.Bits()).Masked(), d)
		}
	}
}

// overlapping returns an accepted prefix other than c's that overlaps it
// and has another next hop.
func (t *routeTable) overlapping(c *candidate) (netip.Prefix, bool) {
	// Accepted prefixes containing c's.
	for p := range t.acceptedLens.ancestors(c.prefix) {
		if a, ok := t.accepted[p]; ok && a.nextHop != c.nextHop {
			return p, true
		}
	}
	// Accepted prefixes inside c's: rare, so a scan only when the index
	// (kept for candidates' lengths) says there are some.
	if *t.candLens.of(c.prefix) > 0 && t.under[c.prefix] == 0 {
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
	t.addCand(c)
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
	t.dropCand(prefix)
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
