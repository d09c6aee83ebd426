package apiserver_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/clustermesh/clustermesh/agent/merger"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// firstOnly passes only the first arrival of each name on to arrivals,
// so that a later change (a status update, a re-sync) does not move it.
type firstOnly struct {
	mu   sync.Mutex
	seen map[string]bool
	to   *arrivals
}

func (f *firstOnly) mark(name string) {
	f.mu.Lock()
	first := !f.seen[name]
	f.seen[name] = true
	f.mu.Unlock()
	if first {
		f.to.add(name, []byte{1}, time.Now())
	}
}

// programmedDP is a datapath that records when a service's frontend is
// first programmed with a backend.
type programmedDP struct{ seen *firstOnly }

func (d programmedDP) UpsertService(_ context.Context, svc loadbalancer.Service) error {
	if len(svc.Preferred)+len(svc.Fallback) > 0 {
		d.seen.mark(svc.Name)
	}
	return nil
}
func (programmedDP) DeleteService(context.Context, loadbalancer.Frontend) error { return nil }
func (programmedDP) SetNodeHealth(context.Context, loadbalancer.NodeRef, bool) error {
	return nil
}

// feedMerger plays c1's agent: it follows clusters' services and endpoint
// slices in c1's store (its own, and c2's copy the mesh cache keeps there,
// as agents run with --cached-peers) into a merger, syncing after every
// change.
func feedMerger(ctx context.Context, store *kvstore.Client, m *merger.Merger, clusters ...string) {
	for _, c := range clusters {
		r := kvstore.NewReader(store, c, nil)
		for _, kind := range []api.Kind{api.KindService, api.KindEndpoints} {
			ch := r.Watch(ctx, kind)
			go func() {
				for ev := range ch {
					switch o := ev.Object.(type) {
					case *api.Service:
						m.UpsertService(o)
					case *api.EndpointSlice:
						m.UpsertEndpointSlice(o)
					}
					_, _ = m.Sync(ctx)
				}
			}()
		}
	}
}

// BenchmarkServiceImport measures, over b.N services of two real clusters
// (kube-apiservers, clustermesh-apiservers with the mesh cache), from a
// ServiceExport created in c2 (its Service and one ready endpoint already
// there) to:
//
//   - import_*_ms: c1's ServiceImport carrying its clusterset IP (seen by a
//     watch of c1's ServiceImports);
//   - programmed_*_ms: the clusterset IP programmed with c2's backend by a
//     merger fed from c1's store as c1's agents are.
//
// Run: go test -run '^$' -bench ServiceImport -benchtime 100x ./clustermesh-apiserver/
func BenchmarkServiceImport(b *testing.B) {
	c1, c2 := newMCSPair(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mkNamespace(b, c1.env, "bench", nil)
	mkNamespace(b, c2.env, "bench", nil)

	importedAt, programmedAt := newArrivals(), newArrivals()
	imported := &firstOnly{seen: map[string]bool{}, to: importedAt}
	w, err := c1.dyn.Resource(serviceImportGVR).Namespace("bench").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Stop()
	go func() {
		for ev := range w.ResultChan() {
			if u, ok := ev.Object.(*unstructured.Unstructured); ok && ev.Type != watch.Deleted {
				if ips, _, _ := unstructured.NestedStringSlice(u.Object, "spec", "ips"); len(ips) > 0 {
					imported.mark(u.GetName())
				}
			}
		}
	}()
	programmed := &firstOnly{seen: map[string]bool{}, to: programmedAt}
	feedMerger(ctx, c1.store, merger.New("c1", programmedDP{programmed}, nil), "c1", "c2")

	var imp, prog []time.Duration
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("svc-%04d", i)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "bench"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{tcp("http", 80)}}}
		if _, err := c2.kube.Client.CoreV1().Services("bench").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		es := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "bench", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("10.2.%d.%d", 1+i/200, 10+i%200)}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}
		if _, err := c2.kube.Client.DiscoveryV1().EndpointSlices("bench").Create(ctx, es, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		c2.export(b, "bench", name)
		imp = append(imp, importedAt.waitAfter(b, name, start).Sub(start))
		prog = append(prog, programmedAt.waitAfter(b, "bench/"+name, start).Sub(start))
	}
	b.StopTimer()
	reportPercentiles(b, latencies{"import", imp}, latencies{"programmed", prog})
}
