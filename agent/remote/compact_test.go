package remote

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"unsafe"

	"github.com/clustermesh/clustermesh/api"
)

// decoded is what decoding gives: every string and list its own copy.
func decoded(s string) string { return strings.Clone(s) }

func sameString(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

func TestCompactShares(t *testing.T) {
	c := New(Options{Name: "c2"})
	port := func(p uint16) []api.EndpointPort {
		return []api.EndpointPort{{Name: decoded("http"), Port: p, Protocol: api.Protocol(decoded("TCP"))}}
	}
	mk := func(name string, p uint16) *api.EndpointSlice {
		eps := make([]api.Endpoint, 3, 16) // decoding appends: spare capacity
		for i := range eps {
			eps[i] = api.Endpoint{Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 2, 0, byte(i + 1)})}, NodeName: decoded("node-1"), Zone: decoded("z1"), Ready: true}
		}
		return &api.EndpointSlice{Cluster: decoded("c2"), Namespace: decoded("ns"), Service: decoded("web"), Name: decoded(name), Ports: port(p), Endpoints: eps}
	}
	a, b, other := mk("a", 8080), mk("b", 8080), mk("c", 9090)
	for _, es := range []*api.EndpointSlice{a, b, other} {
		c.compact(es)
	}
	for _, tt := range []struct {
		what string
		x, y string
	}{
		{"cluster", a.Cluster, c.name},
		{"namespace", a.Namespace, b.Namespace},
		{"service", a.Service, b.Service},
		{"node name", a.Endpoints[0].NodeName, b.Endpoints[2].NodeName},
		{"zone", a.Endpoints[1].Zone, b.Endpoints[0].Zone},
	} {
		if tt.x != tt.y || !sameString(tt.x, tt.y) {
			t.Errorf("%s: %q and %q are not one copy", tt.what, tt.x, tt.y)
		}
	}
	if &a.Ports[0] != &b.Ports[0] || cap(a.Ports) != len(a.Ports) {
		t.Errorf("equal port lists not shared, or shared with spare capacity (cap %d)", cap(a.Ports))
	}
	if &a.Ports[0] == &other.Ports[0] || other.Ports[0].Port != 9090 {
		t.Errorf("different port lists shared: %v", other.Ports)
	}
	if cap(a.Endpoints) != len(a.Endpoints) || a.Endpoints[2].Addresses[0] != netip.MustParseAddr("10.2.0.3") {
		t.Errorf("endpoints not held at their size: len %d cap %d, %v", len(a.Endpoints), cap(a.Endpoints), a.Endpoints)
	}

	// A peer with ever new port lists shares up to the bound, then keeps
	// its lists its own: nothing grows without limit.
	for p := range 2 * maxSharedPortLists {
		es := mk(fmt.Sprint("p", p), uint16(10000+p))
		c.compact(es)
		if es.Ports[0].Port != uint16(10000+p) {
			t.Fatalf("slice %d: ports %v", p, es.Ports)
		}
	}
	if n := len(c.ports.endpoints); n != maxSharedPortLists {
		t.Errorf("%d port lists shared, bound %d", n, maxSharedPortLists)
	}

	svc := &api.Service{Cluster: decoded("c2"), Namespace: decoded("ns"), Name: decoded("web"), Ports: []api.ServicePort{{Name: "http", Port: 80, Protocol: api.ProtocolTCP}}}
	c.compact(svc)
	if !sameString(svc.Name, a.Service) || !sameString(svc.Namespace, a.Namespace) {
		t.Errorf("a service's names are not shared with its slices'")
	}
}
