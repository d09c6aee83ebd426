package policy

import (
	"errors"
	"fmt"
	"net/netip"

	"k8s.io/apimachinery/pkg/labels"
)

// Labels identities carry beside their pod's, and the reserved identities
// entities map to (Cilium's numbers, so that flows read the same).
const (
	LabelNamespace = "io.kubernetes.pod.namespace"
	LabelCluster   = "io.cilium.k8s.policy.cluster"
	// NamespaceLabelPrefix prefixes a namespace's labels in an identity's
	// label set (the apiserver allocates identities with them).
	NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels."

	// IdentityAny in an Entry means every peer.
	IdentityAny   uint32 = 0
	IdentityHost  uint32 = 1
	IdentityWorld uint32 = 2
)

// ErrUnsupported is wrapped by errors for policy parts that are not
// enforced (L7 rules, FQDN selectors...): the policy is refused whole.
var ErrUnsupported = errors.New("unsupported policy rule")

// ErrInvalid is wrapped by errors for malformed policies.
var ErrInvalid = errors.New("invalid policy")

// Direction of traffic relative to the selected endpoint.
type Direction uint8

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Port is a protocol and port range; Port 0 means every port, Protocol ""
// every protocol.
type Port struct {
	Protocol string // "TCP", "UDP", "SCTP" or "" (any)
	Port     uint16
	EndPort  uint16 // 0: Port alone
}

func (p Port) String() string {
	proto := p.Protocol
	if proto == "" {
		proto = "any"
	}
	switch {
	case p.Port == 0:
		return proto + "/*"
	case p.EndPort > p.Port:
		return fmt.Sprintf("%s/%d-%d", proto, p.Port, p.EndPort)
	}
	return fmt.Sprintf("%s/%d", proto, p.Port)
}

// Entity is one of Cilium's named peer groups.
type Entity string

const (
	EntityAll     Entity = "all"
	EntityWorld   Entity = "world"
	EntityHost    Entity = "host"
	EntityCluster Entity = "cluster"
)

// Peer is one source (ingress) or destination (egress) of a rule: identities
// chosen by a label selector, an entity, or a CIDR with exceptions. Exactly
// one of them is set.
type Peer struct {
	// Selector matches identities' labels (with LabelNamespace and
	// LabelCluster); nil when the peer is an entity or a CIDR.
	Selector labels.Selector
	// NamesCluster is true when Selector constrains LabelCluster itself;
	// otherwise it selects the local cluster only (see Options).
	NamesCluster bool
	Entity       Entity
	CIDR         netip.Prefix
	Except       []netip.Prefix
}

// Rule is one allow or deny rule of a policy for one direction: traffic
// with any of Peers (none: every peer) on any of Ports (none: every port).
type Rule struct {
	Direction Direction
	Deny      bool
	Peers     []Peer
	Ports     []Port
	// Name says where the rule comes from, for status and flows:
	// "NetworkPolicy shop/web ingress[0]".
	Name string
}

// Policy is one parsed policy: the endpoints it selects and its rules.
type Policy struct {
	// Name is "Kind namespace/name" ("Kind name" when cluster-wide).
	Name string
	// Namespace restricts Subject to one namespace; empty for
	// cluster-wide policies.
	Namespace string
	// Subject selects the endpoints (local identities) the policy applies
	// to.
	Subject labels.Selector
	// Enforces says, per direction, whether the policy makes its endpoints
	// default-deny in that direction (NetworkPolicy policyTypes; for
	// Cilium, having rules in that direction).
	Enforces [2]bool
	Rules    []Rule
}
