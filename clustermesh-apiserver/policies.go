package apiserver

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/clustermesh/clustermesh/policy"
)

// Cilium's policy resources, checked when their CRDs are installed.
var ciliumPolicies = []struct {
	kind string
	gvr  schema.GroupVersionResource
}{
	{policy.KindCNP, schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}},
	{policy.KindCCNP, schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}},
}

// ReasonPolicyNotEnforced is the reason of the Warning Event a policy gets
// when the mesh cannot enforce it as written.
const ReasonPolicyNotEnforced = "PolicyNotEnforced"

// policyChecker checks the cluster's network policies (NetworkPolicy, and
// Cilium's once their CRDs exist) against what the mesh enforces (package
// policy). A policy it cannot enforce as written (an L7 rule, an FQDN
// selector, a named port...) gets a Warning Event naming the rule, a log line
// and a count in clustermesh_apiserver_policies, so that the operator learns
// it before relying on it: the mesh never enforces part of a policy.
type policyChecker struct {
	kube  kubernetes.Interface
	dyn   dynamic.Interface
	disc  discovery.DiscoveryInterface
	rec   record.EventRecorder
	log   *slog.Logger
	gauge *prometheus.GaugeVec

	mu sync.Mutex
	// refused holds, per policy ("Kind ns/name"), the error last reported;
	// accepted the policies that parse.
	refused  map[string]string
	accepted map[string]string // policy -> kind
}

func newPolicyChecker(kube kubernetes.Interface, dyn dynamic.Interface, rec record.EventRecorder, reg prometheus.Registerer, log *slog.Logger) (*policyChecker, error) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "clustermesh_apiserver_policies",
		Help: "Network policies of the cluster by kind and state: accepted (the mesh can enforce them as written) or refused (see their PolicyNotEnforced Events).",
	}, []string{"kind", "state"})
	if reg != nil {
		if err := reg.Register(g); err != nil {
			return nil, err
		}
	}
	return &policyChecker{kube: kube, dyn: dyn, disc: kube.Discovery(), rec: rec, log: log, gauge: g,
		refused: map[string]string{}, accepted: map[string]string{}}, nil
}

// rediscover is how often Cilium's CRDs are looked for until found: one
// discovery request, so installing Cilium later needs no restart.
const rediscover = 10 * time.Second

// run watches the policies until ctx ends.
func (pc *policyChecker) run(ctx context.Context) {
	f := informers.NewSharedInformerFactory(pc.kube, 0)
	_, _ = f.Networking().V1().NetworkPolicies().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pc.checkNetworkPolicy(obj) },
		UpdateFunc: func(_, obj any) { pc.checkNetworkPolicy(obj) },
		DeleteFunc: func(obj any) { pc.forget(obj, "NetworkPolicy") },
	})
	f.Start(ctx.Done())
	defer f.Shutdown()

	df := dynamicinformer.NewDynamicSharedInformerFactory(pc.dyn, 0)
	defer df.Shutdown()
	watching := map[string]bool{}
	tick := time.NewTicker(rediscover)
	defer tick.Stop()
	for {
		for _, cp := range ciliumPolicies {
			if watching[cp.kind] || !served(pc.disc, cp.gvr) {
				continue
			}
			kind := cp.kind
			_, _ = df.ForResource(cp.gvr).Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc:    func(obj any) { pc.checkCilium(obj) },
				UpdateFunc: func(_, obj any) { pc.checkCilium(obj) },
				DeleteFunc: func(obj any) { pc.forget(obj, kind) },
			})
			watching[kind] = true
			pc.log.Info("checking Cilium policies", "kind", kind)
		}
		df.Start(ctx.Done())
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// served tells whether the API server serves a resource (a CRD may be
// installed after the apiserver started).
func served(disc discovery.DiscoveryInterface, gvr schema.GroupVersionResource) bool {
	list, err := disc.ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return true
		}
	}
	return false
}

func (pc *policyChecker) checkNetworkPolicy(obj any) {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return
	}
	_, err := policy.FromNetworkPolicy(np)
	pc.record(np, "NetworkPolicy", "NetworkPolicy "+np.Namespace+"/"+np.Name, err)
}

func (pc *policyChecker) checkCilium(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	raw, err := json.Marshal(u.Object)
	if err == nil {
		_, err = policy.FromCilium(raw)
	}
	pc.record(u, u.GetKind(), policyName(u.GetKind(), u.GetNamespace(), u.GetName()), err)
}

func policyName(kind, ns, name string) string {
	if ns == "" {
		return kind + " " + name
	}
	return kind + " " + ns + "/" + name
}

// record keeps a policy's state and reports a refusal once per distinct
// error: an Event on the policy, a log line.
func (pc *policyChecker) record(obj runtime.Object, kind, name string, err error) {
	pc.mu.Lock()
	last, wasRefused := pc.refused[name]
	if err == nil {
		delete(pc.refused, name)
		pc.accepted[name] = kind
	} else {
		delete(pc.accepted, name)
		pc.refused[name] = err.Error()
	}
	pc.updateGauge()
	pc.mu.Unlock()
	switch {
	case err != nil && (!wasRefused || last != err.Error()):
		pc.log.Warn("network policy not enforceable by the mesh", "policy", name, "error", err)
		pc.rec.Event(obj, corev1.EventTypeWarning, ReasonPolicyNotEnforced, err.Error())
	case err == nil && wasRefused:
		pc.log.Info("network policy enforceable again", "policy", name)
	}
}

func (pc *policyChecker) forget(obj any, kind string) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(interface {
		GetNamespace() string
		GetName() string
	})
	if !ok {
		return
	}
	name := policyName(kind, m.GetNamespace(), m.GetName())
	pc.mu.Lock()
	delete(pc.refused, name)
	delete(pc.accepted, name)
	pc.updateGauge()
	pc.mu.Unlock()
}

// updateGauge recounts the states; pc.mu is held.
func (pc *policyChecker) updateGauge() {
	pc.gauge.Reset()
	for _, k := range []string{"NetworkPolicy", policy.KindCNP, policy.KindCCNP} {
		pc.gauge.WithLabelValues(k, "accepted").Set(0)
		pc.gauge.WithLabelValues(k, "refused").Set(0)
	}
	for _, kind := range pc.accepted {
		pc.gauge.WithLabelValues(kind, "accepted").Inc()
	}
	for name := range pc.refused {
		kind, _, _ := strings.Cut(name, " ")
		pc.gauge.WithLabelValues(kind, "refused").Inc()
	}
}
