// Package netroute installs the agent's static routes (remote pod CIDR via a
// remote node's IP, see agent.StaticRoutes) in the kernel with netlink,
// under their own route protocol number so they are told apart from the
// routes of BGP (bgp.RouteProtocol), the CNI and the administrator, and
// found again after a restart (List).
//
// A Writer is safe for concurrent use; it holds a netlink handle (of the
// current network namespace unless given one) until Close.
package netroute
