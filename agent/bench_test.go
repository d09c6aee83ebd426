package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/kvstoretest"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchIP(cluster, svc, backend int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(cluster), byte(svc / 25), byte(svc%25*10 + backend + 1)})
}

func benchVIP(svc int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, byte(svc / 250), byte(svc%250 + 1)})
}

func benchSlice(c *meshtest.Cluster, k, svc, backends int) *api.EndpointSlice {
	es := c.Slice("bench", fmt.Sprintf("svc-%d", svc), "s0")
	for j := range backends {
		es.Endpoints = append(es.Endpoints, api.Endpoint{
			Addresses: []netip.Addr{benchIP(k, svc, j)}, NodeName: fmt.Sprintf("node-%d", j), Ready: true, Serving: true,
		})
	}
	return es
}

// openBenchBPF opens the real eBPF datapath on a private cgroup and bpffs,
// sized for the benchmark, removed at cleanup.
func openBenchBPF(b *testing.B, backends, services int) loadbalancer.Datapath {
	l := netlab.New(b)
	cg, pins := l.Cgroup("cg"), l.BPFFS()
	cfg := bpf.DefaultConfig()
	cfg.CgroupPath, cfg.PinDir = cg, pins
	cfg.MaxBackends = backends + 1024
	cfg.MaxSlots = 2*backends + 1024
	cfg.MaxServices = services + 1024
	cfg.Logger = slog.New(slog.DiscardHandler)
	d, err := bpf.Open(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Remove() })
	return d
}

// BenchmarkPropagation loads CM_BENCH_CLUSTERS (10) clusters, each exporting
// CM_BENCH_SERVICES (1000) global services of CM_BENCH_BACKENDS (10)
// backends, into real embedded etcds, and runs an agent of the first
// cluster. It reports the agent's initial sync time and heap per endpoint,
// then, per iteration, the time from a write in the second cluster's store
// to the merged service updated in the agent's datapath, next to the time
// the same write takes to reach a bare etcd watch on the same store (the
// floor any reader pays). CM_BENCH_DATAPATH=bpf (root) programs the real
// eBPF maps too, so the figure runs to the kernel.
//
//	go test -run '^$' -bench BenchmarkPropagation -benchtime 300x ./agent/
func BenchmarkPropagation(b *testing.B) {
	if os.Getenv("CM_BENCH_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 64
	}
	nClusters := envInt("CM_BENCH_CLUSTERS", 10)
	nServices := envInt("CM_BENCH_SERVICES", 1000)
	nBackends := envInt("CM_BENCH_BACKENDS", 10)
	m := meshtest.New(b)
	clusters := make([]*meshtest.Cluster, nClusters)
	for k := range clusters {
		clusters[k] = m.AddCluster(fmt.Sprintf("c%02d", k+1), uint32(k+1), fmt.Sprintf("10.%d.0.0/16", k+1))
	}
	loadStart := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, nClusters)
	for k, c := range clusters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for i := range nServices {
				svc := c.Service("bench", fmt.Sprintf("svc-%d", i), benchVIP(i).String())
				if err := c.UpsertErr(ctx, svc, benchSlice(c, k+1, i, nBackends)); err != nil {
					errs <- err
					return
				}
			}
			errs <- c.MarkSyncedErr(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("loaded %d clusters × %d services × %d backends in %s", nClusters, nServices, nBackends, time.Since(loadStart).Round(time.Millisecond))

	// Heap before the agent exists; the stores are idle from here on.
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	dp := meshtest.NewRecorder()
	if os.Getenv("CM_BENCH_DATAPATH") == "bpf" {
		dp.Inner = openBenchBPF(b, nClusters*nServices*nBackends, nServices)
	}
	syncStart := time.Now()
	a := startAgentWith(b, dp, nil, "n1", clusters[0], clusters[1:]...)
	wantBackends := nClusters * nBackends
	dp.Wait(b, 5*time.Minute, func() (bool, string) {
		st := a.Status()
		synced := 0
		for _, c := range st.Clusters {
			if c.Synced {
				synced++
			}
		}
		if synced < nClusters {
			return false, fmt.Sprintf("%d/%d clusters synced", synced, nClusters)
		}
		full := 0
		for _, s := range a.Programmed() {
			if len(s.Preferred) == wantBackends {
				full++
			}
		}
		return full == nServices, fmt.Sprintf("%d/%d frontends with %d backends", full, nServices, wantBackends)
	})
	syncTime := time.Since(syncStart)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	endpoints := nClusters * nServices * nBackends
	remoteEndpoints := (nClusters - 1) * nServices * nBackends
	heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
	// CM_BENCH_HEAPPROFILE=file writes the heap profile of this moment
	// (go tool pprof -sample_index=inuse_space): where the agent's bytes
	// per endpoint go.
	if path := os.Getenv("CM_BENCH_HEAPPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	b.Logf("initial sync of %d endpoints (%d remote) in %s; agent heap +%.1f MiB = %.0f B/endpoint",
		endpoints, remoteEndpoints, syncTime.Round(time.Millisecond), heap/(1<<20), heap/float64(endpoints))

	// Per iteration: change one backend of one service in cluster 2 and wait
	// for both the agent's datapath and a bare watch to see it.
	writer := clusters[1]
	watchCli := writer.RelayClient(kvstore.UserRemote)
	var (
		mu      sync.Mutex
		wantFE  loadbalancer.Frontend
		wantBE  netip.AddrPort
		wantKey string
		dpSeen  = make(chan time.Time, 1)
		wSeen   = make(chan time.Time, 1)
	)
	dp.OnUpsert = func(s loadbalancer.Service) {
		mu.Lock()
		defer mu.Unlock()
		if s.Frontend != wantFE || !slices.ContainsFunc(s.Preferred, func(be loadbalancer.Backend) bool { return be.Addr == wantBE }) {
			return
		}
		wantFE = loadbalancer.Frontend{}
		dpSeen <- time.Now()
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := kvstoretest.RawClient(b, watchCli.Config()).Watch(wctx, api.ClusterPrefix(api.KindEndpoints, writer.Name), clientv3.WithPrefix())
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for resp := range wch {
			now := time.Now()
			for _, ev := range resp.Events {
				mu.Lock()
				if string(ev.Kv.Key) == wantKey {
					wantKey = ""
					wSeen <- now
				}
				mu.Unlock()
			}
		}
	}()
	defer func() { wcancel(); <-wdone }()

	var lat, watchLat []time.Duration
	i := 0
	ctx := context.Background()
	for b.Loop() {
		svc := i % nServices
		es := benchSlice(writer, 2, svc, nBackends)
		marker := netip.AddrFrom4([4]byte{10, 2, byte(200 + i/250), byte(i%250 + 1)})
		es.Endpoints[nBackends-1].Addresses[0] = marker
		mu.Lock()
		wantFE = loadbalancer.Frontend{Addr: netip.AddrPortFrom(benchVIP(svc), 80), Protocol: loadbalancer.TCP}
		wantBE = netip.AddrPortFrom(marker, 8080)
		wantKey = es.Key()
		mu.Unlock()
		t0 := time.Now()
		if err := writer.UpsertErr(ctx, es); err != nil {
			b.Fatal(err)
		}
		for _, ch := range []chan time.Time{dpSeen, wSeen} {
			select {
			case t := <-ch:
				if ch == dpSeen {
					lat = append(lat, t.Sub(t0))
				} else {
					watchLat = append(watchLat, t.Sub(t0))
				}
			case <-time.After(time.Minute):
				b.Fatalf("iteration %d: update of service %d not seen within a minute", i, svc)
			}
		}
		i++
	}
	b.StopTimer()
	slices.Sort(lat)
	slices.Sort(watchLat)
	pct := func(d []time.Duration, p float64) float64 {
		if len(d) == 0 {
			return 0
		}
		return float64(d[min(len(d)-1, int(float64(len(d))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(lat, 0.50), "p50-ms")
	b.ReportMetric(pct(lat, 0.99), "p99-ms")
	b.ReportMetric(pct(watchLat, 0.50), "etcd-watch-p50-ms")
	b.ReportMetric(pct(watchLat, 0.99), "etcd-watch-p99-ms")
	b.ReportMetric(syncTime.Seconds(), "initial-sync-s")
	b.ReportMetric(heap/float64(endpoints), "heap-B/endpoint")
	b.ReportMetric(float64(endpoints), "endpoints")
	st := a.Status()
	for _, c := range st.Clusters {
		if c.State != status.StateConnected || c.InvalidObjects != 0 {
			b.Errorf("cluster %s after the benchmark: %+v", c.Name, c)
		}
	}
}
