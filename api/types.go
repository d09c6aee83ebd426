package api

import (
	"net/netip"
	"time"
)

// SchemaVersion is carried in every encoded value. A reader refuses values
// with a newer major schema than it understands; fields added within a
// version are skipped by older readers (see encoding.go).
const SchemaVersion = 1

// Protocol is an L4 protocol of a service or endpoint port.
type Protocol string

const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// Affinity says which cluster's backends a global service prefers.
type Affinity string

const (
	// AffinityNone balances over all backends of all clusters.
	AffinityNone Affinity = "none"
	// AffinityLocal prefers the local cluster's backends while at least
	// MinLocalBackends of them are ready, then spills to remote ones.
	AffinityLocal Affinity = "local"
	// AffinityRemote prefers remote clusters' backends and falls back to
	// local ones when no remote backend is ready.
	AffinityRemote Affinity = "remote"
)

// Cluster is a cluster's own config, written once by its apiserver at
// ClusterKey. Peers validate it before trusting anything else the cluster
// exports: the name must match the connection, the ID must be unique, the pod
// CIDRs must not overlap another cluster's.
type Cluster struct {
	Name string
	// ID is the numeric cluster ID, 1..MaxClusterID. It is carried in the
	// high bits of every identity the cluster allocates.
	ID uint32
	// MaxClusterID is the mesh-wide setting the cluster was configured with
	// (255 or 511); every cluster of a mesh must agree on it.
	MaxClusterID uint32
	// PodCIDRs are the cluster's pod address ranges.
	PodCIDRs []netip.Prefix
	// Capabilities names optional features the writer supports.
	Capabilities []string
	// RouteReflector is the address peers' reflectors dial for BGP, if the
	// cluster hosts one.
	RouteReflector netip.AddrPort
	// ASN is the cluster's BGP autonomous system number; 0 when BGP is off.
	ASN uint32
}

// Node is one Kubernetes node of a cluster.
type Node struct {
	Cluster string
	Name    string
	// Addresses are the node's internal IPs; the first is the next hop for
	// its pod CIDRs.
	Addresses []netip.Addr
	PodCIDRs  []netip.Prefix
	Zone      string
	// BGPAddress and ASN describe the node's BGP speaker, if any.
	BGPAddress netip.Addr
	ASN        uint32
	// GossipAddress is where the node's agent listens for memberlist.
	GossipAddress netip.AddrPort
}

// ServicePort is one port of a service's frontend.
type ServicePort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// Service is one Kubernetes Service of a cluster with its mesh settings.
type Service struct {
	Cluster   string
	ClusterID uint32
	Namespace string
	Name      string
	// ClusterIPs are the service's virtual IPs in its own cluster.
	ClusterIPs []netip.Addr
	Ports      []ServicePort
	// Global marks a service merged across clusters by namespace and name.
	Global bool
	// Shared exports this cluster's backends to other clusters' views; a
	// global service with Shared=false uses remote backends but lends none.
	Shared   bool
	Affinity Affinity
	// MinLocalBackends is the number of ready local backends below which
	// AffinityLocal spills to remote clusters. 0 means the default of 1.
	MinLocalBackends uint32
	// Labels are the service's labels, kept for selection by the CLI.
	Labels map[string]string
	// SessionAffinityTimeout is, for sessionAffinity: ClientIP, how long
	// (seconds) a client keeps its backend after its last connect; 0 means
	// no session affinity.
	SessionAffinityTimeout uint32
	// InternalTrafficLocal is internalTrafficPolicy: Local: a client is
	// only sent to backends on its own node.
	InternalTrafficLocal bool
	// PreferClose is trafficDistribution: PreferClose (or PreferSameZone):
	// backends in the client's zone first, then its cluster, then others.
	PreferClose bool
	// ServiceExport marks a service exported through a ServiceExport of the
	// Multi-Cluster Services API (KEP-1645): every connected cluster whose
	// namespace exists imports it (a ServiceImport and a derived Service,
	// docs/mcs.md). Annotated services leave it false.
	ServiceExport bool
	// ExportCreated is the ServiceExport's creation time: when exporters
	// disagree, the KEP's conflict resolution gives the oldest export's
	// properties precedence. Zero unless ServiceExport.
	ExportCreated time.Time
	// Headless is a service without a cluster IP (clusterIP: None): an
	// import of it is Headless and has no clusterset IP.
	Headless bool
	// ClusterSetIPs are the clusterset IPs of the service imported into
	// this cluster (the derived Service's cluster IPs): agents balance
	// them, as the ClusterIPs, over every exporting cluster's backends.
	ClusterSetIPs []netip.Addr
}

// EndpointPort is one port of an endpoint slice.
type EndpointPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// Endpoint is one backend of an endpoint slice, with the conditions of the
// Kubernetes EndpointSlice API.
type Endpoint struct {
	Addresses   []netip.Addr
	NodeName    string
	Zone        string
	Ready       bool
	Serving     bool
	Terminating bool
	// Hostname is the endpoint's hostname (a pod's spec.hostname): a
	// headless service's per-pod DNS name, also across clusters
	// (<hostname>.<cluster>.<service>.<namespace>.svc.clusterset.local).
	Hostname string
}

// EndpointSlice is one EndpointSlice's worth of backends of a service.
type EndpointSlice struct {
	Cluster   string
	Namespace string
	// Service is the name of the service the slice belongs to.
	Service   string
	Name      string
	Ports     []EndpointPort
	Endpoints []Endpoint
}

// Identity is a cluster-scoped numeric security identity: one per
// (namespace, pod label set), with the cluster ID in its high bits.
type Identity struct {
	Cluster   string
	ID        uint32
	Namespace string
	Labels    map[string]string
}

// IPCacheEntry maps a pod IP to its identity and location.
type IPCacheEntry struct {
	Cluster   string
	IP        netip.Addr
	Identity  uint32
	Node      string
	HostIP    netip.Addr
	Namespace string
	Pod       string
}

// Key returns the store key of the cluster config.
func (c *Cluster) Key() string { return ClusterKey(c.Name) }

// Key returns the store key of the node.
func (n *Node) Key() string { return NodeKey(n.Cluster, n.Name) }

// Key returns the store key of the service.
func (s *Service) Key() string { return ServiceKey(s.Cluster, s.Namespace, s.Name) }

// Key returns the store key of the endpoint slice.
func (e *EndpointSlice) Key() string {
	return EndpointSliceKey(e.Cluster, e.Namespace, e.Service, e.Name)
}

// Key returns the store key of the identity.
func (i *Identity) Key() string { return IdentityKey(i.Cluster, i.ID) }

// Key returns the store key of the ipcache entry.
func (e *IPCacheEntry) Key() string { return IPCacheKey(e.Cluster, e.IP) }

// Object is implemented by every value type of the store. The kvstore writer
// stores Objects; readers decode them with Decode.
type Object interface {
	Key() string
	Validate() error
	Marshal() ([]byte, error)
}

var (
	_ Object = (*Cluster)(nil)
	_ Object = (*Node)(nil)
	_ Object = (*Service)(nil)
	_ Object = (*EndpointSlice)(nil)
	_ Object = (*Identity)(nil)
	_ Object = (*IPCacheEntry)(nil)
	_ Object = (*AgentStatus)(nil)
	_ Object = (*Policy)(nil)
)
