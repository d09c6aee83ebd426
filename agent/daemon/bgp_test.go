package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
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

// TestImportHold: a drained cluster's last import rule stays for the drain
// and only then; a cluster that reconnects (present again) or leaves without
// a drain (its own store deleted its nodes) is not held.
func TestImportHold(t *testing.T) {
	t0 := time.Unix(1000, 0)
	rule := func(c, cidr string) bgp.ImportRule {
		p := netip.MustParsePrefix(cidr)
		return bgp.ImportRule{Cluster: c, PodCIDRs: []bgp.ImportPrefix{{Prefix: p, MaxLen: 24}}, NextHops: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}
	}
	c1, c2, c3 := rule("c1", "10.1.0.0/16"), rule("c2", "10.2.0.0/16"), rule("c3", "10.3.0.0/16")
	h := newImportHold(2 * time.Minute)
	steps := []struct {
		name     string
		current  []bgp.ImportRule
		drained  map[string]time.Time
		now      time.Time
		want     []string // clusters of the rules returned
		wantHeld []string
		wantNext time.Time
	}{
		{"all present", []bgp.ImportRule{c1, c2, c3}, nil, t0, []string{"c1", "c2", "c3"}, nil, time.Time{}},
		{"c2 drained: its last rule held", []bgp.ImportRule{c1, c3}, map[string]time.Time{"c2": t0}, t0.Add(time.Second), []string{"c1", "c2", "c3"}, []string{"c2"}, t0.Add(2 * time.Minute)},
		{"c3 gone without a drain: not held", []bgp.ImportRule{c1}, map[string]time.Time{"c2": t0}, t0.Add(time.Minute), []string{"c1", "c2"}, []string{"c2"}, t0.Add(2 * time.Minute)},
		{"c2's drain over", []bgp.ImportRule{c1}, map[string]time.Time{"c2": t0}, t0.Add(2 * time.Minute), []string{"c1"}, nil, time.Time{}},
		{"c2 back, then drained again", []bgp.ImportRule{c1, c2}, nil, t0.Add(3 * time.Minute), []string{"c1", "c2"}, nil, time.Time{}},
		{"drained again", []bgp.ImportRule{c1}, map[string]time.Time{"c2": t0.Add(4 * time.Minute)}, t0.Add(4 * time.Minute), []string{"c1", "c2"}, []string{"c2"}, t0.Add(6 * time.Minute)},
	}
	for _, s := range steps {
		out, held, next := h.rules(s.current, s.drained, s.now)
		var got []string
		for _, r := range out {
			got = append(got, r.Cluster)
		}
		if !slices.Equal(got, s.want) || !slices.Equal(held, s.wantHeld) || !next.Equal(s.wantNext) {
			t.Errorf("%s: rules of %v, held %v, next %v; want %v, %v, %v", s.name, got, held, next, s.want, s.wantHeld, s.wantNext)
		}
		for _, r := range out {
			if r.Cluster == "c2" && r.PodCIDRs[0].Prefix != c2.PodCIDRs[0].Prefix {
				t.Errorf("%s: c2's held rule %v, want its last accepted %v", s.name, r.PodCIDRs, c2.PodCIDRs)
			}
		}
	}
	if out, _, _ := newImportHold(0).rules([]bgp.ImportRule{c1}, map[string]time.Time{"c2": t0}, t0); len(out) != 1 {
		t.Errorf("drain 0 holds nothing: got %d rules", len(out))
	}
}

// TestRoutesByCluster: an installed route counts for the cluster whose
// import rule lists its next hop (v4-mapped next hops unmapped); a route
// via an address no rule names counts for nobody.
func TestRoutesByCluster(t *testing.T) {
	a := netip.MustParseAddr
	rules := []bgp.ImportRule{
		{Cluster: "c1", NextHops: []netip.Addr{a("172.18.0.2"), a("172.18.0.3")}},
		{Cluster: "c2", NextHops: []netip.Addr{a("172.19.0.2")}},
	}
	route := func(p, hop string) bgp.InstalledRoute {
		return bgp.InstalledRoute{Prefix: netip.MustParsePrefix(p), NextHop: a(hop)}
	}
	got := routesByCluster([]bgp.InstalledRoute{
		route("10.1.1.0/24", "172.18.0.3"),
		route("10.2.0.0/24", "172.19.0.2"),
		route("10.2.1.0/24", "::ffff:172.19.0.2"),
		route("10.9.0.0/24", "172.20.0.9"),
	}, rules)
	if want := map[string]int{"c1": 1, "c2": 2}; !maps.Equal(got, want) {
		t.Errorf("routesByCluster = %v, want %v", got, want)
	}
}
