// Package agent is the control plane of clustermesh-agent: it follows the
// store of its own cluster and of every connected cluster (one connection
// file per cluster in a directory, watched live), merges global services
// (package merger) into a loadbalancer.Datapath, tells node observers
// (routing, gossip) about the nodes of every cluster, and reports its status
// locally (Handler) and into its own cluster's store (package status).
//
// Seams for the other parts of the agent:
//   - loadbalancer.Datapath: Config.Datapath (the eBPF datapath of bpf/, or
//     NoopDatapath).
//   - NodeObserver: AddNodeObserver, for BGP peering and memberlist seeding.
//   - SetNodeHealth: the health (gossip) part reports node deaths here; the
//     datapath skips the node's backends at once and the merger recomputes
//     affinity thresholds. NodeRef translates (cluster, node) names.
//   - RouteWriter: static routes to remote pod CIDRs when BGP is off
//     (StaticRoutes adapts a RouteWriter into a NodeObserver).
//
// Lifetime: New, then Run until its context is cancelled. On return the
// datapath keeps what was last programmed (pinned maps keep balancing while
// the agent restarts). All exported methods are safe for concurrent use.
package agent
