package bgp

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

func TestImportRules(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	clusters := []api.Cluster{
		{Name: "c2", PodCIDRs: []netip.Prefix{p("10.2.0.0/16"), p("fd00:2::/48")}},
		{Name: "c1", PodCIDRs: []netip.Prefix{p("10.1.0.0/16"), p("0.0.0.0/0")}},
		{Name: "empty", PodCIDRs: []netip.Prefix{p("10.9.0.0/16")}},
	}
	nodes := []api.Node{
		{Cluster: "c1", Name: "a", Addresses: []netip.Addr{a("192.0.2.12")}, PodCIDRs: []netip.Prefix{p("10.1.1.0/24")}},
		{Cluster: "c1", Name: "b", Addresses: []netip.Addr{a("192.0.2.11"), a("192.0.2.12")}, PodCIDRs: []netip.Prefix{p("10.1.2.0/26"), p("10.7.0.0/28")}},
		{Cluster: "c2", Name: "r", Addresses: []netip.Addr{a("192.0.2.21"), a("fd00::21")}, PodCIDRs: []netip.Prefix{p("10.2.1.0/24"), p("fd00:2:0:1::/64")}},
	}
	want := []ImportRule{
		// The default route is never a pod CIDR; a node's CIDR outside the
		// cluster's does not widen anything; addresses are deduplicated.
		{Cluster: "c1", PodCIDRs: []ImportPrefix{{p("10.1.0.0/16"), 26}}, NextHops: []netip.Addr{a("192.0.2.11"), a("192.0.2.12")}},
		{Cluster: "c2", PodCIDRs: []ImportPrefix{{p("10.2.0.0/16"), 24}, {p("fd00:2::/48"), 64}}, NextHops: []netip.Addr{a("192.0.2.21"), a("fd00::21")}},
	}
	if got := ImportRules(clusters, nodes); !reflect.DeepEqual(got, want) {
		t.Fatalf("ImportRules:\n got %+v\nwant %+v", got, want)
	}
}

// TestImportPolicyHostilePeer: a peer cluster's speaker announces its own
// node's pod CIDR, another cluster's, a default route, the local pod CIDR
// and a prefix more specific than its node mask. Only its own pod CIDR is
// installed; the others are refused, listed in status and counted. When the
// registry loses the peer's node, its route is withdrawn at once.
func TestImportPolicyHostilePeer(t *testing.T) {
	l := newLab(t)
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	clusters := []api.Cluster{
		{Name: "c1", PodCIDRs: []netip.Prefix{p("10.1.0.0/16")}},
		{Name: "c2", PodCIDRs: []netip.Prefix{p("10.2.0.0/16")}},
		{Name: "c3", PodCIDRs: []netip.Prefix{p("10.3.0.0/16")}},
	}
	local := api.Node{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{a("192.0.2.11")}, PodCIDRs: []netip.Prefix{p("10.1.1.0/24")}}
	rogue := api.Node{Cluster: "c2", Name: "r1", Addresses: []netip.Addr{a("192.0.2.21")}, PodCIDRs: []netip.Prefix{p("10.2.1.0/24")}}
	third := api.Node{Cluster: "c3", Name: "x1", Addresses: []netip.Addr{a("192.0.2.31")}, PodCIDRs: []netip.Prefix{p("10.3.1.0/24")}}
	locNS := l.Host("loc", "192.0.2.11")
	rogNS := l.Host("rog", "192.0.2.21")

	lcfg, err := NodeConfig(DefaultKindConfig(), local, api.Cluster{Name: "c1", ASN: 65001})
	if err != nil {
		t.Fatal(err)
	}
	loc := l.startChild("c1/n1", locNS, "speaker", lcfg, nil)
	loc.call(childReq{Op: "imports", Rules: ImportRules(clusters, []api.Node{local, rogue, third})})
	loc.call(childReq{Op: "peers", Peers: []Peer{{Name: "c2/r1", Address: rogue.Addresses[0], ASN: 65002, Passive: true}}})

	rcfg, err := NodeConfig(DefaultKindConfig(), rogue, api.Cluster{Name: "c2", ASN: 65002})
	if err != nil {
		t.Fatal(err)
	}
	rog := l.startChild("c2/r1", rogNS, "speaker", rcfg, []Peer{{Name: "c1/n1", Address: local.Addresses[0], ASN: 65001}})
	own := p("10.2.1.0/24")
	hostile := []netip.Prefix{p("10.3.1.0/24"), p("0.0.0.0/0"), p("10.1.1.0/24"), p("10.2.1.128/25")}
	rog.call(childReq{Op: "announce", Prefixes: append([]netip.Prefix{own}, hostile...)})

	refusedBy := func(st Status) []netip.Prefix {
		var out []netip.Prefix
		for _, r := range st.Refused {
			if r.Reason == RefusedImportPolicy && r.Peer == rogue.Addresses[0].String() && r.NextHop == rogue.Addresses[0] {
				out = append(out, r.Prefix)
			}
		}
		slices.SortFunc(out, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
		return out
	}
	wantRefused := slices.Clone(hostile)
	slices.SortFunc(wantRefused, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
	poll.Eventually(t, 60*time.Second, "the peer's own pod CIDR installed and the rest refused", func() (bool, string) {
		st := loc.status()
		got := l.Routes(locNS, RouteProtocol)
		return got[own] == rogue.Addresses[0] && slices.Equal(refusedBy(st), wantRefused), fmt.Sprintf("routes %v, status %+v", got, st)
	})
	if got := l.Routes(locNS, RouteProtocol); len(got) != 1 {
		t.Errorf("kernel routes %v, want only %s", got, own)
	}
	st := loc.status()
	if len(st.Installed) != 1 || st.Installed[0].Prefix != own {
		t.Errorf("installed %+v, want only %s", st.Installed, own)
	}
	metric := func() string {
		for _, line := range strings.Split(loc.call(childReq{Op: "metrics"}).Metrics, "\n") {
			if strings.HasPrefix(line, "clustermesh_bgp_routes_refused_total{") && strings.Contains(line, `reason="`+string(RefusedImportPolicy)+`"`) {
				return line[strings.LastIndex(line, " ")+1:]
			}
		}
		return ""
	}
	if got := metric(); got != fmt.Sprint(len(hostile)) {
		t.Errorf("clustermesh_bgp_routes_refused_total{reason=%s} = %q, want %d", RefusedImportPolicy, got, len(hostile))
	}

	// The registry loses c2's node: nothing c2 announces is accepted any
	// more, and the installed route goes.
	loc.call(childReq{Op: "imports", Rules: ImportRules(clusters, []api.Node{local, third})})
	poll.Eventually(t, 60*time.Second, "the peer's route withdrawn after the registry change", func() (bool, string) {
		got := l.Routes(locNS, RouteProtocol)
		_, still := got[own]
		return !still && len(refusedBy(loc.status())) == len(hostile)+1, fmt.Sprintf("routes %v", got)
	})
	if got := metric(); got != fmt.Sprint(len(hostile)+1) {
		t.Errorf("after the change, refused total = %q, want %d", got, len(hostile)+1)
	}
}
