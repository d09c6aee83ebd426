package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/api"
)

func ident(cluster string, id uint32, ns, app string) *api.Identity {
	return &api.Identity{Cluster: cluster, ID: id, Namespace: ns, Labels: map[string]string{
		"app": app, NamespaceLabelPrefix + "team": ns,
	}}
}

var (
	c1Frontend = ident("c1", 0x10001, "shop", "frontend")
	c1API      = ident("c1", 0x10002, "shop", "api")
	c1DB       = ident("c1", 0x10003, "shop", "db")
	c1Test     = ident("c1", 0x10004, "test", "frontend")
	c2Frontend = ident("c2", 0x20001, "shop", "frontend")
	c2API      = ident("c2", 0x20002, "shop", "api")
	everyone   = []*api.Identity{c1Frontend, c1API, c1DB, c1Test, c2Frontend, c2API}
)

func np(t *testing.T, doc string) *Policy {
	t.Helper()
	var n networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(doc), &n); err != nil {
		t.Fatal(err)
	}
	p, err := FromNetworkPolicy(&n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func cnp(t *testing.T, doc string) []*Policy {
	t.Helper()
	raw, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := FromCilium(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// summary renders a direction as "enforced allow=[...] deny=[...]" with
// identities in hex, for readable table tests.
func summary(d DirectionPolicy) string {
	render := func(es []Entry) string {
		var out []string
		for _, e := range es {
			peer := fmt.Sprintf("%#x", e.Identity)
			if e.CIDR.IsValid() {
				peer = e.CIDR.String()
				for _, x := range e.Except {
					peer += "!" + x.String()
				}
			}
			out = append(out, peer+":"+e.Port.String())
		}
		return "[" + strings.Join(out, " ") + "]"
	}
	if !d.Enforced && len(d.Allow)+len(d.Deny) == 0 {
		return "open"
	}
	return fmt.Sprintf("enforced=%v allow=%s deny=%s", d.Enforced, render(d.Allow), render(d.Deny))
}

const apiFromFrontend = `
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: 8080}]
`

func TestCompute(t *testing.T) {
	for _, tc := range []struct {
		name            string
		policies        func(t *testing.T) []*Policy
		endpoint        *api.Identity
		all             bool
		ingress, egress string
	}{
		{name: "no policy: open", policies: func(*testing.T) []*Policy { return nil }, endpoint: c1API, ingress: "open", egress: "open"},
		{
			name:     "NetworkPolicy: local frontends of its namespace only",
			policies: func(t *testing.T) []*Policy { return []*Policy{np(t, apiFromFrontend)} },
			endpoint: c1API, ingress: "enforced=true allow=[0x10001:TCP/8080] deny=[]", egress: "open",
		},
		{
			name:     "mesh-wide AllClusters: remote frontends too",
			policies: func(t *testing.T) []*Policy { return []*Policy{np(t, apiFromFrontend)} },
			endpoint: c1API, all: true, ingress: "enforced=true allow=[0x10001:TCP/8080 0x20001:TCP/8080] deny=[]", egress: "open",
		},
		{
			name:     "a policy selects endpoints of its namespace only",
			policies: func(t *testing.T) []*Policy { return []*Policy{np(t, apiFromFrontend)} },
			endpoint: c1DB, ingress: "open", egress: "open",
		},
		{
			name: "namespaceSelector by namespace labels, ports range and UDP",
			policies: func(t *testing.T) []*Policy {
				return []*Policy{np(t, `
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: shop}}}]
    ports: [{port: 5432, endPort: 5433}, {protocol: UDP, port: 53}]
`)}
			},
			endpoint: c1DB,
			ingress:  "enforced=true allow=[0x10001:TCP/5432-5433 0x10001:UDP/53 0x10002:TCP/5432-5433 0x10002:UDP/53 0x10003:TCP/5432-5433 0x10003:UDP/53] deny=[]",
			egress:   "open",
		},
		{
			name: "egress ipBlock with an exception; ingress default deny with no rule",
			policies: func(t *testing.T) []*Policy {
				return []*Policy{np(t, `
metadata: {name: lock, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{protocol: UDP, port: 53}]
`)}
			},
			endpoint: c1Frontend,
			ingress:  "enforced=true allow=[] deny=[]",
			egress:   "enforced=true allow=[10.0.0.0/8!10.1.0.0/16:UDP/53] deny=[]",
		},
		{
			name: "Cilium: a selector naming a cluster selects that cluster",
			policies: func(t *testing.T) []*Policy {
				return cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {"k8s:app": frontend, "k8s:io.cilium.k8s.policy.cluster": c2}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  ingressDeny:
  - fromEntities: [world]
`)
			},
			endpoint: c1API,
			ingress:  "enforced=true allow=[0x20001:TCP/8080] deny=[0x2:any/*]",
			egress:   "open",
		},
		{
			name: "Cilium cluster-wide: entity cluster is the host and every local identity, in every namespace",
			policies: func(t *testing.T) []*Policy {
				return cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: in-cluster}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEntities: [cluster]
`)
			},
			endpoint: c1Test,
			ingress:  "open",
			egress:   "enforced=true allow=[0x1:any/* 0x10001:any/* 0x10002:any/* 0x10003:any/* 0x10004:any/*] deny=[]",
		},
		{
			name: "Cilium enableDefaultDeny false: rules listed, direction not enforced",
			policies: func(t *testing.T) []*Policy {
				return cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soft, namespace: shop}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEntities: [host]
`)
			},
			endpoint: c1DB, ingress: "enforced=false allow=[0x1:any/*] deny=[]", egress: "open",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Compute(tc.endpoint, tc.policies(t), everyone, Options{LocalCluster: "c1", AllClusters: tc.all})
			if s := summary(got.Ingress); s != tc.ingress {
				t.Errorf("ingress %s\n        want %s", s, tc.ingress)
			}
			if s := summary(got.Egress); s != tc.egress {
				t.Errorf("egress %s\n       want %s", s, tc.egress)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		want    error
		mention []string
	}{
		{"L7 http rule", `
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET, path: /}]}}]
`, ErrUnsupported, []string{"CiliumNetworkPolicy shop/web ingress[0] toPorts[0]", "L7 rules (http)"}},
		{"FQDN selector", `
kind: CiliumNetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: example.com}]
`, ErrUnsupported, []string{"egress[0]", "toFQDNs"}},
		{"unknown field", `
kind: CiliumNetworkPolicy
metadata: {name: typo, namespace: shop}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoint: [{}]
`, ErrUnsupported, []string{"shop/typo", "fromEndpoint"}},
		{"unknown entity", `
kind: CiliumClusterwideNetworkPolicy
metadata: {name: kapi}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [kube-apiserver]
`, ErrUnsupported, []string{"CiliumClusterwideNetworkPolicy kapi egress[0]", "kube-apiserver"}},
		{"reserved label source", `
kind: CiliumNetworkPolicy
metadata: {name: r, namespace: shop}
spec:
  endpointSelector: {matchLabels: {"reserved:host": ""}}
`, ErrUnsupported, []string{"reserved:host"}},
		{"from field in an egress rule", `
kind: CiliumNetworkPolicy
metadata: {name: mixed, namespace: shop}
spec:
  endpointSelector: {}
  egress:
  - fromEntities: [world]
`, ErrInvalid, []string{"egress[0]", "fromEntities"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := yaml.YAMLToJSON([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			_, err = FromCilium(raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("err %q does not name %q", err, m)
				}
			}
		})
	}
}

func TestNetworkPolicyRefused(t *testing.T) {
	tcp := corev1.ProtocolTCP
	named := intstr.FromString("http")
	for _, tc := range []struct {
		name    string
		spec    networkingv1.NetworkPolicySpec
		want    error
		mention string
	}{
		{"named port", networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}}}}}, ErrUnsupported, `ingress[0] ports[0]: named port "http"`},
		{"exception outside the block", networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/16", Except: []string{"10.9.0.0/24"}}}}}}}, ErrInvalid, "egress[0] peer[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromNetworkPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"}, Spec: tc.spec})
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.want, tc.mention)
			}
		})
	}
}

func TestSpecsGiveOnePolicyEach(t *testing.T) {
	ps := cnp(t, `
kind: CiliumNetworkPolicy
metadata: {name: two, namespace: shop}
specs:
- endpointSelector: {matchLabels: {app: api}}
  ingress: [{fromEntities: [cluster]}]
- endpointSelector: {matchLabels: {app: db}}
  egress: [{toEntities: [world]}]
`)
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	if !slices.Equal(names, []string{"CiliumNetworkPolicy shop/two specs[0]", "CiliumNetworkPolicy shop/two specs[1]"}) {
		t.Fatalf("policies %v", names)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		kind, doc string
		rules     int
		err       error
	}{
		{"NetworkPolicy", `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"a","namespace":"shop"},"spec":{"podSelector":{}}}`, 1, nil},
		{KindCNP, `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"a","namespace":"shop"},"specs":[{"endpointSelector":{}},{"endpointSelector":{}}]}`, 2, nil},
		{"NetworkPolicy", `{"spec":`, 0, ErrInvalid},
		{"Ingress", `{}`, 0, ErrUnsupported},
	} {
		ps, err := Parse(tc.kind, []byte(tc.doc))
		if !errors.Is(err, tc.err) || len(ps) != tc.rules {
			t.Errorf("Parse(%s, %s) = %d rules, %v; want %d, %v", tc.kind, tc.doc, len(ps), err, tc.rules, tc.err)
		}
	}
}
