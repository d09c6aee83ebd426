package kvstore

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkPropagation measures writer Upsert -> reader event through our
// Writer and Reader, and as the baseline a bare clientv3 Put -> bare clientv3
// Watch event on the same etcd, with 1, 100 and 10,000 objects in the store.
// Iterations alternate between the two so that both see the same machine
// load; both read over TLS as the remote user. Run with
//
//	go test ./kvstore -run '^$' -bench Propagation
func BenchmarkPropagation(b *testing.B) {
	p := newTestPKI(b)
	srv := startServer(b, p.serverConfig(b.TempDir(), ""))
	admin := newClient(b, p.clientConfig(srv.Endpoint(), UserAdmin))
	remote := newClient(b, p.clientConfig(srv.Endpoint(), UserRemote))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := NewWriter(admin, "c1", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	go w.Run(ctx)

	have := 0
	for _, n := range []int{1, 100, 10000} {
		// The probe object is one of the n.
		populate(b, ctx, w, have, n-1)
		have = n - 1
		if err := w.MarkSynced(ctx, api.KindNode); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("objects=%d", n), func(b *testing.B) {
			benchPropagation(b, ctx, w, admin, remote)
		})
	}
}

func populate(b *testing.B, ctx context.Context, w *Writer, from, to int) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := from + g; i < to; i += 16 {
				if err := w.Upsert(ctx, testNode(fmt.Sprintf("n%d", i), i)); err != nil {
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
}

func benchPropagation(b *testing.B, ctx context.Context, w *Writer, admin, remote *Client) {
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Ours: a Reader of the nodes, consumed by a goroutine that stamps the
	// probe's events.
	ours := make(chan time.Time, 1024)
	synced := make(chan struct{})
	events := NewReader(remote, "c1", nil).Watch(wctx, api.KindNode)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range events {
			switch ev.Type {
			case EventSynced:
				close(synced)
			case EventUpsert:
				if ev.Object.(*api.Node).Name == "probe" {
					ours <- time.Now()
				}
			}
		}
	}()
	// Baseline: a bare watch of a prefix of its own, where nothing else is
	// written, so neither side's events reach the other.
	const bareKey = api.KeyPrefix + "bench/probe"
	resp, err := remote.cli.Get(ctx, bareKey)
	if err != nil {
		b.Fatal(err)
	}
	bare := make(chan time.Time, 1024)
	wch := remote.cli.Watch(wctx, api.KeyPrefix+"bench/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wr := range wch {
			now := time.Now()
			for range wr.Events {
				bare <- now
			}
		}
	}()
	<-synced
	for len(ours) > 0 {
		<-ours
	}

	probe := &api.Node{Cluster: "c1", Name: "probe", Addresses: []netip.Addr{netip.MustParseAddr("10.255.0.1")}}
	latOurs := make([]time.Duration, 0, b.N)
	latBare := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		probe.Zone = fmt.Sprintf("z%d-%d", b.N, i)
		start := time.Now()
		if err := w.Upsert(ctx, probe); err != nil {
			b.Fatal(err)
		}
		latOurs = append(latOurs, (<-ours).Sub(start))

		value, err := probe.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if _, err := admin.cli.Put(ctx, bareKey, string(value)); err != nil {
			b.Fatal(err)
		}
		latBare = append(latBare, (<-bare).Sub(start))
	}
	b.StopTimer()
	p50o, p99o := percentiles(latOurs)
	p50b, p99b := percentiles(latBare)
	b.ReportMetric(p50o, "p50-µs")
	b.ReportMetric(p99o, "p99-µs")
	b.ReportMetric(p50b, "etcd-p50-µs")
	b.ReportMetric(p99b, "etcd-p99-µs")
	b.ReportMetric(p50o-p50b, "added-p50-µs")
	b.ReportMetric(0, "ns/op")
}

// percentiles returns the p50 and p99 of lat in microseconds.
func percentiles(lat []time.Duration) (p50, p99 float64) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	at := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)].Microseconds()) }
	return at(0.50), at(0.99)
}

// BenchmarkExport measures a writer's throughput in an initial export: 16
// goroutines upserting distinct objects, beside bare clientv3 Puts of the
// same values as the baseline. Run with
//
//	go test ./kvstore -run '^$' -bench Export
func BenchmarkExport(b *testing.B) {
	p := newTestPKI(b)
	srv := startServer(b, p.serverConfig(b.TempDir(), ""))
	admin := newClient(b, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	run := func(b *testing.B, put func(i int) error) {
		var n atomic.Int64
		b.SetParallelism(8)
		start := time.Now()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := put(int(n.Add(1))); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "objects/s")
	}
	b.Run("clustermesh", func(b *testing.B) {
		w, err := NewWriter(admin, "c1", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		run(b, func(i int) error { return w.Upsert(ctx, testNode(fmt.Sprintf("w%d-%d", b.N, i), i)) })
	})
	b.Run("etcd-put", func(b *testing.B) {
		run(b, func(i int) error {
			n := testNode(fmt.Sprintf("p%d-%d", b.N, i), i)
			v, err := n.Marshal()
			if err != nil {
				return err
			}
			_, err = admin.cli.Put(ctx, n.Key(), string(v))
			return err
		})
	})
}
