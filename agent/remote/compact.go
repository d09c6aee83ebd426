package remote

import (
	"slices"
	"unique"

	"github.com/clustermesh/clustermesh/api"
)

// compact makes an object about to be delivered share what it has in
// common with the cluster's other objects, before the agent holds it for
// as long as it exists: decoding gives every object its own copy of every
// string and list, while an agent holds every remote endpoint and a mesh
// has far fewer clusters, namespaces, service names, node names and port
// lists than objects.
//
//   - the cluster name is the follower's own (the key, checked against it,
//     names it; api.Decode checks that the value describes its key);
//   - namespace, service, node and zone names are interned process-wide
//     (unique.Make): a service's name is shared by its slices and by its
//     namespace in every cluster;
//   - port lists are shared within the cluster (see portLists).
//
// obj is the event's own (the reader keeps no reference to what it
// decoded, admission returns either it or a copy), so it is changed in
// place; what is shared is never modified afterwards (the delegate's
// contract: a delivered object is not changed).
func (c *Cluster) compact(obj api.Object) {
	switch o := obj.(type) {
	case *api.EndpointSlice:
		o.Cluster = c.sameName(o.Cluster)
		o.Namespace = intern(o.Namespace)
		o.Service = intern(o.Service)
		o.Ports = sharePorts(&c.ports.endpoints, o.Ports)
		if n := len(o.Endpoints); cap(o.Endpoints) > n+n/8 {
			o.Endpoints = append(make([]api.Endpoint, 0, n), o.Endpoints...)
		}
		for i := range o.Endpoints {
			ep := &o.Endpoints[i]
			ep.NodeName = intern(ep.NodeName)
			ep.Zone = intern(ep.Zone)
		}
	case *api.Service:
		o.Cluster = c.sameName(o.Cluster)
		o.Namespace = intern(o.Namespace)
		o.Name = intern(o.Name)
		o.Ports = sharePorts(&c.ports.services, o.Ports)
	case *api.IPCacheEntry:
		o.Cluster = c.sameName(o.Cluster)
		o.Node = intern(o.Node)
	case *api.Identity:
		o.Cluster = c.sameName(o.Cluster)
		o.Namespace = intern(o.Namespace)
	case *api.Node:
		o.Cluster = c.sameName(o.Cluster)
		o.Zone = intern(o.Zone)
	}
}

// sameName returns the follower's copy of its cluster's name when s is
// that name.
func (c *Cluster) sameName(s string) string {
	if s == c.name {
		return c.name
	}
	return s
}

// intern returns the process-wide copy of s.
func intern(s string) string {
	if s == "" {
		return ""
	}
	return unique.Make(s).Value()
}

// maxSharedPortLists bounds, per cluster and kind, the distinct port lists
// shared: a peer's store decides how many there are, and past the bound a
// list simply stays the object's own.
const maxSharedPortLists = 64

// maxSharedPorts is the longest port list shared.
const maxSharedPorts = 4

// portLists holds the shared port lists of one cluster's slices and
// services: nearly every slice of a service, and many services, have the
// same one or two ports.
type portLists struct {
	endpoints map[portsKey[api.EndpointPort]][]api.EndpointPort
	services  map[portsKey[api.ServicePort]][]api.ServicePort
}

// portsKey is a port list of up to maxSharedPorts ports, as a map key.
type portsKey[T comparable] struct {
	n     int
	ports [maxSharedPorts]T
}

// sharePorts returns the shared list equal to ports (registering ports as
// the shared one if there is none yet and room for it), or ports itself.
// A shared list has no spare capacity, so that an append copies.
func sharePorts[T comparable](cache *map[portsKey[T]][]T, ports []T) []T {
	if len(ports) == 0 || len(ports) > maxSharedPorts {
		return ports
	}
	var k portsKey[T]
	k.n = copy(k.ports[:], ports)
	if shared, ok := (*cache)[k]; ok {
		return shared
	}
	if *cache == nil {
		*cache = map[portsKey[T]][]T{}
	}
	if len(*cache) >= maxSharedPortLists {
		return ports
	}
	shared := slices.Clip(slices.Clone(ports))
	(*cache)[k] = shared
	return shared
}
