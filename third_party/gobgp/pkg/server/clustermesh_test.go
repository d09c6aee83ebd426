// This file is not part of GoBGP: it tests the clustermesh patches (see
// PATCHES.md at the root of this tree). Run: go test ./pkg/server/ -run Clustermesh

package server

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/osrg/gobgp/v3/internal/pkg/table"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

func TestClustermeshLastChangePerRoute(t *testing.T) {
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(0), bgp.NewPathAttributeNextHop("192.0.2.1")}
	path := func(prefix string, withdraw bool) *table.Path {
		return table.NewPath(nil, bgp.NewIPAddrPrefix(24, prefix), withdraw, attrs, time.Now(), false)
	}
	a, b, w := path("10.0.0.0", false), path("10.0.1.0", false), path("10.0.0.0", true)
	eor := table.NewEOR(bgp.RF_IPv4_UC)
	for _, tc := range []struct {
		name     string
		in, want []*table.Path
	}{
		{"distinct", []*table.Path{a, b}, []*table.Path{a, b}},
		{"announced then withdrawn", []*table.Path{a, b, w}, []*table.Path{b, w}},
		{"withdrawn then announced", []*table.Path{w, b, a}, []*table.Path{b, a}},
		{"end of rib kept", []*table.Path{a, eor, w}, []*table.Path{eor, w}},
	} {
		got := lastChangePerRoute(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("%s: got %d paths, want %d", tc.name, len(got), len(tc.want))
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: path %d is %v, want %v", tc.name, i, got[i], tc.want[i])
			}
		}
	}
}

// TestClustermeshOriginPaths checks that AddPrefixes' paths are the ones
// api2Path makes from the API form the speaker used to send: same NLRI,
// same attributes in the same order, same hash (which groups paths into
// UPDATEs), same withdrawal flag.
func TestClustermeshOriginPaths(t *testing.T) {
	nh4, nh6 := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")
	prefixes := []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("10.1.3.0/24"), netip.MustParsePrefix("fd00:1:2::/64")}
	apiPath := func(p netip.Prefix, withdraw bool) *api.Path {
		origin, _ := anypb.New(&api.OriginAttribute{Origin: 0})
		nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
		family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
		nh, _ := anypb.New(&api.NextHopAttribute{NextHop: nh4.String()})
		if p.Addr().Is6() {
			family = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
			nh, _ = anypb.New(&api.MpReachNLRIAttribute{Family: family, NextHops: []string{nh6.String()}, Nlris: []*anypb.Any{nlri}})
		}
		return &api.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}, IsWithdraw: withdraw}
	}
	serialized := func(p *table.Path) []string {
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
	for _, withdraw := range []bool{false, true} {
		got, err := originPaths(prefixes, nh4, nh6, withdraw)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(prefixes) {
			t.Fatalf("withdraw=%v: %d paths, want %d", withdraw, len(got), len(prefixes))
		}
		for i, p := range prefixes {
			want, err := api2Path(api.TableType_GLOBAL, apiPath(p, withdraw), withdraw)
			if err != nil {
				t.Fatal(err)
			}
			g := got[i]
			if g.GetNlri().String() != want.GetNlri().String() || g.GetRouteFamily() != want.GetRouteFamily() {
				t.Errorf("%s withdraw=%v: NLRI %s (%v), want %s (%v)", p, withdraw, g.GetNlri(), g.GetRouteFamily(), want.GetNlri(), want.GetRouteFamily())
			}
			if g.IsWithdraw != want.IsWithdraw || g.GetHash() != want.GetHash() {
				t.Errorf("%s withdraw=%v: withdraw %v hash %x, want %v %x", p, withdraw, g.IsWithdraw, g.GetHash(), want.IsWithdraw, want.GetHash())
			}
			if gs, ws := serialized(g), serialized(want); !slices.Equal(gs, ws) {
				t.Errorf("%s withdraw=%v: attributes %q, want %q", p, withdraw, gs, ws)
			}
		}
	}
	for _, tc := range []struct {
		name     string
		prefixes []netip.Prefix
		nh4, nh6 netip.Addr
	}{
		{"no IPv6 next hop", prefixes, nh4, netip.Addr{}},
		{"IPv4 next hop of the wrong family", prefixes[:1], nh6, nh6},
		{"invalid prefix", []netip.Prefix{{}}, nh4, nh6},
	} {
		if _, err := originPaths(tc.prefixes, tc.nh4, tc.nh6, false); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}
