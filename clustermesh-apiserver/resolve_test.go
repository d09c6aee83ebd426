package apiserver

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
)

// TestResolve checks the KEP-1645 conflict resolution over exports sorted
// oldest first: ports are the union, the oldest export wins every field
// exporters disagree on, and the losers are named per field.
func TestResolve(t *testing.T) {
	http := api.ServicePort{Name: "http", Port: 80, Protocol: api.ProtocolTCP}
	exp := func(cluster string, age int, opts ...func(*api.Service)) *api.Service {
		s := &api.Service{Cluster: cluster, Namespace: "ns", Name: "web", ServiceExport: true,
			ExportCreated: time.Unix(int64(1000-age), 0), Ports: []api.ServicePort{http}}
		for _, o := range opts {
			o(s)
		}
		return s
	}
	ports := func(p ...api.ServicePort) func(*api.Service) { return func(s *api.Service) { s.Ports = p } }
	headless := func(s *api.Service) { s.Headless = true }
	affinity := func(s *api.Service) { s.SessionAffinityTimeout = 60 }
	tests := []struct {
		name      string
		exps      []*api.Service
		ports     string
		headless  bool
		conflicts string
	}{
		{"one export", []*api.Service{exp("c2", 2)}, "[{http 80 TCP}]", false, ""},
		{"identical exports", []*api.Service{exp("c2", 2), exp("c1", 1)}, "[{http 80 TCP}]", false, ""},
		{"union of ports", []*api.Service{exp("c2", 2), exp("c1", 1, ports(http, api.ServicePort{Name: "dns", Port: 53, Protocol: api.ProtocolUDP}))},
			"[{http 80 TCP} {dns 53 UDP}]", false, ""},
		{"port number conflict: oldest wins", []*api.Service{exp("c2", 2), exp("c1", 1, ports(api.ServicePort{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}))},
			"[{http 80 TCP}]", false, `PortConflict spec.ports["http"] winner c2 losers [c1]`},
		{"protocol conflict", []*api.Service{exp("c2", 2), exp("c3", 1, ports(api.ServicePort{Name: "http", Port: 80, Protocol: api.ProtocolUDP}))},
			"[{http 80 TCP}]", false, `PortConflict spec.ports["http"] winner c2 losers [c3]`},
		{"same port under another name", []*api.Service{exp("c2", 2), exp("c1", 1, ports(api.ServicePort{Name: "web", Port: 80, Protocol: api.ProtocolTCP}))},
			"[{http 80 TCP}]", false, `PortConflict spec.ports["web"] winner c2 losers [c1]`},
		{"type conflict: oldest headless wins", []*api.Service{exp("c1", 2, headless), exp("c2", 1), exp("c3", 0)},
			"[{http 80 TCP}]", true, `TypeConflict spec.type winner c1 losers [c2 c3]`},
		{"session affinity conflict", []*api.Service{exp("c2", 2), exp("c1", 1, affinity)},
			"[{http 80 TCP}]", false, `SessionAffinityConflict spec.sessionAffinity winner c2 losers [c1]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := resolve(tt.exps)
			var cs string
			for _, c := range r.conflicts {
				cs += fmt.Sprintf("%s %s winner %s losers %v", c.reason, c.field, c.winner, c.losers)
			}
			if got := fmt.Sprint(r.ports); got != tt.ports || r.headless != tt.headless || cs != tt.conflicts {
				t.Errorf("ports %s headless %v conflicts %q; want %s %v %q", got, r.headless, cs, tt.ports, tt.headless, tt.conflicts)
			}
			if msg := r.conflictMessage(types.NamespacedName{Namespace: "ns", Name: "web"}, ""); (msg != "") != (tt.conflicts != "") {
				t.Errorf("conflict message %q", msg)
			}
		})
	}
}

// TestDerivedName: the derived Service's name is stable, "derived-" and
// ten characters, and the same for the same service only.
func TestDerivedName(t *testing.T) {
	a := derivedName(types.NamespacedName{Namespace: "shop", Name: "web"})
	b := derivedName(types.NamespacedName{Namespace: "shopw", Name: "eb"})
	if len(a) != len("derived-")+10 || a != derivedName(types.NamespacedName{Namespace: "shop", Name: "web"}) || a == b {
		t.Errorf("derived names %q, %q", a, b)
	}
}
