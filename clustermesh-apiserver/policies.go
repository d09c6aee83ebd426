package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
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
// policy), and exports the ones it accepts into the cluster's own store
// (api.KindPolicy, which peers cannot read) for the cluster's agents to
// enforce. A policy it cannot enforce as written (an L7 rule, an FQDN
// selector, a named port...) gets a Warning Event naming the rule, a log line
// and a count in clustermesh_apiserver_policies, so that the operator learns
// it before relying on it: the mesh never enforces part of a policy. An
// update that is refused leaves the previous accepted version in the store,
// and so in force.
type policyChecker struct {
	kube    kubernetes.Interface
	dyn     dynamic.Interface
	disc    discovery.DiscoveryInterface
	rec     record.EventRecorder
	log     *slog.Logger
	gauge   *prometheus.GaugeVec
	cluster string
	// store and client are nil when the checker only checks (tests of
	// the Events).
	store  policyStore
	client *kvstore.Client

	mu sync.Mutex
	// refused holds, per policy ("Kind ns/name"), the error last reported;
	// accepted the policies that parse.
	refused  map[string]string
	accepted map[string]string // policy -> kind
	// pending holds the store writes not done yet, by key: the policy to
	// write, or nil to delete. Only the latest state of a key is kept.
	pending map[string]*api.Policy
	kick    chan struct{}
}

// policyStore is what the checker writes through (the export's writer).
type policyStore interface {
	Upsert(ctx context.Context, obj api.Object) error
	Delete(ctx context.Context, key string) error
	MarkSynced(ctx context.Context, kind api.Kind) error
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
		refused: map[string]string{}, accepted: map[string]string{},
		pending: map[string]*api.Policy{}, kick: make(chan struct{}, 1)}, nil
}

// exportTo makes the checker export accepted policies of cluster through
// store; client reads what an earlier run exported.
func (pc *policyChecker) exportTo(cluster string, store policyStore, client *kvstore.Client) {
	pc.cluster, pc.store, pc.client = cluster, store, client
}

// rediscover is how often Cilium's CRDs are looked for until found: one
// discovery request, so installing Cilium later needs no restart.
const rediscover = 10 * time.Second

// run watches the policies until ctx ends. With a store, it exports: once
// the policies present at start are listed, it writes them, keeps the
// stored version of those refused now, and marks the kind synced (which
// removes policies deleted while no apiserver ran); from then on every
// change is written as it comes.
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
	var flushing sync.WaitGroup
	defer flushing.Wait()
	for first := true; ; first = false {
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
		if first && pc.store != nil {
			f.WaitForCacheSync(ctx.Done())
			df.WaitForCacheSync(ctx.Done())
			if err := pc.initialExport(ctx); err != nil {
				if ctx.Err() == nil {
					pc.log.Error("policy export: initial sync failed", "cluster", pc.cluster, "error", err)
				}
				return
			}
			flushing.Add(1)
			go func() { defer flushing.Done(); pc.flushLoop(ctx) }()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// initialExport writes every pending policy, re-writes the stored version
// of each policy refused now (so that MarkSynced keeps it, and it stays in
// force), then marks the kind synced. It retries until done or ctx ends.
func (pc *policyChecker) initialExport(ctx context.Context) error {
	b := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		err := pc.flush(ctx)
		if err == nil {
			err = pc.keepRefused(ctx)
		}
		if err == nil {
			err = pc.store.MarkSynced(ctx, api.KindPolicy)
		}
		if err == nil {
			pc.log.Info("policies exported", "cluster", pc.cluster, "policies", pc.acceptedCount())
			return nil
		}
		pc.log.Warn("policy export: retrying", "cluster", pc.cluster, "error", err)
		if werr := b.Wait(ctx); werr != nil {
			return werr
		}
	}
}

func (pc *policyChecker) acceptedCount() int {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return len(pc.accepted)
}

// keepRefused re-writes, for every policy refused now, the version an
// earlier run exported, if any.
func (pc *policyChecker) keepRefused(ctx context.Context) error {
	pc.mu.Lock()
	var keys []string
	for name := range pc.refused {
		keys = append(keys, pc.keyOfName(name))
	}
	pc.mu.Unlock()
	for _, key := range keys {
		kv, ok, err := pc.client.Get(ctx, key)
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		if !ok {
			continue
		}
		obj, err := api.Decode(key, kv.Value)
		if err != nil {
			pc.log.Warn("policy export: stored version unreadable, dropped", "key", key, "error", err)
			continue
		}
		if err := pc.store.Upsert(ctx, obj); err != nil {
			return fmt.Errorf("keep %s: %w", key, err)
		}
		pc.log.Info("policy refused, previous version stays in force", "key", key)
	}
	return nil
}

// flushLoop writes pending changes as they come, retrying failed ones
// with backoff, until ctx ends.
func (pc *policyChecker) flushLoop(ctx context.Context) {
	b := backoff.New(100*time.Millisecond, 5*time.Second)
	for {
		select {
		case <-ctx.Done():
			return
		case <-pc.kick:
		}
		for {
			err := pc.flush(ctx)
			if err == nil {
				b.Reset()
				break
			}
			pc.log.Warn("policy export: write failed, retrying", "cluster", pc.cluster, "error", err)
			if b.Wait(ctx) != nil {
				return
			}
		}
	}
}

// flush writes every pending change. A change that fails goes back to
// pending unless a newer one for its key arrived meanwhile.
func (pc *policyChecker) flush(ctx context.Context) error {
	pc.mu.Lock()
	batch := pc.pending
	pc.pending = map[string]*api.Policy{}
	pc.mu.Unlock()
	var errs []error
	for key, p := range batch {
		var err error
		if p == nil {
			err = pc.store.Delete(ctx, key)
		} else {
			err = pc.store.Upsert(ctx, p)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("policy %s: %w", key, err))
			pc.mu.Lock()
			if _, newer := pc.pending[key]; !newer {
				pc.pending[key] = p
			}
			pc.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// enqueue records the latest store state of a policy and wakes the writer.
func (pc *policyChecker) enqueue(key string, p *api.Policy) {
	if pc.store == nil {
		return
	}
	pc.mu.Lock()
	pc.pending[key] = p
	pc.mu.Unlock()
	select {
	case pc.kick <- struct{}{}:
	default:
	}
}

// keyOfName returns the store key of a policy named "Kind ns/name" (or
// "Kind name" when cluster-wide).
func (pc *policyChecker) keyOfName(name string) string {
	kind, rest, _ := strings.Cut(name, " ")
	ns, n, ok := strings.Cut(rest, "/")
	if !ok {
		ns, n = "", rest
	}
	return api.PolicyKey(pc.cluster, kind, ns, n)
}

// exportable returns obj as the JSON the agents parse: the whole object
// without its managed fields.
func exportable(obj any) ([]byte, error) {
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		c := o.DeepCopy()
		c.APIVersion, c.Kind = "networking.k8s.io/v1", "NetworkPolicy"
		c.ManagedFields = nil
		return json.Marshal(c)
	case *unstructured.Unstructured:
		c := o.DeepCopy()
		unstructured.RemoveNestedField(c.Object, "metadata", "managedFields")
		return json.Marshal(c.Object)
	}
	return nil, fmt.Errorf("policy of type %T", obj)
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
	pc.export(np, "NetworkPolicy", np.Namespace, np.Name, err)
}

// export queues an accepted policy for the store; a refused one leaves the
// store as it is (its previous version stays in force).
func (pc *policyChecker) export(obj any, kind, ns, name string, checkErr error) {
	if pc.store == nil || checkErr != nil {
		return
	}
	spec, err := exportable(obj)
	if err != nil {
		pc.log.Error("policy export: encode", "policy", policyName(kind, ns, name), "error", err)
		return
	}
	p := &api.Policy{Cluster: pc.cluster, Kind: kind, Namespace: ns, Name: name, Spec: spec}
	if err := p.Validate(); err != nil {
		pc.log.Warn("policy not exported", "policy", policyName(kind, ns, name), "error", err)
		return
	}
	pc.enqueue(p.Key(), p)
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
	pc.export(u, u.GetKind(), u.GetNamespace(), u.GetName(), err)
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
	_, wasAccepted := pc.accepted[name]
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
		msg := err.Error()
		if wasAccepted && pc.store != nil {
			msg += " (the previous version stays in force)"
		}
		pc.log.Warn("network policy not enforceable by the mesh", "policy", name, "error", err, "previous_in_force", wasAccepted)
		pc.rec.Event(obj, corev1.EventTypeWarning, ReasonPolicyNotEnforced, msg)
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
	if pc.store != nil {
		pc.enqueue(api.PolicyKey(pc.cluster, kind, m.GetNamespace(), m.GetName()), nil)
	}
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
