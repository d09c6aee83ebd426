package apiserver_test

import (
	"context"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/poll"
)

var serviceExportGVR = deploy.ServiceExportGVR(deploy.MCSVersion)

var serviceImportGVR = deploy.ServiceImportGVR(deploy.MCSVersion)

// installMCS creates the ServiceExport and ServiceImport CRDs enable
// installs, waits until they are served and returns a dynamic client.
func installMCS(t testing.TB, e *env) dynamic.Interface {
	t.Helper()
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(e.kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	v := deploy.DefaultValues()
	v.ClusterName, v.ClusterID = e.cfg.ClusterName, e.cfg.ClusterID
	crds, err := deploy.Render(deploy.FileMCSCRD, v)
	if err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, crd := range crds {
		if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, waitTimeout, "CRDs served", func(ctx context.Context) error {
		for _, gvr := range []schema.GroupVersionResource{serviceExportGVR, serviceImportGVR} {
			if _, err := dyn.Resource(gvr).Namespace("default").List(ctx, metav1.ListOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	return dyn
}

// conditions returns a ServiceExport's (or another resource's) conditions
// as type → "status/reason".
func conditions(ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, ns, name string) (map[string]string, error) {
	u, err := dyn.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	cs, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	out := map[string]string{}
	for _, c := range cs {
		m := c.(map[string]any)
		out[fmt.Sprint(m["type"])] = fmt.Sprintf("%v/%v", m["status"], m["reason"])
	}
	return out, nil
}

// TestServiceExport: against a real kube-apiserver with the ServiceExport CRD
// enable installs, a Service without mesh annotations is exported as a global
// service (with its endpoints) while a ServiceExport names it, and withdrawn
// when the ServiceExport goes; the ServiceExport's Valid and Ready
// conditions say what happened, including for a Service that does not
// exist.
func TestServiceExport(t *testing.T) {
	e := newEnv(t, "c1", 5)
	ctx := context.Background()
	dyn := installMCS(t, e)
	mkNode(t, e, "node-a", "192.168.1.10", "10.244.1.0/24", "zone-a")
	mkNamespace(t, e, "shop", nil)
	mkService(t, e, "shop", "web", nil)
	mkPod(t, e, "shop", "web-0", "web", "node-a", "10.244.1.10")
	export := func(name string) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
			"metadata": map[string]any{"name": name, "namespace": "shop"},
		}}
		if _, err := dyn.Resource(serviceExportGVR).Namespace("shop").Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	exported := func(ctx context.Context) (global bool, slices int, err error) {
		got, err := e.dump(ctx)
		if err != nil {
			return false, 0, err
		}
		if s, ok := got[api.ServiceKey("c1", "shop", "web")].(*api.Service); ok {
			global = s.Global
		}
		for _, o := range got {
			if es, ok := o.(*api.EndpointSlice); ok && es.Namespace == "shop" && es.Service == "web" {
				slices++
			}
		}
		return global, slices, nil
	}
	e.start()
	export("web")
	export("ghost")
	poll.Eventually(t, waitTimeout, "exported by its ServiceExport", func(ctx context.Context) error {
		global, n, err := exported(ctx)
		if err != nil {
			return err
		}
		if !global || n == 0 {
			return fmt.Errorf("shop/web: global %v, %d endpoint slices; want a global service with its slice", global, n)
		}
		for name, want := range map[string]map[string]string{
			"web":   {"Valid": "True/Valid", "Ready": "True/Exported"},
			"ghost": {"Valid": "False/NoService", "Ready": "False/NotExported"},
		} {
			got, err := conditions(ctx, dyn, serviceExportGVR, "shop", name)
			if err != nil {
				return err
			}
			// The importer adds Conflict (False/NoConflicts here) once it
			// has seen the export in the store, at its own pace; its
			// conflicts are TestServiceImport's.
			delete(got, apiserver.ConditionConflict)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("ServiceExport %s conditions %v, want %v", name, got, want)
			}
		}
		return nil
	})
	if err := dyn.Resource(serviceExportGVR).Namespace("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, waitTimeout, "withdrawn with its ServiceExport", func(ctx context.Context) error {
		global, n, err := exported(ctx)
		if err == nil && (global || n > 0) {
			err = fmt.Errorf("shop/web: global %v, %d endpoint slices after its ServiceExport went", global, n)
		}
		return err
	})
}
