package bgp

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestDualStack routes IPv4 and IPv6 pod CIDRs over IPv4 sessions through a
// reflector: IPv6 prefixes carry the node's IPv6 address as next hop.
func TestDualStack(t *testing.T) {
	l := newLab(t)
	a := netip.MustParseAddr
	cl := api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.MustParseAddrPort("192.0.2.1:179")}
	var nodes []api.Node
	var procs []*child
	for i := 1; i <= 2; i++ {
		n := api.Node{
			Cluster: "c1", Name: fmt.Sprintf("n%d", i),
			Addresses:  []netip.Addr{a(fmt.Sprintf("192.0.2.1%d", i)), a(fmt.Sprintf("fd00:192::1%d", i))},
			BGPAddress: a(fmt.Sprintf("192.0.2.1%d", i)),
			PodCIDRs:   []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.1.%d.0/24", i)), netip.MustParsePrefix(fmt.Sprintf("fd00:10:1:%d::/64", i))},
		}
		short := fmt.Sprintf("n%d", i)
		ns := l.Host(short, n.Addresses[0].String())
		if i == 2 {
			// n1 gets its IPv6 fabric address only later: until then it
			// cannot reach n2's IPv6 next hop.
			l.Run("ip", "-n", ns, "addr", "add", n.Addresses[1].String()+"/64", "dev", "eth0", "nodad")
		}
		pod := l.Pod(short, short+"p", fmt.Sprintf("10.1.%d.1", i), fmt.Sprintf("10.1.%d.10", i))
		l.Run("ip", "-n", ns, "addr", "add", fmt.Sprintf("fd00:10:1:%d::1/64", i), "dev", "p"+short+"p", "nodad")
		l.Run("ip", "-n", pod, "addr", "add", fmt.Sprintf("fd00:10:1:%d::10/64", i), "dev", "eth0", "nodad")
		l.Run("ip", "-n", pod, "-6", "route", "add", "default", "via", fmt.Sprintf("fd00:10:1:%d::1", i))
		l.Run("nsenter", "--net=/run/netns/"+ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
		nodes = append(nodes, n)
	}
	rrNS := l.Host("rr", cl.RouteReflector.Addr().String())
	peers, err := ReflectorPeers(cl, nodes, nil)
	if err != nil {
		t.Fatal(err)
	}
	rcfg := DefaultKindConfig()
	rcfg.Name, rcfg.ASN, rcfg.RouterID = "c1", cl.ASN, cl.RouteReflector.Addr()
	l.startChild("rr", rrNS, "reflector", rcfg, peers)
	nodePeers, err := NodePeers(cl)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		cfg, err := NodeConfig(DefaultKindConfig(), n, cl)
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, l.startChild(cfg.Name, l.NS(fmt.Sprintf("n%d", i+1)), "speaker", cfg, nodePeers))
	}
	n1 := l.NS("n1")
	poll.Eventually(t, 60*time.Second, "n1 to report the unreachable IPv6 next hop", func() (bool, string) {
		st := procs[0].status()
		return len(st.Failed) == 1 && st.Failed[0].Prefix == nodes[1].PodCIDRs[1] && st.InstallErrors > 0, fmt.Sprintf("%+v", st)
	})
	if _, ok := l.Routes(n1, RouteProtocol)[nodes[1].PodCIDRs[1]]; ok {
		t.Fatalf("n1 installed %s without a route to its next hop", nodes[1].PodCIDRs[1])
	}
	l.Run("ip", "-n", n1, "addr", "add", nodes[0].Addresses[1].String()+"/64", "dev", "eth0", "nodad")
	for i := range nodes {
		other := nodes[1-i]
		ns := l.NS(fmt.Sprintf("n%d", i+1))
		poll.Eventually(t, 60*time.Second, "dual-stack routes on "+ns, func() (bool, string) {
			got := l.Routes(ns, RouteProtocol)
			return got[other.PodCIDRs[0]] == other.Addresses[0] && got[other.PodCIDRs[1]] == other.Addresses[1], fmt.Sprintf("%v", got)
		})
	}
	l.tcpEcho(l.NS("n2p"), "[fd00:10:1:2::10]:8080")
	got, err := tcpRoundTrip(l.NS("n1p"), net.JoinHostPort("fd00:10:1:2::10", "8080"), "v6")
	if err != nil || got != "echo v6" {
		t.Fatalf("pod n1 -> pod n2 over IPv6: %q, %v", got, err)
	}
	if st := procs[0].status(); len(st.Announced) != 2 || len(st.Installed) != 2 || len(st.Failed) != 0 {
		t.Errorf("n1 status: %+v", st)
	}
}
