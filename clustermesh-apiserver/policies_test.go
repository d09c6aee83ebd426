package apiserver_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/poll"
)

const cnpCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: ciliumnetworkpolicies.cilium.io}
spec:
  group: cilium.io
  scope: Namespaced
  names: {kind: CiliumNetworkPolicy, plural: ciliumnetworkpolicies, singular: ciliumnetworkpolicy, listKind: CiliumNetworkPolicyList}
  versions:
  - name: v2
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

func applyYAML(t *testing.T, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, doc string) {
	t.Helper()
	var u unstructured.Unstructured
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(gvr)
	if ns != "" {
		ri = dyn.Resource(gvr).Namespace(ns)
	}
	if _, err := ri.Create(context.Background(), &u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestPolicyChecks: against a real kube-apiserver, network policies the mesh
// cannot enforce as written (a named port, a Cilium L7 rule) get a Warning
// Event naming the rule and are counted refused; an enforceable one is
// counted accepted and gets no Event. Cilium's CRD is installed after the
// apiserver started, as when Cilium comes later.
func TestPolicyChecks(t *testing.T) {
	e := newEnv(t, "c1", 4)
	ctx := context.Background()
	cs := e.kube.Client
	dyn, err := dynamic.NewForConfig(e.kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	mkNamespace(t, e, "shop", nil)
	r := e.start()

	tcp := corev1.ProtocolTCP
	for name, port := range map[string]intstr.IntOrString{"good": intstr.FromInt32(8080), "named": intstr.FromString("http")} {
		_, err := cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	applyYAML(t, dyn, schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, "", cnpCRD)
	cnp := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	poll.Eventually(t, waitTimeout, "CRD served", func(ctx context.Context) error {
		_, err := dyn.Resource(cnp).Namespace("shop").List(ctx, metav1.ListOptions{})
		return err
	})
	applyYAML(t, dyn, cnp, "shop", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
`)

	want := map[string]string{
		"NetworkPolicy/named":     `ports[0]: named port "http"`,
		"CiliumNetworkPolicy/web": "ingress[0] toPorts[0]: L7 rules (http)",
	}
	// The CRD is found by the checker's next discovery.
	poll.Eventually(t, waitTimeout, "PolicyNotEnforced events", func(ctx context.Context) error {
		evs, err := cs.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "reason=" + apiserver.ReasonPolicyNotEnforced})
		if err != nil {
			return err
		}
		got := map[string]string{}
		for _, ev := range evs.Items {
			got[ev.InvolvedObject.Kind+"/"+ev.InvolvedObject.Name] = ev.Message
		}
		if _, ok := got["NetworkPolicy/good"]; ok {
			return fmt.Errorf("an enforceable policy got an event: %v", got)
		}
		for obj, mention := range want {
			if !strings.Contains(got[obj], mention) {
				return fmt.Errorf("events %v: want one on %s naming %q", got, obj, mention)
			}
		}
		return nil
	})
	for metric, want := range map[string]float64{
		`clustermesh_apiserver_policies{kind="NetworkPolicy",state="accepted"}`:       1,
		`clustermesh_apiserver_policies{kind="NetworkPolicy",state="refused"}`:        1,
		`clustermesh_apiserver_policies{kind="CiliumNetworkPolicy",state="refused"}`:  1,
		`clustermesh_apiserver_policies{kind="CiliumNetworkPolicy",state="accepted"}`: 0,
	} {
		if got := r.metric(t, metric); got != want {
			t.Errorf("%s = %v, want %v", metric, got, want)
		}
	}
}
