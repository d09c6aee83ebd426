package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/route"
)

type meshNode struct {
	node   api.Node
	ns     string
	podNS  string
	podIP  string
	cfg    Config
	peers  []Peer
	proc   *child
	others []netip.Prefix // pod CIDRs of every other node
}

// TestTwoClustersNativeRouting joins two clusters of two nodes on one fabric:
// each node peers with its cluster's reflector, the reflectors peer over
// eBGP, and pods reach each other with no tunnel.
func TestTwoClustersNativeRouting(t *testing.T) {
	l := newLab(t)
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	clusters := []api.Cluster{
		{Name: "c1", ID: 1, ASN: 65001, RouteReflector: ap("192.0.2.1:179"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		{Name: "c2", ID: 2, ASN: 65002, RouteReflector: ap("192.0.2.2:179"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}},
	}
	var nodes []*meshNode
	for ci, cl := range clusters {
		for ni := 1; ni <= 2; ni++ {
			name := fmt.Sprintf("n%d", ni)
			short := fmt.Sprintf("c%dn%d", ci+1, ni)
			ip := fmt.Sprintf("192.0.2.%d%d", ci+1, ni)
			cidr := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", ci+1, ni))
			n := &meshNode{node: api.Node{Cluster: cl.Name, Name: name, Addresses: []netip.Addr{a(ip)}, BGPAddress: a(ip), PodCIDRs: []netip.Prefix{cidr}}}
			n.ns = l.Host(short, ip)
			n.podIP = fmt.Sprintf("10.%d.%d.10", ci+1, ni)
			n.podNS = l.Pod(short, short+"p", fmt.Sprintf("10.%d.%d.1", ci+1, ni), n.podIP)
			nodes = append(nodes, n)
		}
	}
	for _, n := range nodes {
		for _, o := range nodes {
			if o != n {
				n.others = append(n.others, o.node.PodCIDRs...)
			}
		}
	}

	// Reflectors, each in its own namespace, as clustermesh-apiserver would
	// run them.
	var reflectors []*child
	for i, cl := range clusters {
		short := fmt.Sprintf("rr%d", i+1)
		ns := l.Host(short, cl.RouteReflector.Addr().String())
		var members []api.Node
		for _, n := range nodes {
			if n.node.Cluster == cl.Name {
				members = append(members, n.node)
			}
		}
		peers, err := ReflectorPeers(cl, members, clusters)
		if err != nil {
			t.Fatal(err)
		}
		cfg := DefaultKindConfig()
		cfg.Name, cfg.ASN, cfg.RouterID = cl.Name, cl.ASN, cl.RouteReflector.Addr()
		cfg.ListenPort = int32(cl.RouteReflector.Port())
		reflectors = append(reflectors, l.startChild(short, ns, "reflector", cfg, peers))
	}
	for i, n := range nodes {
		cl := clusters[i/2]
		cfg, err := NodeConfig(DefaultKindConfig(), n.node, cl)
		if err != nil {
			t.Fatal(err)
		}
		n.cfg = cfg
		if n.peers, err = NodePeers(cl); err != nil {
			t.Fatal(err)
		}
		n.proc = l.startChild(cfg.Name, n.ns, "speaker", cfg, n.peers)
	}

	converged := func(n *meshNode, want []netip.Prefix) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			for _, o := range nodes {
				for _, p := range o.node.PodCIDRs {
					gw, ok := got[p]
					if slices.Contains(want, p) != ok {
						return false, fmt.Sprintf("%s routes %v, want %v", n.cfg.Name, got, want)
					}
					if ok && gw != o.node.Addresses[0] {
						return false, fmt.Sprintf("%s: %s via %s, want via %s", n.cfg.Name, p, gw, o.node.Addresses[0])
					}
				}
			}
			return true, ""
		}
	}
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, "routes on "+n.cfg.Name, converged(n, n.others))
	}

	// Pod to pod over TCP, cluster 1 to cluster 2 and back.
	l.tcpEcho(nodes[2].podNS, nodes[2].podIP+":8080")
	l.tcpEcho(nodes[1].podNS, nodes[1].podIP+":8080")
	for _, pair := range [][2]*meshNode{{nodes[0], nodes[2]}, {nodes[3], nodes[1]}} {
		got, err := tcpRoundTrip(pair[0].podNS, pair[1].podIP+":8080", "hello from "+pair[0].cfg.Name)
		if err != nil || got != "echo hello from "+pair[0].cfg.Name {
			t.Fatalf("pod %s -> pod %s: %q, %v", pair[0].cfg.Name, pair[1].cfg.Name, got, err)
		}
	}
	for _, ns := range []string{l.Fabric, l.NS("rr1"), l.NS("rr2")} {
		if tun := l.tunnelLinks(ns); len(tun) > 0 {
			t.Errorf("tunnel devices in %s: %v", ns, tun)
		}
	}
	for _, n := range nodes {
		for _, ns := range []string{n.ns, n.podNS} {
			if tun := l.tunnelLinks(ns); len(tun) > 0 {
				t.Errorf("tunnel devices in %s: %v", ns, tun)
			}
		}
	}
	rst := reflectors[0].status()
	if len(rst.Peers) != 3 {
		t.Errorf("reflector c1 peers: %+v", rst.Peers)
	}
	for _, p := range rst.Peers {
		// Two nodes send 1 prefix each; the other reflector sends c2's 2.
		want := 1
		if p.Address == clusters[1].RouteReflector.Addr() {
			want = 2
		}
		if !p.Established || p.PrefixesReceived != want {
			t.Errorf("reflector c1, peer %s: %+v", p.Address, p)
		}
	}
	m := reflectors[0].call(childReq{Op: "metrics"}).Metrics
	if want := `clustermesh_bgp_session_established{peer="192.0.2.2",peer_name="c2/reflector",role="reflector"} 1`; !strings.Contains(m, want) {
		t.Errorf("reflector metrics lack %s:\n%s", want, m)
	}
	st := nodes[0].proc.status()
	if len(st.Peers) != 1 || !st.Peers[0].Established || st.Peers[0].PrefixesInstalled != 3 || len(st.Installed) != 3 {
		t.Errorf("status of %s: %+v", nodes[0].cfg.Name, st)
	}

	// A top-of-rack router added as a static peer of c1/n1 announces a
	// piece of c2/n1's pod CIDR (learned from the reflector already) towards
	// itself: refused as an overlap; its other prefix is installed. Adding
	// the peer does not reset the reflector session.
	torNS := l.Host("tor", "192.0.2.254")
	l.startBird("tor", torNS, `
router id 192.0.2.254;
protocol device { scan time 10; }
protocol static st { ipv4; route 10.2.1.0/25 blackhole; route 10.99.0.0/24 blackhole; }
protocol bgp n1 {
	local 192.0.2.254 as 65100;
	neighbor 192.0.2.11 as 65001;
	passive on;
	ipv4 { import none; export all; };
}
`)
	before := nodes[0].proc.status().Peers[0].Since
	nodes[0].proc.call(childReq{Op: "peers", Peers: append(slices.Clone(nodes[0].peers), Peer{Name: "tor", Address: a("192.0.2.254"), ASN: 65100})})
	poll.Eventually(t, 60*time.Second, "c1/n1 to install the router's prefix", func() (bool, string) {
		got := l.Routes(nodes[0].ns, RouteProtocol)
		return got[netip.MustParsePrefix("10.99.0.0/24")] == a("192.0.2.254"), fmt.Sprintf("%v", got)
	})
	st = nodes[0].proc.status()
	var refused *Refusal
	for i, r := range st.Refused {
		if r.Prefix == netip.MustParsePrefix("10.2.1.0/25") {
			refused = &st.Refused[i]
		}
	}
	if refused == nil || refused.Reason != RefusedLearnedRoute || refused.Conflict != nodes[2].node.PodCIDRs[0] {
		t.Errorf("10.2.1.0/25 from the router: want refused as overlapping 10.2.1.0/24, got %+v", st.Refused)
	}
	for _, p := range st.Peers {
		if p.Address == clusters[0].RouteReflector.Addr() && (!p.Established || !p.Since.Equal(before)) {
			t.Errorf("reflector session reset by SetPeers: %+v (up since %v before)", p, before)
		}
	}
	if got, err := tcpRoundTrip(nodes[0].podNS, nodes[2].podIP+":8080", "still"); err != nil || got != "echo still" {
		t.Fatalf("pod c1/n1 -> pod c2/n1 with the router peered: %q, %v", got, err)
	}
	nodes[0].proc.call(childReq{Op: "peers", Peers: nodes[0].peers})

	// Kill c1/n2's speaker: graceful restart keeps its pod CIDR on every
	// other node, in both clusters (a restarting agent is not a dead node),
	// until a node's health view says it is dead: then that node drops it.
	victim := nodes[1]
	watched := nodes[3] // c2/n2: kept through both reflectors
	keptDeletes := l.watchDeletes(t, watched.ns)
	victim.proc.kill()
	gone := victim.node.PodCIDRs[0]
	poll.Eventually(t, 60*time.Second, "reflector c1 to see c1/n2 gone", func() (bool, string) {
		for _, p := range reflectors[0].status().Peers {
			if p.Address == victim.node.BGPAddress {
				return !p.Established, fmt.Sprintf("%+v", p)
			}
		}
		return false, "no peer"
	})
	for _, n := range nodes {
		if n != victim {
			if ok, detail := converged(n, n.others)(); !ok {
				t.Errorf("%s lost a route when c1/n2's speaker died: %s", n.cfg.Name, detail)
			}
		}
	}
	nodes[2].proc.call(childReq{Op: "dead", Addrs: victim.node.Addresses})
	poll.Eventually(t, 60*time.Second, "c2/n1 to drop dead c1/n2's CIDR", converged(nodes[2],
		slices.DeleteFunc(slices.Clone(nodes[2].others), func(p netip.Prefix) bool { return p == gone })))
	// The dead node's own routes stay in its kernel (nobody is there to
	// remove them); add a stale one a previous run could have left.
	stale := &netlink.Route{Dst: route.IPNet(netip.MustParsePrefix("10.77.0.0/24")), Gw: a("192.0.2.99").AsSlice(), Protocol: RouteProtocol}
	h := l.handle(victim.ns)
	if err := h.RouteAdd(stale); err != nil {
		t.Fatal(err)
	}
	h.Close()

	// Watch the restarted node's table: live routes must not be deleted.
	deleted := l.watchDeletes(t, victim.ns)
	victim.proc = l.startChild(victim.cfg.Name+"-restarted", victim.ns, "speaker", victim.cfg, victim.peers)
	nodes[2].proc.call(childReq{Op: "dead"})
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, "routes restored on "+n.cfg.Name, converged(n, n.others))
	}
	for _, p := range keptDeletes() {
		// The router's prefix goes with the router peer removed above.
		if slices.Contains(watched.others, p) {
			t.Errorf("%s deleted %s while c1/n2's speaker restarted", watched.cfg.Name, p)
		}
	}
	poll.Eventually(t, 60*time.Second, "stale route removed on "+victim.cfg.Name, func() (bool, string) {
		_, ok := l.Routes(victim.ns, RouteProtocol)[netip.MustParsePrefix("10.77.0.0/24")]
		return !ok, "10.77.0.0/24 still installed"
	})
	for _, p := range deleted() {
		if slices.Contains(victim.others, p) {
			t.Errorf("live route %s was deleted during restart of %s", p, victim.cfg.Name)
		}
	}
	got, err := tcpRoundTrip(nodes[3].podNS, victim.podIP+":8080", "back")
	if err != nil || got != "echo back" {
		t.Fatalf("pod c2/n2 -> pod c1/n2 after restart: %q, %v", got, err)
	}
}

// watchDeletes records route deletions of RouteProtocol in ns until the
// returned function is called.
func (l *lab) watchDeletes(t *testing.T, ns string) func() []netip.Prefix {
	h, err := netnsHandle(ns)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	if err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{Namespace: &h}); err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for u := range ch {
			if u.Type == 25 /* RTM_DELROUTE */ && u.Protocol == RouteProtocol && u.Dst != nil {
				if p, ok := route.PrefixOf(u.Dst); ok {
					out = append(out, p)
				}
			}
		}
	}()
	stopped := false
	stop := func() []netip.Prefix {
		if !stopped {
			stopped = true
			close(done)
			<-finished
			h.Close()
		}
		return out
	}
	t.Cleanup(func() { stop() })
	return stop
}
