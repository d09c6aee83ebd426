package apiserver

import (
	"context"
	"fmt"
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

	"github.com/clustermesh/clustermesh/deploy"
)

// Conditions the apiserver sets on a ServiceExport (KEP-1645).
const (
	ConditionValid    = "Valid"
	ConditionReady    = "Ready"
	ConditionConflict = "Conflict"
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

	mu  sync.Mutex
	gvr schema.GroupVersionResource
	// exports are the ServiceExports by name, with their creation times
	// (the KEP's conflict resolution: the oldest export wins).
	exports map[types.NamespacedName]time.Time
}

func newServiceExports(dyn dynamic.Interface, disc discovery.DiscoveryInterface, log *slog.Logger, changed func(types.NamespacedName)) *serviceExports {
	return &serviceExports{dyn: dyn, disc: disc, log: log, changed: changed, exports: map[types.NamespacedName]time.Time{}}
}

// has tells whether a ServiceExport names the service.
func (se *serviceExports) has(nn types.NamespacedName) bool {
	_, ok := se.created(nn)
	return ok
}

// created returns the creation time of the service's ServiceExport; ok is
// false when it has none.
func (se *serviceExports) created(nn types.NamespacedName) (time.Time, bool) {
	if se == nil {
		return time.Time{}, false
	}
	se.mu.Lock()
	defer se.mu.Unlock()
	t, ok := se.exports[nn]
	return t, ok
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
			for _, v := range deploy.MCSVersions() {
				gvr := deploy.ServiceExportGVR(v)
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
	_, was := se.exports[nn]
	if present {
		se.exports[nn] = u.GetCreationTimestamp().UTC()
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
	readyReason, readyMsg := "Exported", "exported to the mesh's peers"
	if !ready {
		readyReason, readyMsg = "NotExported", "not exported: "+validMsg
	}
	return se.setConditions(ctx, nn,
		condition{ConditionValid, valid, validReason, validMsg},
		condition{ConditionReady, ready, readyReason, readyMsg})
}

// condition is one status condition to write.
type condition struct {
	typ     string
	status  bool
	reason  string
	message string
}

// setConditions writes the given conditions of a service's ServiceExport,
// if it has one, leaving its other conditions as they are; nothing is
// written when they already say the same.
func (se *serviceExports) setConditions(ctx context.Context, nn types.NamespacedName, want ...condition) error {
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
	have, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	out, changed := mergeConditions(have, want)
	if !changed {
		return nil
	}
	if err := unstructured.SetNestedSlice(u.Object, out, "status", "conditions"); err != nil {
		return err
	}
	_, err = ri.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	return err
}

// mergeConditions returns have with want's conditions set (a condition
// keeps its lastTransitionTime while its status holds) and whether
// anything changed.
func mergeConditions(have []any, want []condition) ([]any, bool) {
	status := func(b bool) string {
		if b {
			return string(metav1.ConditionTrue)
		}
		return string(metav1.ConditionFalse)
	}
	changed := false
	now := metav1.Now().UTC().Format(time.RFC3339)
	var out []any
	set := map[string]bool{}
	for _, c := range want {
		set[c.typ] = true
		w := map[string]any{"type": c.typ, "status": status(c.status), "reason": c.reason, "message": c.message}
		var old map[string]any
		for _, h := range have {
			if hm, ok := h.(map[string]any); ok && hm["type"] == c.typ {
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
		if hm, ok := h.(map[string]any); ok && !set[fmt.Sprint(hm["type"])] {
			out = append(out, hm)
		}
	}
	return out, changed
}
