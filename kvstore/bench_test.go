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

// BenchmarkPropagation measures writer Put -> reader event, through our
// Writer and Reader and, as the baseline, through a bare clientv3 Put and
// Watch on the same etcd, with 1, 100 and 10,000 objects in the store. Both
// read over TLS as the remote user. Run with
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
		b.Run(fmt.Sprintf("objects=%d/clustermesh", n), func(b *testing.B) {
			benchReader(b, ctx, w, remote)
		})
		b.Run(fmt.Sprintf("objects=%d/etcd-watch", n), func(b *testing.B) {
			benchBareWatch(b, ctx, admin, remote)
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

// stamped is an event with the time its consumer received it.
type stamped struct {
	key string
	at  time.Time
}

func benchReader(b *testing.B, ctx context.Context, w *Writer, remote *Client) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := NewReader(remote, "c1", nil)
	events := r.Watch(wctx, api.KindNode)
	got := make(chan stamped, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	synced := make(chan struct{})
	go func() {
		defer wg.Done()
		for ev := range events {
			switch ev.Type {
			case EventSynced:
				close(synced)
			case EventUpsert:
				if ev.Object.(*api.Node).Name == "probe" {
					got <- stamped{ev.Key, time.Now()}
				}
			}
		}
	}()
	defer wg.Wait()
	defer cancel()
	<-synced
	drain(got)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		probe := &api.Node{Cluster: "c1", Name: "probe", Zone: fmt.Sprintf("z%d-%d", b.N, i),
			Addresses: []netip.Addr{netip.MustParseAddr("10.255.0.1")}}
		start := time.Now()
		if err := w.Upsert(ctx, probe); err != nil {
			b.Fatal(err)
		}
		ev := <-got
		lat = append(lat, ev.at.Sub(start))
	}
	b.StopTimer()
	report(b, lat)
}

func benchBareWatch(b *testing.B, ctx context.Context, admin, remote *Client) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	key := api.NodeKey("c1", "probe")
	rev, err := remote.Etcd().Get(ctx, key)
	if err != nil {
		b.Fatal(err)
	}
	wch := remote.Etcd().Watch(wctx, api.ClusterPrefix(api.KindNode, "c1"), clientv3.WithPrefix(), clientv3.WithRev(rev.Header.Revision+1))
	got := make(chan stamped, 1024)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wr := range wch {
			now := time.Now()
			for _, ev := range wr.Events {
				got <- stamped{string(ev.Kv.Key), now}
			}
		}
	}()
	defer wg.Wait()
	defer cancel()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		probe := &api.Node{Cluster: "c1", Name: "probe", Zone: fmt.Sprintf("bare%d-%d", b.N, i),
			Addresses: []netip.Addr{netip.MustParseAddr("10.255.0.1")}}
		value, err := probe.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := admin.Etcd().Put(ctx, key, string(value)); err != nil {
			b.Fatal(err)
		}
		ev := <-got
		lat = append(lat, ev.at.Sub(start))
	}
	b.StopTimer()
	report(b, lat)
}

func drain(ch <-chan stamped) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(float64(len(lat)-1)*p)].Microseconds())
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
	b.ReportMetric(0, "ns/op")
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
			_, err = admin.Etcd().Put(ctx, n.Key(), string(v))
			return err
		})
	})
}
