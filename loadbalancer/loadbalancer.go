// Package loadbalancer holds the contract between the agent's service merger
// and the datapath that balances connections: what a merged global service
// looks like, and the narrow interface the datapath implements.
//
// The merger (agent/) produces Services; the eBPF datapath (bpf/) programs
// them into kernel maps. Keeping the types here, apart from both, lets either
// side be replaced (or faked in a unit test) without the other knowing.
package loadbalancer

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is an L4 protocol number as the kernel knows it.
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Frontend is one VIP:port:protocol of a service. A Kubernetes Service with
// several ports or ClusterIPs yields one Frontend, and one Service, per
// combination.
type Frontend struct {
	Addr     netip.AddrPort
	Protocol Protocol
}

func (f Frontend) String() string { return f.Addr.String() + "/" + f.Protocol.String() }

// NodeRef names a node of the mesh. Backend health is tracked per node: when
// gossip declares a node dead, every backend on it is skipped.
type NodeRef struct {
	ClusterID uint32
	Name      string
}

func (n NodeRef) String() string { return fmt.Sprintf("%d/%s", n.ClusterID, n.Name) }

// Backend is one destination of a frontend.
type Backend struct {
	Addr netip.AddrPort
	Node NodeRef
}

// Service is a frontend and the backends the merger chose for it.
//
// The datapath picks uniformly among the healthy Preferred backends; only when
// none of them is healthy does it pick among the healthy Fallback backends.
// Affinity is encoded by the merger in this split (local affinity puts local
// backends in Preferred and remote ones in Fallback), so a node death moves
// traffic to the fallback set in the kernel, without waiting for the merger.
type Service struct {
	Frontend  Frontend
	Preferred []Backend
	Fallback  []Backend
	// Name is "namespace/name", for debug output and logs only.
	Name string
	// AffinityTimeout, when not zero, is sessionAffinity ClientIP: a
	// client (a pod, known by its network namespace) keeps the backend it
	// was given for this long after its last connect, while that backend
	// stays in the service and its node up.
	AffinityTimeout time.Duration
}

// Datapath programs merged services. Implementations must be safe for
// concurrent use and must never expose a state where a frontend selects a
// backend that is not programmed.
type Datapath interface {
	// UpsertService creates or replaces the service of svc.Frontend.
	UpsertService(ctx context.Context, svc Service) error
	// DeleteService removes a frontend and releases backends no longer used.
	DeleteService(ctx context.Context, fe Frontend) error
	// SetNodeHealth marks every backend on node healthy or not, including
	// backends programmed later. Nodes are healthy until said otherwise.
	SetNodeHealth(ctx context.Context, node NodeRef, healthy bool) error
}
