package admit

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/api"
)

var (
	scope = Scope{Cluster: "c2", ClusterID: 2, MaxClusterID: api.DefaultMaxClusterID, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	pol   = &Policy{Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("192.168.1.0/24")}}
	// nodeIP is an address of one of c2's admitted nodes.
	nodeIP = netip.MustParseAddr("172.18.0.5")
)

func isNode(a netip.Addr) bool { return a == nodeIP }

func ident(local uint32, cluster uint32) uint32 {
	id, err := api.MakeIdentity(cluster, local, api.DefaultMaxClusterID)
	if err != nil {
		panic(err)
	}
	return id
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestEndpointsFiltered(t *testing.T) {
	tests := []struct {
		addr   string
		admit  bool
		reason string
	}{
		{"10.2.3.4", true, ""},
		{"172.18.0.5", true, ""}, // host-network endpoint on a c2 node
		{"10.3.0.1", false, ReasonOutsidePodCIDRs},
		{"10.1.0.9", false, ReasonProtectedRange}, // the local pod CIDR
		{"10.96.0.1", false, ReasonProtectedRange},
		{"192.168.1.10", false, ReasonProtectedRange},
		{"127.0.0.1", false, ReasonSpecialAddress},
		{"169.254.169.254", false, ReasonSpecialAddress},
		{"224.0.0.1", false, ReasonSpecialAddress},
		{"::1", false, ReasonSpecialAddress},
		{"fe80::1", false, ReasonSpecialAddress},
		{"::ffff:127.0.0.1", false, ReasonSpecialAddress},
		{"255.255.255.255", false, ReasonSpecialAddress},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			good := api.Endpoint{Addresses: addrs("10.2.0.1"), Ready: true}
			es := &api.EndpointSlice{Cluster: "c2", Namespace: "ns", Service: "web", Name: "a",
				Endpoints: []api.Endpoint{good, {Addresses: addrs(tt.addr), Ready: true}}}
			orig := slices.Clone(es.Endpoints)
			got, refused := pol.Object(&scope, es, isNode)
			out := got.(*api.EndpointSlice)
			want := 1
			if tt.admit {
				want = 2
			}
			if len(out.Endpoints) != want || out.Endpoints[0].Addresses[0] != good.Addresses[0] {
				t.Fatalf("endpoints kept %v, want %d including the good one", out.Endpoints, want)
			}
			if tt.admit != (len(refused) == 0) {
				t.Fatalf("refusals %v, admit=%v", refused, tt.admit)
			}
			if !tt.admit && (refused[0].Reason != tt.reason || refused[0].Cluster != "c2" || refused[0].Key != es.Key() || refused[0].Field != "endpoints[1].addresses") {
				t.Errorf("refusal %+v, want reason %s naming c2, the key and the field", refused[0], tt.reason)
			}
			if !slices.EqualFunc(es.Endpoints, orig, func(a, b api.Endpoint) bool { return slices.Equal(a.Addresses, b.Addresses) }) {
				t.Error("the input object was modified")
			}
		})
	}
}

func TestNodes(t *testing.T) {
	tests := []struct {
		name      string
		node      api.Node
		wantCIDRs int
		wantAddrs int
		reasons   []string
	}{
		{"inside", api.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24")}, Addresses: addrs("172.18.0.5")}, 1, 1, nil},
		{"default route", api.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, Addresses: addrs("172.18.0.5")}, 0, 1, []string{ReasonOutsidePodCIDRs}},
		{"local pod CIDR", api.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}}, 0, 0, []string{ReasonOutsidePodCIDRs}},
		{"broader than the cluster's", api.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}, 0, 0, []string{ReasonOutsidePodCIDRs}},
		{"another cluster's", api.Node{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24"), netip.MustParsePrefix("10.2.9.0/24")}}, 1, 0, []string{ReasonOutsidePodCIDRs}},
		{"loopback address", api.Node{Addresses: addrs("127.0.0.1", "172.18.0.6")}, 0, 1, []string{ReasonSpecialAddress}},
		{"local node address", api.Node{Addresses: addrs("192.168.1.1")}, 0, 0, []string{ReasonProtectedRange}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := tt.node
			n.Cluster, n.Name = "c2", "n1"
			got, refused := pol.Object(&scope, &n, isNode)
			out := got.(*api.Node)
			if len(out.PodCIDRs) != tt.wantCIDRs || len(out.Addresses) != tt.wantAddrs {
				t.Errorf("kept CIDRs %v addresses %v, want %d and %d", out.PodCIDRs, out.Addresses, tt.wantCIDRs, tt.wantAddrs)
			}
			var reasons []string
			for _, r := range refused {
				reasons = append(reasons, r.Reason)
			}
			if !slices.Equal(reasons, tt.reasons) {
				t.Errorf("reasons %v, want %v", reasons, tt.reasons)
			}
		})
	}
}

func TestIdentitiesAndIPCache(t *testing.T) {
	tests := []struct {
		name  string
		obj   api.Object
		admit bool
	}{
		{"own identity", &api.Identity{Cluster: "c2", ID: ident(5, 2), Namespace: "ns"}, true},
		{"identity of cluster 1", &api.Identity{Cluster: "c2", ID: ident(5, 1), Namespace: "ns"}, false},
		{"own ipcache entry", &api.IPCacheEntry{Cluster: "c2", IP: netip.MustParseAddr("10.2.0.7"), Identity: ident(5, 2)}, true},
		{"ipcache entry with a foreign identity", &api.IPCacheEntry{Cluster: "c2", IP: netip.MustParseAddr("10.2.0.7"), Identity: ident(5, 1)}, false},
		{"ipcache entry for a local pod", &api.IPCacheEntry{Cluster: "c2", IP: netip.MustParseAddr("10.1.0.7"), Identity: ident(5, 2)}, false},
		{"service of its own ID", &api.Service{Cluster: "c2", ClusterID: 2, Namespace: "ns", Name: "web"}, true},
		{"service claiming another ID", &api.Service{Cluster: "c2", ClusterID: 1, Namespace: "ns", Name: "web"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, refused := pol.Object(&scope, tt.obj, isNode)
			if tt.admit != (got != nil) || tt.admit != (len(refused) == 0) {
				t.Errorf("admitted %v with refusals %v, want admit=%v", got != nil, refused, tt.admit)
			}
		})
	}
}

func TestClusterConfig(t *testing.T) {
	tests := []struct {
		cidr   string
		reason string
	}{
		{"10.2.0.0/16", ""},
		{"0.0.0.0/0", ReasonOverBroad},
		{"10.0.0.0/7", ReasonOverBroad},
		{"::/0", ReasonOverBroad},
		{"10.96.0.0/16", ReasonProtectedRange},
		{"10.0.0.0/8", ReasonProtectedRange}, // covers the local pod CIDR
	}
	for _, tt := range tests {
		t.Run(tt.cidr, func(t *testing.T) {
			err := pol.Cluster(&api.Cluster{Name: "c2", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(tt.cidr)}})
			var r Refusal
			switch {
			case tt.reason == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.reason != "" && (err == nil || !asRefusal(err, &r) || r.Reason != tt.reason):
				t.Fatalf("error %v, want reason %s", err, tt.reason)
			}
		})
	}
}

func asRefusal(err error, r *Refusal) bool {
	v, ok := err.(Refusal)
	*r = v
	return ok
}

// FuzzPeerObject feeds arbitrary peer values through decoding and
// admission: admission never panics, and what it admits never reaches
// outside the peer's scope.
func FuzzPeerObject(f *testing.F) {
	for _, obj := range []api.Object{
		&api.Node{Cluster: "c2", Name: "n1", Addresses: addrs("172.18.0.5", "127.0.0.1"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}},
		&api.EndpointSlice{Cluster: "c2", Namespace: "ns", Service: "web", Name: "a", Endpoints: []api.Endpoint{{Addresses: addrs("10.2.0.1", "10.1.0.1")}}},
		&api.IPCacheEntry{Cluster: "c2", IP: netip.MustParseAddr("10.2.0.7"), Identity: ident(5, 2)},
		&api.Identity{Cluster: "c2", ID: ident(5, 1), Namespace: "ns"},
		&api.Service{Cluster: "c2", ClusterID: 2, Namespace: "ns", Name: "web"},
	} {
		b, err := obj.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(obj.Key(), b)
	}
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		obj, err := api.Decode(key, value)
		if err != nil {
			return // refused before admission
		}
		pk, err := api.ParseKey(key)
		if err != nil || pk.Cluster != "c2" {
			return // the cluster connection refuses objects of other clusters
		}
		got, _ := pol.Object(&scope, obj, isNode)
		if got == nil {
			return
		}
		inScope := func(a netip.Addr) bool {
			for _, c := range scope.PodCIDRs {
				if c.Contains(a.Unmap()) {
					return true
				}
			}
			return isNode(a.Unmap())
		}
		switch o := got.(type) {
		case *api.Node:
			for _, c := range o.PodCIDRs {
				if !within(c, scope.PodCIDRs) {
					t.Fatalf("admitted node pod CIDR %s outside %v", c, scope.PodCIDRs)
				}
			}
			for _, a := range o.Addresses {
				if special(a) != "" {
					t.Fatalf("admitted node address %s", a)
				}
				for _, q := range pol.Protected {
					if q.Contains(a.Unmap()) {
						t.Fatalf("admitted node address %s in protected %s", a, q)
					}
				}
			}
		case *api.EndpointSlice:
			for _, ep := range o.Endpoints {
				for _, a := range ep.Addresses {
					if !inScope(a) || special(a) != "" {
						t.Fatalf("admitted backend %s outside the scope", a)
					}
				}
			}
		case *api.IPCacheEntry:
			if !inScope(o.IP) || api.IdentityClusterID(o.Identity, scope.MaxClusterID) != scope.ClusterID {
				t.Fatalf("admitted ipcache entry %+v outside the scope", o)
			}
		case *api.Identity:
			if api.IdentityClusterID(o.ID, scope.MaxClusterID) != scope.ClusterID {
				t.Fatalf("admitted foreign identity %d", o.ID)
			}
		}
	})
}
