// Package merger turns the per-cluster services and endpoint slices of the
// mesh into the merged load-balancer services of the local cluster.
//
// It is pure logic: callers feed it the objects they read from every
// cluster's store (UpsertService, UpsertEndpointSlice, their deletes,
// SetCluster/DeleteCluster) and node health (SetNodeHealth); Sync computes the
// merged loadbalancer.Service of every local frontend whose inputs changed and
// pushes only the differences to a loadbalancer.Datapath.
//
// Semantics (see docs/agent.md for the full table):
//
//   - A global service is matched across clusters by namespace and name. Only
//     the local cluster's service has frontends: one per ClusterIP × port
//     (TCP or UDP). Without a local global service nothing is programmed.
//   - Backends of a frontend are the endpoints of every cluster's slices whose
//     port has the same name and protocol as the local ServicePort, in the
//     frontend's address family. A remote cluster contributes only when its
//     own service is global and shared; the local cluster always contributes.
//   - Readiness is decided per service port over the whole merged view: ready
//     endpoints are used; when no ready endpoint on a healthy node exists
//     anywhere, serving (e.g. terminating but still serving) ones are used.
//   - Affinity local: Preferred = local backends while at least
//     MinLocalBackends (default 1) of them are on healthy nodes, Fallback =
//     remote ones; below the threshold Preferred = all (spill) and Fallback is
//     empty. Affinity remote is the mirror image with a threshold of 1.
//     Affinity none: Preferred = all.
//
// A Merger is safe for concurrent use. Sync serialises datapath calls; a
// failed datapath call leaves the service dirty so the next Sync retries it.
package merger
