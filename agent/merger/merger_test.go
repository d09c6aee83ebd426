package merger

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// recorder is a Datapath that records calls and keeps the resulting state.
type recorder struct {
	mu      sync.Mutex
	calls   []string
	state   map[loadbalancer.Frontend]loadbalancer.Service
	health  map[loadbalancer.NodeRef]bool
	failFor map[loadbalancer.Frontend]bool
	// refuseRemote refuses every service with a backend outside cluster 1,
	// as a datapath refuses a set it cannot hold.
	refuseRemote bool
}

func newRecorder() *recorder {
	return &recorder{state: map[loadbalancer.Frontend]loadbalancer.Service{}, health: map[loadbalancer.NodeRef]bool{}, failFor: map[loadbalancer.Frontend]bool{}}
}

func (r *recorder) UpsertService(_ context.Context, svc loadbalancer.Service) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "upsert "+svc.Frontend.String())
	if r.failFor[svc.Frontend] {
		return errors.New("injected failure")
	}
	if r.refuseRemote {
		for _, b := range append(slices.Clone(svc.Preferred), svc.Fallback...) {
			if b.Node.ClusterID != 1 {
				return errors.New("injected refusal of a remote backend")
			}
		}
	}
	r.state[svc.Frontend] = svc
	return nil
}

func (r *recorder) DeleteService(_ context.Context, fe loadbalancer.Frontend) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "delete "+fe.String())
	delete(r.state, fe)
	return nil
}

func (r *recorder) SetNodeHealth(_ context.Context, node loadbalancer.NodeRef, healthy bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("health %s %t", node, healthy))
	r.health[node] = healthy
	return nil
}

func (r *recorder) takeCalls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	slices.Sort(c)
	return c
}

// view renders the datapath state as "frontend: P[a b] F[c]" lines, sorted.
func (r *recorder) view() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for fe, s := range r.state {
		out = append(out, fe.String()+": P["+addrs(s.Preferred)+"] F["+addrs(s.Fallback)+"]")
	}
	slices.Sort(out)
	return out
}

func addrs(bs []loadbalancer.Backend) string {
	var s []string
	for _, b := range bs {
		s = append(s, b.Addr.String())
	}
	return strings.Join(s, " ")
}

var (
	httpPort = api.ServicePort{Name: "http", Port: 80, Protocol: api.ProtocolTCP}
	dnsPort  = api.ServicePort{Name: "dns", Port: 53, Protocol: api.ProtocolUDP}
)

type svcOpt func(*api.Service)

func notGlobal(s *api.Service)       { s.Global = false }
func notShared(s *api.Service)       { s.Shared = false }
func affinity(a api.Affinity) svcOpt { return func(s *api.Service) { s.Affinity = a } }
func minLocal(n uint32) svcOpt       { return func(s *api.Service) { s.MinLocalBackends = n } }
func vips(ips ...string) svcOpt {
	return func(s *api.Service) {
		s.ClusterIPs = nil
		for _, ip := range ips {
			s.ClusterIPs = append(s.ClusterIPs, netip.MustParseAddr(ip))
		}
	}
}
func ports(p ...api.ServicePort) svcOpt { return func(s *api.Service) { s.Ports = p } }

// imported is the local entry the apiserver writes for a service imported
// through the Multi-Cluster Services API: the derived Service's clusterset
// IPs, global, lending no backend.
func imported(ips ...string) svcOpt {
	return func(s *api.Service) {
		s.ClusterIPs, s.Shared = nil, false
		for _, ip := range ips {
			s.ClusterSetIPs = append(s.ClusterSetIPs, netip.MustParseAddr(ip))
		}
	}
}
func exported(s *api.Service) { s.ServiceExport = true }

var clusterIDs = map[string]uint32{"c1": 1, "c2": 2, "c3": 3}

func svc(cluster string, opts ...svcOpt) *api.Service {
	s := &api.Service{
		Cluster: cluster, ClusterID: clusterIDs[cluster], Namespace: "ns", Name: "web",
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0." + cluster[1:])},
		Ports:      []api.ServicePort{httpPort},
		Global:     true, Shared: true,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

type epOpt func(*api.Endpoint)

func notReady(e *api.Endpoint)    { e.Ready = false }
func terminating(e *api.Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }
func gone(e *api.Endpoint)        { e.Ready, e.Serving, e.Terminating = false, false, true }
func onNode(n string) epOpt       { return func(e *api.Endpoint) { e.NodeName = n } }

func ep(ip string, opts ...epOpt) api.Endpoint {
	e := api.Endpoint{Addresses: []netip.Addr{netip.MustParseAddr(ip)}, NodeName: "n-" + ip, Ready: true, Serving: true}
	for _, o := range opts {
		o(&e)
	}
	return e
}

var httpEP = api.EndpointPort{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}

func slice(cluster, name string, p []api.EndpointPort, eps ...api.Endpoint) *api.EndpointSlice {
	return &api.EndpointSlice{Cluster: cluster, Namespace: "ns", Service: "web", Name: name, Ports: p, Endpoints: eps}
}

func httpSlice(cluster string, eps ...api.Endpoint) *api.EndpointSlice {
	return slice(cluster, cluster+"-a", []api.EndpointPort{httpEP}, eps...)
}

func TestMergeTable(t *testing.T) {
	const fe = "10.96.0.1:80/TCP"
	tests := []struct {
		name      string
		services  []*api.Service
		slices    []*api.EndpointSlice
		unhealthy []loadbalancer.NodeRef
		want      []string
	}{
		{
			name:     "affinity none merges all clusters",
			services: []*api.Service{svc("c1"), svc("c2"), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080 10.3.0.1:8080] F[]"},
		},
		{
			name:     "remote shared=false lends no backends",
			services: []*api.Service{svc("c1"), svc("c2", notShared), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.3.0.1:8080] F[]"},
		},
		{
			name:     "local shared=false still uses its own and remote backends",
			services: []*api.Service{svc("c1", notShared), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "remote non-global service lends nothing",
			services: []*api.Service{svc("c1"), svc("c2", notGlobal)},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080] F[]"},
		},
		{
			name:     "remote slices without a remote service are ignored",
			services: []*api.Service{svc("c1")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080] F[]"},
		},
		{
			name:     "local non-global service programs nothing",
			services: []*api.Service{svc("c1", notGlobal), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
		},
		{
			name:     "no local service programs nothing",
			services: []*api.Service{svc("c2"), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c2", ep("10.2.0.1"))},
		},
		{
			name:     "local service without backends anywhere is programmed empty",
			services: []*api.Service{svc("c1")},
			want:     []string{fe + ": P[] F[]"},
		},
		{
			name:     "MCS import: the clusterset IP balances the exporter's backends",
			services: []*api.Service{svc("c1", imported("10.96.9.1")), svc("c2", exported)},
			slices:   []*api.EndpointSlice{httpSlice("c2", ep("10.2.0.1"), ep("10.2.0.2"))},
			want:     []string{"10.96.9.1:80/TCP: P[10.2.0.1:8080 10.2.0.2:8080] F[]"},
		},
		{
			name:     "MCS import into an exporting cluster: cluster IP and clusterset IP share every exporter's backends",
			services: []*api.Service{svc("c1", exported, func(s *api.Service) { s.ClusterSetIPs = []netip.Addr{netip.MustParseAddr("10.96.9.1")} }), svc("c2", exported), svc("c3", notGlobal)},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want: []string{
				fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]",
				"10.96.9.1:80/TCP: P[10.1.0.1:8080 10.2.0.1:8080] F[]",
			},
		},
		{
			name:     "affinity local prefers local, remote as fallback",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2"), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1"), ep("10.1.0.2")), httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.1.0.2:8080] F[10.2.0.1:8080 10.3.0.1:8080]"},
		},
		{
			name:     "affinity local settings come from the local service only",
			services: []*api.Service{svc("c1"), svc("c2", affinity(api.AffinityLocal))},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "affinity local without local backends spills to all",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2"), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want:     []string{fe + ": P[10.2.0.1:8080 10.3.0.1:8080] F[]"},
		},
		{
			name:     "affinity local with not-ready local backends spills",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", notReady)), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.2.0.1:8080] F[]"},
		},
		{
			name:     "affinity local below min-local-backends spills local+remote",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal), minLocal(3)), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1"), ep("10.1.0.2")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.1.0.2:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "affinity local at min-local-backends stays local",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal), minLocal(2)), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1"), ep("10.1.0.2")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.1.0.2:8080] F[10.2.0.1:8080]"},
		},
		{
			name:      "affinity local counts only backends on healthy nodes",
			services:  []*api.Service{svc("c1", affinity(api.AffinityLocal), minLocal(2)), svc("c2")},
			slices:    []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1"), ep("10.1.0.2")), httpSlice("c2", ep("10.2.0.1"))},
			unhealthy: []loadbalancer.NodeRef{{ClusterID: 1, Name: "n-10.1.0.2"}},
			want:      []string{fe + ": P[10.1.0.1:8080 10.1.0.2:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:      "health of a same-named node in another cluster does not count",
			services:  []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2")},
			slices:    []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", onNode("n1"))), httpSlice("c2", ep("10.2.0.1", onNode("n1")))},
			unhealthy: []loadbalancer.NodeRef{{ClusterID: 2, Name: "n1"}},
			want:      []string{fe + ": P[10.1.0.1:8080] F[10.2.0.1:8080]"},
		},
		{
			name:     "affinity remote prefers remote, local as fallback",
			services: []*api.Service{svc("c1", affinity(api.AffinityRemote)), svc("c2"), svc("c3")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1")), httpSlice("c3", ep("10.3.0.1"))},
			want:     []string{fe + ": P[10.2.0.1:8080 10.3.0.1:8080] F[10.1.0.1:8080]"},
		},
		{
			name:     "affinity remote without remote backends uses local",
			services: []*api.Service{svc("c1", affinity(api.AffinityRemote)), svc("c2", notShared)},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080] F[]"},
		},
		{
			name:      "affinity remote with every remote node dead spills",
			services:  []*api.Service{svc("c1", affinity(api.AffinityRemote)), svc("c2")},
			slices:    []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1")), httpSlice("c2", ep("10.2.0.1"))},
			unhealthy: []loadbalancer.NodeRef{{ClusterID: 2, Name: "n-10.2.0.1"}},
			want:      []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "serving endpoints are used when none is ready anywhere",
			services: []*api.Service{svc("c1"), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", terminating), ep("10.1.0.2", gone)), httpSlice("c2", ep("10.2.0.1", terminating))},
			want:     []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "serving endpoints are dropped while any cluster has a ready one",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", terminating)), httpSlice("c2", ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.2.0.1:8080] F[]"},
		},
		{
			name:      "ready endpoints only on dead nodes let serving ones in",
			services:  []*api.Service{svc("c1"), svc("c2")},
			slices:    []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", terminating)), httpSlice("c2", ep("10.2.0.1"))},
			unhealthy: []loadbalancer.NodeRef{{ClusterID: 2, Name: "n-10.2.0.1"}},
			want:      []string{fe + ": P[10.1.0.1:8080 10.2.0.1:8080] F[]"},
		},
		{
			name:     "neither ready nor serving is never used",
			services: []*api.Service{svc("c1")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", gone), ep("10.1.0.2", notReady, func(e *api.Endpoint) { e.Serving = false }))},
			want:     []string{fe + ": P[] F[]"},
		},
		{
			name: "backend port resolved by port name per cluster",
			services: []*api.Service{
				svc("c1", ports(httpPort, api.ServicePort{Name: "metrics", Port: 9090, Protocol: api.ProtocolTCP})),
				svc("c2", ports(httpPort, api.ServicePort{Name: "metrics", Port: 9090, Protocol: api.ProtocolTCP})),
			},
			slices: []*api.EndpointSlice{
				slice("c1", "a", []api.EndpointPort{{Name: "metrics", Port: 9100, Protocol: api.ProtocolTCP}, httpEP}, ep("10.1.0.1")),
				slice("c2", "a", []api.EndpointPort{{Name: "http", Port: 8081, Protocol: api.ProtocolTCP}, {Name: "metrics", Port: 9101, Protocol: api.ProtocolTCP}}, ep("10.2.0.1")),
			},
			want: []string{
				fe + ": P[10.1.0.1:8080 10.2.0.1:8081] F[]",
				"10.96.0.1:9090/TCP: P[10.1.0.1:9100 10.2.0.1:9101] F[]",
			},
		},
		{
			name:     "slice without the port name contributes nothing",
			services: []*api.Service{svc("c1"), svc("c2")},
			slices: []*api.EndpointSlice{
				httpSlice("c1", ep("10.1.0.1")),
				slice("c2", "a", []api.EndpointPort{{Name: "web", Port: 8080, Protocol: api.ProtocolTCP}}, ep("10.2.0.1")),
			},
			want: []string{fe + ": P[10.1.0.1:8080] F[]"},
		},
		{
			name:     "port name matches only with the same protocol",
			services: []*api.Service{svc("c1", ports(dnsPort, api.ServicePort{Name: "dns-tcp", Port: 53, Protocol: api.ProtocolTCP}))},
			slices: []*api.EndpointSlice{slice("c1", "a", []api.EndpointPort{
				{Name: "dns", Port: 5353, Protocol: api.ProtocolTCP},
				{Name: "dns-tcp", Port: 5354, Protocol: api.ProtocolTCP},
			}, ep("10.1.0.1"))},
			want: []string{"10.96.0.1:53/TCP: P[10.1.0.1:5354] F[]", "10.96.0.1:53/UDP: P[] F[]"},
		},
		{
			name:     "SCTP ports get no frontend",
			services: []*api.Service{svc("c1", ports(httpPort, api.ServicePort{Name: "s", Port: 9, Protocol: api.ProtocolSCTP}))},
			slices:   []*api.EndpointSlice{slice("c1", "a", []api.EndpointPort{httpEP, {Name: "s", Port: 9, Protocol: api.ProtocolSCTP}}, ep("10.1.0.1"))},
			want:     []string{fe + ": P[10.1.0.1:8080] F[]"},
		},
		{
			name:     "dual-stack: each frontend gets backends of its family",
			services: []*api.Service{svc("c1", vips("10.96.0.1", "fd00::1")), svc("c2")},
			slices: []*api.EndpointSlice{
				httpSlice("c1", ep("10.1.0.1")),
				slice("c1", "v6", []api.EndpointPort{httpEP}, ep("fd01::1")),
				slice("c2", "v6", []api.EndpointPort{httpEP}, ep("fd02::1")),
			},
			want: []string{fe + ": P[10.1.0.1:8080] F[]", "[fd00::1]:80/TCP: P[[fd01::1]:8080 [fd02::1]:8080] F[]"},
		},
		{
			name:     "several slices of one cluster are merged",
			services: []*api.Service{svc("c1"), svc("c2")},
			slices: []*api.EndpointSlice{
				slice("c1", "a", []api.EndpointPort{httpEP}, ep("10.1.0.2")),
				slice("c1", "b", []api.EndpointPort{httpEP}, ep("10.1.0.1")),
				slice("c2", "a", []api.EndpointPort{httpEP}, ep("10.2.0.1")),
				slice("c2", "b", []api.EndpointPort{httpEP}, ep("10.2.0.2")),
			},
			want: []string{fe + ": P[10.1.0.1:8080 10.1.0.2:8080 10.2.0.1:8080 10.2.0.2:8080] F[]"},
		},
		{
			name:     "an address claimed by two clusters is kept once, as local",
			services: []*api.Service{svc("c1", affinity(api.AffinityLocal)), svc("c2")},
			slices:   []*api.EndpointSlice{httpSlice("c1", ep("10.9.0.1")), httpSlice("c2", ep("10.9.0.1"), ep("10.2.0.1"))},
			want:     []string{fe + ": P[10.9.0.1:8080] F[10.2.0.1:8080]"},
		},
		{
			name:     "multiple cluster IPs and ports give one frontend each",
			services: []*api.Service{svc("c1", vips("10.96.0.1", "10.96.1.1"), ports(httpPort, dnsPort))},
			slices:   []*api.EndpointSlice{slice("c1", "a", []api.EndpointPort{httpEP, {Name: "dns", Port: 5353, Protocol: api.ProtocolUDP}}, ep("10.1.0.1"))},
			want: []string{
				fe + ": P[10.1.0.1:8080] F[]",
				"10.96.0.1:53/UDP: P[10.1.0.1:5353] F[]",
				"10.96.1.1:53/UDP: P[10.1.0.1:5353] F[]",
				"10.96.1.1:80/TCP: P[10.1.0.1:8080] F[]",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeView(t, nil, tt.services, tt.slices, tt.unhealthy)
			want := slices.Clone(tt.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("datapath state:\n got  %q\n want %q", got, want)
			}
		})
	}
}

// mergeView merges services and slices in a fresh merger of c1 (set up
// further by setup, if not nil), with the nodes unhealthy, and returns the
// datapath's state (recorder.view).
func mergeView(t *testing.T, setup func(*Merger), services []*api.Service, slices []*api.EndpointSlice, unhealthy []loadbalancer.NodeRef) []string {
	t.Helper()
	ctx := context.Background()
	dp := newRecorder()
	m := New("c1", dp, nil)
	if setup != nil {
		setup(m)
	}
	for _, s := range services {
		m.UpsertService(s)
	}
	for _, s := range slices {
		m.UpsertEndpointSlice(s)
	}
	for _, n := range unhealthy {
		if err := m.SetNodeHealth(ctx, n, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	return dp.view()
}

func TestBackendNodeRefs(t *testing.T) {
	ctx := context.Background()
	dp := newRecorder()
	m := New("c1", dp, nil)
	m.UpsertService(svc("c1"))
	s2 := svc("c2")
	s2.ClusterID = 0 // the cluster config's ID must win
	m.UpsertService(s2)
	m.SetCluster("c2", 42)
	m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1", onNode("a"))))
	m.UpsertEndpointSlice(httpSlice("c2", ep("10.2.0.1", onNode("b"))))
	if _, err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := m.Programmed()
	if len(got) != 1 {
		t.Fatalf("programmed %d services, want 1", len(got))
	}
	want := []loadbalancer.Backend{
		{Addr: netip.MustParseAddrPort("10.1.0.1:8080"), Node: loadbalancer.NodeRef{ClusterID: 1, Name: "a"}},
		{Addr: netip.MustParseAddrPort("10.2.0.1:8080"), Node: loadbalancer.NodeRef{ClusterID: 42, Name: "b"}},
	}
	if !slices.Equal(got[0].Preferred, want) || got[0].Name != "ns/web" {
		t.Errorf("got %+v, want preferred %+v name ns/web", got[0], want)
	}
}

// TestSyncPushesDiffsOnly walks one service through a sequence of changes and
// checks the exact datapath calls of each step.
func TestSyncPushesDiffsOnly(t *testing.T) {
	ctx := context.Background()
	dp := newRecorder()
	m := New("c1", dp, nil)
	other := &api.Service{Cluster: "c1", ClusterID: 1, Namespace: "ns", Name: "other", Global: true, Shared: true,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.9.9")}, Ports: []api.ServicePort{httpPort}}
	n1 := loadbalancer.NodeRef{ClusterID: 1, Name: "n1"}

	steps := []struct {
		name      string
		do        func()
		wantCalls []string
		wantView  []string
	}{
		{
			name: "initial",
			do: func() {
				m.UpsertService(svc("c1", affinity(api.AffinityLocal), vips("10.96.0.1", "10.96.1.1")))
				m.UpsertService(svc("c2"))
				m.UpsertService(other)
				m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1", onNode("n1"))))
				m.UpsertEndpointSlice(httpSlice("c2", ep("10.2.0.1")))
			},
			wantCalls: []string{"upsert 10.96.0.1:80/TCP", "upsert 10.96.1.1:80/TCP", "upsert 10.96.9.9:80/TCP"},
			wantView: []string{
				"10.96.0.1:80/TCP: P[10.1.0.1:8080] F[10.2.0.1:8080]",
				"10.96.1.1:80/TCP: P[10.1.0.1:8080] F[10.2.0.1:8080]",
				"10.96.9.9:80/TCP: P[] F[]",
			},
		},
		{name: "no change, no calls", do: func() {}},
		{
			name:      "re-upsert of identical objects pushes nothing",
			do:        func() { m.UpsertService(svc("c2")); m.UpsertEndpointSlice(httpSlice("c2", ep("10.2.0.1"))) },
			wantCalls: nil,
		},
		{
			name:      "remote backend added touches only that service",
			do:        func() { m.UpsertEndpointSlice(httpSlice("c2", ep("10.2.0.1"), ep("10.2.0.2"))) },
			wantCalls: []string{"upsert 10.96.0.1:80/TCP", "upsert 10.96.1.1:80/TCP"},
		},
		{
			name:      "local node dies: health passed through, service spills",
			do:        func() { _ = m.SetNodeHealth(ctx, n1, false) },
			wantCalls: []string{"health 1/n1 false", "upsert 10.96.0.1:80/TCP", "upsert 10.96.1.1:80/TCP"},
			wantView: []string{
				"10.96.0.1:80/TCP: P[10.1.0.1:8080 10.2.0.1:8080 10.2.0.2:8080] F[]",
				"10.96.1.1:80/TCP: P[10.1.0.1:8080 10.2.0.1:8080 10.2.0.2:8080] F[]",
				"10.96.9.9:80/TCP: P[] F[]",
			},
		},
		{
			name:      "repeated health report changes nothing in the merge",
			do:        func() { _ = m.SetNodeHealth(ctx, n1, false) },
			wantCalls: []string{"health 1/n1 false"},
		},
		{
			name:      "node back: local preferred again",
			do:        func() { _ = m.SetNodeHealth(ctx, n1, true) },
			wantCalls: []string{"health 1/n1 true", "upsert 10.96.0.1:80/TCP", "upsert 10.96.1.1:80/TCP"},
			wantView: []string{
				"10.96.0.1:80/TCP: P[10.1.0.1:8080] F[10.2.0.1:8080 10.2.0.2:8080]",
				"10.96.1.1:80/TCP: P[10.1.0.1:8080] F[10.2.0.1:8080 10.2.0.2:8080]",
				"10.96.9.9:80/TCP: P[] F[]",
			},
		},
		{
			name:      "one cluster IP removed: one delete",
			do:        func() { m.UpsertService(svc("c1", affinity(api.AffinityLocal))) },
			wantCalls: []string{"delete 10.96.1.1:80/TCP"},
		},
		{
			name:      "remote cluster drained",
			do:        func() { m.DeleteCluster("c2") },
			wantCalls: []string{"upsert 10.96.0.1:80/TCP"},
			wantView: []string{
				"10.96.0.1:80/TCP: P[10.1.0.1:8080] F[]",
				"10.96.9.9:80/TCP: P[] F[]",
			},
		},
		{
			name:      "local slice deleted",
			do:        func() { m.DeleteEndpointSlice("c1", "ns", "web", "c1-a") },
			wantCalls: []string{"upsert 10.96.0.1:80/TCP"},
		},
		{
			name:      "local service turned non-global: frontends removed",
			do:        func() { m.UpsertService(svc("c1", notGlobal)) },
			wantCalls: []string{"delete 10.96.0.1:80/TCP"},
		},
		{
			name:      "deleting unknown objects is a no-op",
			do:        func() { m.DeleteService("c9", "ns", "web"); m.DeleteEndpointSlice("c9", "ns", "web", "x") },
			wantCalls: nil,
		},
		{
			name:      "local service deleted",
			do:        func() { m.DeleteService("c1", "ns", "other") },
			wantCalls: []string{"delete 10.96.9.9:80/TCP"},
			wantView:  []string{},
		},
	}
	for _, st := range steps {
		st.do()
		if _, err := m.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := dp.takeCalls(); !slices.Equal(got, st.wantCalls) {
			t.Errorf("%s: calls %q, want %q", st.name, got, st.wantCalls)
		}
		if st.wantView != nil {
			if got := dp.view(); !slices.Equal(got, st.wantView) && !(len(got) == 0 && len(st.wantView) == 0) {
				t.Errorf("%s: view %q, want %q", st.name, got, st.wantView)
			}
		}
	}
	if m.Dirty() != 0 {
		t.Errorf("%d services still dirty", m.Dirty())
	}
}

func TestSyncRetriesFailedFrontends(t *testing.T) {
	ctx := context.Background()
	dp := newRecorder()
	m := New("c1", dp, nil)
	bad := loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.0.1:80"), Protocol: loadbalancer.TCP}
	dp.failFor[bad] = true
	m.UpsertService(svc("c1"))
	m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1")))
	_, err := m.Sync(ctx)
	if !errors.Is(err, ErrDatapath) || !strings.Contains(err.Error(), "ns/web") {
		t.Fatalf("Sync error = %v, want ErrDatapath naming ns/web", err)
	}
	if m.Dirty() != 1 {
		t.Fatalf("failed service not kept dirty")
	}
	delete(dp.failFor, bad)
	res, err := m.Sync(ctx)
	if err != nil || res.Upserts != 1 {
		t.Fatalf("retry: %+v %v, want one upsert", res, err)
	}
	if got := dp.view(); len(got) != 1 {
		t.Errorf("view after retry %q", got)
	}
}

// TestRemoteBackendsNeverBlockLocal has the datapath refuse every merged set
// holding a peer's backend: the local backends are programmed alone, local
// changes keep flowing, and the merged set goes in once it is accepted.
func TestRemoteBackendsNeverBlockLocal(t *testing.T) {
	ctx := context.Background()
	dp := newRecorder()
	dp.refuseRemote = true
	m := New("c1", dp, nil)
	m.UpsertService(svc("c1"))
	m.UpsertService(svc("c2"))
	m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1")))
	m.UpsertEndpointSlice(httpSlice("c2", ep("10.2.0.1")))
	steps := []struct {
		name    string
		do      func()
		wantErr bool
		want    string
	}{
		{"merged set refused: local alone", func() {}, true, "10.96.0.1:80/TCP: P[10.1.0.1:8080] F[]"},
		{"refused again: the local set is not rewritten", func() { dp.takeCalls() }, true, "10.96.0.1:80/TCP: P[10.1.0.1:8080] F[]"},
		{"local change still flows", func() { m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1"), ep("10.1.0.2"))) }, true, "10.96.0.1:80/TCP: P[10.1.0.1:8080 10.1.0.2:8080] F[]"},
		{"merged set accepted again", func() { dp.refuseRemote = false }, false, "10.96.0.1:80/TCP: P[10.1.0.1:8080 10.1.0.2:8080 10.2.0.1:8080] F[]"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.do()
			_, err := m.Sync(ctx)
			if (err != nil) != st.wantErr {
				t.Fatalf("Sync error %v, want error=%v", err, st.wantErr)
			}
			if got := dp.view(); len(got) != 1 || got[0] != st.want {
				t.Errorf("view %v, want %s", got, st.want)
			}
			if strings.HasPrefix(st.name, "refused again") {
				if calls := dp.takeCalls(); len(calls) != 1 {
					t.Errorf("datapath calls %v, want only the refused merged upsert", calls)
				}
			}
		})
	}
}

func inZone(z string) epOpt { return func(e *api.Endpoint) { e.Zone = z } }

// TestServiceSemantics: internalTrafficPolicy Local, trafficDistribution
// PreferClose and session affinity, as the merger turns them into preferred
// and fallback sets for the agent of node n1 in zone z1 of c1.
func TestServiceSemantics(t *testing.T) {
	const fe = "10.96.0.1:80/TCP"
	local := func(s *api.Service) { s.InternalTrafficLocal = true }
	closeBy := func(s *api.Service) { s.PreferClose = true }
	tests := []struct {
		name      string
		services  []*api.Service
		slices    []*api.EndpointSlice
		unhealthy []loadbalancer.NodeRef
		want      string
	}{
		{"internal traffic local: the node's backends only",
			[]*api.Service{svc("c1", local), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", onNode("n1")), ep("10.1.0.2", onNode("n2"))), httpSlice("c2", ep("10.2.0.1", onNode("n1")))},
			nil, fe + ": P[10.1.0.1:8080] F[]"},
		{"internal traffic local, none on the node: no backend (connects fail at once)",
			[]*api.Service{svc("c1", local), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c1", ep("10.1.0.2", onNode("n2"))), httpSlice("c2", ep("10.2.0.1"))},
			nil, fe + ": P[] F[]"},
		{"prefer close: zone, then the cluster as fallback",
			[]*api.Service{svc("c1", closeBy), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", inZone("z1")), ep("10.1.0.2", inZone("z2"))), httpSlice("c2", ep("10.2.0.1", inZone("z1")))},
			nil, fe + ": P[10.1.0.1:8080] F[10.1.0.2:8080]"},
		{"prefer close: no zone backend, the cluster then other clusters",
			[]*api.Service{svc("c1", closeBy), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c1", ep("10.1.0.2", inZone("z2"))), httpSlice("c2", ep("10.2.0.1", inZone("z1")))},
			nil, fe + ": P[10.1.0.2:8080] F[10.2.0.1:8080]"},
		{"prefer close: zone backend's node down, the next tier leads",
			[]*api.Service{svc("c1", closeBy), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c1", ep("10.1.0.1", inZone("z1"), onNode("n1"))), httpSlice("c2", ep("10.2.0.1"))},
			[]loadbalancer.NodeRef{{ClusterID: 1, Name: "n1"}}, fe + ": P[10.2.0.1:8080] F[]"},
		{"prefer close: only other clusters",
			[]*api.Service{svc("c1", closeBy), svc("c2")},
			[]*api.EndpointSlice{httpSlice("c2", ep("10.2.0.1", inZone("z1")))},
			nil, fe + ": P[10.2.0.1:8080] F[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(mergeView(t, func(m *Merger) { m.SetNode("n1", "z1") }, tt.services, tt.slices, tt.unhealthy), "\n")
			if got != tt.want {
				t.Errorf("datapath state:\n got  %q\n want %q", got, tt.want)
			}
		})
	}

	t.Run("session affinity timeout reaches the datapath", func(t *testing.T) {
		dp := newRecorder()
		m := New("c1", dp, nil)
		m.UpsertService(svc("c1", func(s *api.Service) { s.SessionAffinityTimeout = 60 }))
		m.UpsertEndpointSlice(httpSlice("c1", ep("10.1.0.1")))
		if _, err := m.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, s := range dp.state {
			if s.AffinityTimeout != 60*time.Second {
				t.Errorf("affinity timeout %v, want 60s", s.AffinityTimeout)
			}
		}
	})
}

// bulkRecorder is a recorder with a bulk path; it refuses the frontends in
// refuse.
type bulkRecorder struct {
	*recorder
	bulkCalls int
	refuse    map[loadbalancer.Frontend]bool
}

func (b *bulkRecorder) UpsertServices(ctx context.Context, svcs []loadbalancer.Service) map[loadbalancer.Frontend]error {
	b.mu.Lock()
	b.bulkCalls++
	b.mu.Unlock()
	errs := map[loadbalancer.Frontend]error{}
	for _, s := range svcs {
		if b.refuse[s.Frontend] {
			errs[s.Frontend] = errors.New("refused in bulk")
			continue
		}
		b.mu.Lock()
		b.state[s.Frontend] = s
		b.mu.Unlock()
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// TestSyncBulk: many changed frontends go to the datapath in one bulk
// call; one the bulk refused is retried on its own (and fails there too,
// reported); a few changes go one by one.
func TestSyncBulk(t *testing.T) {
	ctx := context.Background()
	dp := &bulkRecorder{recorder: newRecorder(), refuse: map[loadbalancer.Frontend]bool{}}
	m := New("c1", dp, nil)
	for i := 0; i < 100; i++ {
		s := svc("c1", vips(fmt.Sprintf("10.96.1.%d", i)))
		s.Name = fmt.Sprintf("web%d", i)
		m.UpsertService(s)
		sl := httpSlice("c1", ep(fmt.Sprintf("10.1.1.%d", i)))
		sl.Service = s.Name
		m.UpsertEndpointSlice(sl)
	}
	bad := loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.1.7:80"), Protocol: loadbalancer.TCP}
	dp.refuse[bad] = true
	dp.failFor[bad] = true
	if _, err := m.Sync(ctx); err == nil || !strings.Contains(err.Error(), "10.96.1.7") {
		t.Fatalf("sync: %v, want the refused frontend reported", err)
	}
	if dp.bulkCalls != 1 || len(dp.state) != 99 {
		t.Fatalf("%d bulk calls, %d frontends programmed; want 1 and 99", dp.bulkCalls, len(dp.state))
	}
	if calls := dp.takeCalls(); len(calls) != 1 || calls[0] != "upsert "+bad.String() {
		t.Fatalf("single calls %v: want only the refused frontend retried", calls)
	}
	// A small change goes one by one.
	m.UpsertEndpointSlice(func() *api.EndpointSlice {
		sl := httpSlice("c1", ep("10.1.1.200"))
		sl.Service = "web3"
		return sl
	}())
	delete(dp.failFor, bad)
	delete(dp.refuse, bad)
	if _, err := m.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if dp.bulkCalls != 1 || len(dp.state) != 100 {
		t.Fatalf("after a small change: %d bulk calls, %d frontends; want 1 and 100", dp.bulkCalls, len(dp.state))
	}
}

// TestStateForgotten checks that a service's per-cluster state goes with
// the last of its objects, in any order of removal: the merger holds every
// remote service for as long as it exists, so nothing may stay behind.
func TestStateForgotten(t *testing.T) {
	tests := []struct {
		name   string
		remove func(m *Merger)
	}{
		{"services then slices", func(m *Merger) {
			for _, c := range []string{"c1", "c2", "c3"} {
				m.DeleteService(c, "ns", "web")
			}
			for _, c := range []string{"c3", "c1", "c2"} {
				m.DeleteEndpointSlice(c, "ns", "web", c+"-a")
			}
		}},
		{"slices then services", func(m *Merger) {
			for _, c := range []string{"c2", "c1", "c3"} {
				m.DeleteEndpointSlice(c, "ns", "web", c+"-a")
			}
			for _, c := range []string{"c3", "c2", "c1"} {
				m.DeleteService(c, "ns", "web")
			}
		}},
		{"clusters", func(m *Merger) {
			for _, c := range []string{"c2", "c3", "c1"} {
				m.DeleteCluster(c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp := newRecorder()
			m := New("c1", dp, nil)
			for i, c := range []string{"c3", "c1", "c2"} {
				m.UpsertService(svc(c))
				m.UpsertEndpointSlice(httpSlice(c, ep(fmt.Sprintf("10.%d.0.1", i+1))))
			}
			if _, err := m.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(dp.view(), "\n"); got != "10.96.0.1:80/TCP: P[10.1.0.1:8080 10.2.0.1:8080 10.3.0.1:8080] F[]" {
				t.Fatalf("merged: %s", got)
			}
			tt.remove(m)
			if len(m.services) != 0 {
				t.Errorf("state left behind: %+v", m.services)
			}
			if _, err := m.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			if v := dp.view(); len(v) != 0 {
				t.Errorf("still programmed: %v", v)
			}
		})
	}
}
