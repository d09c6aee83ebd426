// Package health runs the mesh-wide gossip pool that detects dead nodes in
// well under a second and tells the datapath to skip their backends.
//
// Every clustermesh-agent of every connected cluster is one member of a single
// hashicorp/memberlist pool. Members are named "<cluster>/<node>" and carry
// their numeric cluster ID in their metadata; gossip is encrypted with the
// mesh key (see LoadKey). The pool is seeded from, and follows, the store's
// node registry: the agent feeds api.Node values through SetNodes,
// NodeUpserted and NodeDeleted, and the pool joins nodes that appear and
// forgets nodes that disappear.
//
// Every cluster holds the mesh key, so members are bound to the registry: a
// member is admitted only at its registered gossip address and with the
// cluster ID its cluster was accepted with (Config.Nodes), and it is named
// from the registry, never from what it says; a death memberlist reports is
// acted on only once this member's own ping of the node goes unanswered.
// Refusals are counted (clustermesh_gossip_refused_total) and listed in
// Status.Refused.
//
// When memberlist declares a member dead, the pool calls
// HealthSink.SetNodeHealth(node, false) once the safety rules allow it (this
// node must not itself look cut off: its Lifeguard health score must be low
// and no more than half of its peers may be failing at once); when the member
// is alive again, and has stayed alive for a hold-down that doubles with every
// recent death, it calls SetNodeHealth(node, true). docs/health.md states the
// rules exactly.
//
// Lifetimes and concurrency: New only validates and prepares. Run binds the
// gossip sockets, runs until its context is cancelled, then announces a
// graceful leave and shuts the memberlist down; it returns after every
// goroutine it started has stopped. The registry methods, Status and
// LocalName are safe for concurrent use at any time, before, during or after
// Run; registry changes made before Run are the initial seeds. The sink is
// called from a single goroutine, never concurrently, and may block (each
// call gets a context with Config.SinkTimeout); a failed call is retried on
// the next evaluation.
package health
