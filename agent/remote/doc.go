// Package remote follows one cluster's store on behalf of the agent: it
// connects with the cluster's connection file, validates the cluster's config
// before trusting anything, and streams the cluster's nodes, services,
// endpoint slices, identities and ipcache entries to a Delegate.
//
// Trust: a cluster is accepted only if the config at api.ClusterKey decodes,
// names the cluster its connection file is named for, and its ID and pod
// CIDRs collide with no other accepted cluster (Registry; the first accepted
// keeps its place, a refused one is retried and accepted once the conflict is
// gone). A refused cluster contributes nothing and its status names the
// conflict; others are unaffected.
//
// State: the cluster's objects are kept by the delegate across outages of
// the store (stale-while-unreachable). After every (re)connection, keys not
// listed again are deleted only once the writer's synced canary of their kind
// has been seen (the kvstore reader guarantees the same inside one
// connection). Close drains everything of the cluster.
//
// Concurrency: a Cluster runs one goroutine (Run); the Delegate's methods are
// called from it only, sequentially for one cluster, and must not block for
// long. Different clusters call the delegate concurrently. Status is safe to
// call at any time.
package remote
