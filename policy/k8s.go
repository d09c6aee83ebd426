package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// FromNetworkPolicy parses a Kubernetes NetworkPolicy. Named ports are
// refused (they need the selected pods' container ports, which identities
// do not carry).
func FromNetworkPolicy(np *networkingv1.NetworkPolicy) (*Policy, error) {
	name := "NetworkPolicy " + np.Namespace + "/" + np.Name
	subject, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: podSelector: %w", ErrInvalid, name, err)
	}
	p := &Policy{Name: name, Namespace: np.Namespace, Subject: subject}
	types := np.Spec.PolicyTypes
	if len(types) == 0 {
		// The API's default: Ingress, and Egress when egress rules exist.
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for _, t := range types {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.Enforces[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			p.Enforces[Egress] = true
		default:
			return nil, fmt.Errorf("%w: %s: policyTypes: %q", ErrInvalid, name, t)
		}
	}
	if p.Enforces[Ingress] {
		for i, r := range np.Spec.Ingress {
			rule, err := npRule(np.Namespace, fmt.Sprintf("%s ingress[%d]", name, i), Ingress, r.From, r.Ports)
			if err != nil {
				return nil, err
			}
			p.Rules = append(p.Rules, rule)
		}
	}
	if p.Enforces[Egress] {
		for i, r := range np.Spec.Egress {
			rule, err := npRule(np.Namespace, fmt.Sprintf("%s egress[%d]", name, i), Egress, r.To, r.Ports)
			if err != nil {
				return nil, err
			}
			p.Rules = append(p.Rules, rule)
		}
	}
	return p, nil
}

func npRule(ns, name string, dir Direction, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (Rule, error) {
	rule := Rule{Direction: dir, Name: name}
	for j, peer := range peers {
		where := fmt.Sprintf("%s peer[%d]", name, j)
		switch {
		case peer.IPBlock != nil:
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				return Rule{}, fmt.Errorf("%w: %s: ipBlock with a selector", ErrInvalid, where)
			}
			cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
			if err != nil {
				return Rule{}, fmt.Errorf("%w: %s: ipBlock.cidr: %w", ErrInvalid, where, err)
			}
			pr := Peer{CIDR: cidr.Masked()}
			for _, e := range peer.IPBlock.Except {
				ex, err := netip.ParsePrefix(e)
				if err != nil || !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
					return Rule{}, fmt.Errorf("%w: %s: ipBlock.except %q: not a CIDR inside %s", ErrInvalid, where, e, cidr)
				}
				pr.Except = append(pr.Except, ex.Masked())
			}
			rule.Peers = append(rule.Peers, pr)
		default:
			sel, named, err := npPeerSelector(ns, peer)
			if err != nil {
				return Rule{}, fmt.Errorf("%w: %s: %w", ErrInvalid, where, err)
			}
			rule.Peers = append(rule.Peers, Peer{Selector: sel, NamesCluster: named})
		}
	}
	for j, pp := range ports {
		port := Port{Protocol: "TCP"}
		if pp.Protocol != nil {
			port.Protocol = string(*pp.Protocol)
		}
		if pp.Port != nil {
			if pp.Port.StrVal != "" {
				return Rule{}, fmt.Errorf("%w: %s ports[%d]: named port %q: use the port number", ErrUnsupported, name, j, pp.Port.StrVal)
			}
			if pp.Port.IntVal < 1 || pp.Port.IntVal > 65535 {
				return Rule{}, fmt.Errorf("%w: %s ports[%d]: port %d", ErrInvalid, name, j, pp.Port.IntVal)
			}
			port.Port = uint16(pp.Port.IntVal)
			if pp.EndPort != nil {
				if *pp.EndPort < pp.Port.IntVal || *pp.EndPort > 65535 {
					return Rule{}, fmt.Errorf("%w: %s ports[%d]: endPort %d below port %d", ErrInvalid, name, j, *pp.EndPort, pp.Port.IntVal)
				}
				port.EndPort = uint16(*pp.EndPort)
			}
		}
		rule.Ports = append(rule.Ports, port)
	}
	return rule, nil
}

// npPeerSelector turns a NetworkPolicy peer into one selector over identity
// labels: a podSelector alone stays in the policy's namespace; a
// namespaceSelector matches the namespace's labels as identities carry them.
func npPeerSelector(ns string, peer networkingv1.NetworkPolicyPeer) (labels.Selector, bool, error) {
	sel := labels.NewSelector()
	named := false
	if peer.PodSelector != nil {
		pods, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return nil, false, fmt.Errorf("podSelector: %w", err)
		}
		reqs, _ := pods.Requirements()
		for _, r := range reqs {
			named = named || r.Key() == LabelCluster
		}
		sel = sel.Add(reqs...)
	}
	if peer.NamespaceSelector != nil {
		nss, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return nil, false, fmt.Errorf("namespaceSelector: %w", err)
		}
		reqs, _ := nss.Requirements()
		for _, r := range reqs {
			pr, err := labels.NewRequirement(NamespaceLabelPrefix+r.Key(), r.Operator(), r.Values().List())
			if err != nil {
				return nil, false, fmt.Errorf("namespaceSelector: %w", err)
			}
			sel = sel.Add(*pr)
		}
	} else {
		same, err := labels.NewRequirement(LabelNamespace, selection.Equals, []string{ns})
		if err != nil {
			return nil, false, err
		}
		sel = sel.Add(*same)
	}
	return sel, named, nil
}

// Parse parses a policy object of any supported kind from its JSON (as the
// API serves it, and as the apiserver exports it into the store): a
// NetworkPolicy gives one Policy, a Cilium policy one per rule.
func Parse(kind string, raw []byte) ([]*Policy, error) {
	switch kind {
	case "NetworkPolicy":
		var np networkingv1.NetworkPolicy
		if err := json.Unmarshal(raw, &np); err != nil {
			return nil, fmt.Errorf("NetworkPolicy: %w: %w", ErrInvalid, err)
		}
		p, err := FromNetworkPolicy(&np)
		if err != nil {
			return nil, err
		}
		return []*Policy{p}, nil
	case KindCNP, KindCCNP:
		return FromCilium(raw)
	}
	return nil, fmt.Errorf("policy kind %q: %w", kind, ErrUnsupported)
}
