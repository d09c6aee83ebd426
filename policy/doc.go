// Package policy turns network policies into what an agent enforces: for one
// endpoint (a local identity), the peer identities, CIDRs and ports it may
// talk to, per direction, and which of those are denied.
//
// Sources are Kubernetes NetworkPolicy (networking.k8s.io/v1) and the L3/L4
// part of Cilium's CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
// (cilium.io/v2), so that manifests written for Cilium keep working. Parts
// this package does not enforce (L7 rules, FQDNs, services, groups...) are
// refused with an error naming the policy and the rule, never ignored: a
// policy that silently allowed more than written would be worse than none.
//
// Selection is cluster-aware. Every identity is seen with two labels beside
// its pod's: io.kubernetes.pod.namespace and io.cilium.k8s.policy.cluster.
// A peer selector that does not name a cluster selects identities of the
// local cluster only, as Cilium does from 1.19, unless the mesh-wide
// Options.AllClusters is set.
//
// Semantics follow Kubernetes: an endpoint no policy selects for a direction
// allows everything in that direction; once one does, only what some rule
// allows passes. Deny rules (Cilium's ingressDeny / egressDeny) win over
// allow rules.
package policy
