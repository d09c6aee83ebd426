package api

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestValidateClusterName(t *testing.T) {
	tests := []struct {
		name string
		want string // substring of the error; empty means valid
	}{
		{"c1", ""},
		{"prod-eu-west-1", ""},
		{strings.Repeat("a", 32), ""},
		{"", "empty"},
		{strings.Repeat("a", 33), "33 characters, at most 32"},
		{"Prod", "lower-case DNS label"},
		{"-c1", "lower-case DNS label"},
		{"c1-", "lower-case DNS label"},
		{"c_1", "lower-case DNS label"},
		{"c.1", "lower-case DNS label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, ValidateClusterName(tt.name), tt.want)
		})
	}
}

func TestValidateClusterID(t *testing.T) {
	tests := []struct {
		id, max uint32
		want    string
	}{
		{1, 0, ""},
		{255, 255, ""},
		{0, 255, "must be within 1..255"},
		{256, 0, "must be within 1..255"},
		{256, 511, ""},
		{511, 511, ""},
		{512, 511, "must be within 1..511"},
		{5, 300, "max cluster ID 300"},
	}
	for _, tt := range tests {
		check(t, ValidateClusterID(tt.id, tt.max), tt.want)
	}
}

func TestValidateObjects(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name string
		obj  Object
		want string
	}{
		{"cluster ok", &Cluster{Name: "c1", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}, ""},
		{"cluster host bits", &Cluster{Name: "c1", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.1/16")}}, "host bits set (did you mean 10.1.0.0/16?)"},
		{"cluster overlapping CIDRs", &Cluster{Name: "c1", ID: 1, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16")}}, "overlap"},
		{"cluster bad ID", &Cluster{Name: "c1", ID: 300}, "cluster c1: invalid: cluster ID 300"},
		{"node bad name", &Node{Cluster: "c1", Name: "a/b"}, `node name "a/b"`},
		{"node unspecified address", &Node{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{ip("0.0.0.0")}}, "node c1/n1: address #0"},
		{"service bad affinity", &Service{Cluster: "c1", Namespace: "ns", Name: "s", Affinity: "near"}, `service c1/ns/s: invalid: affinity "near"`},
		{"service port 0", &Service{Cluster: "c1", Namespace: "ns", Name: "s", Ports: []ServicePort{{Name: "http", Protocol: ProtocolTCP}}}, `port #0 ("http"): port 0`},
		{"service export ok", &Service{Cluster: "c1", Namespace: "ns", Name: "s", ServiceExport: true, Headless: true,
			ExportCreated: time.Unix(1, 0), ClusterSetIPs: []netip.Addr{ip("10.96.0.9")}}, ""},
		{"service headless with cluster IP", &Service{Cluster: "c1", Namespace: "ns", Name: "s", Headless: true, ClusterIPs: []netip.Addr{ip("10.96.0.1")}}, "headless with 1 cluster IPs"},
		{"service export time without export", &Service{Cluster: "c1", Namespace: "ns", Name: "s", ExportCreated: time.Unix(1, 0)}, "export creation time without a ServiceExport"},
		{"service unspecified clusterset IP", &Service{Cluster: "c1", Namespace: "ns", Name: "s", ClusterSetIPs: []netip.Addr{ip("0.0.0.0")}}, "clusterset IP #0"},
		{"endpoint bad hostname", &EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "s", Name: "s-1",
			Endpoints: []Endpoint{{Addresses: []netip.Addr{ip("10.0.0.1")}, Hostname: "Web_0"}}}, `hostname "Web_0": not a DNS label`},
		{"service bad protocol", &Service{Cluster: "c1", Namespace: "ns", Name: "s", Ports: []ServicePort{{Name: "x", Port: 1, Protocol: "ICMP"}}}, `protocol "ICMP"`},
		{"slice ok", sampleSlice(2), ""},
		{"slice missing address", &EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "s", Name: "x", Endpoints: []Endpoint{{}}}, "endpoint #0 has no address"},
		{"slice empty service", &EndpointSlice{Cluster: "c1", Namespace: "ns", Name: "x"}, "endpoint slice service is empty"},
		{"identity zero", &Identity{Cluster: "c1", Namespace: "ns"}, "ID 0 is reserved"},
		{"ipcache no IP", &IPCacheEntry{Cluster: "c1", Identity: 1}, "ipcache entry in cluster c1: IP"},
		{"bad cluster everywhere", &IPCacheEntry{Cluster: "C1", IP: ip("10.0.0.1"), Identity: 1}, `cluster name "C1"`},
		{"slice too many endpoints", sampleSlice(MaxEndpointsPerSlice + 1), "endpoints: 1001, at most 1000"},
		{"slice at the endpoint bound", sampleSlice(MaxEndpointsPerSlice), ""},
		{"endpoint too many addresses", &EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "s", Name: "x", Endpoints: []Endpoint{{Addresses: make([]netip.Addr, MaxAddressesPerEndpoint+1)}}}, "addresses: 101, at most 100"},
		{"service too many ports", &Service{Cluster: "c1", Namespace: "ns", Name: "s", Ports: make([]ServicePort, MaxPorts+1)}, "101 ports, at most 100"},
		{"node too many pod CIDRs", &Node{Cluster: "c1", Name: "n1", PodCIDRs: make([]netip.Prefix, MaxPodCIDRs+1)}, "pod CIDRs: 17, at most 16"},
		{"identity too many labels", &Identity{Cluster: "c1", ID: 5, Namespace: "ns", Labels: manyLabels(MaxLabels + 1)}, "labels: 257, at most 256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, tt.obj.Validate(), tt.want)
		})
	}
}

func TestIdentityBits(t *testing.T) {
	tests := []struct {
		cluster, local, max uint32
		want                uint32
		err                 string
	}{
		{1, 1, 255, 1<<16 | 1, ""},
		{255, 65535, 255, 255<<16 | 65535, ""},
		{511, 32767, 511, 511<<15 | 32767, ""},
		{3, 65536, 255, 0, "within 1..65535"},
		{3, 40000, 511, 0, "within 1..32767"},
		{256, 1, 255, 0, "cluster ID 256"},
	}
	for _, tt := range tests {
		id, err := MakeIdentity(tt.cluster, tt.local, tt.max)
		check(t, err, tt.err)
		if err != nil {
			continue
		}
		if id != tt.want {
			t.Errorf("MakeIdentity(%d, %d, %d) = %d, want %d", tt.cluster, tt.local, tt.max, id, tt.want)
		}
		if got := IdentityClusterID(id, tt.max); got != tt.cluster {
			t.Errorf("IdentityClusterID(%d) = %d, want %d", id, got, tt.cluster)
		}
	}
}

func TestParseKey(t *testing.T) {
	tests := []struct {
		key  string
		want ParsedKey
		err  string
	}{
		{ServiceKey("c1", "ns", "svc"), ParsedKey{KindService, "c1", "ns/svc", ServiceKey("c1", "ns", "svc")}, ""},
		{EndpointSliceKey("c1", "ns", "svc", "sl"), ParsedKey{KindEndpoints, "c1", "ns/svc/sl", EndpointSliceKey("c1", "ns", "svc", "sl")}, ""},
		{ClusterKey("c2"), ParsedKey{KindCluster, "c2", "", ClusterKey("c2")}, ""},
		{SyncedKey("c2", KindNode), ParsedKey{KindSynced, "c2", "nodes", SyncedKey("c2", KindNode)}, ""},
		{"clustermesh/v1/pods/c1/n", ParsedKey{}, "unknown kind"},
		{"clustermesh/v2/nodes/c1/n", ParsedKey{}, "not under"},
		{"clustermesh/v1/nodes/", ParsedKey{}, "missing cluster"},
		{"other", ParsedKey{}, "not under"},
	}
	for _, tt := range tests {
		got, err := ParseKey(tt.key)
		check(t, err, tt.err)
		if err == nil && got != tt.want {
			t.Errorf("ParseKey(%q) = %+v, want %+v", tt.key, got, tt.want)
		}
	}
}

func check(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want containing %q", err, want)
	}
}

func TestErrInvalidWrapped(t *testing.T) {
	err := (&Service{Cluster: "c1", Namespace: "ns", Name: "s", Affinity: "x"}).Validate()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("%v does not wrap ErrInvalid", err)
	}
}

func manyLabels(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}
