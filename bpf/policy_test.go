package bpf

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/agent/podnet"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestPolicyEnforcement drives real TCP and UDP through the policy checks:
// the client netns is an endpoint (identity 100) whose egress is checked in
// the socket hooks; the backends are endpoints (200 and 300) whose ingress is
// checked by the tcx program on the client side of the link, before packets
// reach the server namespace, and the client's ingress by the one on the
// server side.
func TestPolicyEnforcement(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 2)
	tp.serveEcho(t)
	dp := openTest(t, testConfig(cg, pin))

	client := netip.MustParseAddr("10.77.0.1")
	be1, be2 := tp.v4["be1"], tp.v4["be2"]
	ns, err := podnet.Read(netlab.NetnsPath(tp.clientNS))
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.SetPolicyEndpoint(PolicyEndpoint{NetnsCookie: ns.Cookie, Identity: 100, IPv4: client}); err != nil {
		t.Fatal(err)
	}
	for addr, id := range map[netip.Addr]uint32{client: 100, be1.Addr(): 200, be2.Addr(): 300} {
		if err := dp.SetIPCache(addr, id); err != nil {
			t.Fatal(err)
		}
	}
	var ifindex int
	if err := netlab.InNetns(tp.clientNS, func() error {
		var err error
		if ifindex, err = podnet.HostInterface(be1.Addr()); err != nil {
			return err
		}
		return dp.AttachIngress(ifindex)
	}); err != nil {
		t.Fatal(err)
	}
	if err := netlab.InNetns(tp.serverNS, func() error {
		i, err := podnet.HostInterface(client)
		if err != nil {
			return err
		}
		return dp.AttachIngress(i)
	}); err != nil {
		t.Fatal(err)
	}

	// A service VIP whose only backend is be2: egress is judged by the
	// backend the connect reaches.
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	node := loadbalancer.NodeRef{ClusterID: 1, Name: "n1"}
	if err := dp.UpsertService(t.Context(), loadbalancer.Service{
		Name: "shop/api", Frontend: loadbalancer.Frontend{Addr: vip, Protocol: loadbalancer.TCP},
		Preferred: backendsOf(tp.v4, node, "be2"),
	}); err != nil {
		t.Fatal(err)
	}

	const tcp, udp = 6, 17
	type probe struct {
		mode   string
		target netip.AddrPort
		ok     bool
		// errHas, for a refused probe, is part of the error.
		errHas string
	}
	steps := []struct {
		name     string
		policies map[uint32]IdentityPolicy
		probes   []probe
	}{
		{"no policy: default allow", nil, []probe{
			{"tcp", be1, true, ""}, {"udp", be2, true, ""}, {"tcp", vip, true, ""},
		}},
		{"egress: TCP to 200 only", map[uint32]IdentityPolicy{
			100: {Egress: true, Entries: map[PolicyKey]Verdict{{Dir: DirEgress, Peer: 200, Proto: tcp, Port: echoPort}: Allow}},
		}, []probe{
			{"tcp", be1, true, ""},
			{"tcp", be2, false, "operation not permitted"},
			{"udp", be1, false, "operation not permitted"},
			{"tcp", vip, false, "operation not permitted"},
		}},
		{"egress: any port to 300, deny UDP to 300", map[uint32]IdentityPolicy{
			100: {Egress: true, Entries: map[PolicyKey]Verdict{
				{Dir: DirEgress, Peer: 300}:                         Allow,
				{Dir: DirEgress, Peer: 300, Proto: udp}:             Deny,
				{Dir: DirEgress, Peer: 200, Proto: udp, Port: 8080}: Allow,
			}},
		}, []probe{
			{"tcp", vip, true, ""},
			{"tcp", be2, true, ""},
			{"udp", be2, false, "operation not permitted"},
			{"tcp", be1, false, "operation not permitted"},
			{"udpconn", be1, true, ""},
		}},
		{"ingress of 300: from 100 on TCP only; client: ingress enforced with nothing allowed, UDP out to 200", map[uint32]IdentityPolicy{
			300: {Ingress: true, Entries: map[PolicyKey]Verdict{{Dir: DirIngress, Peer: 100, Proto: tcp, Port: echoPort}: Allow}},
			100: {Ingress: true, Egress: true, Entries: map[PolicyKey]Verdict{
				{Dir: DirEgress, Peer: 200, Proto: udp}: Allow,
				{Dir: DirEgress, Peer: 300, Proto: tcp}: Allow,
			}},
		}, []probe{
			{"tcp", be2, true, ""},
			{"udp", be2, false, "operation not permitted"},
			// be1's reply comes in although the client's ingress allows
			// nothing: the exchange was allowed on the way out.
			{"udp", be1, true, ""},
			{"udpconn", be1, true, ""},
		}},
		{"ingress of 300 on UDP: dropped before the server", map[uint32]IdentityPolicy{
			300: {Ingress: true, Entries: map[PolicyKey]Verdict{{Dir: DirIngress, Peer: 100, Proto: tcp, Port: echoPort}: Allow}},
		}, []probe{
			{"udp", be2, false, "timeout"},
			{"tcp", be2, true, ""},
		}},
		{"ingress of 300: from someone else", map[uint32]IdentityPolicy{
			300: {Ingress: true, Entries: map[PolicyKey]Verdict{{Dir: DirIngress, Peer: 999}: Allow}},
		}, []probe{
			{"tcp", be2, false, "timeout"},
			{"tcp", vip, false, "timeout"},
			{"tcp", be1, true, ""},
		}},
		{"policies deleted: default allow again", nil, []probe{
			{"tcp", be2, true, ""}, {"udp", be2, true, ""}, {"tcp", vip, true, ""},
		}},
	}
	programmed := map[uint32]bool{}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			for id := range programmed {
				if _, ok := st.policies[id]; !ok {
					if err := dp.DeleteIdentityPolicy(id); err != nil {
						t.Fatal(err)
					}
					delete(programmed, id)
				}
			}
			for id, p := range st.policies {
				if err := dp.SetIdentityPolicy(id, p); err != nil {
					t.Fatal(err)
				}
				programmed[id] = true
			}
			for _, p := range st.probes {
				res := runClient(t, tp.clientNS, cg, clientSpec{Mode: p.mode, VIP: p.target, Count: 1})
				got := res.NumErrors == 0
				if got != p.ok {
					t.Errorf("%s to %s: ok=%v, want %v (errors %v)", p.mode, p.target, got, p.ok, res.Errors)
					continue
				}
				if !p.ok && !strings.Contains(strings.Join(res.Errors, " "), p.errHas) {
					t.Errorf("%s to %s: errors %v, want one with %q", p.mode, p.target, res.Errors, p.errHas)
				}
			}
		})
	}
	stats, err := dp.PolicyStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats["policy_egress_denied"] < 5 || stats["policy_ingress_dropped"] < 3 {
		t.Errorf("policy counters %v: want at least 5 egress denials and 3 ingress drops", stats)
	}
}

// TestPolicySurvivesRestart: enforcement stays while no agent runs (maps
// and tcx links are pinned), and the next Open adopts it whole: the same
// policies, addresses, endpoints and interfaces, still enforced.
func TestPolicySurvivesRestart(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 2)
	tp.serveEcho(t)
	cfg := testConfig(cg, pin)
	dp, err := Open(t.Context(), cfg)
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel too old: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("10.77.0.1")
	be1, be2 := tp.v4["be1"], tp.v4["be2"]
	ns, err := podnet.Read(netlab.NetnsPath(tp.clientNS))
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dp.SetPolicyEndpoint(PolicyEndpoint{NetnsCookie: ns.Cookie, Identity: 100, IPv4: client}))
	for addr, id := range map[netip.Addr]uint32{client: 100, be1.Addr(): 200, be2.Addr(): 300} {
		must(dp.SetIPCache(addr, id))
	}
	must(netlab.InNetns(tp.clientNS, func() error {
		i, err := podnet.HostInterface(be1.Addr())
		if err != nil {
			return err
		}
		return dp.AttachIngress(i)
	}))
	egress := IdentityPolicy{Egress: true, Entries: map[PolicyKey]Verdict{{Dir: DirEgress, Peer: 200, Proto: 6}: Allow, {Dir: DirEgress, Peer: 300}: Allow}}
	ingress := IdentityPolicy{Ingress: true, Entries: map[PolicyKey]Verdict{{Dir: DirIngress, Peer: 999}: Allow}}
	must(dp.SetIdentityPolicy(100, egress))
	must(dp.SetIdentityPolicy(300, ingress))
	wantPolicies, wantIfaces := dp.IdentityPolicies(), dp.IngressInterfaces()

	check := func(when string) {
		t.Helper()
		for _, p := range []struct {
			mode   string
			target netip.AddrPort
			ok     bool
		}{{"tcp", be1, true}, {"udp", be1, false}, {"tcp", be2, false}} {
			res := runClient(t, tp.clientNS, cg, clientSpec{Mode: p.mode, VIP: p.target, Count: 1})
			if got := res.NumErrors == 0; got != p.ok {
				t.Errorf("%s: %s to %s: ok=%v, want %v (%v)", when, p.mode, p.target, got, p.ok, res.Errors)
			}
		}
	}
	check("agent running")
	must(dp.Close())
	check("no agent")
	dp2 := openTest(t, cfg)
	if got := dp2.IdentityPolicies(); !reflect.DeepEqual(got, wantPolicies) {
		t.Errorf("adopted policies %+v, want %+v", got, wantPolicies)
	}
	if got := dp2.IngressInterfaces(); !slices.Equal(got, wantIfaces) {
		t.Errorf("adopted ingress interfaces %v, want %v", got, wantIfaces)
	}
	if got := dp2.PolicyEndpoints(); len(got) != 1 || got[0].NetnsCookie != ns.Cookie || got[0].IPv4 != client {
		t.Errorf("adopted endpoints %+v", got)
	}
	check("after restart")
}
