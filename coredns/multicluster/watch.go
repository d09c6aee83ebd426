package multicluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// The labels the MCS API puts on an imported service's EndpointSlices.
const (
	labelServiceName   = "multicluster.kubernetes.io/service-name"
	labelSourceCluster = "multicluster.kubernetes.io/source-cluster"
)

// serviceImports is the resource read: the v1beta1 version of KEP-1645's
// ServiceImport (the version the mesh stores; v1alpha1 has the same spec).
var serviceImports = schema.GroupVersionResource{Group: "multicluster.x-k8s.io", Version: "v1beta1", Resource: "serviceimports"}

// logger is the part of CoreDNS's plugin logger the watcher uses.
type logger interface {
	Warningf(format string, v ...any)
}

// watcher keeps the ServiceImports and, unless noEndpoints, the
// EndpointSlices of imported services, validated, for lookups. The objects
// are written by the mesh from what other clusters export: anything
// malformed is skipped with a message naming the object and field, and the
// rest is served.
type watcher struct {
	log          logger
	noEndpoints  bool
	synced       []cache.InformerSynced
	start        func(stop <-chan struct{})
	lastModified atomic.Int64 // Unix seconds: the SOA serial.

	mu       sync.RWMutex
	services map[string]*service // namespace/name
	// slices holds each EndpointSlice's ready endpoints under its service
	// (namespace/service name, then namespace/slice name), so that a query
	// reads only its service's slices.
	slices  map[string]map[string][]endpoint
	sliceOf map[string]string // namespace/slice name -> its service key
	nsCount map[string]int    // ServiceImports per namespace
}

// sliceEntry is one EndpointSlice's ready endpoints, for service key.
type sliceEntry struct {
	key       string // namespace/service name
	endpoints []endpoint
}

// newCache is a watcher without informers: its event handlers fill it.
func newCache(log logger, noEndpoints bool) *watcher {
	return &watcher{
		log:         log,
		noEndpoints: noEndpoints,
		services:    map[string]*service{},
		slices:      map[string]map[string][]endpoint{},
		sliceOf:     map[string]string{},
		nsCount:     map[string]int{},
	}
}

// newWatcher sets up the informers; run starts them.
func newWatcher(cfg *rest.Config, noEndpoints bool, log logger) (*watcher, error) {
	w := newCache(log, noEndpoints)
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for ServiceImports: %w", err)
	}
	imports := dynamicinformer.NewDynamicSharedInformerFactory(dyn, 0)
	inf := imports.ForResource(serviceImports).Informer()
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.importChanged,
		UpdateFunc: func(_, obj any) { w.importChanged(obj) },
		DeleteFunc: w.importDeleted,
	})
	if err != nil {
		return nil, fmt.Errorf("ServiceImport informer: %w", err)
	}
	w.synced = append(w.synced, reg.HasSynced)
	starts := []func(<-chan struct{}){imports.Start}
	if !noEndpoints {
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for EndpointSlices: %w", err)
		}
		// Only the slices of imported services (the label the MCS API sets).
		f := informers.NewSharedInformerFactoryWithOptions(kc, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labelServiceName
		}))
		reg, err := f.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    w.sliceChanged,
			UpdateFunc: func(_, obj any) { w.sliceChanged(obj) },
			DeleteFunc: w.sliceDeleted,
		})
		if err != nil {
			return nil, fmt.Errorf("EndpointSlice informer: %w", err)
		}
		w.synced = append(w.synced, reg.HasSynced)
		starts = append(starts, f.Start)
	}
	w.start = func(stop <-chan struct{}) {
		for _, s := range starts {
			s(stop)
		}
	}
	return w, nil
}

// run starts the informers until ctx ends.
func (w *watcher) run(ctx context.Context) { w.start(ctx.Done()) }

// hasSynced tells whether the caches hold the first full listing.
func (w *watcher) hasSynced() bool {
	for _, s := range w.synced {
		if !s() {
			return false
		}
	}
	return true
}

func (w *watcher) touch() { w.lastModified.Store(time.Now().Unix()) }

// serial is the SOA serial: when the data last changed.
func (w *watcher) serial() uint32 { return uint32(w.lastModified.Load()) } // #nosec G115 -- Unix time to SOA serial, as CoreDNS does

func (w *watcher) importChanged(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	key := u.GetNamespace() + "/" + u.GetName()
	svc, err := parseServiceImport(u)
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.touch()
	if err != nil {
		w.log.Warningf("ServiceImport %s skipped (its name does not resolve until fixed): %v", key, err)
		w.removeImportLocked(key)
		return
	}
	if _, had := w.services[key]; !had {
		w.nsCount[svc.namespace]++
	}
	w.services[key] = svc
}

func (w *watcher) importDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removeImportLocked(u.GetNamespace() + "/" + u.GetName())
	w.touch()
}

func (w *watcher) removeImportLocked(key string) {
	svc, had := w.services[key]
	if !had {
		return
	}
	delete(w.services, key)
	if w.nsCount[svc.namespace]--; w.nsCount[svc.namespace] <= 0 {
		delete(w.nsCount, svc.namespace)
	}
}

func (w *watcher) sliceChanged(obj any) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	key := es.Namespace + "/" + es.Name
	entry, problems := parseEndpointSlice(es)
	for _, p := range problems {
		w.log.Warningf("EndpointSlice %s: %s", key, p)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removeSliceLocked(key) // its service label may have changed
	if w.slices[entry.key] == nil {
		w.slices[entry.key] = map[string][]endpoint{}
	}
	w.slices[entry.key][key] = entry.endpoints
	w.sliceOf[key] = entry.key
	w.touch()
}

func (w *watcher) removeSliceLocked(key string) {
	svc, ok := w.sliceOf[key]
	if !ok {
		return
	}
	delete(w.sliceOf, key)
	delete(w.slices[svc], key)
	if len(w.slices[svc]) == 0 {
		delete(w.slices, svc)
	}
}

func (w *watcher) sliceDeleted(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removeSliceLocked(es.Namespace + "/" + es.Name)
	w.touch()
}

func (w *watcher) service(namespace, name string) (*service, bool) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	svc, ok := w.services[namespace+"/"+name]
	return svc, ok
}

func (w *watcher) endpoints(namespace, name string) []endpoint {
	key := namespace + "/" + name
	w.mu.RLock()
	defer w.mu.RUnlock()
	var out []endpoint
	for _, eps := range w.slices[key] {
		out = append(out, eps...)
	}
	return out
}

func (w *watcher) hasNamespace(namespace string) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.nsCount[namespace] > 0
}

// importSpec is the part of a ServiceImport read (v1alpha1 and v1beta1).
type importSpec struct {
	Spec struct {
		Type  string   `json:"type"`
		IPs   []string `json:"ips"`
		Ports []struct {
			Name     string `json:"name"`
			Protocol string `json:"protocol"`
			Port     int32  `json:"port"`
		} `json:"ports"`
	} `json:"spec"`
}

// parseServiceImport validates a ServiceImport. A wrong type refuses the
// whole import; a bad IP or port is an error too, since serving a partial
// set of clusterset IPs or ports would be wrong without saying so.
func parseServiceImport(u *unstructured.Unstructured) (*service, error) {
	var in importSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &in); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	svc := &service{namespace: u.GetNamespace(), name: u.GetName()}
	switch in.Spec.Type {
	case "ClusterSetIP", "":
	case "Headless":
		svc.headless = true
	default:
		return nil, fmt.Errorf("spec.type: %q is neither ClusterSetIP nor Headless", in.Spec.Type)
	}
	for i, s := range in.Spec.IPs {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("spec.ips[%d]: %q is not an IP address", i, s)
		}
		svc.ips = append(svc.ips, a.Unmap())
	}
	for i, p := range in.Spec.Ports {
		proto := strings.ToLower(p.Protocol)
		switch proto {
		case "":
			proto = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return nil, fmt.Errorf("spec.ports[%d].protocol: %q is not TCP, UDP or SCTP", i, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 {
			return nil, fmt.Errorf("spec.ports[%d].port: %d is out of range", i, p.Port)
		}
		name := strings.ToLower(p.Name)
		if name != "" && len(validation.IsDNS1123Label(name)) > 0 {
			return nil, fmt.Errorf("spec.ports[%d].name: %q is not a DNS label", i, p.Name)
		}
		svc.ports = append(svc.ports, port{name: name, protocol: proto, number: uint16(p.Port)})
	}
	return svc, nil
}

// parseEndpointSlice keeps the ready endpoints of an imported service's
// slice. A slice without a valid source cluster is dropped whole (its
// per-pod names could not be formed); a bad address or hostname drops that
// endpoint or falls back to the address-derived hostname.
func parseEndpointSlice(es *discoveryv1.EndpointSlice) (sliceEntry, []string) {
	entry := sliceEntry{key: es.Namespace + "/" + es.Labels[labelServiceName]}
	cluster := strings.ToLower(es.Labels[labelSourceCluster])
	if errs := validation.IsDNS1123Label(cluster); len(errs) > 0 {
		return sliceEntry{}, []string{fmt.Sprintf("label %s: %q is not a DNS label (%s); the slice is not served", labelSourceCluster, cluster, strings.Join(errs, "; "))}
	}
	var problems []string
	for i, ep := range es.Endpoints {
		if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
			continue
		}
		var addrs []netip.Addr
		for j, s := range ep.Addresses {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				problems = append(problems, fmt.Sprintf("endpoints[%d].addresses[%d]: %q is not an IP address; skipped", i, j, s))
				continue
			}
			addrs = append(addrs, a.Unmap())
		}
		if len(addrs) == 0 {
			continue
		}
		hostname := ""
		if ep.Hostname != nil {
			hostname = strings.ToLower(*ep.Hostname)
			if errs := validation.IsDNS1123Label(hostname); len(errs) > 0 {
				problems = append(problems, fmt.Sprintf("endpoints[%d].hostname: %q is not a DNS label; the address-derived name is used", i, *ep.Hostname))
				hostname = ""
			}
		}
		if hostname == "" {
			// As the kubernetes plugin does: the address with dashes.
			hostname = strings.NewReplacer(".", "-", ":", "-").Replace(addrs[0].String())
		}
		entry.endpoints = append(entry.endpoints, endpoint{cluster: cluster, hostname: hostname, addrs: addrs})
	}
	return entry, problems
}
