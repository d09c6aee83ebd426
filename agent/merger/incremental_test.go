package merger

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestIncrementalEqualsFresh drives one merger through a series of
// changes and checks, after each Sync, that what it programmed is exactly
// what a fresh merger computes from the same state: the reuse of what is
// programmed (backend lists, frontend lists, name strings) and the skipped
// index updates never leave a stale value behind.
func TestIncrementalEqualsFresh(t *testing.T) {
	local := func(s *api.Service) { s.InternalTrafficLocal = true }
	closeBy := func(s *api.Service) { s.PreferClose = true }
	sticky := func(s *api.Service) { s.SessionAffinityTimeout = 60 }
	c1n1 := loadbalancer.NodeRef{ClusterID: 1, Name: "n1"}
	slices3 := func(c1 ...api.Endpoint) []*api.EndpointSlice {
		return []*api.EndpointSlice{httpSlice("c1", c1...), httpSlice("c2", ep("10.2.0.1", inZone("z1")), ep("10.2.0.2", inZone("z2")))}
	}
	twoLocal := slices3(ep("10.1.0.1", onNode("n1"), inZone("z1")), ep("10.1.0.2", inZone("z2")))
	steps := []struct {
		name      string
		services  []*api.Service
		slices    []*api.EndpointSlice
		unhealthy []loadbalancer.NodeRef
	}{
		{"no affinity", []*api.Service{svc("c1"), svc("c2")}, twoLocal, nil},
		{"unchanged", []*api.Service{svc("c1"), svc("c2")}, twoLocal, nil},
		{"local affinity", []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2")}, twoLocal, nil},
		{"remote affinity: the lists swap", []*api.Service{svc("c1", affinity(api.AffinityRemote)), svc("c2")}, twoLocal, nil},
		{"local affinity, a local node down", []*api.Service{svc("c1", affinity(api.AffinityLocal), minLocal(2)), svc("c2")}, twoLocal, []loadbalancer.NodeRef{c1n1}},
		{"local affinity, node back", []*api.Service{svc("c1", affinity(api.AffinityLocal), minLocal(2)), svc("c2")}, twoLocal, nil},
		{"prefer close", []*api.Service{svc("c1", closeBy), svc("c2")}, twoLocal, nil},
		{"prefer close, zone's backend gone", []*api.Service{svc("c1", closeBy), svc("c2")}, slices3(ep("10.1.0.2", inZone("z2"))), nil},
		{"internal traffic local", []*api.Service{svc("c1", local), svc("c2")}, twoLocal, nil},
		{"two ports, session affinity", []*api.Service{svc("c1", ports(httpPort, dnsPort), sticky), svc("c2")}, append(slices3()[1:], slice("c1", "c1-a", []api.EndpointPort{httpEP, {Name: "dns", Port: 5353, Protocol: api.ProtocolUDP}}, ep("10.1.0.1"), ep("10.1.0.2", terminating))), nil},
		{"one port again", []*api.Service{svc("c1", sticky), svc("c2")}, twoLocal, nil},
		{"clusterset IPs added", []*api.Service{svc("c1", func(s *api.Service) {
			s.ClusterSetIPs = append(s.ClusterSetIPs, s.ClusterIPs[0], netip.MustParseAddr("10.97.0.1"))
		}), svc("c2")}, twoLocal, nil},
		{"not global", []*api.Service{svc("c1", notGlobal), svc("c2")}, twoLocal, nil},
		{"global again", []*api.Service{svc("c1"), svc("c2")}, twoLocal, nil},
	}
	ctx := context.Background()
	dp := newRecorder()
	m := New("c1", dp, nil)
	m.SetNode("n1", "z1")
	unhealthy := map[loadbalancer.NodeRef]bool{}
	for _, st := range steps {
		for _, s := range st.services {
			m.UpsertService(s)
		}
		for _, s := range st.slices {
			m.UpsertEndpointSlice(s)
		}
		for n := range unhealthy {
			if !slices.Contains(st.unhealthy, n) {
				if err := m.SetNodeHealth(ctx, n, true); err != nil {
					t.Fatal(err)
				}
				delete(unhealthy, n)
			}
		}
		for _, n := range st.unhealthy {
			if err := m.SetNodeHealth(ctx, n, false); err != nil {
				t.Fatal(err)
			}
			unhealthy[n] = true
		}
		if _, err := m.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}

		fresh := New("c1", newRecorder(), nil)
		fresh.SetNode("n1", "z1")
		for _, s := range st.services {
			fresh.UpsertService(s)
		}
		for _, s := range st.slices {
			fresh.UpsertEndpointSlice(s)
		}
		for _, n := range st.unhealthy {
			if err := fresh.SetNodeHealth(ctx, n, false); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := fresh.Sync(ctx); err != nil {
			t.Fatalf("%s: fresh: %v", st.name, err)
		}
		got, want := m.Programmed(), fresh.Programmed()
		if !slices.EqualFunc(got, want, equalService) {
			t.Errorf("%s: programmed after changes:\n got  %+v\n want %+v", st.name, got, want)
		}
		if gotDP := m.Programmed(); len(dp.state) != len(gotDP) {
			t.Errorf("%s: datapath holds %d frontends, merger %d", st.name, len(dp.state), len(gotDP))
		}
		for _, s := range got {
			if !equalService(dp.state[s.Frontend], s) {
				t.Errorf("%s: datapath %+v, merger %+v", st.name, dp.state[s.Frontend], s)
			}
			if n, ok := m.ServiceOf(s.Frontend); !ok || n != (Name{"ns", "web"}) {
				t.Errorf("%s: ServiceOf(%s) = %v, %t", st.name, s.Frontend, n, ok)
			}
		}
		m.mu.Lock()
		gotNodes, wantNodes := len(m.byNode), len(fresh.byNode)
		m.mu.Unlock()
		if gotNodes != wantNodes {
			t.Errorf("%s: byNode indexes %d nodes, a fresh merger %d", st.name, gotNodes, wantNodes)
		}
	}
}
