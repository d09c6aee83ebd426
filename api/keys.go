package api

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
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
	// KindPolicy holds the cluster's own network policies, exported by its
	// apiserver for its own agents only (see LocalKinds).
	KindPolicy Kind = "policies"
)

// SyncedKinds are the kinds a writer exports in its initial full sync, each
// followed by a synced canary. Readers wait for the canary of a kind before
// they prune anything of that kind.
//
// The list also decides what a peer may read (kvstore.ExportedKeys): a kind
// a cluster must keep to itself belongs in LocalKinds instead.
var SyncedKinds = []Kind{KindNode, KindService, KindEndpoints, KindIdentity, KindIPCache}

// LocalKinds are the kinds a cluster's apiserver writes for its own agents
// only: exported in an initial full sync followed by a synced canary, like
// SyncedKinds, but under prefixes peers cannot read. Their canaries live
// under the synced prefix, which peers may read: a canary carries nothing.
var LocalKinds = []Kind{KindPolicy}

// HasSyncedCanary tells whether kind is exported with a synced canary: one
// of SyncedKinds or LocalKinds.
func HasSyncedCanary(kind Kind) bool {
	return slices.Contains(SyncedKinds, kind) || slices.Contains(LocalKinds, kind)
}

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
	// empty for the cluster config. Split it with the typed parser of Kind
	// (ParseServiceKey...), never by hand.
	Rest string
	// Key is the whole key, for the typed parsers.
	Key string
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
	case KindCluster, KindNode, KindService, KindEndpoints, KindIdentity, KindIPCache, KindSynced, KindAgents, KindPolicy:
	default:
		return ParsedKey{}, fmt.Errorf("key %q: unknown kind %q", key, kind)
	}
	cluster, rest, _ := strings.Cut(rest, "/")
	if cluster == "" {
		return ParsedKey{}, fmt.Errorf("key %q: missing cluster segment", key)
	}
	return ParsedKey{Kind: Kind(kind), Cluster: cluster, Rest: rest, Key: key}, nil
}

// ErrInvalidKey is wrapped by every error of the typed key parsers.
var ErrInvalidKey = errors.New("invalid key")

// The typed parsers below invert the key constructors above: for every x
// they accept, Parse...(x.Key()) == x, and they refuse any key no
// constructor writes (wrong kind, missing or extra segments, names that fail
// validation, numbers and addresses not in their canonical form), so a key
// read from a peer's store can be trusted as much as one built locally.

// ClusterRef names a cluster config key (ClusterKey).
type ClusterRef struct{ Cluster string }

// NodeRef names a node key (NodeKey).
type NodeRef struct{ Cluster, Name string }

// ServiceRef names a service key (ServiceKey).
type ServiceRef struct{ Cluster, Namespace, Name string }

// EndpointSliceRef names an endpoint slice key (EndpointSliceKey).
type EndpointSliceRef struct{ Cluster, Namespace, Service, Name string }

// IdentityRef names an identity key (IdentityKey).
type IdentityRef struct {
	Cluster string
	ID      uint32
}

// IPCacheRef names an ipcache key (IPCacheKey).
type IPCacheRef struct {
	Cluster string
	IP      netip.Addr
}

// SyncedRef names a synced canary (SyncedKey).
type SyncedRef struct {
	Cluster string
	Kind    Kind
}

// Key returns the key r names.
func (r ClusterRef) Key() string { return ClusterKey(r.Cluster) }

// Key returns the key r names.
func (r NodeRef) Key() string { return NodeKey(r.Cluster, r.Name) }

// Key returns the key r names.
func (r ServiceRef) Key() string { return ServiceKey(r.Cluster, r.Namespace, r.Name) }

// Key returns the key r names.
func (r EndpointSliceRef) Key() string {
	return EndpointSliceKey(r.Cluster, r.Namespace, r.Service, r.Name)
}

// Key returns the key r names.
func (r IdentityRef) Key() string { return IdentityKey(r.Cluster, r.ID) }

// Key returns the key r names.
func (r IPCacheRef) Key() string { return IPCacheKey(r.Cluster, r.IP) }

// Key returns the key r names.
func (r SyncedRef) Key() string { return SyncedKey(r.Cluster, r.Kind) }

func keyError(key, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrInvalidKey, key, fmt.Sprintf(format, args...))
}

// splitKey checks that key is of kind and has exactly len(names) segments
// after the kind, the first the cluster name and the others object names
// (described by names, for errors), and returns them.
func splitKey(key string, kind Kind, names ...string) ([]string, error) {
	rest, ok := strings.CutPrefix(key, KeyPrefix+string(kind)+"/")
	if !ok {
		return nil, keyError(key, "not under %q", KeyPrefix+string(kind)+"/")
	}
	segs := strings.Split(rest, "/")
	if len(segs) != len(names) {
		return nil, keyError(key, "%d segments after %q, want %d (%s)", len(segs), KeyPrefix+string(kind)+"/", len(names), strings.Join(names, "/"))
	}
	if err := ValidateClusterName(segs[0]); err != nil {
		return nil, keyError(key, "%v", err)
	}
	for i, name := range names[1:] {
		if err := validateName(name, segs[i+1]); err != nil {
			return nil, keyError(key, "%v", err)
		}
	}
	return segs, nil
}

// ParseClusterKey inverts ClusterKey.
func ParseClusterKey(key string) (ClusterRef, error) {
	s, err := splitKey(key, KindCluster, "cluster")
	if err != nil {
		return ClusterRef{}, err
	}
	return ClusterRef{Cluster: s[0]}, nil
}

// ParseNodeKey inverts NodeKey.
func ParseNodeKey(key string) (NodeRef, error) {
	s, err := splitKey(key, KindNode, "cluster", "node name")
	if err != nil {
		return NodeRef{}, err
	}
	return NodeRef{Cluster: s[0], Name: s[1]}, nil
}

// ParseServiceKey inverts ServiceKey.
func ParseServiceKey(key string) (ServiceRef, error) {
	s, err := splitKey(key, KindService, "cluster", "service namespace", "service name")
	if err != nil {
		return ServiceRef{}, err
	}
	return ServiceRef{Cluster: s[0], Namespace: s[1], Name: s[2]}, nil
}

// ParseEndpointSliceKey inverts EndpointSliceKey.
func ParseEndpointSliceKey(key string) (EndpointSliceRef, error) {
	s, err := splitKey(key, KindEndpoints, "cluster", "endpoint slice namespace", "endpoint slice service", "endpoint slice name")
	if err != nil {
		return EndpointSliceRef{}, err
	}
	return EndpointSliceRef{Cluster: s[0], Namespace: s[1], Service: s[2], Name: s[3]}, nil
}

// ParseIdentityKey inverts IdentityKey. Identity 0 is reserved and refused.
func ParseIdentityKey(key string) (IdentityRef, error) {
	s, err := splitKey(key, KindIdentity, "cluster", "identity")
	if err != nil {
		return IdentityRef{}, err
	}
	id, err := strconv.ParseUint(s[1], 10, 32)
	if err != nil {
		return IdentityRef{}, keyError(key, "identity %q is not a 32-bit decimal number", s[1])
	}
	if id == 0 || strconv.FormatUint(id, 10) != s[1] {
		return IdentityRef{}, keyError(key, "identity %q: not a canonical non-zero number", s[1])
	}
	return IdentityRef{Cluster: s[0], ID: uint32(id)}, nil
}

// ParseIPCacheKey inverts IPCacheKey.
func ParseIPCacheKey(key string) (IPCacheRef, error) {
	s, err := splitKey(key, KindIPCache, "cluster", "IP")
	if err != nil {
		return IPCacheRef{}, err
	}
	ip, err := netip.ParseAddr(s[1])
	if err != nil {
		return IPCacheRef{}, keyError(key, "%v", err)
	}
	if ip.Zone() != "" || ip.String() != s[1] {
		return IPCacheRef{}, keyError(key, "IP %q is not in canonical form (%s) or has a zone", s[1], ip)
	}
	return IPCacheRef{Cluster: s[0], IP: ip}, nil
}

// ParseSyncedKey inverts SyncedKey; the kind must have a synced canary
// (HasSyncedCanary).
func ParseSyncedKey(key string) (SyncedRef, error) {
	s, err := splitKey(key, KindSynced, "cluster", "kind")
	if err != nil {
		return SyncedRef{}, err
	}
	if !HasSyncedCanary(Kind(s[1])) {
		return SyncedRef{}, keyError(key, "kind %q has no synced canary", s[1])
	}
	return SyncedRef{Cluster: s[0], Kind: Kind(s[1])}, nil
}
