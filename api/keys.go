package api

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// KeyPrefix is the root of every key the mesh writes. The version segment
// changes only with an incompatible key layout.
const KeyPrefix = "clustermesh/v1/"

// Kind names one family of objects in the store. Its string is the key
// segment right after KeyPrefix.
type Kind string

const (
	KindCluster   Kind = "cluster"
	KindNode      Kind = "nodes"
	KindService   Kind = "services"
	KindEndpoints Kind = "endpoints"
	KindIdentity  Kind = "identities"
	KindIPCache   Kind = "ipcache"
	KindSynced    Kind = "synced"
	// KindAgents holds the status each agent of the cluster publishes, so
	// the CLI can tell how many agents are connected to each peer. It is the
	// only prefix agents may write.
	KindAgents Kind = "agents"
)

// SyncedKinds are the kinds a writer exports in its initial full sync, each
// followed by a synced canary. Readers wait for the canary of a kind before
// they prune anything of that kind.
var SyncedKinds = []Kind{KindNode, KindService, KindEndpoints, KindIdentity, KindIPCache}

// ClusterPrefix is the prefix under which a cluster's objects of one kind live.
// The cluster config itself is a single key, ClusterKey.
func ClusterPrefix(kind Kind, cluster string) string {
	return KeyPrefix + string(kind) + "/" + cluster + "/"
}

// ClusterKey is the key of a cluster's own config.
func ClusterKey(cluster string) string { return KeyPrefix + string(KindCluster) + "/" + cluster }

// NodeKey is the key of one node of a cluster.
func NodeKey(cluster, node string) string { return ClusterPrefix(KindNode, cluster) + node }

// ServiceKey is the key of one service of a cluster.
func ServiceKey(cluster, namespace, name string) string {
	return ClusterPrefix(KindService, cluster) + namespace + "/" + name
}

// EndpointSliceKey is the key of one EndpointSlice's worth of backends of a
// service. Backends are sharded per slice so that no value grows with the
// size of the service.
func EndpointSliceKey(cluster, namespace, service, slice string) string {
	return ClusterPrefix(KindEndpoints, cluster) + namespace + "/" + service + "/" + slice
}

// ServiceEndpointsPrefix is the prefix holding every endpoint slice of a
// service.
func ServiceEndpointsPrefix(cluster, namespace, service string) string {
	return ClusterPrefix(KindEndpoints, cluster) + namespace + "/" + service + "/"
}

// IdentityKey is the key of one numeric identity of a cluster.
func IdentityKey(cluster string, id uint32) string {
	return ClusterPrefix(KindIdentity, cluster) + strconv.FormatUint(uint64(id), 10)
}

// IPCacheKey is the key of one pod IP of a cluster.
func IPCacheKey(cluster string, ip netip.Addr) string {
	return ClusterPrefix(KindIPCache, cluster) + ip.String()
}

// SyncedKey is the canary a writer puts once its initial export of kind is
// complete.
func SyncedKey(cluster string, kind Kind) string {
	return KeyPrefix + string(KindSynced) + "/" + cluster + "/" + string(kind)
}

// ParsedKey is a store key split into its parts.
type ParsedKey struct {
	Kind    Kind
	Cluster string
	// Rest is what follows the cluster segment, e.g. "ns/name" for a service;
	// empty for the cluster config.
	Rest string
}

// ParseKey splits a key written by KeyFor-style helpers. It refuses keys
// outside KeyPrefix or with an unknown kind.
func ParseKey(key string) (ParsedKey, error) {
	rest, ok := strings.CutPrefix(key, KeyPrefix)
	if !ok {
		return ParsedKey{}, fmt.Errorf("key %q: not under %q", key, KeyPrefix)
	}
	kind, rest, _ := strings.Cut(rest, "/")
	switch Kind(kind) {
	case KindCluster, KindNode, KindService, KindEndpoints, KindIdentity, KindIPCache, KindSynced, KindAgents:
	default:
		return ParsedKey{}, fmt.Errorf("key %q: unknown kind %q", key, kind)
	}
	cluster, rest, _ := strings.Cut(rest, "/")
	if cluster == "" {
		return ParsedKey{}, fmt.Errorf("key %q: missing cluster segment", key)
	}
	return ParsedKey{Kind: Kind(kind), Cluster: cluster, Rest: rest}, nil
}
