package daemon

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/api"
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
