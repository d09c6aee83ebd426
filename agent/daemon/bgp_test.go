package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestBGPFeed: the speaker hears of its own node and its own cluster's
// config at once, and is kicked by every other node and cluster change
// (the import policy follows the whole registry) without taking them as
// its own.
func TestBGPFeed(t *testing.T) {
	f := newBGPFeed("c1", "n1")
	kicked := func() bool {
		select {
		case <-f.kick:
			return true
		default:
			return false
		}
	}
	steps := []struct {
		name      string
		do        func()
		wantKick  bool
		wantCIDRs string
		wantRR    string
	}{
		{"another node", func() { f.NodeUpserted(&api.Node{Cluster: "c1", Name: "n2"}) }, true, "", ""},
		{"same name, other cluster", func() { f.NodeUpserted(&api.Node{Cluster: "c2", Name: "n1"}) }, true, "", ""},
		{"own node", func() {
			f.NodeUpserted(&api.Node{Cluster: "c1", Name: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}})
		}, true, "[10.1.1.0/24]", ""},
		{"other cluster's config", func() { f.ClusterAccepted(&api.Cluster{Name: "c2", ASN: 65002}) }, true, "[10.1.1.0/24]", ""},
		{"own cluster's config", func() {
			f.ClusterAccepted(&api.Cluster{Name: "c1", RouteReflector: netip.MustParseAddrPort("10.0.0.250:179")})
		}, true, "[10.1.1.0/24]", "10.0.0.250:179"},
		{"own node deleted: announcement kept", func() { f.NodeDeleted("c1", "n1") }, true, "[10.1.1.0/24]", "10.0.0.250:179"},
		{"own node's pod CIDRs change", func() {
			f.NodeUpserted(&api.Node{Cluster: "c1", Name: "n1", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")}})
		}, true, "[10.1.2.0/24]", "10.0.0.250:179"},
	}
	for _, s := range steps {
		s.do()
		if got := kicked(); got != s.wantKick {
			t.Errorf("%s: kicked %v, want %v", s.name, got, s.wantKick)
		}
		n, c := f.get()
		var cidrs, rr string
		if n != nil {
			cidrs = fmt.Sprint(n.PodCIDRs)
		}
		if c != nil {
			rr = c.RouteReflector.String()
		}
		if cidrs != s.wantCIDRs || rr != s.wantRR {
			t.Errorf("%s: node pod CIDRs %q, reflector %q; want %q, %q", s.name, cidrs, rr, s.wantCIDRs, s.wantRR)
		}
	}
}

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

// TestHealthVerdicts: every verdict reaches the agent; the BGP speaker is
// kicked only when the dead set changes, and gets the dead nodes' addresses
// (BGP address and internal addresses, both families), never another
// cluster's node of the same name.
func TestHealthVerdicts(t *testing.T) {
	a := netip.MustParseAddr
	r := &registry{
		ids:     map[string]uint32{"c1": 1, "c2": 2},
		verdict: map[loadbalancer.NodeRef]bool{},
		nodes: []*api.Node{
			{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{a("192.0.2.11")}},
			{Cluster: "c2", Name: "n1", Addresses: []netip.Addr{a("192.0.2.21"), a("fd00::21")}, BGPAddress: a("192.0.2.21")},
			{Cluster: "c2", Name: "n2", Addresses: []netip.Addr{a("192.0.2.22")}},
		},
	}
	h := newHealthVerdicts(r)
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
	for _, s := range []struct {
		name     string
		node     loadbalancer.NodeRef
		healthy  bool
		wantKick bool
		want     string
	}{
		{"alive node stays alive", c2n1, true, false, "[]"},
		{"c2/n1 dies", c2n1, false, true, "[192.0.2.21 fd00::21]"},
		{"c2/n1 dead again", c2n1, false, false, "[192.0.2.21 fd00::21]"},
		{"unknown node dies", loadbalancer.NodeRef{ClusterID: 3, Name: "n9"}, false, true, "[192.0.2.21 fd00::21]"},
		{"c2/n1 back", c2n1, true, true, "[]"},
	} {
		if err := h.SetNodeHealth(ctx, s.node, s.healthy); err != nil {
			t.Fatal(err)
		}
		if got, ok := r.verdict[s.node]; !ok || got != s.healthy {
			t.Errorf("%s: agent got %v (%v), want %v", s.name, got, ok, s.healthy)
		}
		if got := kicked(); got != s.wantKick {
			t.Errorf("%s: kicked %v, want %v", s.name, got, s.wantKick)
		}
		if got := fmt.Sprint(h.deadNextHops()); got != s.want {
			t.Errorf("%s: dead next hops %s, want %s", s.name, got, s.want)
		}
	}
}
