// This file is not part of GoBGP: it tests the clustermesh patches (see
// PATCHES.md at the root of this tree). Run: go test ./pkg/server/ -run Clustermesh

package server

import (
	"testing"
	"time"

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
