package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/clustermesh/clustermesh/api"
)

// ErrTopology reports a store value that cannot become a BGP peer; the
// other values are still used.
var ErrTopology = errors.New("bgp topology")

// NodeConfig fills base with what the store says about a node: ASN (the
// node's, else its cluster's), node IPs (next hops), pod CIDRs and router ID.
func NodeConfig(base Config, node api.Node, cluster api.Cluster) (Config, error) {
	c := base
	c.Name = node.Cluster + "/" + node.Name
	c.ASN = node.ASN
	if c.ASN == 0 {
		c.ASN = cluster.ASN
	}
	if c.ASN == 0 {
		return Config{}, fmt.Errorf("%w: node %s: neither node nor cluster has an ASN", ErrTopology, c.Name)
	}
	c.NodeIPs = append([]netip.Addr(nil), node.Addresses...)
	if node.BGPAddress.IsValid() {
		c.RouterID = netip.Addr{}
		if node.BGPAddress.Is4() {
			c.RouterID = node.BGPAddress
		}
	}
	c.PodCIDRs = append([]netip.Prefix(nil), node.PodCIDRs...)
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("node %s: %w", c.Name, err)
	}
	return c, nil
}

// ReflectorConfig fills base for the route reflector of cluster: its ASN,
// router ID and listen port from api.Cluster.RouteReflector. The router ID
// defaults to the reflector's address; an IPv6 reflector needs
// base.RouterID set.
func ReflectorConfig(base Config, cluster api.Cluster) (Config, error) {
	if cluster.ASN == 0 || !cluster.RouteReflector.IsValid() {
		return Config{}, fmt.Errorf("%w: cluster %s: no route reflector or ASN", ErrTopology, cluster.Name)
	}
	c := base
	c.Name = cluster.Name
	c.ASN = cluster.ASN
	c.ListenPort = int32(cluster.RouteReflector.Port())
	if !c.RouterID.IsValid() {
		c.RouterID = ReflectorRouterID(cluster.ASN)
	}
	c.InstallRoutes = false
	c.PodCIDRs = nil
	if err := c.validate(); err != nil {
		return Config{}, fmt.Errorf("reflector of cluster %s: %w", cluster.Name, err)
	}
	return c, nil
}

// ReflectorRouterID is the BGP identifier of a cluster's route reflector:
// its ASN written as an IPv4 address. Not its own address: a reflector
// hosted on a node's network (enable --routes bgp puts it on its node's
// address) would share the node speaker's identifier, and a BGP session
// between two speakers of one identifier is refused ("bad BGP identifier").
// An ASN is unique per cluster, so reflectors of connected clusters differ
// too; a 16-bit ASN gives an address in 0.0.0.0/8 and a 32-bit private one
// (RFC 6996) one in 240.0.0.0/4, neither of which is ever a node's.
func ReflectorRouterID(asn uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(asn >> 24), byte(asn >> 16), byte(asn >> 8), byte(asn)})
}

// NodePeers returns the peers of a node speaker: its cluster's route
// reflector. The node dials; the reflector is passive towards nodes.
func NodePeers(cluster api.Cluster) ([]Peer, error) {
	if cluster.ASN == 0 || !cluster.RouteReflector.IsValid() {
		return nil, fmt.Errorf("%w: cluster %s: no route reflector or ASN in the store", ErrTopology, cluster.Name)
	}
	return []Peer{{
		Name:    cluster.Name + "/reflector",
		Address: cluster.RouteReflector.Addr(),
		Port:    cluster.RouteReflector.Port(),
		ASN:     cluster.ASN,
	}}, nil
}

// ReflectorPeers returns the peers of local's route reflector: every node of
// local with a BGP address, as passive iBGP route-reflector clients, and the
// reflector of every remote cluster with BGP on, as eBGP peers sent routes
// with next hops unchanged. Of two reflectors, the one whose cluster name
// sorts first dials and the other waits, so restarts re-establish quickly.
//
// Values that cannot be used (a node of another cluster or with another
// ASN, a remote cluster with local's ASN) are skipped and reported in the
// joined error; the returned peers are still valid.
func ReflectorPeers(local api.Cluster, nodes []api.Node, remotes []api.Cluster) ([]Peer, error) {
	var peers []Peer
	var errs []error
	seen := map[netip.Addr]string{}
	add := func(p Peer) {
		if other, dup := seen[p.Address]; dup {
			errs = append(errs, fmt.Errorf("%w: %s: address %s already used by %s", ErrTopology, p.Name, p.Address, other))
			return
		}
		seen[p.Address] = p.Name
		peers = append(peers, p)
	}
	for _, n := range nodes {
		name := n.Cluster + "/" + n.Name
		switch {
		case n.Cluster != local.Name:
			errs = append(errs, fmt.Errorf("%w: node %s: not in cluster %s", ErrTopology, name, local.Name))
		case !n.BGPAddress.IsValid():
			// BGP off on this node.
		case n.ASN != 0 && n.ASN != local.ASN:
			errs = append(errs, fmt.Errorf("%w: node %s: ASN %d differs from cluster ASN %d", ErrTopology, name, n.ASN, local.ASN))
		default:
			add(Peer{Name: name, Address: n.BGPAddress, ASN: local.ASN, Passive: true, RouteReflectorClient: true})
		}
	}
	for _, r := range remotes {
		switch {
		case r.Name == local.Name:
		case r.ASN == 0 || !r.RouteReflector.IsValid():
			// BGP off in that cluster.
		case r.ASN == local.ASN:
			errs = append(errs, fmt.Errorf("%w: cluster %s: ASN %d equals local cluster's; reflectors peer over eBGP", ErrTopology, r.Name, r.ASN))
		default:
			add(Peer{
				Name:             r.Name + "/reflector",
				Address:          r.RouteReflector.Addr(),
				Port:             r.RouteReflector.Port(),
				ASN:              r.ASN,
				Passive:          local.Name > r.Name,
				NextHopUnchanged: true,
				Multihop:         true,
			})
		}
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Address.Less(peers[j].Address) })
	return peers, errors.Join(errs...)
}
