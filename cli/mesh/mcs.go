package mesh

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/clustermesh/clustermesh/deploy"
)

// ErrMCS is the code of problems of the Multi-Cluster Services API: an
// export in conflict or refused (docs/mcs.md).
var ErrMCS = errors.New("multi-cluster service problem")

var (
	serviceExportGVR = deploy.ServiceExportGVR(deploy.MCSVersion)
	serviceImportGVR = deploy.ServiceImportGVR(deploy.MCSVersion)
)

// MCSCondition is one status condition of a ServiceExport or ServiceImport.
type MCSCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// MCSObject is a ServiceExport or ServiceImport of one cluster.
type MCSObject struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Type, IPs and Clusters are a ServiceImport's: ClusterSetIP or
	// Headless, its clusterset IPs and the exporting clusters.
	Type       string         `json:"type,omitempty"`
	IPs        []string       `json:"ips,omitempty"`
	Clusters   []string       `json:"clusters,omitempty"`
	Conditions []MCSCondition `json:"conditions,omitempty"`
}

// Condition returns the condition of type typ ("" status when absent).
func (o MCSObject) Condition(typ string) MCSCondition {
	for _, c := range o.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return MCSCondition{Type: typ}
}

// MCSView is a cluster's ServiceExports and ServiceImports.
type MCSView struct {
	Cluster string      `json:"cluster"`
	Exports []MCSObject `json:"exports"`
	Imports []MCSObject `json:"imports"`
}

// ReadMCS reads the cluster's ServiceExports and ServiceImports with their
// conditions; nil when the Multi-Cluster Services CRDs are not installed.
func ReadMCS(ctx context.Context, c *Cluster, cluster string) (*MCSView, error) {
	v := &MCSView{Cluster: cluster}
	for _, r := range []struct {
		gvr  schema.GroupVersionResource
		kind string
		into *[]MCSObject
	}{{serviceExportGVR, "ServiceExport", &v.Exports}, {serviceImportGVR, "ServiceImport", &v.Imports}} {
		list, err := c.Dynamic.Resource(r.gvr).Namespace("").List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("context %s: list %ss: %w", c.Context, r.kind, err)
		}
		for _, u := range list.Items {
			*r.into = append(*r.into, mcsObject(r.kind, &u))
		}
		sort.Slice(*r.into, func(i, j int) bool {
			a, b := (*r.into)[i], (*r.into)[j]
			return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
		})
	}
	return v, nil
}

func mcsObject(kind string, u *unstructured.Unstructured) MCSObject {
	o := MCSObject{Kind: kind, Namespace: u.GetNamespace(), Name: u.GetName()}
	o.Type, _, _ = unstructured.NestedString(u.Object, "spec", "type")
	o.IPs, _, _ = unstructured.NestedStringSlice(u.Object, "spec", "ips")
	cl, _, _ := unstructured.NestedSlice(u.Object, "status", "clusters")
	for _, x := range cl {
		if m, ok := x.(map[string]any); ok {
			o.Clusters = append(o.Clusters, fmt.Sprint(m["cluster"]))
		}
	}
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, x := range cs {
		if m, ok := x.(map[string]any); ok {
			str := func(k string) string { s, _ := m[k].(string); return s }
			o.Conditions = append(o.Conditions, MCSCondition{Type: str("type"), Status: str("status"), Reason: str("reason"), Message: str("message")})
		}
	}
	return o
}

// Problems are the view's exports refused (Valid False) and the exports
// and imports in conflict, each naming the object, the clusters and the
// field (the condition's message).
func (v *MCSView) Problems(c *Cluster) []Problem {
	if v == nil {
		return nil
	}
	var out []Problem
	for _, o := range v.Exports {
		if cond := o.Condition("Valid"); cond.Status == "False" {
			out = append(out, problem(ErrMCS, fmt.Sprintf("kubectl --context %s -n %s describe serviceexport %s", c.Context, o.Namespace, o.Name),
				"cluster %s: ServiceExport %s/%s not valid (%s): %s", v.Cluster, o.Namespace, o.Name, cond.Reason, cond.Message))
		}
		if cond := o.Condition("Conflict"); cond.Status == "True" {
			out = append(out, problem(ErrMCS, "make the exporting clusters' Services agree on the field named (the oldest export applies meanwhile)",
				"cluster %s: ServiceExport %s/%s in conflict (%s): %s", v.Cluster, o.Namespace, o.Name, cond.Reason, cond.Message))
		}
	}
	for _, o := range v.Imports {
		if cond := o.Condition("Conflict"); cond.Status == "True" {
			out = append(out, problem(ErrMCS, "make the exporting clusters' Services agree on the field named (the oldest export applies meanwhile)",
				"cluster %s: ServiceImport %s/%s from %s in conflict (%s): %s", v.Cluster, o.Namespace, o.Name, strings.Join(o.Clusters, ", "), cond.Reason, cond.Message))
		}
	}
	return out
}
