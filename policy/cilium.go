package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Cilium policy kinds (cilium.io/v2).
const (
	KindCNP  = "CiliumNetworkPolicy"
	KindCCNP = "CiliumClusterwideNetworkPolicy"
)

type cnpDoc struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec  json.RawMessage   `json:"spec"`
	Specs []json.RawMessage `json:"specs"`
}

type cnpSelector struct {
	MatchLabels      map[string]string                 `json:"matchLabels"`
	MatchExpressions []metav1.LabelSelectorRequirement `json:"matchExpressions"`
}

type cnpCIDRSet struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except"`
	// CIDRGroupRef and CIDRGroupSelector name objects this package does
	// not read.
	CIDRGroupRef      json.RawMessage `json:"cidrGroupRef"`
	CIDRGroupSelector json.RawMessage `json:"cidrGroupSelector"`
}

type cnpPort struct {
	Port     string `json:"port"`
	EndPort  int32  `json:"endPort"`
	Protocol string `json:"protocol"`
}

type cnpPortRule struct {
	Ports []cnpPort `json:"ports"`
	// L7 and TLS parts: refused.
	Rules          json.RawMessage `json:"rules"`
	ServerNames    json.RawMessage `json:"serverNames"`
	Listener       json.RawMessage `json:"listener"`
	OriginatingTLS json.RawMessage `json:"originatingTLS"`
	TerminatingTLS json.RawMessage `json:"terminatingTLS"`
}

// cnpPeers holds both directions' peer fields; a direction's unknown
// spellings are refused by the strict decoder.
type cnpPeers struct {
	FromEndpoints []cnpSelector   `json:"fromEndpoints"`
	FromEntities  []string        `json:"fromEntities"`
	FromCIDR      []string        `json:"fromCIDR"`
	FromCIDRSet   []cnpCIDRSet    `json:"fromCIDRSet"`
	FromRequires  json.RawMessage `json:"fromRequires"`
	FromGroups    json.RawMessage `json:"fromGroups"`
	FromNodes     json.RawMessage `json:"fromNodes"`
	ToEndpoints   []cnpSelector   `json:"toEndpoints"`
	ToEntities    []string        `json:"toEntities"`
	ToCIDR        []string        `json:"toCIDR"`
	ToCIDRSet     []cnpCIDRSet    `json:"toCIDRSet"`
	ToRequires    json.RawMessage `json:"toRequires"`
	ToServices    json.RawMessage `json:"toServices"`
	ToFQDNs       json.RawMessage `json:"toFQDNs"`
	ToGroups      json.RawMessage `json:"toGroups"`
	ToNodes       json.RawMessage `json:"toNodes"`
	ToPorts       []cnpPortRule   `json:"toPorts"`
	ICMPs         json.RawMessage `json:"icmps"`
	Auth          json.RawMessage `json:"authentication"`
}

type cnpRule struct {
	EndpointSelector  *cnpSelector    `json:"endpointSelector"`
	NodeSelector      json.RawMessage `json:"nodeSelector"`
	Ingress           []cnpPeers      `json:"ingress"`
	IngressDeny       []cnpPeers      `json:"ingressDeny"`
	Egress            []cnpPeers      `json:"egress"`
	EgressDeny        []cnpPeers      `json:"egressDeny"`
	Description       string          `json:"description"`
	Labels            json.RawMessage `json:"labels"`
	EnableDefaultDeny *struct {
		Ingress *bool `json:"ingress"`
		Egress  *bool `json:"egress"`
	} `json:"enableDefaultDeny"`
}

// FromCilium parses a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy
// (JSON, as the API serves it) into one Policy per rule of spec and specs.
// Everything beyond L3/L4 is refused by name.
func FromCilium(raw []byte) ([]*Policy, error) {
	var doc cnpDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var ns string
	switch doc.Kind {
	case KindCNP:
		ns = doc.Metadata.Namespace
		if ns == "" {
			return nil, fmt.Errorf("%w: %s %s: no namespace", ErrInvalid, doc.Kind, doc.Metadata.Name)
		}
	case KindCCNP:
	default:
		return nil, fmt.Errorf("%w: kind %q: want %s or %s", ErrInvalid, doc.Kind, KindCNP, KindCCNP)
	}
	name := doc.Kind + " " + doc.Metadata.Name
	if ns != "" {
		name = doc.Kind + " " + ns + "/" + doc.Metadata.Name
	}
	specs := doc.Specs
	if len(doc.Spec) > 0 && !bytes.Equal(doc.Spec, []byte("null")) {
		specs = append([]json.RawMessage{doc.Spec}, specs...)
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("%w: %s: neither spec nor specs", ErrInvalid, name)
	}
	var out []*Policy
	for i, rawRule := range specs {
		rname := name
		if len(specs) > 1 {
			rname = fmt.Sprintf("%s specs[%d]", name, i)
		}
		dec := json.NewDecoder(bytes.NewReader(rawRule))
		dec.DisallowUnknownFields()
		var r cnpRule
		if err := dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrUnsupported, rname, err)
		}
		p, err := ciliumRule(rname, ns, &r)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func ciliumRule(name, ns string, r *cnpRule) (*Policy, error) {
	if present(r.NodeSelector) {
		return nil, fmt.Errorf("%w: %s: nodeSelector (host policies) is not enforced", ErrUnsupported, name)
	}
	if r.EndpointSelector == nil {
		return nil, fmt.Errorf("%w: %s: no endpointSelector", ErrInvalid, name)
	}
	subject, _, err := ciliumSelector(*r.EndpointSelector, ns)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: endpointSelector: %w", ErrInvalid, name, err)
	}
	p := &Policy{Name: name, Namespace: ns, Subject: subject}
	p.Enforces[Ingress] = len(r.Ingress)+len(r.IngressDeny) > 0
	p.Enforces[Egress] = len(r.Egress)+len(r.EgressDeny) > 0
	if d := r.EnableDefaultDeny; d != nil {
		if d.Ingress != nil && !*d.Ingress {
			p.Enforces[Ingress] = false
		}
		if d.Egress != nil && !*d.Egress {
			p.Enforces[Egress] = false
		}
	}
	for _, sec := range []struct {
		field string
		dir   Direction
		deny  bool
		rules []cnpPeers
	}{
		{"ingress", Ingress, false, r.Ingress},
		{"ingressDeny", Ingress, true, r.IngressDeny},
		{"egress", Egress, false, r.Egress},
		{"egressDeny", Egress, true, r.EgressDeny},
	} {
		for i, pr := range sec.rules {
			rule, err := ciliumPeers(fmt.Sprintf("%s %s[%d]", name, sec.field, i), ns, sec.dir, sec.deny, &pr)
			if err != nil {
				return nil, err
			}
			p.Rules = append(p.Rules, rule)
		}
	}
	return p, nil
}

func ciliumPeers(name, ns string, dir Direction, deny bool, pr *cnpPeers) (Rule, error) {
	rule := Rule{Direction: dir, Deny: deny, Name: name}
	endpoints, entities, cidrs, sets := pr.FromEndpoints, pr.FromEntities, pr.FromCIDR, pr.FromCIDRSet
	wrong := map[string]bool{"toEndpoints": len(pr.ToEndpoints) > 0, "toEntities": len(pr.ToEntities) > 0, "toCIDR": len(pr.ToCIDR) > 0, "toCIDRSet": len(pr.ToCIDRSet) > 0}
	unsupported := map[string]json.RawMessage{"fromRequires": pr.FromRequires, "fromGroups": pr.FromGroups, "fromNodes": pr.FromNodes,
		"icmps": pr.ICMPs, "authentication": pr.Auth}
	if dir == Egress {
		endpoints, entities, cidrs, sets = pr.ToEndpoints, pr.ToEntities, pr.ToCIDR, pr.ToCIDRSet
		wrong = map[string]bool{"fromEndpoints": len(pr.FromEndpoints) > 0, "fromEntities": len(pr.FromEntities) > 0, "fromCIDR": len(pr.FromCIDR) > 0, "fromCIDRSet": len(pr.FromCIDRSet) > 0}
		unsupported = map[string]json.RawMessage{"toRequires": pr.ToRequires, "toServices": pr.ToServices, "toFQDNs": pr.ToFQDNs,
			"toGroups": pr.ToGroups, "toNodes": pr.ToNodes, "icmps": pr.ICMPs, "authentication": pr.Auth}
	}
	for f, bad := range wrong {
		if bad {
			return Rule{}, fmt.Errorf("%w: %s: %s in a %s rule", ErrInvalid, name, f, dir)
		}
	}
	for f, v := range unsupported {
		if present(v) {
			return Rule{}, fmt.Errorf("%w: %s: %s is not enforced by the mesh (L3/L4 selectors, entities, CIDRs and ports only); remove it or keep this policy for Cilium", ErrUnsupported, name, f)
		}
	}
	for j, s := range endpoints {
		sel, named, err := ciliumSelector(s, ns)
		if err != nil {
			return Rule{}, fmt.Errorf("%w: %s endpoints[%d]: %w", ErrInvalid, name, j, err)
		}
		rule.Peers = append(rule.Peers, Peer{Selector: sel, NamesCluster: named})
	}
	for _, e := range entities {
		switch ent := Entity(e); ent {
		case EntityAll, EntityWorld, EntityHost, EntityCluster:
			rule.Peers = append(rule.Peers, Peer{Entity: ent})
		default:
			return Rule{}, fmt.Errorf("%w: %s: entity %q (the mesh knows all, world, host and cluster)", ErrUnsupported, name, e)
		}
	}
	for _, c := range cidrs {
		sets = append(sets, cnpCIDRSet{CIDR: c})
	}
	for j, cs := range sets {
		if present(cs.CIDRGroupRef) || present(cs.CIDRGroupSelector) {
			return Rule{}, fmt.Errorf("%w: %s cidr[%d]: CiliumCIDRGroup references are not enforced", ErrUnsupported, name, j)
		}
		cidr, err := netip.ParsePrefix(cs.CIDR)
		if err != nil {
			return Rule{}, fmt.Errorf("%w: %s cidr[%d]: %w", ErrInvalid, name, j, err)
		}
		peer := Peer{CIDR: cidr.Masked()}
		for _, e := range cs.Except {
			ex, err := netip.ParsePrefix(e)
			if err != nil || !cidr.Contains(ex.Addr()) || ex.Bits() < cidr.Bits() {
				return Rule{}, fmt.Errorf("%w: %s cidr[%d]: except %q: not a CIDR inside %s", ErrInvalid, name, j, e, cidr)
			}
			peer.Except = append(peer.Except, ex.Masked())
		}
		rule.Peers = append(rule.Peers, peer)
	}
	for j, tp := range pr.ToPorts {
		where := fmt.Sprintf("%s toPorts[%d]", name, j)
		if present(tp.Rules) {
			return Rule{}, fmt.Errorf("%w: %s: L7 rules (%s) are not enforced by the mesh, which filters at L3/L4 only; remove toPorts[%d].rules or keep this policy for Cilium", ErrUnsupported, where, l7Kinds(tp.Rules), j)
		}
		for f, v := range map[string]json.RawMessage{"serverNames": tp.ServerNames, "listener": tp.Listener, "originatingTLS": tp.OriginatingTLS, "terminatingTLS": tp.TerminatingTLS} {
			if present(v) {
				return Rule{}, fmt.Errorf("%w: %s: %s is not enforced by the mesh", ErrUnsupported, where, f)
			}
		}
		for k, cp := range tp.Ports {
			port, err := ciliumPort(cp)
			if err != nil {
				return Rule{}, fmt.Errorf("%s ports[%d]: %w", where, k, err)
			}
			rule.Ports = append(rule.Ports, port)
		}
	}
	return rule, nil
}

func ciliumPort(cp cnpPort) (Port, error) {
	var port Port
	switch proto := strings.ToUpper(cp.Protocol); proto {
	case "", "ANY":
	case "TCP", "UDP", "SCTP":
		port.Protocol = proto
	default:
		return Port{}, fmt.Errorf("%w: protocol %q", ErrUnsupported, cp.Protocol)
	}
	if cp.Port == "" || cp.Port == "0" {
		return port, nil
	}
	n, err := strconv.ParseUint(cp.Port, 10, 16)
	if err != nil {
		return Port{}, fmt.Errorf("%w: named port %q: use the port number", ErrUnsupported, cp.Port)
	}
	port.Port = uint16(n)
	if cp.EndPort != 0 {
		if cp.EndPort < int32(n) || cp.EndPort > 65535 {
			return Port{}, fmt.Errorf("%w: endPort %d below port %d", ErrInvalid, cp.EndPort, n)
		}
		port.EndPort = uint16(cp.EndPort)
	}
	return port, nil
}

// ciliumSelector converts an endpoint selector. Cilium's source prefixes
// ("k8s:", "any:") are dropped; other sources (reserved:, cidr:...) are
// refused. A namespaced policy's selector without a namespace requirement is
// bound to the policy's namespace, as in Cilium.
func ciliumSelector(s cnpSelector, ns string) (labels.Selector, bool, error) {
	ls := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for k, v := range s.MatchLabels {
		key, err := ciliumKey(k)
		if err != nil {
			return nil, false, err
		}
		ls.MatchLabels[key] = v
	}
	for _, e := range s.MatchExpressions {
		key, err := ciliumKey(e.Key)
		if err != nil {
			return nil, false, err
		}
		e.Key = key
		ls.MatchExpressions = append(ls.MatchExpressions, e)
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		return nil, false, err
	}
	reqs, _ := sel.Requirements()
	named, hasNS := false, false
	for _, r := range reqs {
		named = named || r.Key() == LabelCluster
		hasNS = hasNS || r.Key() == LabelNamespace
	}
	if ns != "" && !hasNS {
		r, err := labels.NewRequirement(LabelNamespace, selection.Equals, []string{ns})
		if err != nil {
			return nil, false, err
		}
		sel = sel.Add(*r)
	}
	return sel, named, nil
}

func ciliumKey(k string) (string, error) {
	source, key, ok := strings.Cut(k, ":")
	if !ok {
		return k, nil
	}
	switch source {
	case "k8s", "any":
		return key, nil
	}
	return "", fmt.Errorf("%w: label %q: source %q (the mesh selects by k8s labels)", ErrUnsupported, k, source)
}

// l7Kinds names the L7 protocols of a toPorts rules object, for the error.
func l7Kinds(raw json.RawMessage) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil || len(m) == 0 {
		return "rules"
	}
	var kinds []string
	for k := range m {
		kinds = append(kinds, k)
	}
	if len(kinds) > 1 {
		slices.Sort(kinds)
	}
	return strings.Join(kinds, ", ")
}

func present(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}
