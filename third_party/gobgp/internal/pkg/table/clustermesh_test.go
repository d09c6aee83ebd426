// This file is not part of GoBGP: it tests a clustermesh patch (see
// PATCHES.md at the root of this tree). Run: go test ./internal/pkg/table/ -run Clustermesh

package table

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/osrg/gobgp/v3/pkg/config/oc"
	"github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

// TestClustermeshAttrsMemo checks that a remembered UpdatePathAttrs gives
// every path what UpdatePathAttrs itself gives it, for the kinds of peer a
// reflector and a node have, for announcements and withdrawals, and that a
// later change to one path's attributes reaches neither the memo nor the
// other paths.
func TestClustermeshAttrsMemo(t *testing.T) {
	logger := log.NewDefaultLogger()
	global := &oc.Global{Config: oc.GlobalConfig{As: 65001, RouterId: "192.0.2.1"}}
	target := &PeerInfo{AS: 65001, LocalAS: 65001, ID: net.ParseIP("192.0.2.21"), LocalID: net.ParseIP("192.0.2.1"),
		Address: net.ParseIP("192.0.2.21"), LocalAddress: net.ParseIP("192.0.2.1")}
	source := &PeerInfo{AS: 65001, LocalAS: 65001, ID: net.ParseIP("192.0.2.10"), Address: net.ParseIP("192.0.2.10")}
	neighbor := func(typ oc.PeerType, rrClient bool) *oc.Neighbor {
		n := &oc.Neighbor{}
		n.Config.LocalAs, n.Config.PeerAs = 65001, 65001
		if typ == oc.PEER_TYPE_EXTERNAL {
			n.Config.PeerAs = 65002
		}
		n.State.PeerType = typ
		n.RouteReflector.Config.RouteReflectorClient = rrClient
		n.RouteReflector.State.RouteReflectorClusterId = "192.0.2.1"
		return n
	}
	// The paths of one received UPDATE share one attribute list, as
	// ProcessMessage makes them.
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(0),
		bgp.NewPathAttributeAsPath(nil),
		bgp.NewPathAttributeNextHop("192.0.2.10"),
		bgp.NewPathAttributeLocalPref(100),
	}
	var received []*Path
	for _, prefix := range []string{"10.1.0.0", "10.1.1.0", "10.1.2.0", "10.1.3.0"} {
		received = append(received, NewPath(source, bgp.NewIPAddrPrefix(24, prefix), false, attrs, time.Now(), false))
	}
	serialized := func(p *Path) []string {
		var out []string
		for _, a := range p.GetPathAttrs() {
			b, err := a.Serialize()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		peer     *oc.Neighbor
		withdraw bool
	}{
		{"reflector client", neighbor(oc.PEER_TYPE_INTERNAL, true), false},
		{"iBGP peer", neighbor(oc.PEER_TYPE_INTERNAL, false), false},
		{"eBGP peer", neighbor(oc.PEER_TYPE_EXTERNAL, false), false},
		{"reflector client, withdrawals", neighbor(oc.PEER_TYPE_INTERNAL, true), true},
	} {
		memo := NewAttrsMemo()
		for i, orig := range received {
			if tc.withdraw {
				orig = orig.Clone(true) // as a peer's loss withdraws its paths
			}
			want := UpdatePathAttrs(logger, global, tc.peer, target, orig)
			got := memo.UpdatePathAttrs(logger, global, tc.peer, target, orig)
			if got.GetNlri().String() != orig.GetNlri().String() || got.IsWithdraw != want.IsWithdraw {
				t.Errorf("%s: path %d: NLRI %s withdraw %v, want %s %v", tc.name, i, got.GetNlri(), got.IsWithdraw, orig.GetNlri(), want.IsWithdraw)
			}
			if g, w := serialized(got), serialized(want); !slices.Equal(g, w) {
				t.Errorf("%s: path %d: attributes %q, want %q", tc.name, i, g, w)
			}
			// Export steps change a path's own attributes in place: that
			// must not reach the memo.
			got.setPathAttr(bgp.NewPathAttributeNextHop(fmt.Sprintf("198.51.100.%d", i)))
			got.setPathAttr(bgp.NewPathAttributeOriginatorId(fmt.Sprintf("198.51.100.%d", i)))
			got.setPathAttr(bgp.NewPathAttributeMultiExitDisc(uint32(i)))
			got.delPathAttr(bgp.BGP_ATTR_TYPE_LOCAL_PREF)
		}
		if len(memo.edits) != 1 {
			t.Errorf("%s: memo holds %d edits for one attribute list, want 1", tc.name, len(memo.edits))
		}
	}
	// A path with attributes of its own in its chain is not remembered.
	own := received[0].Clone(false)
	own.setPathAttr(bgp.NewPathAttributeMultiExitDisc(7))
	if _, ok := memoKey(own); ok {
		t.Error("a path with its own attributes has a memo key")
	}
}
