package bgp

import (
	"fmt"
	"math/rand/v2"
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
		{"a wider prefix over an installed one from another next hop", []step{
			{prefix: "10.2.1.0/24", nextHop: "192.0.2.21", install: []string{"10.2.1.0/24"}},
			{prefix: "10.2.0.0/16", nextHop: "192.0.2.254", refused: RefusedLearnedRoute},
			{prefix: "10.3.0.0/16", nextHop: "192.0.2.254", install: []string{"10.3.0.0/16"}},
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

// TestRouteTableIndex checks the overlap index against a plain scan over a
// random sequence of upserts and withdrawals (the overlap checked for
// prefixes of lengths with and without candidates).
func TestRouteTableIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tab := newRouteTable(nil, nil, nil)
	hops := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}
	for i := 0; i < 20000; i++ {
		bits := 8 + rng.IntN(17)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(4)), byte(rng.IntN(4)), 0}), bits).Masked()
		c := &candidate{prefix: p, nextHop: hops[rng.IntN(2)]}
		var want bool
		for q, a := range tab.accepted {
			if q != p && a.nextHop != c.nextHop && q.Overlaps(p) {
				want = true
			}
		}
		if _, got := tab.overlapping(c); got != want {
			t.Fatalf("step %d: overlapping(%s via %s) = %v, scan says %v", i, p, c.nextHop, got, want)
		}
		if rng.IntN(3) == 0 {
			tab.withdraw(p)
		} else {
			tab.upsert(p, c.nextHop, "peer")
		}
	}
	for a, n := range tab.under {
		count := 0
		for q := range tab.accepted {
			if q.Bits() > a.Bits() && a.Contains(q.Addr()) {
				count++
			}
		}
		if count != n {
			t.Fatalf("index says %d prefixes under %s, there are %d", n, a, count)
		}
	}
	// The index is complete for the candidates' lengths.
	for p := range tab.cands {
		count := 0
		for q := range tab.accepted {
			if q.Bits() > p.Bits() && p.Contains(q.Addr()) {
				count++
			}
		}
		if tab.under[p] != count {
			t.Fatalf("index says %d prefixes under candidate %s, there are %d", tab.under[p], p, count)
		}
	}
}

func BenchmarkRouteTableUpsert(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("prefixes=%d", n), func(b *testing.B) {
			ps := benchPrefixes(n)
			nh := netip.MustParseAddr("192.0.2.10")
			for b.Loop() {
				tab := newRouteTable([]netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, nil)
				for _, p := range ps {
					tab.upsert(p, nh, "peer")
				}
			}
		})
	}
}
