package api

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestPolicyKey(t *testing.T) {
	tests := []struct {
		cluster, kind, ns, name string
		want                    string
	}{
		{"c1", PolicyKindNetworkPolicy, "shop", "web", "clustermesh/v1/policies/c1/NetworkPolicy/shop/web"},
		{"c1", PolicyKindCNP, "shop", "web", "clustermesh/v1/policies/c1/CiliumNetworkPolicy/shop/web"},
		{"c1", PolicyKindCCNP, "", "deny", "clustermesh/v1/policies/c1/CiliumClusterwideNetworkPolicy/_/deny"},
		{"c1", PolicyKindCCNP, "_", "deny", "clustermesh/v1/policies/c1/CiliumClusterwideNetworkPolicy/_/deny"},
	}
	for _, tt := range tests {
		if got := PolicyKey(tt.cluster, tt.kind, tt.ns, tt.name); got != tt.want {
			t.Errorf("PolicyKey(%q, %q, %q, %q) = %q, want %q", tt.cluster, tt.kind, tt.ns, tt.name, got, tt.want)
		}
		if !strings.HasPrefix(tt.want, PolicyPrefix(tt.cluster)) {
			t.Errorf("%s is not under PolicyPrefix %s", tt.want, PolicyPrefix(tt.cluster))
		}
	}
	if PolicyPrefix("c1") != ClusterPrefix(KindPolicy, "c1") {
		t.Errorf("PolicyPrefix = %q, want ClusterPrefix(KindPolicy)", PolicyPrefix("c1"))
	}
	p := &Policy{Cluster: "c1", Kind: PolicyKindCCNP, Name: "deny"}
	ref, err := ParsePolicyKey(p.Key())
	if err != nil || ref != (PolicyRef{Cluster: "c1", Kind: PolicyKindCCNP, Name: "deny"}) {
		t.Errorf("ParsePolicyKey(%q) = %+v, %v; want the cluster-wide policy with no namespace", p.Key(), ref, err)
	}
}

// TestPolicyKindsSeparate: policies are exported with a canary but never
// among the kinds peers read.
func TestPolicyKindsSeparate(t *testing.T) {
	for _, k := range SyncedKinds {
		if k == KindPolicy {
			t.Fatal("KindPolicy is in SyncedKinds: peers would read every policy")
		}
	}
	if !HasSyncedCanary(KindPolicy) || !HasSyncedCanary(KindNode) || HasSyncedCanary(KindAgents) || HasSyncedCanary(KindCluster) {
		t.Error("HasSyncedCanary disagrees with SyncedKinds and LocalKinds")
	}
}

func npSpec(ns, name string) string {
	return `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"` + name + `","namespace":"` + ns + `"},"spec":{"podSelector":{}}}`
}

func TestPolicyValidate(t *testing.T) {
	good := func(mod func(p *Policy)) *Policy {
		p := samplePolicy()
		mod(p)
		return p
	}
	ccnp := `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"deny"},"spec":{}}`
	tests := []struct {
		name string
		p    *Policy
		want string // substring of the error; empty means valid
	}{
		{"network policy", samplePolicy(), ""},
		{"cilium namespaced", &Policy{Cluster: "c1", Kind: PolicyKindCNP, Namespace: "ns", Name: "p",
			Spec: []byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"ns"},"specs":[]}`)}, ""},
		{"cilium cluster-wide", &Policy{Cluster: "c1", Kind: PolicyKindCCNP, Name: "deny", Spec: []byte(ccnp)}, ""},
		{"spec with leading space", good(func(p *Policy) { p.Spec = append([]byte("\n "), p.Spec...) }), ""},
		{"spec at the bound", good(func(p *Policy) { p.Spec = padSpec(p.Spec, MaxPolicySpec) }), ""},

		{"bad cluster", good(func(p *Policy) { p.Cluster = "C1" }), `cluster name "C1"`},
		{"unknown kind", good(func(p *Policy) { p.Kind = "AdminNetworkPolicy" }), `policy kind "AdminNetworkPolicy"`},
		{"empty kind", good(func(p *Policy) { p.Kind = "" }), `policy kind ""`},
		{"namespaced without namespace", good(func(p *Policy) { p.Namespace = "" }), "policy namespace is empty"},
		{"namespace with slash", good(func(p *Policy) { p.Namespace = "a/b" }), `policy namespace "a/b"`},
		{"namespace of cluster-wide keys", good(func(p *Policy) { p.Namespace = "_" }), `policy namespace "_": reserved`},
		{"cluster-wide with namespace", &Policy{Cluster: "c1", Kind: PolicyKindCCNP, Namespace: "ns", Name: "deny", Spec: []byte(ccnp)}, `policy namespace "ns": a CiliumClusterwideNetworkPolicy is cluster-wide`},
		{"empty name", good(func(p *Policy) { p.Name = "" }), "policy name is empty"},
		{"name with space", good(func(p *Policy) { p.Name = "a b" }), `policy name "a b"`},
		{"empty spec", good(func(p *Policy) { p.Spec = nil }), "spec is empty"},
		{"spec too large", good(func(p *Policy) { p.Spec = padSpec(p.Spec, MaxPolicySpec+1) }), "spec: 1048577 bytes, at most 1048576"},
		{"spec not JSON", good(func(p *Policy) { p.Spec = []byte("{kind: NetworkPolicy}") }), "spec: not valid JSON"},
		{"spec truncated", good(func(p *Policy) { p.Spec = p.Spec[:len(p.Spec)-1] }), "spec: not valid JSON"},
		{"spec not an object", good(func(p *Policy) { p.Spec = []byte(`["NetworkPolicy"]`) }), "spec: not a JSON object"},
		{"spec of another kind", good(func(p *Policy) { p.Kind = PolicyKindCNP }), `spec: kind "NetworkPolicy", want "CiliumNetworkPolicy"`},
		{"spec of another name", good(func(p *Policy) { p.Spec = []byte(npSpec("shop", "other")) }), `spec: metadata.name "other", want "api-from-web"`},
		{"spec of another namespace", good(func(p *Policy) { p.Spec = []byte(npSpec("bank", "api-from-web")) }), `spec: metadata.namespace "bank", want "shop"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			check(t, err, tt.want)
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			if _, merr := tt.p.Marshal(); (merr == nil) != (err == nil) {
				t.Errorf("Marshal: %v, Validate: %v; want both to agree", merr, err)
			}
		})
	}
}

// padSpec grows a JSON object to n bytes with a padding field.
func padSpec(spec []byte, n int) []byte {
	pad := n - len(spec) - len(`,"x":""`)
	return append(append(bytes.Clone(spec[:len(spec)-1]), `,"x":"`+strings.Repeat("a", pad)+`"`...), '}')
}

func TestPolicyDecode(t *testing.T) {
	p := samplePolicy()
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(p.Key(), b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("decoded %+v, want %+v", got, p)
	}
	// The decoded spec does not alias the value read.
	b2 := bytes.Clone(b)
	got2, _ := Decode(p.Key(), b2)
	clear(b2)
	if !bytes.Equal(got2.(*Policy).Spec, p.Spec) {
		t.Error("decoded spec aliases the value's bytes")
	}
	// A value stored under another policy's key is refused.
	if _, err := Decode(PolicyKey("c1", PolicyKindNetworkPolicy, "shop", "other"), b); err == nil || !strings.Contains(err.Error(), "describes key") {
		t.Errorf("value under another key: %v; want a refusal", err)
	}
	if _, err := Decode(PolicyKey("c1", PolicyKindCNP, "shop", "api-from-web"), b); err == nil {
		t.Error("value under another kind's key was accepted")
	}
}
