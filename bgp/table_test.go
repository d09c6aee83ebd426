package bgp

import (
	"net/netip"
	"testing"
)

func TestRouteTable(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	type step struct {
		withdraw bool
		prefix   string
		nextHop  string
		// expectations on the change
		install []string
		remove  []string
		refused RefusalReason
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"install then withdraw", []step{
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
			{withdraw: true, prefix: "10.2.1.0/24", remove: []string{"10.2.1.0/24"}},
		}},
		{"same path twice is a no-op", []step{
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21"},
		}},
		{"next hop change replaces without removal", []step{
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.22", install: []string{"10.2.1.0/24"}},
		}},
		{"overlaps local pod CIDR", []step{
			{prefix: "10.1.1.128/25", nextHop: "192.0.2.254", refused: RefusedLocalPodCIDR},
			{prefix: "10.0.0.0/8", nextHop: "192.0.2.254", refused: RefusedLocalPodCIDR},
		}},
		{"overlaps node subnet", []step{
			{prefix: "192.0.2.128/25", nextHop: "192.0.2.254", refused: RefusedNodeSubnet},
		}},
		{"own next hop", []step{
			{prefix: "10.5.0.0/24", nextHop: "192.0.2.11", refused: RefusedOwnNextHop},
		}},
		{"overlap with a learned route from another next hop, retried on withdraw", []step{
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
			{prefix: "10.2.1.0/25", nextHop: "192.0.2.254", refused: RefusedLearnedRoute},
			{withdraw: true, prefix: "10.2.1.0/24", remove: []string{"10.2.1.0/24"}, install: []string{"10.2.1.0/25"}},
		}},
		{"overlap with the same next hop is fine", []step{
			{prefix: "10.2.0.0/16", nextHop: "192.0.2.21", install: []string{"10.2.0.0/16"}},
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
		}},
		{"withdraw of unknown prefix", []step{
			{withdraw: true, prefix: "10.9.0.0/24"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tab := newRouteTable([]netip.Prefix{pfx("10.1.1.0/24")}, []netip.Prefix{pfx("192.0.2.0/24")}, []netip.Addr{addr("192.0.2.11")})
			for i, s := range tt.steps {
				var ch tableChange
				if s.withdraw {
					ch = tab.withdraw(pfx(s.prefix))
				} else {
					ch = tab.upsert(pfx(s.prefix), addr(s.nextHop), "peer")
				}
				if got := prefixesOf(ch.install); !equalStrings(got, s.install) {
					t.Errorf("step %d: install %v, want %v", i, got, s.install)
				}
				if got := prefixesOf(ch.remove); !equalStrings(got, s.remove) {
					t.Errorf("step %d: remove %v, want %v", i, got, s.remove)
				}
				var reason RefusalReason
				if len(ch.refused) > 0 {
					reason = ch.refused[0].Reason
				}
				if reason != s.refused {
					t.Errorf("step %d: refused %q, want %q", i, reason, s.refused)
				}
			}
		})
	}
}

func prefixesOf(cs []candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.prefix.String())
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
