package health

import (
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// NodeResolver names the datapath's node for a node of a connected cluster:
// the cluster's ID comes from the cluster's accepted configuration, never
// from what a gossip member says. The agent implements it.
type NodeResolver interface {
	NodeRef(cluster, node string) (loadbalancer.NodeRef, bool)
}

// Reasons a gossip message is refused (the reason label of
// clustermesh_gossip_refused_total and Refusal.Reason).
const (
	// ReasonNoRegistry: the node registry is not known yet.
	ReasonNoRegistry = "no_registry"
	// ReasonUnknownMember: neither the member's name nor its address is in
	// the registry.
	ReasonUnknownMember = "unknown_member"
	// ReasonAddressMismatch: the name is a registry node's, but the member
	// speaks from another address (a peer impersonating that node).
	ReasonAddressMismatch = "address_mismatch"
	// ReasonNameMismatch: the address is a registry node's, but the member
	// claims another name.
	ReasonNameMismatch = "name_mismatch"
	// ReasonNoMetadata: the member carries no clustermesh metadata.
	ReasonNoMetadata = "no_metadata"
	// ReasonClusterIDMismatch: the member's metadata claims another cluster
	// ID than its registry cluster was accepted with.
	ReasonClusterIDMismatch = "cluster_id_mismatch"
	// ReasonUnknownCluster: the member's registry cluster has no accepted
	// cluster ID yet.
	ReasonUnknownCluster = "unknown_cluster"
	// ReasonDeathNotConfirmed: memberlist was told a member is dead (by a
	// gossiped report whose sender cannot be known), but this member's own
	// ping of the node at its registry address was answered.
	ReasonDeathNotConfirmed = "death_not_confirmed"
)

// unknownCluster labels refusals that cannot be tied to a registry cluster,
// so that names chosen by a hostile member never become metric labels.
const unknownCluster = "unknown"

// maxRefusals bounds the refusals kept for Status; a hostile member that
// cycles through names only bumps the counter beyond it.
const maxRefusals = 64

// Refusal is one kind of gossip message this member refused, as reported in
// Status. Cluster and Node are what the message claimed; Owner is the
// registry node ("<cluster>/<node>") that really has the address, if any.
type Refusal struct {
	Cluster string
	Node    string
	Addr    netip.AddrPort
	Owner   string
	// Field is what disagreed with the registry: name, address,
	// cluster_id, meta or state.
	Field  string
	Reason string
	Count  uint64
	First  time.Time
	Last   time.Time
}

// admission is a member admitted by NotifyAlive: its registry-derived
// NodeRef and the address it was admitted at.
type admission struct {
	ref  loadbalancer.NodeRef
	addr netip.AddrPort
}

// memberAddr converts memberlist's address to a comparable form.
func memberAddr(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

func unmapPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// admitLocked decides whether a member named name, speaking from addr with
// metadata meta, is the registry node it claims to be. It returns the
// node's registry-derived ref, or the refusal. p.mu must be held.
func (p *Pool) admitLocked(name string, addr netip.AddrPort, meta []byte) (loadbalancer.NodeRef, *Refusal) {
	cluster, node := splitName(name)
	r := &Refusal{Cluster: cluster, Node: node, Addr: addr}
	if !p.regSet {
		r.Field, r.Reason = "name", ReasonNoRegistry
		return loadbalancer.NodeRef{}, r
	}
	owner := ""
	for n, rn := range p.registry {
		if ga := p.gossipAddr(rn); ga.IsValid() && unmapPort(ga) == addr {
			owner = n
			break
		}
	}
	r.Owner = owner
	entry, listed := p.registry[name]
	switch {
	case owner == "" && !listed:
		r.Field, r.Reason = "name", ReasonUnknownMember
		return loadbalancer.NodeRef{}, r
	case owner == "":
		r.Field, r.Reason = "address", ReasonAddressMismatch
		return loadbalancer.NodeRef{}, r
	case owner != name:
		r.Field, r.Reason = "name", ReasonNameMismatch
		return loadbalancer.NodeRef{}, r
	}
	claimed, _ := parseMeta(name, meta)
	if claimed.ClusterID == 0 {
		r.Field, r.Reason = "meta", ReasonNoMetadata
		return loadbalancer.NodeRef{}, r
	}
	want, ok := p.expectedRef(entry.Cluster, entry.Name, claimed.ClusterID)
	if !ok {
		r.Field, r.Reason = "cluster_id", ReasonUnknownCluster
		return loadbalancer.NodeRef{}, r
	}
	if claimed.ClusterID != want.ClusterID {
		r.Field, r.Reason = "cluster_id", ReasonClusterIDMismatch
		return loadbalancer.NodeRef{}, r
	}
	return want, nil
}

// expectedRef is the datapath name of registry node cluster/node. Without a
// NodeResolver only the local cluster's ID is known for sure: a member of
// the local cluster must carry it and no other member may, and the ID a
// peer member claims is otherwise taken.
func (p *Pool) expectedRef(cluster, node string, claimed uint32) (loadbalancer.NodeRef, bool) {
	if p.cfg.Nodes != nil {
		return p.cfg.Nodes.NodeRef(cluster, node)
	}
	if cluster == p.cfg.Cluster {
		return loadbalancer.NodeRef{ClusterID: p.cfg.ClusterID, Name: node}, true
	}
	if claimed == p.cfg.ClusterID {
		// Any ID but ours: refused as a mismatch below.
		return loadbalancer.NodeRef{ClusterID: 0, Name: node}, true
	}
	return loadbalancer.NodeRef{ClusterID: claimed, Name: node}, true
}

// refuseLocked counts and records a refusal, logging it the first time its
// kind is seen (memberlist repeats refused messages every gossip round).
// p.mu must be held.
func (p *Pool) refuseLocked(r *Refusal, now time.Time) {
	label := unknownCluster
	switch {
	case r.Owner != "":
		label, _ = splitName(r.Owner)
	case r.Reason == ReasonAddressMismatch || r.Reason == ReasonDeathNotConfirmed:
		// The claimed cluster is a registry cluster (the name is listed).
		label = r.Cluster
	}
	p.metrics.refused.WithLabelValues(label, r.Reason).Inc()
	key := refusalKey{name: MemberName(r.Cluster, r.Node), addr: r.Addr, reason: r.Reason}
	if prev, ok := p.refused[key]; ok {
		prev.Count++
		prev.Last = now
		return
	}
	p.log.Warn("Refused gossip from a member that disagrees with the node registry",
		"cluster", r.Cluster, "node", r.Node, "addr", r.Addr, "owner", r.Owner, "field", r.Field, "reason", r.Reason)
	if len(p.refused) >= maxRefusals {
		return
	}
	c := *r
	c.Count, c.First, c.Last = 1, now, now
	p.refused[key] = &c
}

type refusalKey struct {
	name   string
	addr   netip.AddrPort
	reason string
}

// refusalsLocked returns the recorded refusals, sorted. p.mu must be held.
func (p *Pool) refusalsLocked() []Refusal {
	out := make([]Refusal, 0, len(p.refused))
	for _, r := range p.refused {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Cluster != b.Cluster {
			return a.Cluster < b.Cluster
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		return a.Reason < b.Reason
	})
	return out
}

func splitName(name string) (cluster, node string) {
	if i := indexSlash(name); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}
