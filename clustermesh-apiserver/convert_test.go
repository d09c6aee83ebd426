package apiserver

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
)

func ptr[T any](v T) *T { return &v }

func TestConvertEndpointSlice(t *testing.T) {
	meta := metav1.ObjectMeta{Namespace: "ns", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}
	ports := []discoveryv1.EndpointPort{
		{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)},
		{Name: ptr("all")}, // no number: "all ports", dropped
		{Port: ptr[int32](53), Protocol: ptr(corev1.ProtocolUDP)},
	}
	a := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	tests := []struct {
		name string
		in   discoveryv1.EndpointSlice
		want *api.EndpointSlice
	}{
		{
			name: "conditions",
			in: discoveryv1.EndpointSlice{ObjectMeta: meta, AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
				Endpoints: []discoveryv1.Endpoint{
					{Addresses: []string{"10.0.0.3"}, NodeName: ptr("n1"), Zone: ptr("z1"),
						Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}},
					// nil conditions: ready (unknown is ready), serving follows ready
					{Addresses: []string{"10.0.0.1"}},
					{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
					{Addresses: nil}, // no address: dropped
				}},
			want: &api.EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "web", Name: "web-abc",
				Ports: []api.EndpointPort{{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}, {Port: 53, Protocol: api.ProtocolUDP}},
				Endpoints: []api.Endpoint{ // sorted by address
					{Addresses: a("10.0.0.1"), Ready: true, Serving: true},
					{Addresses: a("10.0.0.2")},
					{Addresses: a("10.0.0.3"), NodeName: "n1", Zone: "z1", Serving: true, Terminating: true},
				}},
		},
		{
			name: "fqdn slices carry nothing",
			in: discoveryv1.EndpointSlice{ObjectMeta: meta, AddressType: discoveryv1.AddressTypeFQDN, Ports: ports,
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}},
			want: &api.EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "web", Name: "web-abc"},
		},
		{
			name: "ipv6",
			in: discoveryv1.EndpointSlice{ObjectMeta: meta, AddressType: discoveryv1.AddressTypeIPv6,
				Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}},
			want: &api.EndpointSlice{Cluster: "c1", Namespace: "ns", Service: "web", Name: "web-abc",
				Endpoints: []api.Endpoint{{Addresses: a("fd00::1"), Ready: true, Serving: true}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := convertEndpointSlice("c1", &tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("converted slice does not validate: %v", err)
			}
		})
	}
	bad := discoveryv1.EndpointSlice{ObjectMeta: meta, AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.300"}}}}
	if _, err := convertEndpointSlice("c1", &bad); err == nil {
		t.Error("bad address: want an error naming it")
	}
}

func TestPodIPsAndLabels(t *testing.T) {
	running := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}
	tests := []struct {
		name string
		pod  corev1.Pod
		want []netip.Addr
	}{
		{"dual stack", corev1.Pod{Status: running}, []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
		{"only PodIP", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.2"}}, []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
		{"host network", corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true}, Status: running}, nil},
		{"succeeded", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodSucceeded, PodIP: "10.0.0.1"}}, nil},
		{"failed", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodFailed, PodIP: "10.0.0.1"}}, nil},
		{"pending without IP", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending}}, nil},
	}
	for _, tt := range tests {
		if got := podIPs(&tt.pod); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: podIPs = %v, want %v", tt.name, got, tt.want)
		}
	}

	got := identityLabels(
		map[string]string{"app": "web", "pod-template-hash": "x", "controller-revision-hash": "y", corev1.LabelTopologyZone: "z"},
		map[string]string{"team": "a"})
	want := map[string]string{"app": "web", NamespaceLabelPrefix + "team": "a"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("identityLabels = %v, want %v", got, want)
	}
	if labelsID("ns", map[string]string{"a": "1", "b": "2"}) == labelsID("ns", map[string]string{"a": "1", "b": "3"}) ||
		labelsID("ns", map[string]string{"a": "1"}) == labelsID("ns2", map[string]string{"a": "1"}) {
		t.Error("labelsID does not tell different sets apart")
	}
}

func TestWithBGP(t *testing.T) {
	ip1, ip2 := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")
	tests := []struct {
		name    string
		addrs   []netip.Addr
		on      bool
		wantBGP netip.Addr
		wantASN uint32
	}{
		{"off", []netip.Addr{ip1}, false, netip.Addr{}, 0},
		{"first address", []netip.Addr{ip1, ip2}, true, ip1, 65001},
		{"no address", nil, true, netip.Addr{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &api.Node{Cluster: "c1", Name: "n1", Addresses: tt.addrs}
			withBGP(n, 65001, tt.on)
			if n.BGPAddress != tt.wantBGP || n.ASN != tt.wantASN {
				t.Fatalf("BGPAddress %v ASN %d, want %v %d", n.BGPAddress, n.ASN, tt.wantBGP, tt.wantASN)
			}
		})
	}
}

func TestConvertServiceSemantics(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	cluster := corev1.ServiceInternalTrafficPolicyCluster
	for _, tc := range []struct {
		name string
		spec corev1.ServiceSpec
		want api.Service
	}{
		{"defaults", corev1.ServiceSpec{}, api.Service{}},
		{"client IP affinity, default timeout", corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP},
			api.Service{SessionAffinityTimeout: 10800}},
		{"client IP affinity, 60 s", corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr[int32](60)}}},
			api.Service{SessionAffinityTimeout: 60}},
		{"internal traffic local", corev1.ServiceSpec{InternalTrafficPolicy: &local}, api.Service{InternalTrafficLocal: true}},
		{"internal traffic cluster", corev1.ServiceSpec{InternalTrafficPolicy: &cluster}, api.Service{}},
		{"prefer close", corev1.ServiceSpec{TrafficDistribution: ptr(corev1.ServiceTrafficDistributionPreferClose)}, api.Service{PreferClose: true}},
		{"prefer same zone", corev1.ServiceSpec{TrafficDistribution: ptr("PreferSameZone")}, api.Service{PreferClose: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := convertService("c1", 1, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"}, Spec: tc.spec}, ServiceSettings{})
			if got.SessionAffinityTimeout != tc.want.SessionAffinityTimeout || got.InternalTrafficLocal != tc.want.InternalTrafficLocal || got.PreferClose != tc.want.PreferClose {
				t.Errorf("got affinity %d, local %v, close %v; want %d, %v, %v", got.SessionAffinityTimeout, got.InternalTrafficLocal, got.PreferClose,
					tc.want.SessionAffinityTimeout, tc.want.InternalTrafficLocal, tc.want.PreferClose)
			}
		})
	}
}
