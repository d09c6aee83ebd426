package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/policy"
)

// storedPolicy reads a policy from the store and parses it as the agents
// do; it returns the rule names, or an error when absent.
func storedPolicy(ctx context.Context, e *env, kind, ns, name string) ([]string, error) {
	key := api.PolicyKey("c1", kind, ns, name)
	kv, ok, err := e.store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: absent", key)
	}
	obj, err := api.Decode(key, kv.Value)
	if err != nil {
		return nil, err
	}
	p := obj.(*api.Policy)
	parsed, err := policy.Parse(p.Kind, p.Spec)
	if err != nil {
		return nil, fmt.Errorf("%s: stored policy does not parse: %w", key, err)
	}
	var rules []string
	for _, pp := range parsed {
		for _, r := range pp.Rules {
			rules = append(rules, r.Name+" "+fmt.Sprint(r.Ports))
		}
	}
	return rules, nil
}

// TestPolicyExport: against a real kube-apiserver and store, accepted
// policies are exported under the cluster's policy prefix as the agents
// parse them; an update the mesh refuses leaves the previous version in the
// store (and its Event says so), also across an apiserver restart; a
// deleted policy leaves the store; the kind is marked synced.
func TestPolicyExport(t *testing.T) {
	e := newEnv(t, "c1", 4)
	ctx := context.Background()
	cs := e.kube.Client
	dyn, err := dynamic.NewForConfig(e.kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	mkNamespace(t, e, "shop", nil)
	applyYAML(t, dyn, schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}, "", cnpCRD)
	cnp := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	poll.Eventually(t, waitTimeout, "CRD served", func(ctx context.Context) error {
		_, err := dyn.Resource(cnp).Namespace("shop").List(ctx, metav1.ListOptions{})
		return err
	})
	r := e.start()
	defer func() { r.stop() }()

	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(8080)
	if _, err := cs.NetworkingV1().NetworkPolicies("shop").Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	applyYAML(t, dyn, cnp, "shop", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	poll.Eventually(t, waitTimeout, "both policies exported", func(ctx context.Context) error {
		for _, p := range [][2]string{{"NetworkPolicy", "api"}, {"CiliumNetworkPolicy", "web"}} {
			rules, err := storedPolicy(ctx, e, p[0], "shop", p[1])
			if err != nil {
				return err
			}
			if len(rules) != 1 {
				return fmt.Errorf("%s: rules %v", p[1], rules)
			}
		}
		if _, ok, err := e.store.Get(ctx, api.SyncedKey("c1", api.KindPolicy)); err != nil || !ok {
			return fmt.Errorf("policies not marked synced (%v)", err)
		}
		return nil
	})

	// An L7 rule: refused, the previous version stays.
	patch := `{"spec":{"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"method":"GET"}]}}]}]}}`
	if _, err := dyn.Resource(cnp).Namespace("shop").Patch(ctx, "web", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, waitTimeout, "refusal event", func(ctx context.Context) error {
		evs, err := cs.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "reason=" + apiserver.ReasonPolicyNotEnforced})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if ev.InvolvedObject.Name == "web" && strings.Contains(ev.Message, "previous version stays in force") {
				return nil
			}
		}
		return errors.New("no event on web saying the previous version stays")
	})
	if rules, err := storedPolicy(ctx, e, "CiliumNetworkPolicy", "shop", "web"); err != nil || len(rules) != 1 {
		t.Fatalf("refused update: stored web = %v, %v; want the previous version", rules, err)
	}

	// Across a restart the refused policy's stored version is kept, and a
	// policy deleted meanwhile goes.
	r.stop()
	if err := cs.NetworkingV1().NetworkPolicies("shop").Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r = e.start()
	poll.Eventually(t, waitTimeout, "deleted policy gone after restart", func(ctx context.Context) error {
		if _, err := storedPolicy(ctx, e, "NetworkPolicy", "shop", "api"); err == nil {
			return errors.New("NetworkPolicy shop/api still stored")
		}
		return nil
	})
	if rules, err := storedPolicy(ctx, e, "CiliumNetworkPolicy", "shop", "web"); err != nil || len(rules) != 1 {
		t.Fatalf("after restart: stored web = %v, %v; want the previous version kept", rules, err)
	}

	// Deleting the refused policy removes it.
	if err := dyn.Resource(cnp).Namespace("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, waitTimeout, "deleted policy gone", func(ctx context.Context) error {
		if _, err := storedPolicy(ctx, e, "CiliumNetworkPolicy", "shop", "web"); err == nil {
			return errors.New("CiliumNetworkPolicy shop/web still stored")
		}
		return nil
	})
}
