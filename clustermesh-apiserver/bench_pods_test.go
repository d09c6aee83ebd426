package apiserver_test

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore/kvstoretest"
)

const (
	benchPods = 3000
	benchApps = 30
)

// BenchmarkExportPods loads 3,000 running pods of 30 apps (30 identities),
// then measures the initial export of identities and ipcache (initial_export_s)
// and, per sample, the time from creating a pod and setting its status (IP,
// Running, Ready, as a kubelet would) to its ipcache entry being in the store
// (ipcache_*_ms), beside a plain Kubernetes watch on pods seeing the status
// update (watch_*_ms).
//
// Run: go test -run '^$' -bench ExportPods -benchtime 200x ./clustermesh-apiserver/
func BenchmarkExportPods(b *testing.B) {
	e := newEnv(b, "pods", 10)
	ctx := context.Background()
	ns := "pods"
	mkNamespace(b, e, ns, map[string]string{"team": "bench"})
	mkNode(b, e, "node-a", "192.168.1.10", "10.128.0.0/12", "zone-a")
	ip := func(i int) string {
		return netip.AddrFrom4([4]byte{10, byte(128 + i/65536), byte(i / 256 % 256), byte(i % 256)}).String()
	}

	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < benchPods; i += 16 {
				if err := createPod(ctx, e, ns, fmt.Sprintf("p-%05d", i), fmt.Sprintf("app-%02d", i%benchApps), "node-a", ip(i+1)); err != nil {
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
	b.Logf("loaded %d pods in %v", benchPods, time.Since(t0))

	t0 = time.Now()
	e.start()
	initial := time.Since(t0)
	for kind, want := range map[api.Kind]int64{api.KindIPCache: benchPods, api.KindIdentity: benchApps} {
		got, err := e.store.Count(ctx, api.ClusterPrefix(kind, "pods"))
		if err != nil || got != want {
			b.Fatalf("%d %s keys, want %d (%v)", got, kind, want, err)
		}
	}

	storeSeen, kubeSeen := newArrivals(), newArrivals()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for wr := range kvstoretest.RawClient(b, e.store.Config()).Watch(wctx, api.ClusterPrefix(api.KindIPCache, "pods"), clientv3.WithPrefix()) {
			now := time.Now()
			for _, ev := range wr.Events {
				storeSeen.add(string(ev.Kv.Key), ev.Kv.Value, now)
			}
		}
	}()
	wi, err := e.kube.Client.CoreV1().Pods(ns).Watch(wctx, metav1.ListOptions{ResourceVersion: "0"})
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

	samples := max(b.N, 100)
	var store, kube []time.Duration
	b.ResetTimer()
	for i := range samples {
		n := benchPods + i
		name := fmt.Sprintf("p-%05d", n)
		start := time.Now()
		if err := createPod(ctx, e, ns, name, fmt.Sprintf("app-%02d", n%benchApps), "node-a", ip(n+1)); err != nil {
			b.Fatal(err)
		}
		ts := storeSeen.waitAfter(b, api.IPCacheKey("pods", netip.MustParseAddr(ip(n+1))), start)
		tk := kubeSeen.waitAfter(b, name, start)
		store, kube = append(store, ts.Sub(start)), append(kube, tk.Sub(start))
	}
	b.StopTimer()
	b.ReportMetric(initial.Seconds(), "initial_export_s")
	reportPercentiles(b, latencies{"ipcache", store}, latencies{"watch", kube})
}
