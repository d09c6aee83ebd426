package bgp

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestReflectorRestartGrace kills and restarts the route reflector: routes
// of the lost session stay for SessionLossGrace and are kept without a flap
// when re-learned in time; with a short grace they are removed.
func TestReflectorRestartGrace(t *testing.T) {
	l := newLab(t)
	rrAddr := netip.MustParseAddr("192.0.2.1")
	rrNS := l.Host("rr", rrAddr.String())
	rcfg, err := ReflectorConfig(DefaultKindConfig(), api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.AddrPortFrom(rrAddr, 179)})
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		ns    string
		cidr  netip.Prefix
		ip    netip.Addr
		grace time.Duration
		proc  *child
	}
	nodes := []*node{
		{ip: netip.MustParseAddr("192.0.2.11"), cidr: netip.MustParsePrefix("10.1.1.0/24"), grace: time.Minute},
		{ip: netip.MustParseAddr("192.0.2.12"), cidr: netip.MustParsePrefix("10.1.2.0/24"), grace: time.Second},
	}
	var rrPeers []Peer
	for i, n := range nodes {
		rrPeers = append(rrPeers, Peer{Name: fmt.Sprintf("c1/n%d", i+1), Address: n.ip, ASN: 65001, Passive: true, RouteReflectorClient: true})
	}
	startRR := func() *child { return l.startChild("rr", rrNS, "reflector", rcfg, rrPeers) }
	rr := startRR()
	for i, n := range nodes {
		n.ns = l.Host(fmt.Sprintf("n%d", i+1), n.ip.String())
		cfg := DefaultKindConfig()
		cfg.Name, cfg.ASN = fmt.Sprintf("c1/n%d", i+1), 65001
		cfg.NodeIPs, cfg.PodCIDRs = []netip.Addr{n.ip}, []netip.Prefix{n.cidr}
		cfg.SessionLossGrace = n.grace
		n.proc = l.startChild(cfg.Name, n.ns, "speaker", cfg, []Peer{{Name: "rr", Address: rrAddr, ASN: 65001}})
	}
	long, short := nodes[0], nodes[1]
	has := func(n *node, p netip.Prefix, via netip.Addr) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			return got[p] == via, fmt.Sprintf("routes %v", got)
		}
	}
	poll.Eventually(t, 60*time.Second, "n1 learns n2", has(long, short.cidr, short.ip))
	poll.Eventually(t, 60*time.Second, "n2 learns n1", has(short, long.cidr, long.ip))

	deleted := l.watchDeletes(t, long.ns)
	rr.kill()
	// The short grace expires: n2 drops n1's CIDR.
	poll.Eventually(t, 60*time.Second, "n2 to drop n1's CIDR after its grace", func() (bool, string) {
		_, ok := l.Routes(short.ns, RouteProtocol)[long.cidr]
		return !ok, "still installed"
	})
	// n1's grace (1 min) has not: its route is pending removal, still there.
	st := long.proc.status()
	if st.PendingRemoval != 1 || st.Peers[0].Established {
		t.Errorf("n1 status after reflector death: %+v", st)
	}
	if ok, detail := has(long, short.cidr, short.ip)(); !ok {
		t.Fatalf("n1 dropped n2's CIDR within its grace: %s", detail)
	}

	startRR()
	poll.Eventually(t, 60*time.Second, "n2 re-learns n1", has(short, long.cidr, long.ip))
	poll.Eventually(t, 60*time.Second, "n1 re-learns n2 and clears the pending removal", func() (bool, string) {
		st := long.proc.status()
		return st.PendingRemoval == 0 && len(st.Installed) == 1, fmt.Sprintf("%+v", st)
	})
	if d := deleted(); len(d) > 0 {
		t.Errorf("n1 deleted routes it kept through the grace: %v", d)
	}
	if ok, detail := has(long, short.cidr, short.ip)(); !ok {
		t.Errorf("n1 after reflector restart: %s", detail)
	}
}
