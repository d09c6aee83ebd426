package api

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The kinds of network policy a cluster exports for its agents. They are
// spelled as the Kubernetes kinds (package policy's KindCNP and KindCCNP
// for Cilium's); package policy imports api, so api names them itself.
const (
	PolicyKindNetworkPolicy = "NetworkPolicy"
	PolicyKindCNP           = "CiliumNetworkPolicy"
	PolicyKindCCNP          = "CiliumClusterwideNetworkPolicy"
)

// PolicyKinds lists the policy kinds a Policy may carry.
var PolicyKinds = []string{PolicyKindNetworkPolicy, PolicyKindCNP, PolicyKindCCNP}

// MaxPolicySpec bounds the JSON of one policy: Kubernetes itself refuses
// objects above about 1.5 MiB, and a policy that large is a mistake; the
// bound keeps one value from making an agent allocate without limit.
const MaxPolicySpec = 1 << 20

// clusterWideNamespace stands for the absent namespace of a cluster-wide
// policy in its key. It is no valid Kubernetes namespace, so it cannot
// collide with one.
const clusterWideNamespace = "_"

// Policy is one network policy of a cluster, as accepted by its apiserver
// (package policy parses it without refusal), exported at PolicyKey under
// PolicyPrefix for the cluster's own agents: peers cannot read it.
//
// Spec is the whole Kubernetes object as JSON (apiVersion, kind, metadata
// with name, namespace and labels, spec or specs): for a NetworkPolicy,
// json.Unmarshal into networkingv1.NetworkPolicy then
// policy.FromNetworkPolicy accept it; for Cilium's kinds, policy.FromCilium.
// Agents parse it themselves, so the store carries the user's manifest and
// not one compiled form that a newer agent might read differently.
type Policy struct {
	Cluster string
	// Kind is one of PolicyKinds.
	Kind string
	// Namespace is empty for a cluster-wide policy (PolicyKindCCNP) and set
	// for every other kind.
	Namespace string
	Name      string
	Spec      []byte
}

// PolicyPrefix is the prefix holding every policy of a cluster.
func PolicyPrefix(cluster string) string { return ClusterPrefix(KindPolicy, cluster) }

// PolicyKey is the key of one policy of a cluster:
// <PolicyPrefix>/<kind>/<namespace>/<name>, the namespace "_" for a
// cluster-wide policy (namespace "" or "_").
func PolicyKey(cluster, kind, namespace, name string) string {
	if namespace == "" {
		namespace = clusterWideNamespace
	}
	return PolicyPrefix(cluster) + kind + "/" + namespace + "/" + name
}

// PolicyRef names a policy key (PolicyKey). Namespace is empty for a
// cluster-wide policy.
type PolicyRef struct{ Cluster, Kind, Namespace, Name string }

// Key returns the key r names.
func (r PolicyRef) Key() string { return PolicyKey(r.Cluster, r.Kind, r.Namespace, r.Name) }

// ParsePolicyKey inverts PolicyKey. The kind must be one of PolicyKinds,
// and the namespace "_" exactly for PolicyKindCCNP (returned as "").
func ParsePolicyKey(key string) (PolicyRef, error) {
	s, err := splitKey(key, KindPolicy, "cluster", "policy kind", "policy namespace", "policy name")
	if err != nil {
		return PolicyRef{}, err
	}
	ref := PolicyRef{Cluster: s[0], Kind: s[1], Namespace: s[2], Name: s[3]}
	if err := validatePolicyKind(ref.Kind); err != nil {
		return PolicyRef{}, keyError(key, "%v", err)
	}
	clusterWide := ref.Kind == PolicyKindCCNP
	switch {
	case clusterWide && ref.Namespace != clusterWideNamespace:
		return PolicyRef{}, keyError(key, "policy namespace %q: a %s is cluster-wide, its namespace segment must be %q", ref.Namespace, ref.Kind, clusterWideNamespace)
	case !clusterWide && ref.Namespace == clusterWideNamespace:
		return PolicyRef{}, keyError(key, "policy namespace %q: a %s is namespaced", ref.Namespace, ref.Kind)
	case clusterWide:
		ref.Namespace = ""
	}
	return ref, nil
}

// Key returns the store key of the policy.
func (p *Policy) Key() string { return PolicyKey(p.Cluster, p.Kind, p.Namespace, p.Name) }

// String names the policy as logs and Events do: "Kind namespace/name", or
// "Kind name" when cluster-wide.
func (p *Policy) String() string {
	if p.Namespace == "" {
		return p.Kind + " " + p.Name
	}
	return p.Kind + " " + p.Namespace + "/" + p.Name
}

func validatePolicyKind(kind string) error {
	for _, k := range PolicyKinds {
		if kind == k {
			return nil
		}
	}
	return invalidf("policy kind %q: must be %s, %s or %s", kind, PolicyKindNetworkPolicy, PolicyKindCNP, PolicyKindCCNP)
}

// policyHeader is what Validate reads of a policy's JSON: the fields that
// must agree with the key, so a value stored under one policy's key cannot
// carry another policy.
type policyHeader struct {
	Kind     string `json:"kind"`
	Metadata struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// Validate checks the policy: its names (as key segments), its kind, that
// the namespace is set exactly for namespaced kinds, and that Spec is a
// JSON object of at most MaxPolicySpec bytes whose kind, metadata.name and
// metadata.namespace are the policy's. It does not parse the rules: that is
// package policy's work, done by the apiserver before export and by every
// agent after.
func (p *Policy) Validate() error {
	if err := ValidateClusterName(p.Cluster); err != nil {
		return err
	}
	what := fmt.Sprintf("policy %s/%s/%s/%s", p.Cluster, p.Kind, p.Namespace, p.Name)
	if err := validatePolicyKind(p.Kind); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if p.Kind == PolicyKindCCNP {
		if p.Namespace != "" {
			return invalidf("%s: policy namespace %q: a %s is cluster-wide, the namespace must be empty", what, p.Namespace, p.Kind)
		}
	} else {
		if err := validateName("policy namespace", p.Namespace); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if p.Namespace == clusterWideNamespace {
			return invalidf("%s: policy namespace %q: reserved for cluster-wide policies", what, p.Namespace)
		}
	}
	if err := validateName("policy name", p.Name); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case len(p.Spec) == 0:
		return invalidf("%s: spec is empty", what)
	case len(p.Spec) > MaxPolicySpec:
		return invalidf("%s: spec: %d bytes, at most %d", what, len(p.Spec), MaxPolicySpec)
	}
	trimmed := bytes.TrimLeft(p.Spec, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return invalidf("%s: spec: not a JSON object", what)
	}
	var h policyHeader
	if err := json.Unmarshal(p.Spec, &h); err != nil {
		return invalidf("%s: spec: not valid JSON: %v", what, err)
	}
	switch {
	case h.Kind != p.Kind:
		return invalidf("%s: spec: kind %q, want %q", what, h.Kind, p.Kind)
	case h.Metadata.Name != p.Name:
		return invalidf("%s: spec: metadata.name %q, want %q", what, h.Metadata.Name, p.Name)
	case h.Metadata.Namespace != p.Namespace:
		return invalidf("%s: spec: metadata.namespace %q, want %q", what, h.Metadata.Namespace, p.Namespace)
	}
	return nil
}

// Marshal validates and encodes the policy.
func (p *Policy) Marshal() ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(32 + len(p.Spec))
	e.string(2, p.Cluster)
	e.string(3, p.Kind)
	e.string(4, p.Namespace)
	e.string(5, p.Name)
	if len(p.Spec) > 0 {
		e.bytes(6, p.Spec)
	}
	return e.finish()
}

// Unmarshal decodes a policy; it does not validate (Decode does). Spec is a
// copy: it does not alias b.
func (p *Policy) Unmarshal(b []byte) error {
	*p = Policy{}
	return top(b, func(f field) (err error) {
		switch f.num {
		case 2:
			p.Cluster, err = f.string()
		case 3:
			p.Kind, err = f.string()
		case 4:
			p.Namespace, err = f.string()
		case 5:
			p.Name, err = f.string()
		case 6:
			var v []byte
			if v, err = f.bytes(); err == nil {
				p.Spec = bytes.Clone(v)
			}
		}
		return err
	})
}
