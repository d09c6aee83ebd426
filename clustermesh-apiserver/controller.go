package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/clustermesh/clustermesh/api"
)

// store is what the controller writes through: the kvstore Writer.
type store interface {
	publisher
	MarkSynced(ctx context.Context, kind api.Kind) error
}

// objKind is the kind of a queued Kubernetes object.
type objKind uint8

const (
	kindService objKind = iota
	kindSlice
	kindNode
	kindPod
	kindNamespace
	kindClusterConfig
)

func (k objKind) String() string {
	return [...]string{"service", "endpointslice", "node", "pod", "namespace", "cluster"}[k]
}

// qkey is a work item: one object, by kind and namespace/name. Handlers only
// enqueue keys; sync re-reads the object from the informer cache, so a key
// queued many times is synced once with the latest state.
type qkey struct {
	kind objKind
	nn   types.NamespacedName
}

// errInvalid marks an object that cannot be exported as it is; retrying does
// not help, so it is reported and skipped.
var errInvalid = errors.New("cannot be exported")

// podExport is what the controller exported for one pod.
type podExport struct {
	ips       []netip.Addr
	namespace string
	labels    map[string]string
}

type controller struct {
	cluster      string
	clusterID    uint32
	maxClusterID uint32
	// podCIDRs are the configured cluster pod CIDRs; nil means derive them
	// from the nodes.
	podCIDRs []netip.Prefix
	// reflector and bgpASN are the cluster's BGP route reflector and ASN;
	// the zero address means BGP is off.
	reflector netip.AddrPort
	bgpASN    uint32
	// defaultGlobalNS: see Config.DefaultGlobalNamespace.
	defaultGlobalNS bool
	// exports are the cluster's ServiceExports (nil: none followed).
	exports  *serviceExports
	workers  int
	log      *slog.Logger
	store    store
	alloc    *allocator
	metrics  *metrics
	recorder record.EventRecorder
	started  time.Time

	factory  informers.SharedInformerFactory
	informer map[objKind]cache.SharedIndexInformer
	services corelisters.ServiceLister
	eslices  discoverylisters.EndpointSliceLister
	nodes    corelisters.NodeLister
	pods     corelisters.PodLister
	nss      corelisters.NamespaceLister
	queue    workqueue.TypedRateLimitingInterface[qkey]

	mu sync.Mutex
	// seen is when a queued key was first enqueued since its last sync.
	seen map[qkey]time.Time
	// Exported state, used to delete what is no longer wanted and to count.
	svcExported   map[types.NamespacedName]bool
	sliceExported map[types.NamespacedName]string // slice -> store key
	nodeExported  map[string]*api.Node
	podExported   map[types.NamespacedName]podExport
	// ipClaims are the pods claiming each exported IP; ipOwner the one whose
	// entry is in the store.
	ipClaims map[netip.Addr]map[types.NamespacedName]bool
	ipOwner  map[netip.Addr]types.NamespacedName
	// badAnnotation is the last reported annotation error per service, so
	// a bad value is reported once, not on every resync.
	badAnnotation map[types.NamespacedName]string
	// refused is the last reported refusal per ServiceExport (an
	// ExternalName Service), reported once.
	refused map[types.NamespacedName]string
	// pending are the keys of the initial listing not yet synced, per kind;
	// nil before the caches synced.
	pending map[objKind]map[qkey]bool
	marked  map[api.Kind]bool
	markCh  chan api.Kind
	// synced are the kinds whose canary is written.
	synced map[api.Kind]bool
}

const serviceIndex = "service"

// stripManagedFields drops what the export never reads from cached objects,
// to save memory on large clusters.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func newController(client kubernetes.Interface, st store, alloc *allocator, m *metrics, rec record.EventRecorder, log *slog.Logger, cfg *Config, podCIDRs []netip.Prefix) *controller {
	reflector, _ := cfg.reflectorAddress() // validated by New
	c := &controller{
		cluster:         cfg.ClusterName,
		clusterID:       cfg.ClusterID,
		maxClusterID:    cfg.MaxClusterID,
		podCIDRs:        podCIDRs,
		reflector:       reflector,
		bgpASN:          cfg.BGPASN,
		defaultGlobalNS: cfg.DefaultGlobalNamespace,
		workers:         cfg.Workers,
		log:             log,
		store:           st,
		alloc:           alloc,
		metrics:         m,
		recorder:        rec,
		started:         time.Now(),
		seen:            map[qkey]time.Time{},
		svcExported:     map[types.NamespacedName]bool{},
		sliceExported:   map[types.NamespacedName]string{},
		nodeExported:    map[string]*api.Node{},
		podExported:     map[types.NamespacedName]podExport{},
		ipClaims:        map[netip.Addr]map[types.NamespacedName]bool{},
		ipOwner:         map[netip.Addr]types.NamespacedName{},
		badAnnotation:   map[types.NamespacedName]string{},
		refused:         map[types.NamespacedName]string{},
		marked:          map[api.Kind]bool{},
		synced:          map[api.Kind]bool{},
		markCh:          make(chan api.Kind, 2*len(api.SyncedKinds)),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[qkey](),
			workqueue.TypedRateLimitingQueueConfig[qkey]{Name: "clustermesh-apiserver"}),
	}
	c.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(stripManagedFields))
	c.informer = map[objKind]cache.SharedIndexInformer{
		kindService:   c.factory.Core().V1().Services().Informer(),
		kindSlice:     c.factory.Discovery().V1().EndpointSlices().Informer(),
		kindNode:      c.factory.Core().V1().Nodes().Informer(),
		kindPod:       c.factory.Core().V1().Pods().Informer(),
		kindNamespace: c.factory.Core().V1().Namespaces().Informer(),
	}
	c.services = c.factory.Core().V1().Services().Lister()
	c.eslices = c.factory.Discovery().V1().EndpointSlices().Lister()
	c.nodes = c.factory.Core().V1().Nodes().Lister()
	c.pods = c.factory.Core().V1().Pods().Lister()
	c.nss = c.factory.Core().V1().Namespaces().Lister()
	_ = c.informer[kindSlice].AddIndexers(cache.Indexers{serviceIndex: func(obj any) ([]string, error) {
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || sliceService(es) == "" {
			return nil, nil
		}
		return []string{es.Namespace + "/" + sliceService(es)}, nil
	}})

	for kind, inf := range c.informer {
		_, _ = inf.AddEventHandler(c.handler(kind))
	}
	return c
}

// handler enqueues the key of every changed object. Resyncs and updates
// that change nothing the export reads are dropped.
func (c *controller) handler(kind objKind) cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		o, ok := obj.(interface {
			GetNamespace() string
			GetName() string
		})
		if !ok {
			return
		}
		c.enqueue(qkey{kind: kind, nn: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}})
		if m, ok := obj.(metav1.Object); ok && kind == kindService {
			// A derived Service's clusterset IPs are part of the local
			// entry of the service it was derived for.
			if name := importedName(m); name != "" {
				c.enqueue(qkey{kind: kindService, nn: types.NamespacedName{Namespace: m.GetNamespace(), Name: name}})
			}
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			// Namespaces matter only when their labels (part of
			// identities) or their export annotation change; at start
			// every pod, service and slice is synced anyway.
			if kind != kindNamespace {
				enqueue(obj)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, n := oldObj.(interface{ GetResourceVersion() string }), newObj.(interface{ GetResourceVersion() string })
			if o.GetResourceVersion() == n.GetResourceVersion() {
				return
			}
			if kind == kindNamespace {
				on, nn := oldObj.(*corev1.Namespace), newObj.(*corev1.Namespace)
				_, oldExport, _ := lookup(on.Annotations, globalNamespaceKeys)
				_, newExport, _ := lookup(nn.Annotations, globalNamespaceKeys)
				if labels.Equals(on.Labels, nn.Labels) && oldExport == newExport {
					return
				}
			}
			enqueue(newObj)
		},
		DeleteFunc: enqueue,
	}
}

func (c *controller) enqueue(k qkey) {
	c.mu.Lock()
	if _, ok := c.seen[k]; !ok {
		c.seen[k] = time.Now()
	}
	c.mu.Unlock()
	c.queue.Add(k)
}

// run starts the informers, waits for their caches, then syncs with
// c.workers workers until ctx is done.
func (c *controller) run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.factory.Start(ctx.Done())
	defer c.factory.Shutdown()

	c.log.Info("waiting for informer caches")
	for kind, inf := range c.informer {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			if ctx.Err() != nil {
				return nil // stopped before the caches synced
			}
			return fmt.Errorf("cluster %s: %s informer did not sync", c.cluster, kind)
		}
	}
	// Everything listed so far is the initial export; a kind's canary is
	// written once all of its keys have synced.
	c.mu.Lock()
	c.pending = map[objKind]map[qkey]bool{}
	for _, kind := range []objKind{kindService, kindSlice, kindNode, kindPod} {
		c.pending[kind] = map[qkey]bool{}
		for _, key := range c.informer[kind].GetIndexer().ListKeys() {
			ns, name, _ := cache.SplitMetaNamespaceKey(key)
			c.pending[kind][qkey{kind: kind, nn: types.NamespacedName{Namespace: ns, Name: name}}] = true
		}
	}
	n := map[string]int{}
	for k, p := range c.pending {
		n[k.String()] = len(p)
	}
	c.mu.Unlock()
	c.log.Info("informer caches synced, exporting", "objects", n)
	c.enqueue(qkey{kind: kindClusterConfig})
	c.checkPending(ctx)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.runMarks(ctx)
	}()
	for range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait.UntilWithContext(ctx, c.worker, time.Second)
		}()
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *controller) worker(ctx context.Context) {
	for c.next(ctx) {
	}
}

func (c *controller) next(ctx context.Context) bool {
	k, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(k)
	c.mu.Lock()
	t0, ok := c.seen[k]
	delete(c.seen, k)
	c.mu.Unlock()
	if !ok {
		t0 = time.Now()
	}
	err := c.sync(ctx, k)
	switch {
	case err == nil:
		c.queue.Forget(k)
		c.metrics.exportLatency.WithLabelValues(k.kind.String()).Observe(time.Since(t0).Seconds())
	case errors.Is(err, errInvalid) || errors.Is(err, api.ErrInvalid):
		c.queue.Forget(k)
		c.metrics.syncErrors.WithLabelValues(k.kind.String(), "invalid").Inc()
		c.log.Error("object cannot be exported, skipping it", "kind", k.kind, "object", k.nn, "error", err)
	default:
		if ctx.Err() != nil {
			return false
		}
		c.metrics.syncErrors.WithLabelValues(k.kind.String(), "store").Inc()
		c.log.Warn("export failed, retrying", "kind", k.kind, "object", k.nn, "error", err, "retries", c.queue.NumRequeues(k))
		c.mu.Lock()
		if _, ok := c.seen[k]; !ok {
			c.seen[k] = t0
		}
		c.mu.Unlock()
		c.queue.AddRateLimited(k)
		return true
	}
	c.done(ctx, k)
	return true
}

// done records that k's initial sync is complete.
func (c *controller) done(ctx context.Context, k qkey) {
	c.mu.Lock()
	p := c.pending[k.kind]
	if p == nil || !p[k] {
		c.mu.Unlock()
		return
	}
	delete(p, k)
	empty := len(p) == 0
	c.mu.Unlock()
	if empty {
		c.checkPending(ctx)
	}
}

// checkPending queues the synced canaries whose kinds have completed their
// initial export.
func (c *controller) checkPending(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := func(kind api.Kind, ok bool) {
		if ok && !c.marked[kind] {
			c.marked[kind] = true
			c.markCh <- kind
		}
	}
	empty := func(k objKind) bool { return len(c.pending[k]) == 0 }
	want(api.KindNode, empty(kindNode))
	want(api.KindService, empty(kindService))
	want(api.KindEndpoints, empty(kindService) && empty(kindSlice))
	want(api.KindIdentity, empty(kindPod))
	want(api.KindIPCache, empty(kindPod))
}

// runMarks writes the synced canaries (pruning what earlier writers left),
// retrying each until it succeeds.
func (c *controller) runMarks(ctx context.Context) {
	done := 0
	for done < len(api.SyncedKinds) {
		var kind api.Kind
		select {
		case <-ctx.Done():
			return
		case kind = <-c.markCh:
		}
		backoff := wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Steps: 1 << 30, Cap: 10 * time.Second}
		err := wait.ExponentialBackoffWithContext(ctx, backoff, func(ctx context.Context) (bool, error) {
			if kind == api.KindIdentity {
				n, err := c.alloc.Collect(ctx)
				if err != nil {
					c.log.Warn("collecting unused identity reservations", "error", err)
					return false, nil
				}
				if n > 0 {
					c.log.Info("freed identity reservations no pod uses", "count", n)
				}
			}
			if err := c.store.MarkSynced(ctx, kind); err != nil {
				c.metrics.syncErrors.WithLabelValues(string(kind), "store").Inc()
				c.log.Warn("marking initial export complete", "kind", kind, "error", err)
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return
		}
		done++
		c.mu.Lock()
		c.synced[kind] = true
		c.mu.Unlock()
		c.metrics.synced.WithLabelValues(string(kind)).Set(1)
		c.log.Info("initial export complete", "kind", kind, "after", time.Since(c.started).Round(time.Millisecond))
		if done == len(api.SyncedKinds) {
			c.metrics.initialDuration.Set(time.Since(c.started).Seconds())
		}
	}
}

// ready reports whether every kind's initial export is complete.
func (c *controller) ready() (bool, []api.Kind) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []api.Kind
	for _, k := range api.SyncedKinds {
		if !c.synced[k] {
			missing = append(missing, k)
		}
	}
	return len(missing) == 0, missing
}

func (c *controller) sync(ctx context.Context, k qkey) error {
	switch k.kind {
	case kindService:
		return c.syncService(ctx, k.nn)
	case kindSlice:
		return c.syncSlice(ctx, k.nn)
	case kindNode:
		return c.syncNode(ctx, k.nn.Name)
	case kindPod:
		return c.syncPod(ctx, k.nn)
	case kindNamespace:
		return c.syncNamespace(k.nn.Name)
	case kindClusterConfig:
		return c.syncClusterConfig(ctx)
	}
	return nil
}

// serviceSettings returns the mesh settings of a service from the cache;
// ok is false when the service does not exist.
func (c *controller) serviceSettings(ns, name string) (s ServiceSettings, svc *corev1.Service, perr error, ok bool) {
	svc, err := c.services.Services(ns).Get(name)
	if err != nil {
		return ServiceSettings{}, nil, nil, false
	}
	s, perr = ParseServiceAnnotations(svc.Annotations)
	if perr == nil && !s.Annotated && c.exports.has(types.NamespacedName{Namespace: ns, Name: name}) {
		// A ServiceExport makes the service global and shared; mesh
		// annotations, when present, say more precisely and win.
		s = ServiceSettings{Annotated: true, Global: true, Shared: true}
	}
	return s, svc, perr, true
}

func (c *controller) syncService(ctx context.Context, nn types.NamespacedName) error {
	settings, svc, perr, ok := c.serviceSettings(nn.Namespace, nn.Name)
	if ok {
		c.reportAnnotations(nn, svc, perr)
	} else {
		c.reportAnnotations(nn, nil, nil)
	}
	// The slices follow the service's global flag; their own sync decides.
	if objs, err := c.informer[kindSlice].GetIndexer().ByIndex(serviceIndex, nn.String()); err == nil {
		for _, o := range objs {
			es := o.(*discoveryv1.EndpointSlice)
			c.enqueue(qkey{kind: kindSlice, nn: types.NamespacedName{Namespace: es.Namespace, Name: es.Name}})
		}
	}
	set := c.clusterSet(nn)
	exportCreated, viaExport := c.exports.created(nn)
	refused := ""
	if ok && viaExport && svc.Spec.Type == corev1.ServiceTypeExternalName {
		refused = fmt.Sprintf("cluster %s: Service %s: field spec.type: type ExternalName cannot be exported (KEP-1645)", c.cluster, nn)
	}
	c.reportRefused(nn, svc, refused)
	switch {
	case !ok:
		return c.withdraw(ctx, nn, set, "NoService", "no Service "+nn.String())
	case refused != "":
		return c.withdraw(ctx, nn, set, ReasonInvalidServiceType, refused)
	case !settings.Annotated:
		return c.withdraw(ctx, nn, set, "", "")
	case !c.namespaceExported(nn.Namespace):
		c.log.Debug("service not exported: its namespace is not global", "service", nn)
		return c.withdraw(ctx, nn, set, "NamespaceNotGlobal", "namespace "+nn.Namespace+" is not exported ("+AnnotationGlobalNamespace+")")
	}
	obj := convertService(c.cluster, c.clusterID, svc, settings)
	obj.Headless = svc.Spec.ClusterIP == corev1.ClusterIPNone
	if viaExport {
		obj.ServiceExport, obj.ExportCreated = true, exportCreated
	}
	if set != nil {
		obj.ClusterSetIPs = set.ClusterSetIPs
	}
	if err := c.store.Upsert(ctx, obj); err != nil {
		if errors.Is(err, api.ErrInvalid) {
			if uerr := c.unexportWithStatus(ctx, nn, "Invalid", err.Error()); uerr != nil {
				return uerr
			}
		}
		return fmt.Errorf("service %s: %w", nn, err)
	}
	c.mu.Lock()
	c.svcExported[nn] = true
	c.mu.Unlock()
	valid, reason, msg := true, "Valid", "Service "+nn.String()+" exported"
	if perr != nil {
		// Exported as non-global, as any service with a bad annotation.
		valid, reason, msg = false, "InvalidAnnotation", perr.Error()
	}
	if err := c.exports.setStatus(ctx, nn, valid, reason, msg, valid); err != nil {
		return fmt.Errorf("service %s: ServiceExport status: %w", nn, err)
	}
	return nil
}

// withdraw stops exporting the local service nn and tells its
// ServiceExport, if any, why (reason empty: nothing to tell). When the
// service is imported (set: the local entry of its clusterset IPs, from
// the derived Service), that entry takes the key's place, so this
// cluster's agents keep balancing the clusterset IPs over the exporters.
func (c *controller) withdraw(ctx context.Context, nn types.NamespacedName, set *api.Service, reason, msg string) error {
	if set == nil {
		if reason == "" {
			return c.unexportService(ctx, nn)
		}
		return c.unexportWithStatus(ctx, nn, reason, msg)
	}
	if err := c.store.Upsert(ctx, set); err != nil {
		return fmt.Errorf("service %s: imported clusterset IPs: %w", nn, err)
	}
	c.mu.Lock()
	c.svcExported[nn] = true
	c.mu.Unlock()
	if reason == "" {
		return nil
	}
	if err := c.exports.setStatus(ctx, nn, false, reason, msg, false); err != nil {
		return fmt.Errorf("service %s: ServiceExport status: %w", nn, err)
	}
	return nil
}

// reportRefused reports a newly refused ServiceExport once: a log line and
// a Warning Event on the Service naming cluster, namespace and field.
// msg empty clears it.
func (c *controller) reportRefused(nn types.NamespacedName, svc *corev1.Service, msg string) {
	c.mu.Lock()
	prev := c.refused[nn]
	if msg == "" {
		delete(c.refused, nn)
	} else {
		c.refused[nn] = msg
	}
	c.mu.Unlock()
	if msg == "" || prev == msg {
		return
	}
	c.log.Warn("ServiceExport refused", "service", nn, "reason", msg)
	if c.recorder != nil && svc != nil {
		c.recorder.Event(svc, corev1.EventTypeWarning, ReasonInvalidServiceType, "clustermesh: "+msg)
	}
}

// unexportWithStatus withdraws a service and tells its ServiceExport, if
// any, why (conditions Valid and Ready false with reason).
func (c *controller) unexportWithStatus(ctx context.Context, nn types.NamespacedName, reason, msg string) error {
	if err := c.unexportService(ctx, nn); err != nil {
		return err
	}
	if err := c.exports.setStatus(ctx, nn, false, reason, msg, false); err != nil {
		return fmt.Errorf("service %s: ServiceExport status: %w", nn, err)
	}
	return nil
}

func (c *controller) unexportService(ctx context.Context, nn types.NamespacedName) error {
	c.mu.Lock()
	exported := c.svcExported[nn]
	c.mu.Unlock()
	if !exported {
		return nil
	}
	if err := c.store.Delete(ctx, api.ServiceKey(c.cluster, nn.Namespace, nn.Name)); err != nil {
		return fmt.Errorf("service %s: %w", nn, err)
	}
	c.mu.Lock()
	delete(c.svcExported, nn)
	c.mu.Unlock()
	return nil
}

// reportAnnotations reports a new bad annotation of a service once: a log
// line, a Warning Event on the Service and a metric. perr nil clears it.
func (c *controller) reportAnnotations(nn types.NamespacedName, svc *corev1.Service, perr error) {
	c.mu.Lock()
	prev, had := c.badAnnotation[nn]
	if perr == nil {
		delete(c.badAnnotation, nn)
	} else {
		c.badAnnotation[nn] = perr.Error()
	}
	n := len(c.badAnnotation)
	c.mu.Unlock()
	c.metrics.badServices.Set(float64(n))
	if perr == nil {
		if had && svc != nil {
			c.log.Info("service annotations fixed", "service", nn)
		}
		return
	}
	if had && prev == perr.Error() {
		return
	}
	c.metrics.badAnnotations.Inc()
	c.log.Warn("bad mesh annotation: exporting the service as non-global", "service", nn, "error", perr)
	if c.recorder != nil {
		c.recorder.Eventf(svc, corev1.EventTypeWarning, "InvalidMeshAnnotation",
			"clustermesh: service exported as non-global: %v", perr)
	}
}

func (c *controller) syncSlice(ctx context.Context, nn types.NamespacedName) error {
	c.mu.Lock()
	oldKey := c.sliceExported[nn]
	c.mu.Unlock()
	es, err := c.eslices.EndpointSlices(nn.Namespace).Get(nn.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	want := false
	if es != nil {
		if svc := sliceService(es); svc != "" {
			s, _, perr, ok := c.serviceSettings(nn.Namespace, svc)
			want = ok && perr == nil && s.Global && c.namespaceExported(nn.Namespace)
		}
	}
	newKey := ""
	if want {
		obj, err := convertEndpointSlice(c.cluster, es)
		if err == nil {
			newKey = obj.Key()
			err = c.store.Upsert(ctx, obj)
		}
		if err != nil {
			if errors.Is(err, api.ErrInvalid) || errors.Is(err, errInvalid) || obj == nil {
				// What was exported before no longer describes the
				// slice: withdraw it rather than serve stale backends.
				if derr := c.unexportSlice(ctx, nn, oldKey); derr != nil {
					return derr
				}
				return fmt.Errorf("%w: endpoint slice %s: %w", errInvalid, nn, err)
			}
			return fmt.Errorf("endpoint slice %s: %w", nn, err)
		}
	}
	if oldKey != "" && oldKey != newKey {
		if err := c.store.Delete(ctx, oldKey); err != nil {
			return fmt.Errorf("endpoint slice %s: %w", nn, err)
		}
	}
	c.mu.Lock()
	if newKey == "" {
		delete(c.sliceExported, nn)
	} else {
		c.sliceExported[nn] = newKey
	}
	c.mu.Unlock()
	return nil
}

func (c *controller) unexportSlice(ctx context.Context, nn types.NamespacedName, key string) error {
	if key == "" {
		return nil
	}
	if err := c.store.Delete(ctx, key); err != nil {
		return fmt.Errorf("endpoint slice %s: %w", nn, err)
	}
	c.mu.Lock()
	delete(c.sliceExported, nn)
	c.mu.Unlock()
	return nil
}

func (c *controller) syncNode(ctx context.Context, name string) error {
	n, err := c.nodes.Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if n == nil {
		c.mu.Lock()
		_, exported := c.nodeExported[name]
		c.mu.Unlock()
		if exported {
			if err := c.store.Delete(ctx, api.NodeKey(c.cluster, name)); err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
		}
		c.mu.Lock()
		delete(c.nodeExported, name)
		c.mu.Unlock()
	} else {
		obj, err := convertNode(c.cluster, n)
		if err != nil {
			return fmt.Errorf("%w: %w", errInvalid, err)
		}
		withBGP(obj, c.bgpASN, c.reflector.IsValid())
		if err := c.store.Upsert(ctx, obj); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		c.mu.Lock()
		c.nodeExported[name] = obj
		c.mu.Unlock()
	}
	if c.podCIDRs == nil {
		c.enqueue(qkey{kind: kindClusterConfig})
	}
	return nil
}

// syncClusterConfig writes the cluster's own config key. Its pod CIDRs are
// the configured ones, or else every node's pod CIDRs.
func (c *controller) syncClusterConfig(ctx context.Context) error {
	cl := c.clusterConfig()
	if err := c.store.Upsert(ctx, cl); err != nil {
		return fmt.Errorf("cluster config: %w", err)
	}
	return nil
}

func (c *controller) clusterConfig() *api.Cluster {
	cl := &api.Cluster{
		Name:         c.cluster,
		ID:           c.clusterID,
		MaxClusterID: c.maxClusterID,
		PodCIDRs:     c.podCIDRs,
		Capabilities: Capabilities(),
	}
	if c.reflector.IsValid() {
		cl.RouteReflector = c.reflector
		cl.ASN = c.bgpASN
	}
	if c.podCIDRs == nil {
		c.mu.Lock()
		for _, n := range c.nodeExported {
			for _, p := range n.PodCIDRs {
				if !slices.Contains(cl.PodCIDRs, p) {
					cl.PodCIDRs = append(cl.PodCIDRs, p)
				}
			}
		}
		c.mu.Unlock()
		slices.SortFunc(cl.PodCIDRs, func(a, b netip.Prefix) int {
			if r := a.Addr().Compare(b.Addr()); r != 0 {
				return r
			}
			return a.Bits() - b.Bits()
		})
	}
	return cl
}

// Capabilities returns the optional features this apiserver's exports carry,
// published in the cluster config.
func Capabilities() []string { return []string{"endpointslices", "identities", "ipcache"} }

// syncNamespace resyncs what a namespace's labels or export annotation
// shape: its pods (identities, ipcache), services and endpoint slices.
func (c *controller) syncNamespace(name string) error {
	for _, kind := range []objKind{kindPod, kindService, kindSlice} {
		objs, err := c.informer[kind].GetIndexer().ByIndex(cache.NamespaceIndex, name)
		if err != nil {
			return err
		}
		for _, o := range objs {
			m, ok := o.(metav1.Object)
			if !ok {
				continue
			}
			c.enqueue(qkey{kind: kind, nn: types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}})
		}
	}
	return nil
}

// namespaceExported tells whether a namespace's objects leave the cluster
// (NamespaceGlobal with the configured default). A bad annotation value is
// logged and the default applies; a namespace not in the cache yet gets the
// default too, and its own event resyncs it.
func (c *controller) namespaceExported(name string) bool {
	ns, err := c.nss.Get(name)
	if err != nil {
		return c.defaultGlobalNS
	}
	global, err := NamespaceGlobal(ns.Annotations, c.defaultGlobalNS)
	if err != nil {
		c.log.Warn("bad namespace annotation: the default applies", "namespace", name, "default", c.defaultGlobalNS, "error", err)
	}
	return global
}

// syncPod exports a pod's identity and its IPs' ipcache entries, or removes
// them when the pod is gone, has no IP or has terminated.
func (c *controller) syncPod(ctx context.Context, nn types.NamespacedName) error {
	pod, err := c.pods.Pods(nn.Namespace).Get(nn.Name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	c.mu.Lock()
	prev, hadPrev := c.podExported[nn]
	c.mu.Unlock()

	var ips []netip.Addr
	if pod != nil && c.namespaceExported(nn.Namespace) {
		ips = podIPs(pod)
	}
	if len(ips) == 0 {
		if !hadPrev {
			return nil
		}
		if err := c.releaseIPs(ctx, nn, prev.ips); err != nil {
			return err
		}
		if err := c.alloc.Release(ctx, nn.String(), prev.namespace, prev.labels); err != nil {
			return fmt.Errorf("pod %s: %w", nn, err)
		}
		c.mu.Lock()
		delete(c.podExported, nn)
		c.mu.Unlock()
		return nil
	}

	var nsLabels map[string]string
	if ns, err := c.nss.Get(nn.Namespace); err == nil {
		nsLabels = ns.Labels
	}
	lbls := identityLabels(pod.Labels, nsLabels)
	id, err := c.alloc.Acquire(ctx, nn.String(), nn.Namespace, lbls)
	if err != nil {
		return fmt.Errorf("pod %s: identity: %w", nn, err)
	}
	hostIP, _ := netip.ParseAddr(pod.Status.HostIP)
	for _, ip := range ips {
		e := &api.IPCacheEntry{
			Cluster: c.cluster, IP: ip, Identity: id,
			Node: pod.Spec.NodeName, HostIP: hostIP.Unmap(),
			Namespace: nn.Namespace, Pod: nn.Name,
		}
		if err := c.store.Upsert(ctx, e); err != nil {
			return fmt.Errorf("pod %s: %w", nn, err)
		}
		c.mu.Lock()
		if c.ipClaims[ip] == nil {
			c.ipClaims[ip] = map[types.NamespacedName]bool{}
		}
		c.ipClaims[ip][nn] = true
		c.ipOwner[ip] = nn
		c.mu.Unlock()
	}
	// Record the new state before releasing the old, so a failed release
	// is retried against what is really exported.
	c.mu.Lock()
	c.podExported[nn] = podExport{ips: ips, namespace: nn.Namespace, labels: lbls}
	c.mu.Unlock()
	if hadPrev {
		var gone []netip.Addr
		for _, ip := range prev.ips {
			if !slices.Contains(ips, ip) {
				gone = append(gone, ip)
			}
		}
		if err := c.releaseIPs(ctx, nn, gone); err != nil {
			return err
		}
		if labelsID(prev.namespace, prev.labels) != labelsID(nn.Namespace, lbls) {
			if err := c.alloc.Release(ctx, nn.String(), prev.namespace, prev.labels); err != nil {
				return fmt.Errorf("pod %s: %w", nn, err)
			}
		}
	}
	return nil
}

// releaseIPs drops pod nn's claim on ips. An IP whose store entry is nn's is
// deleted; if another pod still claims it (an IP reused while the old pod
// object lingers), that pod is synced again to take the entry over.
func (c *controller) releaseIPs(ctx context.Context, nn types.NamespacedName, ips []netip.Addr) error {
	for _, ip := range ips {
		c.mu.Lock()
		owner, owned := c.ipOwner[ip]
		others := make([]types.NamespacedName, 0)
		for p := range c.ipClaims[ip] {
			if p != nn {
				others = append(others, p)
			}
		}
		c.mu.Unlock()
		if owned && owner == nn {
			if err := c.store.Delete(ctx, api.IPCacheKey(c.cluster, ip)); err != nil {
				return fmt.Errorf("pod %s: %w", nn, err)
			}
		}
		c.mu.Lock()
		if owned && owner == nn {
			delete(c.ipOwner, ip)
		}
		delete(c.ipClaims[ip], nn)
		if len(c.ipClaims[ip]) == 0 {
			delete(c.ipClaims, ip)
		}
		c.mu.Unlock()
		if owned && owner == nn {
			for _, p := range others {
				c.enqueue(qkey{kind: kindPod, nn: p})
			}
		}
	}
	return nil
}

// exported counts the objects currently exported, by store kind.
// localNodes returns the nodes as currently exported.
func (c *controller) localNodes() []api.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]api.Node, 0, len(c.nodeExported))
	for _, n := range c.nodeExported {
		out = append(out, *n)
	}
	return out
}

func (c *controller) exported() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return map[string]int{
		string(api.KindService):   len(c.svcExported),
		string(api.KindEndpoints): len(c.sliceExported),
		string(api.KindNode):      len(c.nodeExported),
		string(api.KindIPCache):   len(c.ipOwner),
		string(api.KindIdentity):  c.alloc.Len(),
	}
}
