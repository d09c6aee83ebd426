package apiserver_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/kvstore/kvstoretest"
)

const (
	benchServices      = 1000
	benchEndpointsEach = 10
	// benchSpare services start unannotated; each annotate sample makes
	// one of them global.
	benchSpare = 200
)

// BenchmarkExport loads 1,000 global services with 10,000 endpoints (one
// EndpointSlice of 10 per service, written directly rather than through
// pods), then measures:
//
//   - initial_export_s: apiserver start to every synced canary written,
//     beside list_s, the time a plain client-go List of the same services
//     and slices takes (the floor any exporter pays);
//   - annotate_*_ms: `clustermesh.io/global=true` set on a service until its
//     key and its slice's key are in the store;
//   - endpoint_*_ms: an endpoint added to a slice until the slice's key in
//     the store holds it;
//
// each beside watch_*_ms, when a plain Kubernetes watch saw the same change
// (the part of the latency that is Kubernetes', not the export's).
//
// Run: go test -run '^$' -bench Export -benchtime 200x ./clustermesh-apiserver/
func BenchmarkExport(b *testing.B) {
	e := newEnv(b, "bench", 9)
	ctx := context.Background()
	cs := e.kube.Client
	ns := "bench"
	mkNamespace(b, e, ns, nil)

	// Load, 16 writers in parallel.
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < benchServices+benchSpare; i += 16 {
				ann := map[string]string{apiserver.AnnotationGlobal: "true"}
				if i >= benchServices {
					ann = nil
				}
				if err := benchService(ctx, e, ns, i, ann); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("loaded %d services, %d endpoints in %v", benchServices+benchSpare, (benchServices+benchSpare)*benchEndpointsEach, time.Since(t0))

	// Baseline: listing what the export has to read.
	t0 = time.Now()
	if _, err := cs.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}); err != nil {
		b.Fatal(err)
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{}); err != nil {
		b.Fatal(err)
	}
	listTime := time.Since(t0)

	t0 = time.Now()
	e.start()
	initial := time.Since(t0)
	got, err := e.store.Count(ctx, api.ClusterPrefix(api.KindEndpoints, "bench"))
	if err != nil || got != benchServices {
		b.Fatalf("%d endpoint slices exported, want %d (%v)", got, benchServices, err)
	}

	// Every store change and every Kubernetes change is timestamped as it
	// arrives; samples wait for the one they caused.
	storeSeen := newArrivals()
	kubeSeen := newArrivals()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for wr := range kvstoretest.RawClient(b, e.store.Config()).Watch(wctx, api.KeyPrefix, clientv3.WithPrefix()) {
			now := time.Now()
			for _, ev := range wr.Events {
				storeSeen.add(string(ev.Kv.Key), ev.Kv.Value, now)
			}
		}
	}()
	for _, w := range []func(context.Context, metav1.ListOptions) (watch.Interface, error){
		cs.CoreV1().Services(ns).Watch, cs.DiscoveryV1().EndpointSlices(ns).Watch,
	} {
		wi, err := w(wctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			b.Fatal(err)
		}
		defer wi.Stop()
		go func() {
			for ev := range wi.ResultChan() {
				now := time.Now()
				if o, ok := ev.Object.(metav1.Object); ok {
					kubeSeen.add(o.GetName(), []byte(o.GetResourceVersion()), now)
				}
			}
		}()
	}

	samples := max(b.N, 100)
	var annStore, annKube, epStore, epKube []time.Duration
	b.ResetTimer()
	for i := range samples {
		// Annotate a spare service global (cycling through the spares,
		// removing the annotation again before reuse).
		name := fmt.Sprintf("svc-%04d", benchServices+i%benchSpare)
		if i >= benchSpare {
			if err := benchAnnotate(ctx, e, ns, name, false); err != nil {
				b.Fatal(err)
			}
			storeSeen.waitGone(b, api.ServiceKey("bench", ns, name))
		}
		start := time.Now()
		if err := benchAnnotate(ctx, e, ns, name, true); err != nil {
			b.Fatal(err)
		}
		tk := kubeSeen.waitAfter(b, name, start)
		ts := storeSeen.waitAfter(b, api.EndpointSliceKey("bench", ns, name, name), start)
		ts = later(ts, storeSeen.waitAfter(b, api.ServiceKey("bench", ns, name), start))
		annStore, annKube = append(annStore, ts.Sub(start)), append(annKube, tk.Sub(start))

		// Add an endpoint to a global service's slice.
		name = fmt.Sprintf("svc-%04d", i%benchServices)
		start = time.Now()
		if err := benchAddEndpoint(ctx, e, ns, name, i); err != nil {
			b.Fatal(err)
		}
		tk = kubeSeen.waitAfter(b, name, start)
		ts = storeSeen.waitAfter(b, api.EndpointSliceKey("bench", ns, name, name), start)
		epStore, epKube = append(epStore, ts.Sub(start)), append(epKube, tk.Sub(start))
	}
	b.StopTimer()
	b.ReportMetric(initial.Seconds(), "initial_export_s")
	b.ReportMetric(listTime.Seconds(), "list_s")
	reportPercentiles(b, latencies{"annotate", annStore}, latencies{"annotate_watch", annKube}, latencies{"endpoint", epStore}, latencies{"endpoint_watch", epKube})
}

// latencies are one benchmark figure's samples.
type latencies struct {
	name string
	d    []time.Duration
}

// reportPercentiles reports each figure's p50 and p99 in milliseconds
// (<name>_p50_ms, <name>_p99_ms), instead of ns/op.
func reportPercentiles(b *testing.B, ls ...latencies) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, m := range ls {
		slices.Sort(m.d)
		b.ReportMetric(ms(m.d[len(m.d)/2]), m.name+"_p50_ms")
		b.ReportMetric(ms(m.d[len(m.d)*99/100]), m.name+"_p99_ms")
	}
	b.ReportMetric(0, "ns/op")
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func benchService(ctx context.Context, e *env, ns string, i int, ann map[string]string) error {
	name := fmt.Sprintf("svc-%04d", i)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := e.kube.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for j := range benchEndpointsEach {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, j+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("node-a"),
		})
	}
	_, err := e.kube.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, es, metav1.CreateOptions{})
	return err
}

func benchAnnotate(ctx context.Context, e *env, ns, name string, global bool) error {
	patch := `{"metadata":{"annotations":{"` + apiserver.AnnotationGlobal + `":"true"}}}`
	if !global {
		patch = `{"metadata":{"annotations":{"` + apiserver.AnnotationGlobal + `":null}}}`
	}
	_, err := e.kube.Client.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

func benchAddEndpoint(ctx context.Context, e *env, ns, name string, i int) error {
	es, err := e.kube.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
		Addresses:  []string{fmt.Sprintf("10.99.%d.%d", i/250, i%250+1)},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
	})
	_, err = e.kube.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, es, metav1.UpdateOptions{})
	return err
}

// arrivals records when each key last changed (nil value: deleted).
type arrivals struct {
	mu   sync.Mutex
	cond *sync.Cond
	at   map[string]time.Time
	gone map[string]bool
}

func newArrivals() *arrivals {
	a := &arrivals{at: map[string]time.Time{}, gone: map[string]bool{}}
	a.cond = sync.NewCond(&a.mu)
	return a
}

func (a *arrivals) add(key string, value []byte, t time.Time) {
	a.mu.Lock()
	a.at[key] = t
	a.gone[key] = len(value) == 0
	a.mu.Unlock()
	a.cond.Broadcast()
}

// waitAfter waits until key changed after start and returns when.
func (a *arrivals) waitAfter(b *testing.B, key string, start time.Time) time.Time {
	return a.wait(b, key, func() bool { return a.at[key].After(start) && !a.gone[key] })
}

func (a *arrivals) waitGone(b *testing.B, key string) {
	a.wait(b, key, func() bool { return a.gone[key] })
}

func (a *arrivals) wait(b *testing.B, key string, ok func() bool) time.Time {
	deadline := time.AfterFunc(time.Minute, a.cond.Broadcast)
	defer deadline.Stop()
	limit := time.Now().Add(time.Minute)
	a.mu.Lock()
	defer a.mu.Unlock()
	for !ok() {
		if time.Now().After(limit) {
			b.Fatalf("%s: no change seen within a minute", key)
		}
		a.cond.Wait()
	}
	return a.at[key]
}
