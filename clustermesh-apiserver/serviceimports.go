package apiserver

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/kvstore"
)

// ServiceImport types (spec.type).
const (
	ImportClusterSetIP = "ClusterSetIP"
	ImportHeadless     = "Headless"
)

// importer keeps, for every service some cluster of the mesh exports
// through a ServiceExport (api.Service.ServiceExport), a ServiceImport and
// its derived Service in this cluster, when the service's namespace exists
// here (namespace sameness: a missing namespace is reported, never
// created). It reads the exports from the cluster's own store: the local
// cluster's and, through the mesh cache, every connected peer's, already
// validated and admitted there. It writes only the ServiceImport named as
// the exported service and the derived Service of that name, in that
// namespace, and only objects labelled as the mesh's: whatever a peer
// exports, nothing else of this cluster is touched. The controller then
// exports the derived Service's cluster IPs as the clusterset IPs of the
// service's local store entry, which the agents balance (see clusterSet).
type importer struct {
	cluster string
	local   *kvstore.Client
	// peersDir lists the peers whose copies the mesh cache keeps in the
	// local store; empty: only the local cluster's exports are imported.
	peersDir string
	every    time.Duration
	kube     kubernetes.Interface
	dyn      dynamic.Interface
	disc     discovery.DiscoveryInterface
	nss      corelisters.NamespaceLister
	exports  *serviceExports
	rec      record.EventRecorder
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[types.NamespacedName]

	mu  sync.Mutex
	gvr schema.GroupVersionResource
	// exporters: service → cluster → its exported service.
	exporters map[types.NamespacedName]map[string]*api.Service
	// readers are the followed clusters, with what stops each.
	readers map[string]context.CancelFunc
	synced  map[string]bool
	swept   bool
	// headless are the imports last reconciled as headless: their
	// exporters' slices are copied (headless.go).
	headless map[types.NamespacedName]bool
	// reported is the last problem reported per service, reported once.
	reported map[types.NamespacedName]string
}

func newImporter(c *controller, local *kvstore.Client, peersDir string, every time.Duration, kube kubernetes.Interface, dyn dynamic.Interface, rec record.EventRecorder, log *slog.Logger) *importer {
	if every <= 0 {
		every = 2 * time.Second
	}
	im := &importer{
		cluster: c.cluster, local: local, peersDir: peersDir, every: every,
		kube: kube, dyn: dyn, disc: kube.Discovery(), nss: c.nss, exports: c.exports, rec: rec,
		log: log.With("component", "serviceimport"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[types.NamespacedName](),
			workqueue.TypedRateLimitingQueueConfig[types.NamespacedName]{Name: "clustermesh-serviceimports"}),
		exporters: map[types.NamespacedName]map[string]*api.Service{},
		readers:   map[string]context.CancelFunc{},
		synced:    map[string]bool{},
		headless:  map[types.NamespacedName]bool{},
		reported:  map[types.NamespacedName]string{},
	}
	// A namespace created later gets the imports waiting for it.
	_, _ = c.informer[kindNamespace].AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if ns, ok := obj.(*corev1.Namespace); ok {
				im.enqueueNamespace(ns.Name)
			}
		},
	})
	return im
}

// run waits for the ServiceImport CRD, then follows the exports and
// reconciles the imports until ctx ends.
func (im *importer) run(ctx context.Context) {
	defer im.queue.ShutDown()
	tick := time.NewTicker(rediscover)
	for im.gvr.Empty() {
		for _, v := range deploy.MCSVersions() {
			gvr := deploy.ServiceImportGVR(v)
			if served(im.disc, gvr) {
				im.mu.Lock()
				im.gvr = gvr
				im.mu.Unlock()
				break
			}
		}
		if !im.gvr.Empty() {
			break
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return
		case <-tick.C:
		}
	}
	tick.Stop()
	im.log.Info("importing services exported through ServiceExports", "version", im.gvr.Version, "peers_from", im.peersDir)
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for im.next(ctx) {
			}
		}()
	}
	im.follow(ctx, &wg, im.cluster)
	scan := time.NewTicker(im.every)
	defer scan.Stop()
	for {
		im.scanPeers(ctx, &wg)
		im.sweep(ctx)
		select {
		case <-ctx.Done():
			im.queue.ShutDown()
			return
		case <-scan.C:
		}
	}
}

// scanPeers follows the peers of the clusters directory and forgets those
// that left it (disconnect): their exports are no longer imported.
func (im *importer) scanPeers(ctx context.Context, wg *sync.WaitGroup) {
	if im.peersDir == "" {
		return
	}
	conns, err := kvstore.ReadConnectionDir(im.peersDir)
	if err != nil {
		im.log.Warn("reading the connected peers", "clusters_dir", im.peersDir, "error", err)
		return
	}
	for name := range conns {
		if name == im.cluster || api.ValidateClusterName(name) != nil {
			continue
		}
		im.mu.Lock()
		_, ok := im.readers[name]
		im.mu.Unlock()
		if !ok {
			im.follow(ctx, wg, name)
		}
	}
	im.mu.Lock()
	var gone []string
	for name, stop := range im.readers {
		if _, ok := conns[name]; !ok && name != im.cluster {
			stop()
			delete(im.readers, name)
			delete(im.synced, name)
			gone = append(gone, name)
		}
	}
	im.mu.Unlock()
	for _, name := range gone {
		im.log.Info("peer disconnected: its exports are no longer imported", "peer", name)
		im.forget(name)
	}
}

// follow reads one cluster's services from the local store.
func (im *importer) follow(ctx context.Context, wg *sync.WaitGroup, cluster string) {
	rctx, cancel := context.WithCancel(ctx)
	im.mu.Lock()
	im.readers[cluster] = cancel
	im.mu.Unlock()
	r := kvstore.NewReader(im.local, cluster, &kvstore.ReaderOptions{Logger: im.log})
	ch := r.Watch(rctx, api.KindService)
	eps := r.Watch(rctx, api.KindEndpoints)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range eps {
			if ev.Type == kvstore.EventUpsert || ev.Type == kvstore.EventDelete {
				im.endpointsChanged(cluster, ev.Key)
			}
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range ch {
			switch ev.Type {
			case kvstore.EventUpsert:
				if s, ok := ev.Object.(*api.Service); ok {
					im.set(cluster, s)
				}
			case kvstore.EventDelete:
				if ref, err := api.ParseServiceKey(ev.Key); err == nil {
					im.unset(cluster, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name})
				}
			case kvstore.EventSynced:
				im.mu.Lock()
				im.synced[cluster] = true
				im.mu.Unlock()
			case kvstore.EventError:
				im.log.Warn("skipping a service that cannot be read", "cluster", cluster, "key", ev.Key, "error", ev.Err)
			}
		}
	}()
}

// set records a cluster's service: an exporter while it carries the
// ServiceExport marker. Only a change of what the import is made of
// queues the service (the local entry's clusterset IPs are not).
func (im *importer) set(cluster string, s *api.Service) {
	if !s.ServiceExport {
		im.unset(cluster, types.NamespacedName{Namespace: s.Namespace, Name: s.Name})
		return
	}
	nn := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
	im.mu.Lock()
	byCluster := im.exporters[nn]
	if byCluster == nil {
		byCluster = map[string]*api.Service{}
		im.exporters[nn] = byCluster
	}
	old := byCluster[cluster]
	byCluster[cluster] = s
	im.mu.Unlock()
	if old == nil || !old.ExportCreated.Equal(s.ExportCreated) || old.Headless != s.Headless ||
		old.SessionAffinityTimeout != s.SessionAffinityTimeout || !slices.Equal(old.Ports, s.Ports) {
		im.queue.Add(nn)
	}
}

func (im *importer) unset(cluster string, nn types.NamespacedName) {
	im.mu.Lock()
	_, had := im.exporters[nn][cluster]
	delete(im.exporters[nn], cluster)
	if len(im.exporters[nn]) == 0 {
		delete(im.exporters, nn)
	}
	im.mu.Unlock()
	if had {
		im.queue.Add(nn)
	}
}

// forget drops every export of a cluster no longer followed.
func (im *importer) forget(cluster string) {
	im.mu.Lock()
	var names []types.NamespacedName
	for nn, byCluster := range im.exporters {
		if _, ok := byCluster[cluster]; ok {
			names = append(names, nn)
		}
	}
	im.mu.Unlock()
	for _, nn := range names {
		im.unset(cluster, nn)
	}
}

func (im *importer) enqueueNamespace(ns string) {
	im.mu.Lock()
	defer im.mu.Unlock()
	for nn := range im.exporters {
		if nn.Namespace == ns {
			im.queue.Add(nn)
		}
	}
}

// sweep queues, once every followed cluster's initial export was read,
// every ServiceImport the mesh wrote: those nobody exports any more (an
// export withdrawn while this apiserver was down) are removed.
func (im *importer) sweep(ctx context.Context) {
	im.mu.Lock()
	done := im.swept
	for name := range im.readers {
		if !im.synced[name] {
			done = true // not yet
		}
	}
	gvr := im.gvr
	im.mu.Unlock()
	if done {
		return
	}
	list, err := im.dyn.Resource(gvr).Namespace("").List(ctx, metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy})
	if err != nil {
		im.log.Warn("listing ServiceImports", "error", err)
		return
	}
	for _, u := range list.Items {
		im.queue.Add(types.NamespacedName{Namespace: u.GetNamespace(), Name: u.GetName()})
	}
	im.mu.Lock()
	im.swept = true
	im.mu.Unlock()
}

func (im *importer) next(ctx context.Context) bool {
	nn, quit := im.queue.Get()
	if quit {
		return false
	}
	defer im.queue.Done(nn)
	if err := im.reconcile(ctx, nn); err != nil {
		if ctx.Err() != nil {
			return false
		}
		im.log.Warn("import failed, retrying", "service", nn, "error", err, "retries", im.queue.NumRequeues(nn))
		im.queue.AddRateLimited(nn)
		return true
	}
	im.queue.Forget(nn)
	return true
}

// exportsOf returns the exports of a service, oldest first (the order of
// the KEP's conflict resolution; ties go by cluster name).
func (im *importer) exportsOf(nn types.NamespacedName) []*api.Service {
	im.mu.Lock()
	defer im.mu.Unlock()
	out := make([]*api.Service, 0, len(im.exporters[nn]))
	for _, s := range im.exporters[nn] {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *api.Service) int {
		if c := a.ExportCreated.Compare(b.ExportCreated); c != 0 {
			return c
		}
		return cmp.Compare(a.Cluster, b.Cluster)
	})
	return out
}

// report logs a problem of an import once, with a Warning Event on obj
// (or, without one, on the Namespace) naming cluster, namespace and field.
func (im *importer) report(nn types.NamespacedName, obj any, reason, msg string) {
	im.mu.Lock()
	same := im.reported[nn] == reason+msg
	im.reported[nn] = reason + msg
	im.mu.Unlock()
	if same {
		return
	}
	im.log.Warn("service import", "service", nn, "reason", reason, "problem", msg)
	if im.rec == nil {
		return
	}
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		im.rec.Event(o, corev1.EventTypeWarning, reason, "clustermesh: "+msg)
	case *corev1.Service:
		im.rec.Event(o, corev1.EventTypeWarning, reason, "clustermesh: "+msg)
	default:
		// Cluster-scoped: the Event lands in the default namespace.
		im.rec.Event(&corev1.ObjectReference{APIVersion: "v1", Kind: "Namespace", Name: nn.Namespace}, corev1.EventTypeWarning, reason, "clustermesh: "+msg)
	}
}

func (im *importer) clearReport(nn types.NamespacedName) {
	im.mu.Lock()
	delete(im.reported, nn)
	im.mu.Unlock()
}

// reconcile makes the ServiceImport and derived Service of nn match its
// exports.
func (im *importer) reconcile(ctx context.Context, nn types.NamespacedName) error {
	exps := im.exportsOf(nn)
	if len(exps) == 0 {
		return im.remove(ctx, nn)
	}
	if _, err := im.nss.Get(nn.Namespace); apierrors.IsNotFound(err) {
		im.report(nn, nil, "NamespaceMissing", fmt.Sprintf("cluster %s: field metadata.namespace: service %s exported by %s is not imported: namespace %s does not exist here (namespace sameness: create it to import the service)",
			im.cluster, nn, strings.Join(clustersOf(exps), ", "), nn.Namespace))
		return nil
	} else if err != nil {
		return err
	}
	res := resolve(exps)
	im.mu.Lock()
	gvr := im.gvr
	im.mu.Unlock()
	ri := im.dyn.Resource(gvr).Namespace(nn.Namespace)
	si, err := ri.Get(ctx, nn.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		si = &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": gvr.GroupVersion().String(), "kind": "ServiceImport",
			"metadata": map[string]any{"name": nn.Name, "namespace": nn.Namespace,
				"labels": map[string]any{LabelManagedBy: ManagedBy}},
			"spec": res.spec(nil),
		}}
		if si, err = ri.Create(ctx, si, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("service %s: create ServiceImport: %w", nn, err)
		}
	case err != nil:
		return fmt.Errorf("service %s: ServiceImport: %w", nn, err)
	case si.GetLabels()[LabelManagedBy] != ManagedBy:
		im.report(nn, si, "ImportNotOwned", fmt.Sprintf("cluster %s: ServiceImport %s exists and was not written by the mesh (label %s=%s): left alone, the service is not imported", im.cluster, nn, LabelManagedBy, ManagedBy))
		return nil
	}
	d, err := im.ensureDerived(ctx, nn, res, si)
	if err != nil || d == nil {
		return err
	}
	im.mu.Lock()
	wasHeadless := im.headless[nn]
	im.mu.Unlock()
	if res.headless || wasHeadless {
		if err := im.syncHeadless(ctx, nn, exps, res.headless, d.OwnerReferences); err != nil {
			return err
		}
	}
	var ips []string
	if !res.headless {
		ips = d.Spec.ClusterIPs
	}
	want := res.spec(ips)
	if !sameJSON(si.Object["spec"], want) {
		si.Object["spec"] = want
		if si, err = ri.Update(ctx, si, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("service %s: update ServiceImport: %w", nn, err)
		}
	}
	if err := im.setImportStatus(ctx, ri, si, res); err != nil {
		return fmt.Errorf("service %s: ServiceImport status: %w", nn, err)
	}
	if err := im.setLocalConflict(ctx, nn, res); err != nil {
		return fmt.Errorf("service %s: ServiceExport conflict condition: %w", nn, err)
	}
	if len(res.conflicts) > 0 {
		im.report(nn, si, "ExportConflict", res.conflictMessage(nn, ""))
	} else {
		im.clearReport(nn)
	}
	return nil
}

// ensureDerived creates or updates the derived Service of nn, owned by its
// ServiceImport si. It returns nil and no error when a Service of that name
// exists that the mesh did not write (reported, left alone).
func (im *importer) ensureDerived(ctx context.Context, nn types.NamespacedName, res resolution, si *unstructured.Unstructured) (*corev1.Service, error) {
	svcs := im.kube.CoreV1().Services(nn.Namespace)
	want := res.derived(nn, si)
	d, err := svcs.Get(ctx, want.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("service %s: derived Service: %w", nn, err)
	case importedName(d) != nn.Name:
		im.report(nn, si, "DerivedNotOwned", fmt.Sprintf("cluster %s: Service %s/%s exists and was not written by the mesh: left alone, the service has no clusterset IP", im.cluster, nn.Namespace, want.Name))
		return nil, nil
	case (d.Spec.ClusterIP == corev1.ClusterIPNone) != res.headless:
		// Headlessness cannot change in place.
		if err := svcs.Delete(ctx, d.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &d.UID}}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("service %s: replace derived Service: %w", nn, err)
		}
	default:
		if slices.EqualFunc(d.Spec.Ports, want.Spec.Ports, samePort) && d.Spec.SessionAffinity == want.Spec.SessionAffinity &&
			sameJSON(d.Spec.SessionAffinityConfig, want.Spec.SessionAffinityConfig) && len(d.OwnerReferences) == 1 && d.OwnerReferences[0].UID == si.GetUID() {
			return d, nil
		}
		d.Spec.Ports, d.Spec.SessionAffinity, d.Spec.SessionAffinityConfig = want.Spec.Ports, want.Spec.SessionAffinity, want.Spec.SessionAffinityConfig
		d.OwnerReferences = want.OwnerReferences
		d, err = svcs.Update(ctx, d, metav1.UpdateOptions{})
		if err != nil {
			return nil, fmt.Errorf("service %s: update derived Service: %w", nn, err)
		}
		return d, nil
	}
	d, err = svcs.Create(ctx, want, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("service %s: create derived Service: %w", nn, err)
	}
	return d, nil
}

func samePort(a, b corev1.ServicePort) bool {
	return a.Name == b.Name && a.Port == b.Port && a.Protocol == b.Protocol && a.TargetPort == b.TargetPort
}

// setImportStatus writes the ServiceImport's exporters and its Ready and
// Conflict conditions.
func (im *importer) setImportStatus(ctx context.Context, ri dynamic.ResourceInterface, si *unstructured.Unstructured, res resolution) error {
	var clusters []any
	for _, c := range slices.Sorted(slices.Values(res.clusters)) {
		clusters = append(clusters, map[string]any{"cluster": c})
	}
	nn := types.NamespacedName{Namespace: si.GetNamespace(), Name: si.GetName()}
	conflict := condition{ConditionConflict, false, ReasonNoConflicts, "the exporting clusters agree"}
	if len(res.conflicts) > 0 {
		conflict = condition{ConditionConflict, true, res.conflicts[0].reason, res.conflictMessage(nn, "")}
	}
	have, _, _ := unstructured.NestedSlice(si.Object, "status", "conditions")
	conds, changed := mergeConditions(have, []condition{
		{ConditionReady, true, "Imported", fmt.Sprintf("imported from %s", strings.Join(res.clusters, ", "))},
		conflict,
	})
	oldClusters, _, _ := unstructured.NestedSlice(si.Object, "status", "clusters")
	if !changed && sameJSON(oldClusters, clusters) {
		return nil
	}
	si = si.DeepCopy()
	si.Object["status"] = map[string]any{"clusters": clusters, "conditions": conds}
	_, err := ri.UpdateStatus(ctx, si, metav1.UpdateOptions{})
	return err
}

// setLocalConflict sets the Conflict condition of this cluster's own
// ServiceExport of nn, if it has one: true when its export takes part in a
// conflict, lost or won (the KEP raises it on every ServiceExport of the
// conflicted service; the message says whose value applies).
func (im *importer) setLocalConflict(ctx context.Context, nn types.NamespacedName, res resolution) error {
	if !im.exports.has(nn) || !slices.Contains(res.clusters, im.cluster) {
		return nil
	}
	c := condition{ConditionConflict, false, ReasonNoConflicts, "the exporting clusters agree"}
	if msg := res.conflictMessage(nn, im.cluster); msg != "" {
		for _, cf := range res.conflicts {
			if cf.winner == im.cluster || slices.Contains(cf.losers, im.cluster) {
				c = condition{ConditionConflict, true, cf.reason, msg}
				break
			}
		}
	}
	return im.exports.setConditions(ctx, nn, c)
}

// remove deletes the ServiceImport and derived Service of a service nobody
// exports any more, if the mesh wrote them.
func (im *importer) remove(ctx context.Context, nn types.NamespacedName) error {
	im.clearReport(nn)
	im.mu.Lock()
	gvr := im.gvr
	wasHeadless := im.headless[nn]
	im.mu.Unlock()
	if wasHeadless {
		// Owned by the ServiceImport, they would go with it; at once is
		// better than at the garbage collector's pace.
		if err := im.syncHeadless(ctx, nn, nil, false, nil); err != nil {
			return err
		}
	}
	im.mu.Lock()
	delete(im.headless, nn)
	im.mu.Unlock()
	svcs := im.kube.CoreV1().Services(nn.Namespace)
	d, err := svcs.Get(ctx, derivedName(nn), metav1.GetOptions{})
	if err == nil && importedName(d) == nn.Name {
		err = svcs.Delete(ctx, d.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &d.UID}})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("service %s: delete derived Service: %w", nn, err)
	}
	ri := im.dyn.Resource(gvr).Namespace(nn.Namespace)
	si, err := ri.Get(ctx, nn.Name, metav1.GetOptions{})
	if err == nil && si.GetLabels()[LabelManagedBy] == ManagedBy {
		uid := si.GetUID()
		err = ri.Delete(ctx, nn.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err == nil {
			im.log.Info("service no longer exported: import removed", "service", nn)
		}
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("service %s: delete ServiceImport: %w", nn, err)
	}
	return nil
}

// resolution is an import resolved from its exports by the KEP's rules:
// ports are the union of the exports' ports; where exports disagree on a
// port name's number or protocol, on the type (headless or not) or on
// session affinity, the oldest export wins and the others are in
// conflict.
type resolution struct {
	headless        bool
	ports           []api.ServicePort
	affinityTimeout uint32
	// clusters are the exporters, oldest first.
	clusters  []string
	conflicts []conflict
}

// conflict is one field on which exporters lost to the oldest export.
type conflict struct {
	reason string
	field  string
	winner string
	losers []string
}

func clustersOf(exps []*api.Service) []string {
	out := make([]string, 0, len(exps))
	for _, s := range exps {
		out = append(out, s.Cluster)
	}
	return out
}

// resolve applies the conflict resolution to exports sorted oldest first.
func resolve(exps []*api.Service) resolution {
	res := resolution{headless: exps[0].Headless, affinityTimeout: exps[0].SessionAffinityTimeout, clusters: clustersOf(exps)}
	byField := map[string]*conflict{}
	lose := func(reason, field, winner, loser string) {
		c := byField[field]
		if c == nil {
			c = &conflict{reason: reason, field: field, winner: winner}
			byField[field] = c
		}
		if !slices.Contains(c.losers, loser) {
			c.losers = append(c.losers, loser)
		}
	}
	type portKey struct {
		port  uint16
		proto api.Protocol
	}
	byName := map[string]int{}
	byNum := map[portKey]int{}
	owner := []string{}
	for _, e := range exps {
		if e.Headless != res.headless {
			lose(ReasonTypeConflict, "spec.type", exps[0].Cluster, e.Cluster)
		}
		if e.SessionAffinityTimeout != res.affinityTimeout {
			lose(ReasonSessionAffinityConflict, "spec.sessionAffinity", exps[0].Cluster, e.Cluster)
		}
		for _, p := range e.Ports {
			field := fmt.Sprintf("spec.ports[%q]", p.Name)
			if i, ok := byName[p.Name]; ok {
				if res.ports[i] != p {
					lose(ReasonPortConflict, field, owner[i], e.Cluster)
				}
				continue
			}
			if i, ok := byNum[portKey{p.Port, p.Protocol}]; ok {
				lose(ReasonPortConflict, field, owner[i], e.Cluster)
				continue
			}
			if len(res.ports) > 0 && (p.Name == "" || res.ports[0].Name == "") {
				// Kubernetes names every port of a multi-port Service.
				lose(ReasonPortConflict, field, owner[0], e.Cluster)
				continue
			}
			byName[p.Name] = len(res.ports)
			byNum[portKey{p.Port, p.Protocol}] = len(res.ports)
			res.ports = append(res.ports, p)
			owner = append(owner, e.Cluster)
		}
	}
	for _, c := range byField {
		res.conflicts = append(res.conflicts, *c)
	}
	slices.SortFunc(res.conflicts, func(a, b conflict) int { return cmp.Compare(a.field, b.field) })
	return res
}

// conflictMessage describes the conflicts (only those cluster takes part
// in, when cluster is not empty): the clusters, the field and the winner.
func (r resolution) conflictMessage(nn types.NamespacedName, cluster string) string {
	var parts []string
	for _, c := range r.conflicts {
		if cluster != "" && cluster != c.winner && !slices.Contains(c.losers, cluster) {
			continue
		}
		parts = append(parts, fmt.Sprintf("field %s: cluster(s) %s disagree with cluster %s, whose export is the oldest and applies",
			c.field, strings.Join(c.losers, ", "), c.winner))
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("service %s: %s", nn, strings.Join(parts, "; "))
}

// spec is the ServiceImport's spec, with the clusterset IPs.
func (r resolution) spec(ips []string) map[string]any {
	typ := ImportClusterSetIP
	if r.headless {
		typ = ImportHeadless
	}
	ports := []any{}
	for _, p := range r.ports {
		m := map[string]any{"port": int64(p.Port), "protocol": string(p.Protocol)}
		if p.Name != "" {
			m["name"] = p.Name
		}
		ports = append(ports, m)
	}
	out := map[string]any{"type": typ, "ports": ports, "sessionAffinity": string(corev1.ServiceAffinityNone)}
	if r.affinityTimeout > 0 {
		out["sessionAffinity"] = string(corev1.ServiceAffinityClientIP)
		out["sessionAffinityConfig"] = map[string]any{"clientIP": map[string]any{"timeoutSeconds": int64(r.affinityTimeout)}}
	}
	if len(ips) > 0 {
		v := make([]any, 0, len(ips))
		for _, ip := range ips {
			v = append(v, ip)
		}
		out["ips"] = v
	}
	return out
}

// derived is the derived Service of the import: selector-less, ClusterIP
// (or headless), with the import's ports and session affinity, owned by
// the ServiceImport (deleted with it).
func (r resolution) derived(nn types.NamespacedName, si *unstructured.Unstructured) *corev1.Service {
	d := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: derivedName(nn), Namespace: nn.Namespace,
			Labels: map[string]string{LabelServiceName: nn.Name, LabelManagedBy: ManagedBy},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: si.GetAPIVersion(), Kind: "ServiceImport", Name: si.GetName(), UID: si.GetUID(),
			}},
		},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, SessionAffinity: corev1.ServiceAffinityNone},
	}
	if r.headless {
		d.Spec.ClusterIP = corev1.ClusterIPNone
	}
	for _, p := range r.ports {
		d.Spec.Ports = append(d.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: int32(p.Port), TargetPort: intstr.FromInt32(int32(p.Port))})
	}
	if r.affinityTimeout > 0 {
		t := int32(r.affinityTimeout)
		d.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		d.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	return d
}

// sameJSON compares two values by their JSON form (unstructured numbers
// and typed fields alike).
func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}
