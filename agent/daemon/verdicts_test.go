package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// registry is a node registry of two clusters for TestHealthVerdicts.
type registry struct {
	nodes   []*api.Node
	ids     map[string]uint32
	verdict map[loadbalancer.NodeRef]bool
}

func (r *registry) Nodes() []*api.Node { return r.nodes }
func (r *registry) NodeRef(cluster, node string) (loadbalancer.NodeRef, bool) {
	id, ok := r.ids[cluster]
	return loadbalancer.NodeRef{ClusterID: id, Name: node}, ok
}
func (r *registry) SetNodeHealth(_ context.Context, n loadbalancer.NodeRef, healthy bool) error {
	r.verdict[n] = healthy
	return nil
}

// TestHealthVerdicts: every verdict reaches the agent at once; a dead node
// is gone for routing only while its host does not answer either (an agent
// restarting on a live host keeps the node's routes); the BGP speaker is
// kicked only when the gone set changes, and gets the gone nodes' addresses
// (BGP address and internal addresses, both families), never another
// cluster's node of the same name.
func TestHealthVerdicts(t *testing.T) {
	a := netip.MustParseAddr
	r := &registry{
		ids:     map[string]uint32{"c1": 1, "c2": 2},
		verdict: map[loadbalancer.NodeRef]bool{},
		nodes: []*api.Node{
			{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{a("192.0.2.11")}, GossipAddress: netip.MustParseAddrPort("192.0.2.11:7946")},
			// No GossipAddress in the store (the apiserver exports none):
			// its first address on the mesh's gossip port is asked.
			{Cluster: "c2", Name: "n1", Addresses: []netip.Addr{a("192.0.2.21"), a("fd00::21")}, BGPAddress: a("192.0.2.21")},
			{Cluster: "c2", Name: "n2", Addresses: []netip.Addr{a("192.0.2.22")}},
		},
	}
	h := newHealthVerdicts(r, 7946)
	hostUp := map[netip.AddrPort]bool{}
	var asked []netip.AddrPort
	h.hostUp = func(_ context.Context, addr netip.AddrPort) bool {
		asked = append(asked, addr)
		return hostUp[addr]
	}
	kicked := func() bool {
		select {
		case <-h.kick:
			return true
		default:
			return false
		}
	}
	ctx := context.Background()
	c2n1 := loadbalancer.NodeRef{ClusterID: 2, Name: "n1"}
	c2n1Gossip := netip.MustParseAddrPort("192.0.2.21:7946")
	for _, s := range []struct {
		name     string
		node     loadbalancer.NodeRef
		healthy  bool
		hostUp   bool
		wantKick bool
		want     string
	}{
		{"alive node stays alive", c2n1, true, true, false, "[]"},
		{"c2/n1's agent dies, its host answers", c2n1, false, true, false, "[]"},
		{"then its host goes too", c2n1, false, false, true, "[192.0.2.21 fd00::21]"},
		{"still gone", c2n1, false, false, false, "[192.0.2.21 fd00::21]"},
		{"its host answers again, agent still dead", c2n1, false, true, true, "[]"},
		{"gone again", c2n1, false, false, true, "[192.0.2.21 fd00::21]"},
		{"unknown node dies", loadbalancer.NodeRef{ClusterID: 3, Name: "n9"}, false, false, false, "[192.0.2.21 fd00::21]"},
		{"c2/n1 back", c2n1, true, true, true, "[]"},
	} {
		hostUp[c2n1Gossip] = s.hostUp
		if err := h.SetNodeHealth(ctx, s.node, s.healthy); err != nil {
			t.Fatal(err)
		}
		h.check(ctx)
		if got, ok := r.verdict[s.node]; !ok || got != s.healthy {
			t.Errorf("%s: agent got %v (%v), want %v", s.name, got, ok, s.healthy)
		}
		if got := kicked(); got != s.wantKick {
			t.Errorf("%s: kicked %v, want %v", s.name, got, s.wantKick)
		}
		if got := fmt.Sprint(h.deadNextHops()); got != s.want {
			t.Errorf("%s: gone next hops %s, want %s", s.name, got, s.want)
		}
	}
	for _, addr := range asked {
		if addr != c2n1Gossip {
			t.Errorf("checked %s, only c2/n1 (%s) was dead with a known host", addr, c2n1Gossip)
		}
	}
}

// TestHostAnswers dials real sockets: a listener and a closed port on a live
// host answer (a connection, a refusal); in a namespace of its own (root),
// an address with no route and an on-link address no host holds do not.
func TestHostAnswers(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(l2.Addr().String())
	l2.Close()
	ctx := context.Background()
	if !hostAnswers(ctx, netip.MustParseAddrPort(l.Addr().String())) {
		t.Error("a listening port: host does not answer")
	}
	if !hostAnswers(ctx, closed) {
		t.Error("a refused port: host does not answer")
	}

	lab := netlab.New(t)
	ns, peer := lab.Netns("dial"), lab.Netns("peer")
	lab.Veth(ns, "v0", peer, "v1")
	lab.Addr(ns, "v0", "10.99.0.1/24")
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{
		{"no route", netip.MustParseAddrPort("10.98.0.1:7946")},
		{"on-link, nobody there", netip.MustParseAddrPort("10.99.0.2:7946")},
	} {
		var got bool
		if err := netlab.InNetns(ns, func() error { got = hostAnswers(ctx, tc.addr); return nil }); err != nil {
			t.Fatal(err)
		}
		if got {
			t.Errorf("%s (%s): host answers", tc.name, tc.addr)
		}
	}
}
