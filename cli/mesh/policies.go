package mesh

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/clustermesh/clustermesh/policy"
)

// ciliumPolicyGVRs are Cilium's policy resources, read where served.
var ciliumPolicyGVRs = []schema.GroupVersionResource{
	{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
	{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
}

// PolicyCount is how many of a cluster's network policies the mesh
// enforces and how many it refused (their previous version, if any, stays
// in force).
type PolicyCount struct {
	Enforced int `json:"enforced"`
	Refused  int `json:"refused"`
}

// policyProblems checks the cluster's network policies as the apiserver
// does (package policy) and returns their count and one problem per policy
// the mesh cannot enforce as written, naming it and the rule. Cilium's
// resources are read when the cluster serves them.
func (c *Cluster) policyProblems(ctx context.Context) (PolicyCount, []Problem, error) {
	var (
		ps    []Problem
		count PolicyCount
	)
	add := func(name string, err error) {
		ps = append(ps, problem(ErrPolicy,
			"change the rule, or keep the policy for another enforcer: the mesh enforces L3/L4 selectors, entities, CIDRs and numeric ports (docs/policy.md)",
			"%s: %v", name, err))
	}
	nps, err := c.Kube.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return count, nil, fmt.Errorf("context %s: list NetworkPolicies: %w", c.Context, err)
	}
	for i := range nps.Items {
		np := &nps.Items[i]
		if _, err := policy.FromNetworkPolicy(np); err != nil {
			add("NetworkPolicy "+np.Namespace+"/"+np.Name, err)
		} else {
			count.Enforced++
		}
	}
	for _, gvr := range ciliumPolicyGVRs {
		list, err := c.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			continue // Cilium's CRDs are not installed
		}
		if err != nil {
			return count, nil, fmt.Errorf("context %s: list %s: %w", c.Context, gvr.Resource, err)
		}
		for _, u := range list.Items {
			raw, err := json.Marshal(u.Object)
			if err == nil {
				_, err = policy.FromCilium(raw)
			}
			if err != nil {
				add(u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName(), err)
			} else {
				count.Enforced++
			}
		}
	}
	count.Refused = len(ps)
	return count, ps, nil
}
