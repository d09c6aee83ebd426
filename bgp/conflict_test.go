package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestLearnedRouteNeverReplacesForeignRoute: a node where another owner
// (here the administrator) already routes a learned prefix leaves that
// route alone and lists the prefix as failed; once the foreign route is
// gone, the learned one goes in.
func TestLearnedRouteNeverReplacesForeignRoute(t *testing.T) {
	l := newLab(t)
	rrAddr := netip.MustParseAddr("192.0.2.1")
	rrNS := l.Host("rr", rrAddr.String())
	rcfg, err := ReflectorConfig(DefaultKindConfig(), api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.AddrPortFrom(rrAddr, 179)})
	if err != nil {
		t.Fatal(err)
	}
	ips := []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24"), netip.MustParsePrefix("10.1.2.0/24")}
	var rrPeers []Peer
	for i, ip := range ips {
		rrPeers = append(rrPeers, Peer{Name: fmt.Sprintf("c1/n%d", i+1), Address: ip, ASN: 65001, Passive: true, RouteReflectorClient: true})
	}
	l.startChild("rr", rrNS, "reflector", rcfg, rrPeers)
	var ns []string
	var speakers []*child
	for i, ip := range ips {
		ns = append(ns, l.Host(fmt.Sprintf("n%d", i+1), ip.String()))
		if i == 0 {
			// The administrator's route for n2's pod CIDR, there first.
			l.Run("ip", "-n", ns[0], "route", "add", cidrs[1].String(), "via", "192.0.2.99", "proto", "static")
		}
		cfg := DefaultKindConfig()
		cfg.Name, cfg.ASN = fmt.Sprintf("c1/n%d", i+1), 65001
		cfg.NodeIPs, cfg.PodCIDRs = []netip.Addr{ip}, []netip.Prefix{cidrs[i]}
		speakers = append(speakers, l.startChild(cfg.Name, ns[i], "speaker", cfg, []Peer{{Name: "rr", Address: rrAddr, ASN: 65001}}))
	}
	poll.Eventually(t, 60*time.Second, "n2 learns n1", func() (bool, string) {
		got := l.Routes(ns[1], RouteProtocol)
		return got[cidrs[0]] == ips[0], fmt.Sprintf("routes %v", got)
	})
	poll.Eventually(t, 60*time.Second, "n1 refuses n2's prefix", func() (bool, string) {
		st := speakers[0].status()
		return slices.ContainsFunc(st.Failed, func(r InstalledRoute) bool { return r.Prefix == cidrs[1] }), fmt.Sprintf("failed %v", st.Failed)
	})
	if out := l.Run("ip", "-n", ns[0], "route", "show", cidrs[1].String()); !strings.Contains(out, "via 192.0.2.99") || !strings.Contains(out, "proto static") || strings.Contains(out, ips[1].String()) {
		t.Errorf("the administrator's route was touched: %q", out)
	}
	if _, ok := l.Routes(ns[0], RouteProtocol)[cidrs[1]]; ok {
		t.Errorf("a BGP route for %s beside the administrator's", cidrs[1])
	}

	l.Run("ip", "-n", ns[0], "route", "del", cidrs[1].String(), "proto", "static")
	poll.Eventually(t, 30*time.Second, "n1 installs n2's prefix once it is free", func() (bool, string) {
		got := l.Routes(ns[0], RouteProtocol)
		return got[cidrs[1]] == ips[1], fmt.Sprintf("routes %v", got)
	})
}
