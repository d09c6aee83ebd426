// Package kvstore is the global state store of the mesh: each cluster's etcd,
// written by exactly one Writer (the cluster's clustermesh-apiserver) and
// followed by any number of Readers (agents of this and of peer clusters).
//
// The pieces:
//
//   - Client: an etcd v3 client with mutual TLS, configured from a
//     per-cluster connection file (LoadConfig, New). The client certificate's
//     common name is the etcd user the client acts as (UserAdmin, UserRemote,
//     UserAgent).
//   - Server: an embedded etcd (StartServer), the default backend of
//     clustermesh-apiserver. It requires client certificates and creates the
//     mesh's users and roles at every start, idempotently.
//   - Writer: owns one cluster's prefix. Every key it writes is attached to a
//     lease it keeps alive (Run); a lost lease is re-created and what it held
//     is rewritten. After the initial full export of a kind, MarkSynced prunes
//     keys the writer no longer owns and writes the kind's synced canary.
//   - Reader: follows one kind of one cluster's store as a stream of Events.
//     It lists at a revision and watches from the next one; it re-lists on
//     compaction and after the connection comes back, diffs the new listing
//     against what it already emitted, and never emits a delete found by such
//     a diff before the writer's synced canary is present. While the store is
//     unreachable it retries with backoff and emits nothing, so consumers keep
//     their last known state.
//
// Lifetimes and concurrency: a Client is safe for concurrent use and lives
// until Close. A Server lives until Close. A Writer is safe for concurrent
// use; its Run must be running for its leases to be kept alive, and Close
// leaves the keys in place (they expire with their leases unless a new writer
// takes them over), so that a restarting apiserver does not make its cluster
// vanish from its peers. A Reader is safe for concurrent use; each Watch call
// runs one goroutine that ends, closing the event channel, when the Watch's
// context is cancelled. Every blocking call takes a context.
//
// The key layout and value encoding are defined in package api; see
// docs/kvstore.md for the protocol as a whole.
package kvstore
