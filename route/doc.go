// Package route programs the kernel routes of the agent: the static routes
// to remote pod CIDRs (agent.StaticRoutes) and the routes the BGP speaker
// learns (bgp.Speaker) both go through a Writer.
//
// Every route is installed under its owner's routing protocol number
// (ProtocolStatic, ProtocolBGP), which tells it apart from the routes of
// the CNI, the administrator and the other owner, and finds it again after
// a restart (List). A Writer never replaces a route it does not own: it adds
// with NLM_F_EXCL, replaces only a route of its own protocol, and refuses a
// prefix held by a route of another protocol with a *ConflictError
// (ErrConflict), logged and counted in clustermesh_route_conflicts_total
// once per conflict. Deletes name the protocol, so the kernel never removes a
// foreign route either.
//
// Apply takes many changes at once (the BGP speaker's batches of learned
// and withdrawn routes) and sends them 128 to a netlink message, with the
// same ownership rules: a prefix that already has a route goes through
// Upsert's check.
//
// A Writer is safe for concurrent use; it holds a netlink handle and a
// socket for batches (of the current network namespace unless given
// Config.Namespace) until Close.
package route
