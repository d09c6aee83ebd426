package apiserver

import (
	"context"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// ServiceExport versions of the Multi-Cluster Services API, newest first:
// the first one the API server serves is watched.
var serviceExportVersions = []schema.GroupVersionResource{
	{Group: "multicluster.x-k8s.io", Version: "v1beta1", Resource: "serviceexports"},
	{Group: "multicluster.x-k8s.io", Version: "v1alpha1", Resource: "serviceexports"},
}

// Conditions the apiserver sets on a ServiceExport (KEP-1645).
const (
	ConditionValid = "Valid"
	ConditionReady = "Ready"
)

// serviceExports follows the cluster's ServiceExports (once their CRD is
// served): a Service with a ServiceExport of its name is exported as a
// global, shared service, as if annotated clustermesh.io/global=true. The
// controller asks has; changes enqueue the service.
type serviceExports struct {
	dyn     dynamic.Interface
	disc    discovery.DiscoveryInterface
	log     *slog.Logger
	changed func(types.NamespacedName)

	mu      sync.Mutex
	gvr     schema.GroupVersionResource
	exports map[types.NamespacedName]bool
}

func newServiceExports(dyn dynamic.Interface, disc discovery.DiscoveryInterface, log *slog.Logger, changed func(types.NamespacedName)) *serviceExports {
	return &serviceExports{dyn: dyn, disc: disc, log: log, changed: changed, exports: map[types.NamespacedName]bool{}}
}

// has tells whether a ServiceExport names the service.
func (se *serviceExports) has(nn types.NamespacedName) bool {
	if se == nil {
		return false
	}
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.exports[nn]
}

// run watches ServiceExports until ctx ends, looking for their CRD every
// rediscover until it is served.
func (se *serviceExports) run(ctx context.Context) {
	df := dynamicinformer.NewDynamicSharedInformerFactory(se.dyn, 0)
	defer df.Shutdown()
	tick := time.NewTicker(rediscover)
	defer tick.Stop()
	for {
		if se.gvr.Empty() {
			for _, gvr := range serviceExportVersions {
				if !served(se.disc, gvr) {
					continue
				}
				se.mu.Lock()
				se.gvr = gvr
				se.mu.Unlock()
				_, _ = df.ForResource(gvr).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
					AddFunc:    func(obj any) { se.set(obj, true) },
					UpdateFunc: func(_, obj any) { se.set(obj, true) },
					DeleteFunc: func(obj any) { se.set(obj, false) },
				})
				df.Start(ctx.Done())
				se.log.Info("following ServiceExports", "version", gvr.Version)
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (se *serviceExports) set(obj any, present bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	nn := types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()}
	se.mu.Lock()
	was := se.exports[nn]
	if present {
		se.exports[nn] = true
	} else {
		delete(se.exports, nn)
	}
	se.mu.Unlock()
	if was != present || present {
		se.changed(nn)
	}
}

// setStatus writes the Valid and Ready conditions of a service's
// ServiceExport, if it has one, when they differ from what is there.
func (se *serviceExports) setStatus(ctx context.Context, nn types.NamespacedName, valid bool, validReason, validMsg string, ready bool) error {
	if se == nil || !se.has(nn) {
		return nil
	}
	se.mu.Lock()
	gvr := se.gvr
	se.mu.Unlock()
	ri := se.dyn.Resource(gvr).Namespace(nn.Namespace)
	u, err := ri.Get(ctx, nn.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	status := func(b bool) string {
		if b {
			return string(metav1.ConditionTrue)
		}
		return string(metav1.ConditionFalse)
	}
	readyReason, readyMsg := "Exported", "exported to the mesh's peers"
	if !ready {
		readyReason, readyMsg = "NotExported", "not exported: "+validMsg
	}
	want := []map[string]any{
		{"type": ConditionValid, "status": status(valid), "reason": validReason, "message": validMsg},
		{"type": ConditionReady, "status": status(ready), "reason": readyReason, "message": readyMsg},
	}
	have, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	changed := false
	now := metav1.Now().UTC().Format(time.RFC3339)
	var out []any
	for _, w := range want {
		var old map[string]any
		for _, h := range have {
			if hm, ok := h.(map[string]any); ok && hm["type"] == w["type"] {
				old = hm
			}
		}
		if old != nil && old["status"] == w["status"] && old["reason"] == w["reason"] && old["message"] == w["message"] {
			out = append(out, old)
			continue
		}
		changed = true
		w["lastTransitionTime"] = now
		if old != nil && old["status"] == w["status"] {
			w["lastTransitionTime"] = old["lastTransitionTime"]
		}
		out = append(out, w)
	}
	for _, h := range have {
		if hm, ok := h.(map[string]any); ok && hm["type"] != ConditionValid && hm["type"] != ConditionReady {
			out = append(out, hm)
		}
	}
	if !changed {
		return nil
	}
	if err := unstructured.SetNestedSlice(u.Object, out, "status", "conditions"); err != nil {
		return err
	}
	_, err = ri.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	return err
}
