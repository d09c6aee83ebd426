package merger

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

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

// BenchmarkSyncBulk is the agent's side of programming 100,000 services of
// 3 backends from empty: the first Sync after they were added, against a
// datapath that costs nothing (BenchmarkUpsertServices in bpf/ is the
// datapath's side).
func BenchmarkSyncBulk(b *testing.B) {
	const n = 100000
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dp := &nopBulk{}
		m := New("c1", dp, nil)
		for j := 0; j < n; j++ {
			s := svc("c1", vips(netip.AddrFrom4([4]byte{10, byte(96 + j>>16), byte(j >> 8), byte(j)}).String()))
			s.Name = fmt.Sprintf("web%d", j)
			m.UpsertService(s)
			sl := httpSlice("c1", ep(fmt.Sprintf("10.1.%d.%d", j%64, 1)), ep(fmt.Sprintf("10.1.%d.%d", (j+1)%64, 1)), ep(fmt.Sprintf("10.1.%d.%d", (j+2)%64, 1)))
			sl.Service = s.Name
			m.UpsertEndpointSlice(sl)
		}
		b.StartTimer()
		if _, err := m.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if dp.services != n {
			b.Fatalf("%d services programmed in bulk, want %d", dp.services, n)
		}
		b.StartTimer()
	}
}
