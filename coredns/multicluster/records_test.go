package multicluster

import (
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/miekg/dns"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// fakeSource is a literal source for the pure lookup logic.
type fakeSource struct {
	svcs map[string]*service
	eps  map[string][]endpoint
}

func (f fakeSource) service(ns, name string) (*service, bool) {
	s, ok := f.svcs[ns+"/"+name]
	return s, ok
}
func (f fakeSource) endpoints(ns, name string) []endpoint { return f.eps[ns+"/"+name] }
func (f fakeSource) hasNamespace(ns string) bool {
	for k := range f.svcs {
		if strings.HasPrefix(k, ns+"/") {
			return true
		}
	}
	return false
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestLookup(t *testing.T) {
	src := fakeSource{
		svcs: map[string]*service{
			"ns/web": {namespace: "ns", name: "web", ips: addrs("10.0.0.10", "fd00::10"),
				ports: []port{{name: "http", protocol: "tcp", number: 80}, {protocol: "tcp", number: 81}}},
			"ns/db": {namespace: "ns", name: "db", headless: true,
				ports: []port{{name: "pg", protocol: "tcp", number: 5432}}},
			"ns/empty": {namespace: "ns", name: "empty", headless: true},
		},
		eps: map[string][]endpoint{
			"ns/db": {
				{cluster: "c1", hostname: "db-0", addrs: addrs("10.1.0.1")},
				{cluster: "c2", hostname: "db-0", addrs: addrs("10.2.0.1")},
				{cluster: "c2", hostname: "10-2-0-2", addrs: addrs("10.2.0.2")},
			},
		},
	}
	const zone = "clusterset.local."
	tests := []struct {
		name  string
		qname string
		qtype uint16
		rcode int
		want  []string // the answers' data, sorted
	}{
		{"clusterset IP", "web.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, []string{"10.0.0.10"}},
		{"clusterset IPv6", "web.ns.svc.clusterset.local.", dns.TypeAAAA, dns.RcodeSuccess, []string{"fd00::10"}},
		{"other type is NODATA", "web.ns.svc.clusterset.local.", dns.TypeTXT, dns.RcodeSuccess, nil},
		{"SRV of a named port", "_http._tcp.web.ns.svc.clusterset.local.", dns.TypeSRV, dns.RcodeSuccess, []string{"0 100 80 web.ns.svc.clusterset.local."}},
		{"SRV of another protocol", "_http._udp.web.ns.svc.clusterset.local.", dns.TypeSRV, dns.RcodeNameError, nil},
		{"protocol label is an empty non-terminal", "_tcp.web.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, nil},
		{"no per-cluster name for a clusterset IP service", "c1.web.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"headless: every endpoint", "db.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, []string{"10.1.0.1", "10.2.0.1", "10.2.0.2"}},
		{"headless per-pod name", "db-0.c2.db.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, []string{"10.2.0.1"}},
		{"headless address-derived name", "10-2-0-2.c2.db.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, []string{"10.2.0.2"}},
		{"headless unknown pod", "db-1.c2.db.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"headless cluster label", "c1.db.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, nil},
		{"headless SRV", "_pg._tcp.db.ns.svc.clusterset.local.", dns.TypeSRV, dns.RcodeSuccess, []string{
			"0 100 5432 10-2-0-2.c2.db.ns.svc.clusterset.local.", "0 100 5432 db-0.c1.db.ns.svc.clusterset.local.", "0 100 5432 db-0.c2.db.ns.svc.clusterset.local."}},
		{"headless without ready endpoints", "empty.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"unknown service", "nope.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"namespace with imports", "ns.svc.clusterset.local.", dns.TypeA, dns.RcodeSuccess, nil},
		{"namespace without imports", "other.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"schema version", "dns-version.clusterset.local.", dns.TypeTXT, dns.RcodeSuccess, []string{`"1.0.0"`}},
		{"not under svc", "web.ns.pod.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
		{"too deep", "a.b.c.web.ns.svc.clusterset.local.", dns.TypeA, dns.RcodeNameError, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := lookup(src, zone, tt.qname, tt.qtype)
			if a.rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[a.rcode], dns.RcodeToString[tt.rcode])
			}
			var got []string
			for _, rr := range a.answer {
				if rr.Header().Name != tt.qname {
					t.Errorf("owner %s, want %s", rr.Header().Name, tt.qname)
				}
				got = append(got, strings.TrimPrefix(rr.String(), rr.Header().String()))
			}
			sort.Strings(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("answers %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseServiceImport(t *testing.T) {
	tests := []struct {
		name    string
		spec    map[string]any
		wantErr string
		want    service
	}{
		{"clusterset IP", map[string]any{"type": "ClusterSetIP", "ips": []any{"10.0.0.1"}, "ports": []any{map[string]any{"name": "HTTP", "port": int64(80)}}}, "",
			service{namespace: "ns", name: "s", ips: addrs("10.0.0.1"), ports: []port{{name: "http", protocol: "tcp", number: 80}}}},
		{"headless", map[string]any{"type": "Headless"}, "", service{namespace: "ns", name: "s", headless: true}},
		{"bad type", map[string]any{"type": "ExternalName"}, "spec.type", service{}},
		{"bad ip", map[string]any{"ips": []any{"10.0.0.300"}}, "spec.ips[0]", service{}},
		{"bad protocol", map[string]any{"ports": []any{map[string]any{"protocol": "ICMP", "port": int64(1)}}}, "spec.ports[0].protocol", service{}},
		{"bad port", map[string]any{"ports": []any{map[string]any{"port": int64(70000)}}}, "spec.ports[0].port", service{}},
		{"bad port name", map[string]any{"ports": []any{map[string]any{"name": "a.b", "port": int64(1)}}}, "spec.ports[0].name", service{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &unstructured.Unstructured{Object: map[string]any{"spec": tt.spec}}
			u.SetNamespace("ns")
			u.SetName("s")
			got, err := parseServiceImport(u)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.headless != tt.want.headless || !slices.Equal(got.ips, tt.want.ips) || !slices.Equal(got.ports, tt.want.ports) {
				t.Errorf("got %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func TestParseEndpointSlice(t *testing.T) {
	no, host, bad := false, "db-0", "Not_A_Label"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "db-c2", Labels: map[string]string{labelServiceName: "db", labelSourceCluster: "c2"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.2.0.1"}, Hostname: &host},
			{Addresses: []string{"10.2.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &no}},
			{Addresses: []string{"10.2.0.3"}, Hostname: &bad},
			{Addresses: []string{"nope"}},
		},
	}
	entry, problems := parseEndpointSlice(es)
	if entry.key != "ns/db" {
		t.Errorf("key %q", entry.key)
	}
	var got []string
	for _, ep := range entry.endpoints {
		got = append(got, ep.hostname+"."+ep.cluster+"="+ep.addrs[0].String())
	}
	want := []string{"db-0.c2=10.2.0.1", "10-2-0-3.c2=10.2.0.3"}
	if !slices.Equal(got, want) {
		t.Errorf("endpoints %q, want %q", got, want)
	}
	if len(problems) != 2 {
		t.Errorf("problems %q, want the bad hostname and the bad address", problems)
	}

	es.Labels[labelSourceCluster] = "bad.cluster"
	if entry, problems := parseEndpointSlice(es); len(entry.endpoints) != 0 || len(problems) != 1 || !strings.Contains(problems[0], labelSourceCluster) {
		t.Errorf("a slice with an invalid source cluster: %+v, %q", entry, problems)
	}
}
