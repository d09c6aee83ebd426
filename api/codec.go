package api

import (
	"fmt"
	"net/netip"
)

// Field numbers are part of the wire contract (see schema.proto): never
// reuse or renumber one; add new fields with new numbers.

// Marshal validates and encodes the cluster config.
func (c *Cluster) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(64)
	e.string(2, c.Name)
	e.uint(3, uint64(c.ID))
	e.uint(4, uint64(c.MaxClusterID))
	for _, p := range c.PodCIDRs {
		e.prefix(5, p)
	}
	for _, s := range c.Capabilities {
		e.stringElem(6, s)
	}
	e.addrPort(7, c.RouteReflector)
	e.uint(8, uint64(c.ASN))
	return e.finish()
}

// Unmarshal decodes a cluster config; it does not validate (Decode does).
func (c *Cluster) Unmarshal(b []byte) error {
	*c = Cluster{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			c.Name, err = f.string()
		case 3:
			c.ID, err = f.uint32()
		case 4:
			c.MaxClusterID, err = f.uint32()
		case 5:
			var p netip.Prefix
			if p, err = f.prefix(); err == nil {
				c.PodCIDRs = append(c.PodCIDRs, p)
			}
		case 6:
			var s string
			if s, err = f.string(); err == nil {
				c.Capabilities = append(c.Capabilities, s)
			}
		case 7:
			c.RouteReflector, err = f.addrPort()
		case 8:
			c.ASN, err = f.uint32()
		}
		return err
	})
}

// Marshal validates and encodes the node.
func (n *Node) Marshal() ([]byte, error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(96)
	e.string(2, n.Cluster)
	e.string(3, n.Name)
	for _, a := range n.Addresses {
		e.addr(4, a)
	}
	for _, p := range n.PodCIDRs {
		e.prefix(5, p)
	}
	e.string(6, n.Zone)
	e.addr(7, n.BGPAddress)
	e.uint(8, uint64(n.ASN))
	e.addrPort(9, n.GossipAddress)
	return e.finish()
}

// Unmarshal decodes a node; it does not validate (Decode does).
func (n *Node) Unmarshal(b []byte) error {
	*n = Node{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			n.Cluster, err = f.string()
		case 3:
			n.Name, err = f.string()
		case 4:
			var a netip.Addr
			if a, err = f.addr(); err == nil {
				n.Addresses = append(n.Addresses, a)
			}
		case 5:
			var p netip.Prefix
			if p, err = f.prefix(); err == nil {
				n.PodCIDRs = append(n.PodCIDRs, p)
			}
		case 6:
			n.Zone, err = f.string()
		case 7:
			n.BGPAddress, err = f.addr()
		case 8:
			n.ASN, err = f.uint32()
		case 9:
			n.GossipAddress, err = f.addrPort()
		}
		return err
	})
}

// Marshal validates and encodes the service.
func (s *Service) Marshal() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(128)
	e.string(2, s.Cluster)
	e.uint(3, uint64(s.ClusterID))
	e.string(4, s.Namespace)
	e.string(5, s.Name)
	for _, a := range s.ClusterIPs {
		e.addr(6, a)
	}
	for _, p := range s.Ports {
		e.message(7, func(e *encoder) {
			e.string(1, p.Name)
			e.uint(2, uint64(p.Port))
			e.protocol(3, p.Protocol)
		})
	}
	e.bool(8, s.Global)
	e.bool(9, s.Shared)
	e.string(10, string(s.Affinity))
	e.uint(11, uint64(s.MinLocalBackends))
	e.stringMap(12, s.Labels)
	e.uint(13, uint64(s.SessionAffinityTimeout))
	e.bool(14, s.InternalTrafficLocal)
	e.bool(15, s.PreferClose)
	e.bool(16, s.ServiceExport)
	e.time(17, s.ExportCreated)
	e.bool(18, s.Headless)
	for _, a := range s.ClusterSetIPs {
		e.addr(19, a)
	}
	return e.finish()
}

// Unmarshal decodes a service; it does not validate (Decode does).
func (s *Service) Unmarshal(b []byte) error {
	*s = Service{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			s.Cluster, err = f.string()
		case 3:
			s.ClusterID, err = f.uint32()
		case 4:
			s.Namespace, err = f.string()
		case 5:
			s.Name, err = f.string()
		case 6:
			var a netip.Addr
			if a, err = f.addr(); err == nil {
				s.ClusterIPs = append(s.ClusterIPs, a)
			}
		case 7:
			var p ServicePort
			p, err = decodeServicePort(f)
			s.Ports = append(s.Ports, p)
		case 8:
			s.Global, err = f.bool()
		case 9:
			s.Shared, err = f.bool()
		case 10:
			var a string
			a, err = f.string()
			s.Affinity = Affinity(a)
		case 11:
			s.MinLocalBackends, err = f.uint32()
		case 12:
			err = f.stringMap(&s.Labels)
		case 13:
			s.SessionAffinityTimeout, err = f.uint32()
		case 14:
			s.InternalTrafficLocal, err = f.bool()
		case 15:
			s.PreferClose, err = f.bool()
		case 16:
			s.ServiceExport, err = f.bool()
		case 17:
			s.ExportCreated, err = f.time()
		case 18:
			s.Headless, err = f.bool()
		case 19:
			var a netip.Addr
			if a, err = f.addr(); err == nil {
				s.ClusterSetIPs = append(s.ClusterSetIPs, a)
			}
		}
		return err
	})
}

func decodeServicePort(f field) (ServicePort, error) {
	var p ServicePort
	v, err := f.bytes()
	if err != nil {
		return p, err
	}
	err = decode(v, func(f field) (err error) {
		switch f.num {
		case 1:
			p.Name, err = f.string()
		case 2:
			p.Port, err = f.uint16()
		case 3:
			p.Protocol, err = f.protocol()
		}
		return err
	})
	if err != nil {
		return p, fmt.Errorf("port: %w", err)
	}
	return p, nil
}

// Marshal validates and encodes the endpoint slice.
func (e *EndpointSlice) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	enc := newEncoder(64 + 32*len(e.Endpoints))
	enc.string(2, e.Cluster)
	enc.string(3, e.Namespace)
	enc.string(4, e.Service)
	enc.string(5, e.Name)
	for _, p := range e.Ports {
		enc.message(6, func(enc *encoder) {
			enc.string(1, p.Name)
			enc.uint(2, uint64(p.Port))
			enc.protocol(3, p.Protocol)
		})
	}
	for i := range e.Endpoints {
		ep := &e.Endpoints[i]
		enc.message(7, func(enc *encoder) {
			for _, a := range ep.Addresses {
				enc.addr(1, a)
			}
			enc.string(2, ep.NodeName)
			enc.string(3, ep.Zone)
			enc.bool(4, ep.Ready)
			enc.bool(5, ep.Serving)
			enc.bool(6, ep.Terminating)
			enc.string(7, ep.Hostname)
		})
	}
	return enc.finish()
}

// Unmarshal decodes an endpoint slice; it does not validate (Decode does).
func (e *EndpointSlice) Unmarshal(b []byte) error {
	*e = EndpointSlice{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			e.Cluster, err = f.string()
		case 3:
			e.Namespace, err = f.string()
		case 4:
			e.Service, err = f.string()
		case 5:
			e.Name, err = f.string()
		case 6:
			var p ServicePort
			p, err = decodeServicePort(f)
			e.Ports = append(e.Ports, EndpointPort(p))
		case 7:
			var ep Endpoint
			ep, err = decodeEndpoint(f)
			e.Endpoints = append(e.Endpoints, ep)
		}
		return err
	})
}

func decodeEndpoint(f field) (Endpoint, error) {
	var ep Endpoint
	v, err := f.bytes()
	if err != nil {
		return ep, err
	}
	err = decode(v, func(f field) (err error) {
		switch f.num {
		case 1:
			var a netip.Addr
			if a, err = f.addr(); err == nil {
				ep.Addresses = append(ep.Addresses, a)
			}
		case 2:
			ep.NodeName, err = f.string()
		case 3:
			ep.Zone, err = f.string()
		case 4:
			ep.Ready, err = f.bool()
		case 5:
			ep.Serving, err = f.bool()
		case 6:
			ep.Terminating, err = f.bool()
		case 7:
			ep.Hostname, err = f.string()
		}
		return err
	})
	if err != nil {
		return ep, fmt.Errorf("endpoint: %w", err)
	}
	return ep, nil
}

// Marshal validates and encodes the identity.
func (i *Identity) Marshal() ([]byte, error) {
	if err := i.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(64)
	e.string(2, i.Cluster)
	e.uint(3, uint64(i.ID))
	e.string(4, i.Namespace)
	e.stringMap(5, i.Labels)
	return e.finish()
}

// Unmarshal decodes an identity; it does not validate (Decode does).
func (i *Identity) Unmarshal(b []byte) error {
	*i = Identity{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			i.Cluster, err = f.string()
		case 3:
			i.ID, err = f.uint32()
		case 4:
			i.Namespace, err = f.string()
		case 5:
			err = f.stringMap(&i.Labels)
		}
		return err
	})
}

// Marshal validates and encodes the ipcache entry.
func (e *IPCacheEntry) Marshal() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	enc := newEncoder(64)
	enc.string(2, e.Cluster)
	enc.addr(3, e.IP)
	enc.uint(4, uint64(e.Identity))
	enc.string(5, e.Node)
	enc.addr(6, e.HostIP)
	enc.string(7, e.Namespace)
	enc.string(8, e.Pod)
	return enc.finish()
}

// Unmarshal decodes an ipcache entry; it does not validate (Decode does).
func (e *IPCacheEntry) Unmarshal(b []byte) error {
	*e = IPCacheEntry{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			e.Cluster, err = f.string()
		case 3:
			e.IP, err = f.addr()
		case 4:
			e.Identity, err = f.uint32()
		case 5:
			e.Node, err = f.string()
		case 6:
			e.HostIP, err = f.addr()
		case 7:
			e.Namespace, err = f.string()
		case 8:
			e.Pod, err = f.string()
		}
		return err
	})
}
