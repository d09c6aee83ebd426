package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// logged reports whether the child's log holds msg.
func (c *child) logged(msg string) (bool, string) {
	b, err := os.ReadFile(c.log)
	if err != nil {
		return false, err.Error()
	}
	return strings.Contains(string(b), msg), "not in " + c.log
}

// TestReflectorRestartGrace kills the route reflector while three nodes are
// up. Graceful restart keeps every route; once the reflector's restart time
// (2 s here) runs out, long-lived graceful restart keeps them, marked
// LLGR_STALE. The LLGR stale time (30 s here, LLGRStaleTime: 6 h by
// default, 10 min in DefaultKindConfig) is the timer that stands in for the
// issue's 10-minute control-plane outage. Meanwhile only a node that is
// really gone loses its routes: n1 is told n3 is dead (SetDeadNextHops)
// and n2's registry loses n3 (SetImportPolicy), each drops n3's route
// while the reflector is still down; n4 dies unannounced. The reflector
// returns and the routes are refreshed with no deletion in between (netlink
// route subscription) but n4's, which nobody refreshed: it goes after the
// reflector's End-of-RIB and SessionLossGrace (5 s here). n3 alive again is
// restored on n1. Finally the reflector comes back with a 4 s stale time,
// dies again, and the routes go once that runs out.
func TestReflectorRestartGrace(t *testing.T) {
	l := newLab(t)
	rrAddr := netip.MustParseAddr("192.0.2.1")
	rrNS := l.Host("rr", rrAddr.String())
	cluster := api.Cluster{Name: "c1", ID: 1, ASN: 65001, RouteReflector: netip.AddrPortFrom(rrAddr, 179), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	base := DefaultKindConfig()
	base.GracefulRestartTime = 2 * time.Second
	base.LLGRStaleTime = 30 * time.Second
	base.SessionLossGrace = 5 * time.Second
	rcfg, err := ReflectorConfig(base, cluster)
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		api.Node
		ns   string
		ip   netip.Addr
		cidr netip.Prefix
		proc *child
	}
	var nodes []*node
	for i := 1; i <= 4; i++ {
		ip := netip.MustParseAddr(fmt.Sprintf("192.0.2.1%d", i))
		cidr := netip.MustParsePrefix(fmt.Sprintf("10.1.%d.0/24", i))
		nodes = append(nodes, &node{
			Node: api.Node{Cluster: "c1", Name: fmt.Sprintf("n%d", i), Addresses: []netip.Addr{ip}, BGPAddress: ip, PodCIDRs: []netip.Prefix{cidr}},
			ip:   ip, cidr: cidr,
		})
	}
	var members []api.Node
	for _, n := range nodes {
		members = append(members, n.Node)
	}
	rrPeers, err := ReflectorPeers(cluster, members, nil)
	if err != nil {
		t.Fatal(err)
	}
	startRR := func(cfg Config) *child { return l.startChild("rr", rrNS, "reflector", cfg, rrPeers) }
	rr := startRR(rcfg)
	nodePeers, err := NodePeers(cluster)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.ns = l.Host(n.Name, n.ip.String())
		cfg, err := NodeConfig(base, n.Node, cluster)
		if err != nil {
			t.Fatal(err)
		}
		n.proc = l.startChild(cfg.Name, n.ns, "speaker", cfg, nil)
		n.proc.call(childReq{Op: "imports", Rules: ImportRules([]api.Cluster{cluster}, members)})
		n.proc.call(childReq{Op: "peers", Peers: nodePeers})
	}
	n1, n2, n3, n4 := nodes[0], nodes[1], nodes[2], nodes[3]
	has := func(n *node, want map[netip.Prefix]netip.Addr) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			for p, via := range want {
				if got[p] != via {
					return false, fmt.Sprintf("routes %v, want %v", got, want)
				}
			}
			return true, ""
		}
	}
	lacks := func(n *node, p netip.Prefix) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			_, ok := got[p]
			return !ok, fmt.Sprintf("routes %v still hold %s", got, p)
		}
	}
	// others are the routes n should hold: every other node's but those of
	// gone.
	others := func(n *node, gone ...*node) map[netip.Prefix]netip.Addr {
		m := map[netip.Prefix]netip.Addr{}
		for _, o := range nodes {
			if o != n && !slices.Contains(gone, o) {
				m[o.cidr] = o.ip
			}
		}
		return m
	}
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, n.Name+" learns the others", has(n, others(n)))
	}

	deleted1 := l.watchDeletes(t, n1.ns)
	deleted2 := l.watchDeletes(t, n2.ns)
	rr.kill()
	// The reflector's restart time runs out and LLGR takes over.
	for _, n := range []*node{n1, n2} {
		poll.Eventually(t, 60*time.Second, n.Name+": LLGR after the restart time", func() (bool, string) {
			return n.proc.logged("LLGR restart timer started")
		})
	}
	for _, n := range []*node{n1, n2} {
		if ok, detail := has(n, others(n))(); !ok {
			t.Fatalf("%s lost routes after the graceful restart time: %s", n.Name, detail)
		}
		if st := n.proc.status(); len(st.Installed) != 3 || st.PendingRemoval != 0 || st.Peers[0].Established {
			t.Errorf("%s status with the reflector down: %+v", n.Name, st)
		}
	}

	// Only a node that is gone loses its routes, reflector or not: n1's
	// health view says n3 is dead, n2's registry no longer has n3.
	n1.proc.call(childReq{Op: "dead", Addrs: []netip.Addr{n3.ip}})
	poll.Eventually(t, 30*time.Second, "n1 to withhold n3's route", lacks(n1, n3.cidr))
	if st := n1.proc.status(); len(st.Withheld) != 1 || st.Withheld[0].Prefix != n3.cidr || len(st.Installed) != 2 {
		t.Errorf("n1 status with n3 dead: %+v", st)
	}
	n2.proc.call(childReq{Op: "imports", Rules: ImportRules([]api.Cluster{cluster}, []api.Node{n1.Node, n2.Node, n4.Node})})
	poll.Eventually(t, 30*time.Second, "n2 to drop n3's stale route once the registry loses n3", lacks(n2, n3.cidr))
	if ok, detail := has(n2, map[netip.Prefix]netip.Addr{n1.cidr: n1.ip})(); !ok {
		t.Errorf("n2 lost n1's route with the registry change: %s", detail)
	}

	n4.proc.kill()

	// Back: refreshed without a deletion, but for n4's route once the
	// reflector's End-of-RIB says nobody has it.
	rr = startRR(rcfg)
	for _, n := range []*node{n1, n2, n3} {
		poll.Eventually(t, 60*time.Second, n.Name+" back in session", func() (bool, string) {
			st := n.proc.status()
			return len(st.Peers) == 1 && st.Peers[0].Established && st.PendingRemoval == 0, fmt.Sprintf("%+v", st)
		})
	}
	for _, n := range []*node{n1, n2, n3} {
		poll.Eventually(t, 30*time.Second, n.Name+" to drop unrefreshed n4's route", lacks(n, n4.cidr))
	}
	poll.Eventually(t, 30*time.Second, "n3 learns n1 and n2 again", has(n3, others(n3, n4)))
	n1.proc.call(childReq{Op: "dead"})
	poll.Eventually(t, 30*time.Second, "n1 to restore n3's route, n3 alive", has(n1, others(n1, n4)))
	byAddr := func(ps []netip.Prefix) []netip.Prefix {
		slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		return ps
	}
	if d := byAddr(deleted1()); !slices.Equal(d, []netip.Prefix{n3.cidr, n4.cidr}) {
		t.Errorf("n1 deleted %v through the reflector's restart; want only dead n3's %s and gone n4's %s", d, n3.cidr, n4.cidr)
	}
	if d := byAddr(deleted2()); !slices.Equal(d, []netip.Prefix{n3.cidr, n4.cidr}) {
		t.Errorf("n2 deleted %v through the reflector's restart; want only removed n3's %s and gone n4's %s", d, n3.cidr, n4.cidr)
	}

	// LLGR expiry: the reflector returns advertising a 4 s stale time,
	// dies again, and the routes go once restart and stale time are over.
	rr.kill()
	short := rcfg
	short.LLGRStaleTime = 4 * time.Second
	rr = startRR(short)
	// Every node back in session (the reflector knows n2's route again)
	// and nothing pending on n1: n2's route is a fresh one.
	poll.Eventually(t, 60*time.Second, "the reflector back with every live node", func() (bool, string) {
		st := rr.status()
		for _, p := range st.Peers {
			if p.Address != n4.ip && (!p.Established || p.PrefixesReceived != 1) {
				return false, fmt.Sprintf("%+v", st.Peers)
			}
		}
		return len(st.Peers) == 4, fmt.Sprintf("%+v", st.Peers)
	})
	poll.Eventually(t, 30*time.Second, "n1 holds n2's route, nothing pending", func() (bool, string) {
		st := n1.proc.status()
		ok, detail := has(n1, map[netip.Prefix]netip.Addr{n2.cidr: n2.ip})()
		return ok && st.PendingRemoval == 0 && len(st.Peers) == 1 && st.Peers[0].Established, fmt.Sprintf("%s; %+v", detail, st)
	})
	rr.kill()
	poll.Eventually(t, 60*time.Second, "n1 to drop n2's route once LLGR expired", lacks(n1, n2.cidr))
	if ok, _ := n1.proc.logged("LLGR restart timer expired"); !ok {
		t.Errorf("n1 dropped n2's route but its log has no LLGR expiry")
	}
}

// TestReflectorRestartAcrossClusters kills and restarts each cluster's
// reflector in turn while the other cluster's stays up: no node of either
// cluster deletes a route meanwhile (netlink route subscriptions). The
// restarted reflector must not hand the other reflector its table and
// End-of-RIB before its own nodes are back, or the other reflector drops
// their routes as stale and withdraws them from its nodes.
func TestReflectorRestartAcrossClusters(t *testing.T) {
	l := newLab(t)
	ap := netip.MustParseAddrPort
	clusters := []api.Cluster{
		{Name: "c1", ID: 1, ASN: 65001, RouteReflector: ap("192.0.2.1:179"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		{Name: "c2", ID: 2, ASN: 65002, RouteReflector: ap("192.0.2.2:179"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}},
	}
	type node struct {
		api.Node
		ns   string
		proc *child
	}
	var nodes []*node
	for ci, per := range []int{2, 1} {
		for ni := 1; ni <= per; ni++ {
			ip := netip.MustParseAddr(fmt.Sprintf("192.0.2.%d%d", ci+1, ni))
			nodes = append(nodes, &node{Node: api.Node{Cluster: clusters[ci].Name, Name: fmt.Sprintf("n%d", ni), Addresses: []netip.Addr{ip}, BGPAddress: ip,
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", ci+1, ni))}}})
		}
	}
	var all []api.Node
	for _, n := range nodes {
		all = append(all, n.Node)
	}
	rules := ImportRules(clusters, all)
	type reflector struct {
		ns    string
		cfg   Config
		peers []Peer
		proc  *child
	}
	var rrs []*reflector
	for i, cl := range clusters {
		var members []api.Node
		for _, n := range all {
			if n.Cluster == cl.Name {
				members = append(members, n)
			}
		}
		peers, err := ReflectorPeers(cl, members, clusters)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := ReflectorConfig(DefaultKindConfig(), cl)
		if err != nil {
			t.Fatal(err)
		}
		r := &reflector{ns: l.Host(fmt.Sprintf("rr%d", i+1), cl.RouteReflector.Addr().String()), cfg: cfg, peers: peers}
		r.proc = l.startChild(cl.Name+"/rr", r.ns, "reflector", cfg, peers)
		rrs = append(rrs, r)
	}
	for _, n := range nodes {
		cl := clusters[0]
		if n.Cluster == "c2" {
			cl = clusters[1]
		}
		n.ns = l.Host(n.Cluster+n.Name, n.Addresses[0].String())
		cfg, err := NodeConfig(DefaultKindConfig(), n.Node, cl)
		if err != nil {
			t.Fatal(err)
		}
		peers, err := NodePeers(cl)
		if err != nil {
			t.Fatal(err)
		}
		n.proc = l.startChild(cfg.Name, n.ns, "speaker", cfg, nil)
		n.proc.call(childReq{Op: "imports", Rules: rules})
		n.proc.call(childReq{Op: "peers", Peers: peers})
	}
	converged := func(n *node) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			for _, o := range nodes {
				if o != n && got[o.PodCIDRs[0]] != o.Addresses[0] {
					return false, fmt.Sprintf("%s/%s routes %v", n.Cluster, n.Name, got)
				}
			}
			return true, ""
		}
	}
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, "routes on "+n.Cluster+"/"+n.Name, converged(n))
	}
	for i, r := range rrs {
		var watches []func() []netip.Prefix
		for _, n := range nodes {
			watches = append(watches, l.watchDeletes(t, n.ns))
		}
		r.proc.kill()
		poll.Eventually(t, 60*time.Second, "the other reflector to see "+clusters[i].Name+"'s gone", func() (bool, string) {
			for _, p := range rrs[1-i].proc.status().Peers {
				if p.Address == clusters[i].RouteReflector.Addr() {
					return !p.Established, fmt.Sprintf("%+v", p)
				}
			}
			return false, "no peer"
		})
		// An outage longer than GoBGP's 5 s idle hold: every peer is
		// dialing again when the reflector returns (as in the StoreDown
		// drill), so which session comes up first is down to chance.
		time.Sleep(8 * time.Second)
		r.proc = l.startChild(clusters[i].Name+"/rr-restarted", r.ns, "reflector", r.cfg, r.peers)
		poll.Eventually(t, 60*time.Second, clusters[i].Name+"'s reflector back with every peer", func() (bool, string) {
			st := r.proc.status()
			for _, p := range st.Peers {
				if !p.Established || p.PrefixesReceived == 0 {
					return false, fmt.Sprintf("%+v", st.Peers)
				}
			}
			return len(st.Peers) == len(r.peers), fmt.Sprintf("%+v", st.Peers)
		})
		for _, n := range nodes {
			poll.Eventually(t, 30*time.Second, "nothing pending on "+n.Cluster+"/"+n.Name, func() (bool, string) {
				st := n.proc.status()
				ok, detail := converged(n)()
				return ok && st.PendingRemoval == 0 && st.Peers[0].Established, fmt.Sprintf("%s; %+v", detail, st)
			})
		}
		for j, n := range nodes {
			if d := watches[j](); len(d) > 0 {
				t.Errorf("%s/%s deleted %v while %s's reflector restarted", n.Cluster, n.Name, d, clusters[i].Name)
			}
		}
	}
}
