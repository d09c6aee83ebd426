package meshtest

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Service returns a global, shared service of cluster c with one TCP port
// "http" 80 and the cluster IP vip.
func (c *Cluster) Service(ns, name, vip string, mod ...func(*api.Service)) *api.Service {
	s := &api.Service{
		Cluster: c.Name, ClusterID: c.Config.ID, Namespace: ns, Name: name,
		ClusterIPs: []netip.Addr{netip.MustParseAddr(vip)},
		Ports:      []api.ServicePort{{Name: "http", Port: 80, Protocol: api.ProtocolTCP}},
		Global:     true, Shared: true, Affinity: api.AffinityNone,
	}
	for _, m := range mod {
		m(s)
	}
	return s
}

// Slice returns an endpoint slice of cluster c for service ns/name with port
// "http" 8080 and one ready endpoint per IP, on node "node-<ip>".
func (c *Cluster) Slice(ns, service, slice string, ips ...string) *api.EndpointSlice {
	es := &api.EndpointSlice{
		Cluster: c.Name, Namespace: ns, Service: service, Name: slice,
		Ports: []api.EndpointPort{{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, api.Endpoint{
			Addresses: []netip.Addr{netip.MustParseAddr(ip)}, NodeName: "node-" + ip, Ready: true, Serving: true,
		})
	}
	return es
}

// Node returns a node of cluster c with one address and pod CIDR.
func (c *Cluster) Node(name, addr, podCIDR string) *api.Node {
	return &api.Node{
		Cluster: c.Name, Name: name,
		Addresses: []netip.Addr{netip.MustParseAddr(addr)},
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix(podCIDR)},
	}
}

// Frontend is vip:80/TCP.
func Frontend(vip string) loadbalancer.Frontend {
	return loadbalancer.Frontend{Addr: netip.AddrPortFrom(netip.MustParseAddr(vip), 80), Protocol: loadbalancer.TCP}
}

// Backends renders "P[...] F[...]" lists the way Recorder.View does, from
// IPs on port 8080.
func Backends(preferred, fallback []string) string {
	f := func(ips []string) []loadbalancer.Backend {
		var out []loadbalancer.Backend
		for _, ip := range ips {
			out = append(out, loadbalancer.Backend{Addr: netip.AddrPortFrom(netip.MustParseAddr(ip), 8080)})
		}
		return out
	}
	return Render(loadbalancer.Service{Preferred: f(preferred), Fallback: f(fallback)})
}

// IP returns the i-th address (1-based) of a /16 pod range like "10.2.0.0/16".
func IP(prefix string, i int) string {
	p := netip.MustParsePrefix(prefix).Addr().As4()
	return fmt.Sprintf("%d.%d.%d.%d", p[0], p[1], i/250, i%250+1)
}
