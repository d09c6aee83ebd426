// Package bgp routes pod CIDRs natively between nodes and clusters with an
// embedded GoBGP speaker, so no tunnel device is needed.
//
// Two roles live here:
//
//   - Speaker runs in every clustermesh-agent. It announces the node's pod
//     CIDRs with the node IP as next hop and installs the routes it learns into
//     the kernel with netlink under RouteProtocol, so they can be told apart
//     from every other route on the node. Learned routes that overlap a local
//     pod CIDR, the node's own subnet, or a prefix already installed from
//     another next hop are refused and reported. Every session negotiates
//     graceful restart and long-lived graceful restart, so the routes of a
//     peer whose session dropped (a reflector outage, a restarting agent)
//     stay for Config.GracefulRestartTime plus Config.LLGRStaleTime; those
//     via a node the health view reports dead go at once
//     (Speaker.SetDeadNextHops), those of a peer without graceful restart
//     after Config.SessionLossGrace. Routes left in the kernel by a previous
//     run are adopted and
//     removed only if BGP has not re-learned them within Config.StaleRouteGrace
//     of the first established session, so a restart neither leaks nor flaps
//     routes.
//   - Reflector runs in clustermesh-apiserver, one per cluster. Every node
//     speaker of the cluster peers with it over iBGP (the reflector is passive
//     towards nodes), and it peers over eBGP with the reflectors of connected
//     clusters, keeping next hops unchanged so traffic flows node to node.
//     It never touches the kernel.
//
// NodePeers and ReflectorPeers turn the store's api.Node and api.Cluster
// values into peer lists; operators may instead give static peers (a
// top-of-rack router) in Config.
//
// Lifetimes and concurrency: a Speaker is started once with Start and stopped
// once with Stop; a Reflector lives for one Run call. Between those, all
// methods are safe for concurrent use. GoBGP binds its listener in the network
// namespace of the calling process, so one process hosts at most one speaker
// per namespace. GoBGP's Serve loop cannot be stopped: after Stop one idle
// goroutine per speaker stays until the process exits (leak checks should
// ignore github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve); every
// other goroutine ends with Stop or Run. GoBGP and protobuf types never
// leave this package.
package bgp
