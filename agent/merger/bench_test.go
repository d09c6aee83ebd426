package merger

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// nopBulk is a datapath that takes everything at no cost, so a benchmark
// measures the merger alone.
type nopBulk struct{ services int }

func (*nopBulk) UpsertService(context.Context, loadbalancer.Service) error       { return nil }
func (*nopBulk) DeleteService(context.Context, loadbalancer.Frontend) error      { return nil }
func (*nopBulk) SetNodeHealth(context.Context, loadbalancer.NodeRef, bool) error { return nil }
func (d *nopBulk) UpsertServices(_ context.Context, svcs []loadbalancer.Service) map[loadbalancer.Frontend]error {
	d.services += len(svcs)
	return nil
}

// bulkObjects are n services of 3 backends each, and their slices.
func bulkObjects(n int) ([]*api.Service, []*api.EndpointSlice) {
	svcs := make([]*api.Service, 0, n)
	sls := make([]*api.EndpointSlice, 0, n)
	for j := 0; j < n; j++ {
		s := svc("c1", vips(netip.AddrFrom4([4]byte{10, byte(96 + j>>16), byte(j >> 8), byte(j)}).String()))
		s.Name = fmt.Sprintf("web%d", j)
		sl := httpSlice("c1", ep(fmt.Sprintf("10.1.%d.%d", j%64, 1)), ep(fmt.Sprintf("10.1.%d.%d", (j+1)%64, 1)), ep(fmt.Sprintf("10.1.%d.%d", (j+2)%64, 1)))
		sl.Service = s.Name
		svcs, sls = append(svcs, s), append(sls, sl)
	}
	return svcs, sls
}

func upsertAll(m *Merger, svcs []*api.Service, sls []*api.EndpointSlice) {
	for j := range svcs {
		m.UpsertService(svcs[j])
		m.UpsertEndpointSlice(sls[j])
	}
}

// cpuTime is the CPU time the process has used, all threads (the garbage
// collector's too): on a shared, loaded machine it varies far less than
// ns/op, which counts the time waiting for a core.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSyncBulk is the agent's side of programming 100,000 services of
// 3 backends from empty: the first Sync after they were added, against a
// datapath that costs nothing (BenchmarkUpsertServices in bpf/ is the
// datapath's side). cpu-ns/op is the process's CPU time during the Syncs.
func BenchmarkSyncBulk(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	svcs, sls := bulkObjects(n)
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dp := &nopBulk{}
		m := New("c1", dp, nil)
		upsertAll(m, svcs, sls)
		c0 := cpuTime(b)
		b.StartTimer()
		if _, err := m.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime(b) - c0
		if dp.services != n {
			b.Fatalf("%d services programmed in bulk, want %d", dp.services, n)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// BenchmarkSyncResync is a Sync of 100,000 services marked dirty with
// nothing changed (an informer's resync delivers every object again):
// nothing is programmed, and the merger's own state is left as it was.
func BenchmarkSyncResync(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	svcs, sls := bulkObjects(n)
	dp := &nopBulk{}
	m := New("c1", dp, nil)
	upsertAll(m, svcs, sls)
	if _, err := m.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		upsertAll(m, svcs, sls)
		c0 := cpuTime(b)
		b.StartTimer()
		res, err := m.Sync(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime(b) - c0
		if res.Services != n || res.Upserts != 0 || dp.services != n {
			b.Fatalf("resync: %+v, %d services programmed in bulk, want %d services recomputed and nothing programmed", res, dp.services, n)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}
