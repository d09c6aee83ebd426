// Package apiserver is the clustermesh-apiserver: it turns one Kubernetes
// cluster into a member of the mesh by exporting the cluster's state into the
// cluster's own store (an embedded etcd by default, served to peers over
// mutual TLS, or an external etcd).
//
// What is exported (key layout in package api, docs/apiserver.md):
//
//   - the cluster config (name, ID, pod CIDRs), written first at start;
//   - nodes: internal IPs, pod CIDRs, zone;
//   - services that carry a mesh annotation (clustermesh.io/* or Cilium's),
//     with their global/shared/affinity settings; a bad annotation value is
//     reported (log, Warning Event on the Service, metric) and the service is
//     exported as non-global while everything else keeps flowing;
//   - the EndpointSlices of global services, one store key per slice, with
//     each endpoint's conditions (ready, serving, terminating), node and zone;
//   - identities: one cluster-scoped number per (namespace, pod label set),
//     with the cluster ID in its high bits, reserved by an etcd transaction so
//     that two replicas never collide, released when its last pod goes;
//   - the ipcache: pod IP -> identity, node, host IP, namespace, pod.
//
// With --bgp-reflector-address the apiserver also hosts the cluster's BGP
// route reflector (package bgp) in its own process and network namespace:
// the cluster config carries the reflector's address and ASN, every node its
// BGP address, and the reflector's peers are recomputed from the stores —
// the exported nodes as iBGP clients, and the reflectors that the clusters
// of --clusters-dir publish in their stores as eBGP peers (reflector.go).
//
// Shape (the sample-controller pattern): client-go informers enqueue keys of
// changed objects into one rate-limited workqueue; workers re-read the object
// from the informer cache and converge the store with an idempotent sync
// through the kvstore Writer, which skips unchanged values. The keys listed
// when the caches first sync are the initial export; once all keys of a kind
// have synced, the Writer prunes what an earlier apiserver left behind and
// writes the kind's synced canary. /readyz turns ready when every kind's
// canary is written.
//
// Lifetimes and concurrency: New validates a Config; Run owns every
// goroutine it starts (health server, lease keeper, informers, workers, the
// route reflector and one store reader per connected cluster) and
// returns after all of them stopped, once its context is done — except
// GoBGP's Serve loop, which cannot be stopped and idles until the process
// exits (see package bgp). The accessors of a Server are safe for concurrent
// use.
package apiserver
