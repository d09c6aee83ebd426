package kvstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// env is one cluster's store with an admin client for the writer (and for
// the test's own interference) and a remote client for readers, optionally
// through a proxy the test can cut.
type env struct {
	pki      *testPKI
	dataDir  string
	srv      *Server
	admin    *Client
	remote   *Client
	proxy    *proxy
	endpoint string
	metrics  *Metrics
}

func newEnv(t *testing.T, viaProxy bool) *env {
	e := &env{pki: newTestPKI(t), dataDir: t.TempDir()}
	var err error
	if e.metrics, err = NewMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	e.srv = startServer(t, e.pki.serverConfig(e.dataDir, ""))
	// Close whichever server runs at the end, after every client (cleanups
	// run last-in first-out): open watches slow a server's shutdown down.
	t.Cleanup(func() { e.srv.Close() })
	e.endpoint = e.srv.Endpoint()
	e.admin = newClient(t, e.pki.clientConfig(e.endpoint, UserAdmin))
	readerEndpoint := e.endpoint
	if viaProxy {
		e.proxy = newProxy(t, hostPort(e.endpoint))
		readerEndpoint = e.proxy.endpoint()
	}
	e.remote = newClient(t, e.pki.clientConfig(readerEndpoint, UserRemote))
	return e
}

func (e *env) newWriter(t *testing.T, opts *WriterOptions) (*Writer, context.CancelFunc) {
	if opts == nil {
		opts = &WriterOptions{}
	}
	opts.Logger = testLogger(t)
	opts.Metrics = e.metrics
	w, err := NewWriter(e.admin, "c1", opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	stop := func() {
		cancel()
		<-done
		w.Close()
	}
	t.Cleanup(stop)
	return w, stop
}

// storeCount is the number of node keys in the store.
func (e *env) storeCount(t *testing.T) int64 {
	resp, err := e.admin.cli.Get(context.Background(), api.ClusterPrefix(api.KindNode, "c1"), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func (e *env) newReader(t *testing.T) *Reader {
	r := NewReader(e.remote, "c1", &ReaderOptions{Logger: testLogger(t), MaxBackoff: time.Second, Metrics: e.metrics})
	// Small pages, so that every listing of these tests spans several.
	r.pageSize = 3
	return r
}

// TestReaderFollowsWriter covers the plain path: initial listing, synced
// only after the canary, changes, deletes, and a malformed value that is
// reported and skipped without stopping anything else.
func TestReaderFollowsWriter(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	w, _ := e.newWriter(t, &WriterOptions{MaxKeysPerLease: 3})
	tr := truth{}
	for i := range 5 {
		tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
	}
	v := watchView(t, e.newReader(t), api.KindNode)
	waitConverged(t, v, tr)
	if v.isSynced() {
		t.Fatal("synced reported before the writer's canary")
	}
	// A second writer's service listing must not be affected by nodes.
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	eventually(t, "synced", v.isSynced)

	for i := 5; i < 8; i++ {
		tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
	}
	tr.upsert(t, ctx, w, testNode("n1", 100))
	tr.delete(t, ctx, w, api.NodeKey("c1", "n0"))
	waitConverged(t, v, tr)

	// A peer writing garbage (here: the admin behind the writer's back).
	bad := api.NodeKey("c1", "bad")
	if _, err := e.admin.cli.Put(ctx, bad, "\xff\xffnot a node"); err != nil {
		t.Fatal(err)
	}
	tr.upsert(t, ctx, w, testNode("n9", 9))
	waitConverged(t, v, tr)
	eventually(t, "error event", func() bool { return v.count(EventError) == 1 })
	v.mu.Lock()
	for _, ev := range v.events {
		if ev.Type == EventError && (ev.Key != bad || ev.Err == nil || !strings.Contains(ev.Err.Error(), bad)) {
			t.Errorf("error event %+v does not name key %s", ev, bad)
		}
	}
	v.mu.Unlock()

	// Unchanged values are not written again.
	before, err := e.admin.cli.Get(ctx, api.NodeKey("c1", "n2"))
	if err != nil {
		t.Fatal(err)
	}
	tr.upsert(t, ctx, w, testNode("n2", 2))
	after, err := e.admin.cli.Get(ctx, api.NodeKey("c1", "n2"))
	if err != nil {
		t.Fatal(err)
	}
	if before.Kvs[0].ModRevision != after.Kvs[0].ModRevision {
		t.Errorf("unchanged upsert rewrote the key: mod revision %d -> %d", before.Kvs[0].ModRevision, after.Kvs[0].ModRevision)
	}
	if got := counterValue(t, e.metrics.writes.WithLabelValues("c1", "unchanged")); got != 1 {
		t.Errorf("unchanged writes metric = %v, want 1", got)
	}
	if got := counterValue(t, e.metrics.events.WithLabelValues("c1", "nodes", "error")); got != 1 {
		t.Errorf("error events metric = %v, want 1", got)
	}
	// At most MaxKeysPerLease keys per lease.
	leases, err := e.admin.cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Leases {
		ttl, err := e.admin.cli.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatal(err)
		}
		if len(ttl.Keys) > 3 {
			t.Errorf("lease %x holds %d keys, want at most 3", l.ID, len(ttl.Keys))
		}
	}
	if got := v.deletes(); !slices.Equal(got, []string{api.NodeKey("c1", "n0")}) {
		t.Errorf("deletes = %v, want only n0", got)
	}
}

func TestWriterRefusesForeignKeys(t *testing.T) {
	e := newEnv(t, false)
	w, _ := e.newWriter(t, nil)
	ctx := context.Background()
	tests := []struct {
		name string
		err  error
		do   func() error
	}{
		{"other cluster's node", ErrNotOwned, func() error {
			n := testNode("n1", 1)
			n.Cluster = "c2"
			return w.Upsert(ctx, n)
		}},
		{"other cluster's key", ErrNotOwned, func() error { return w.Delete(ctx, api.NodeKey("c2", "n1")) }},
		{"canary", ErrNotOwned, func() error { return w.Delete(ctx, api.SyncedKey("c1", api.KindNode)) }},
		{"outside the prefix", ErrNotOwned, func() error { return w.Delete(ctx, "foo/bar") }},
		{"invalid object", api.ErrInvalid, func() error { return w.Upsert(ctx, &api.Node{Cluster: "c1", Name: "Bad Name"}) }},
		{"mark synced cluster kind", ErrInvalidKind, func() error { return w.MarkSynced(ctx, api.KindCluster) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
}

// TestServerRestartUnderReader restarts etcd while a reader watches, and
// changes the store after the restart.
func TestServerRestartUnderReader(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	w, _ := e.newWriter(t, nil)
	r := e.newReader(t)
	tr := truth{}
	for i := range 10 {
		tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
	}
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	v := watchView(t, r, api.KindNode)
	waitConverged(t, v, tr)
	eventually(t, "synced", v.isSynced)
	eventually(t, "connected status", func() bool { return r.Status().Connected })

	var err error
	t.Logf("%s stopping etcd", time.Now().Format("05.000"))
	e.srv.Close()
	t.Logf("%s stopped etcd", time.Now().Format("05.000"))
	eventually(t, "disconnected status", func() bool { s := r.Status(); return !s.Connected })
	// While the store is down the reader keeps what it had.
	if !v.equals(tr) {
		t.Fatalf("view changed while the store was down: %s", v.diff(tr))
	}
	t.Logf("%s starting etcd", time.Now().Format("05.000"))
	e.srv, err = StartServer(ctx, e.pki.serverConfig(e.dataDir, e.endpoint))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s started etcd", time.Now().Format("05.000"))

	tr.upsert(t, ctx, w, testNode("n3", 33))
	tr.upsert(t, ctx, w, testNode("n10", 10))
	tr.delete(t, ctx, w, api.NodeKey("c1", "n4"))
	waitConverged(t, v, tr)
	eventually(t, "connected status after restart", func() bool { return r.Status().Connected && r.Err() == nil })
}

// TestCompactionWhileAway makes a reader miss changes (its connection is
// cut), compacts the store past them, and reconnects it: the reader must
// re-list and emit deletes for what vanished meanwhile.
func TestCompactionWhileAway(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	w, _ := e.newWriter(t, nil)
	r := e.newReader(t)
	tr := truth{}
	for i := range 10 {
		tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
	}
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	v := watchView(t, r, api.KindNode)
	waitConverged(t, v, tr)
	eventually(t, "synced", v.isSynced)

	e.proxy.setCut(true)
	eventually(t, "disconnected status", func() bool { return !r.Status().Connected })
	for i := range 3 {
		tr.delete(t, ctx, w, api.NodeKey("c1", fmt.Sprintf("n%d", i)))
	}
	tr.upsert(t, ctx, w, testNode("n5", 55))
	tr.upsert(t, ctx, w, testNode("n20", 20))
	resp, err := e.admin.cli.Get(ctx, "compact-marker")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	e.proxy.setCut(false)
	waitConverged(t, v, tr)
	want := []string{api.NodeKey("c1", "n0"), api.NodeKey("c1", "n1"), api.NodeKey("c1", "n2")}
	if got := v.deletes(); !slices.Equal(got, want) {
		t.Errorf("deletes = %v, want %v", got, want)
	}
	if r.Status().Relists == 0 {
		t.Error("reader did not re-list")
	}
}

// TestLeaseLoss loses the writer's leases in both ways it happens: expiry
// while nobody keeps them alive, and revocation. The writer must re-create
// them and rewrite what they held.
func TestLeaseLoss(t *testing.T) {
	tests := []struct {
		name string
		// allLost: every lease is found lost in one round, so the canary
		// must be rewritten after every key (revocations one by one may
		// be noticed one round at a time).
		allLost bool
		lose    func(t *testing.T, e *env, w *Writer, v *view, startRun func())
	}{
		{"expired", true, func(t *testing.T, e *env, w *Writer, v *view, startRun func()) {
			// Run is not running: the leases expire after their TTL.
			eventually(t, "keys to expire", func() bool { return e.storeCount(t) == 0 })
			startRun()
		}},
		{"revoked", false, func(t *testing.T, e *env, w *Writer, v *view, startRun func()) {
			startRun()
			ctx := context.Background()
			leases, err := e.admin.cli.Leases(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range leases.Leases {
				if _, err := e.admin.cli.Revoke(ctx, l.ID); err != nil {
					t.Fatal(err)
				}
			}
			eventually(t, "keys to be rewritten", func() bool { return e.storeCount(t) == 10 })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, false)
			ctx := context.Background()
			w, err := NewWriter(e.admin, "c1", &WriterOptions{LeaseTTL: 2 * time.Second, MaxKeysPerLease: 4, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			started := false
			startRun := func() {
				started = true
				go func() {
					defer close(done)
					w.Run(runCtx)
				}()
			}
			t.Cleanup(func() {
				cancel()
				if started {
					<-done
				}
				w.Close()
			})
			tr := truth{}
			// The first key goes before the canary and the rest after it,
			// so the canary's lease is neither the first nor the last made:
			// its rewrite must still come after every key's.
			tr.upsert(t, ctx, w, testNode("n0", 0))
			if err := w.MarkSynced(ctx, api.KindNode); err != nil {
				t.Fatal(err)
			}
			for i := 1; i < 10; i++ {
				tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
			}
			v := watchView(t, e.newReader(t), api.KindNode)
			waitConverged(t, v, tr)

			tt.lose(t, e, w, v, startRun)
			// The canary comes back after the rest.
			eventually(t, "canary to be rewritten", func() bool {
				resp, err := e.admin.cli.Get(ctx, api.SyncedKey("c1", api.KindNode))
				return err == nil && len(resp.Kvs) == 1
			})
			canary, _, err := e.admin.Get(ctx, api.SyncedKey("c1", api.KindNode))
			if err != nil {
				t.Fatal(err)
			}
			keys, err := e.admin.List(ctx, api.ClusterPrefix(api.KindNode, "c1"), ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.allLost {
				keys = nil
			}
			if tt.allLost && len(keys) != 10 {
				t.Errorf("%d keys present when the canary came back, want 10", len(keys))
			}
			for _, kv := range keys {
				if kv.ModRevision > canary.ModRevision {
					t.Errorf("%s rewritten at revision %d, after the canary (%d)", kv.Key, kv.ModRevision, canary.ModRevision)
				}
			}
			waitConverged(t, v, tr)
			// And the writer still writes.
			tr.upsert(t, ctx, w, testNode("n11", 11))
			waitConverged(t, v, tr)
		})
	}
}

// TestWriterRestart kills the writer and starts a new one that re-exports
// only part of the old state, while the reader is away and comes back in
// the middle: the reader must not prune before the new writer's canary, and
// must prune exactly the rest after it.
func TestWriterRestart(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	w1, stop1 := e.newWriter(t, &WriterOptions{LeaseTTL: 2 * time.Second})
	r := e.newReader(t)
	tr := truth{}
	for i := range 10 {
		tr.upsert(t, ctx, w1, testNode(fmt.Sprintf("n%d", i), i))
	}
	if err := w1.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	v := watchView(t, r, api.KindNode)
	waitConverged(t, v, tr)
	eventually(t, "synced", v.isSynced)

	e.proxy.setCut(true)
	stop1() // killed: nobody keeps its leases alive any more
	w2, _ := e.newWriter(t, nil)
	tr2 := truth{}
	for i := range 5 {
		tr2.upsert(t, ctx, w2, testNode(fmt.Sprintf("n%d", i), i))
	}
	tr2.upsert(t, ctx, w2, testNode("n10", 10))
	// The first writer's keys that the second did not take over expire.
	eventually(t, "old leases to expire", func() bool {
		resp, err := e.admin.cli.Get(ctx, api.ClusterPrefix(api.KindNode, "c1"), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == int64(len(tr2))
	})

	e.proxy.setCut(false)
	// The re-listing shows n10; a marker written after it orders every event
	// of that re-listing before it.
	tr2.upsert(t, ctx, w2, testNode("n11", 11))
	eventually(t, "re-listed view", func() bool { return v.has(api.NodeKey("c1", "n11")) })
	if d := v.deletes(); len(d) != 0 {
		t.Fatalf("reader pruned %v before the new writer's canary", d)
	}
	for i := 5; i < 10; i++ {
		if !v.has(api.NodeKey("c1", fmt.Sprintf("n%d", i))) {
			t.Fatalf("n%d pruned before the new writer's canary", i)
		}
	}

	if err := w2.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, v, tr2)
	var want []string
	for i := 5; i < 10; i++ {
		want = append(want, api.NodeKey("c1", fmt.Sprintf("n%d", i)))
	}
	if got := v.deletes(); !slices.Equal(got, want) {
		t.Errorf("deletes = %v, want %v", got, want)
	}
}

// TestMarkSyncedPrunesLeftovers restarts a writer whose predecessor's keys
// are still alive: MarkSynced deletes the ones not re-exported.
func TestMarkSyncedPrunesLeftovers(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	w1, stop1 := e.newWriter(t, nil)
	for i := range 6 {
		if err := w1.Upsert(ctx, testNode(fmt.Sprintf("n%d", i), i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w1.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	stop1()
	v := watchView(t, e.newReader(t), api.KindNode)
	eventually(t, "synced", v.isSynced)

	w2, _ := e.newWriter(t, nil)
	tr := truth{}
	tr.upsert(t, ctx, w2, testNode("n1", 1))
	tr.upsert(t, ctx, w2, testNode("n4", 44))
	// The first writer's canary is gone as soon as the second writes.
	resp, err := e.admin.cli.Get(ctx, api.SyncedKey("c1", api.KindNode))
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("old canary still present: %v, %v", resp, err)
	}
	if err := w2.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, v, tr)
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestDeadWriterKeepsState lets a dead writer's leases expire under a
// connected reader. The canaries expire first (their lease has half the
// TTL), so the reader holds back every delete and keeps the cluster's last
// state until a new writer has re-exported and marked it synced.
func TestDeadWriterKeepsState(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	w1, stop1 := e.newWriter(t, &WriterOptions{LeaseTTL: 6 * time.Second})
	tr := truth{}
	for i := range 6 {
		tr.upsert(t, ctx, w1, testNode(fmt.Sprintf("n%d", i), i))
	}
	if err := w1.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	v := watchView(t, e.newReader(t), api.KindNode)
	waitConverged(t, v, tr)
	eventually(t, "synced", v.isSynced)

	stop1()
	eventually(t, "the dead writer's keys to expire", func() bool { return e.storeCount(t) == 0 })

	w2, _ := e.newWriter(t, nil)
	tr2 := truth{}
	tr2.upsert(t, ctx, w2, testNode("n0", 100))
	// Events are ordered: once n0's new value is seen, any delete of the
	// expiry would have been seen too.
	eventually(t, "new writer's first object", func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		return string(v.objs[api.NodeKey("c1", "n0")]) == string(tr2[api.NodeKey("c1", "n0")])
	})
	if d := v.deletes(); len(d) != 0 {
		t.Fatalf("reader pruned %v after the writer died", d)
	}
	if err := w2.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, v, tr2)
}

// TestChurn interleaves random writes with the reader's connection being cut
// and restored, compactions and lease revocations, then checks that the
// reader ends on the writer's truth.
func TestChurn(t *testing.T) {
	e := newEnv(t, true)
	ctx := context.Background()
	w, _ := e.newWriter(t, &WriterOptions{MaxKeysPerLease: 5})
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	tr := truth{}
	for i := range 20 {
		tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i))
	}
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	v := watchView(t, e.newReader(t), api.KindNode)
	waitConverged(t, v, tr)
	cut := false
	for round := range 40 {
		for range 1 + rng.IntN(5) {
			i := rng.IntN(30)
			key := api.NodeKey("c1", fmt.Sprintf("n%d", i))
			if _, ok := tr[key]; ok && rng.IntN(3) == 0 {
				tr.delete(t, ctx, w, key)
			} else {
				tr.upsert(t, ctx, w, testNode(fmt.Sprintf("n%d", i), i*1000+round))
			}
		}
		switch rng.IntN(6) {
		case 0:
			cut = !cut
			e.proxy.setCut(cut)
		case 1:
			resp, err := e.admin.cli.Get(ctx, "compact-marker")
			if err != nil {
				t.Fatal(err)
			}
			// Nothing written since the last compaction compacts the
			// same revision again, which etcd refuses as compacted.
			if _, err := e.admin.cli.Compact(ctx, resp.Header.Revision); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
				t.Fatal(err)
			}
		case 2:
			leases, err := e.admin.cli.Leases(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(leases.Leases) > 0 {
				l := leases.Leases[rng.IntN(len(leases.Leases))]
				if _, err := e.admin.cli.Revoke(ctx, l.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
	}
	e.proxy.setCut(false)
	// Revoked leases are re-created by Run; wait for the store itself first.
	eventually(t, "store to hold the writer's truth", func() bool { return e.storeCount(t) == int64(len(tr)) })
	waitConverged(t, v, tr)
}

// TestWatchToSharedChannel follows two kinds into one channel (as a
// peer's follower does): both kinds' objects and synced events arrive, and
// the watches stop once their context ends, with nobody receiving.
func TestWatchToSharedChannel(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	w, _ := e.newWriter(t, nil)
	svc := &api.Service{Cluster: "c1", ClusterID: 1, Namespace: "ns", Name: "web", Global: true, Shared: true}
	for _, obj := range []api.Object{testNode("n1", 1), svc} {
		if err := w.Upsert(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []api.Kind{api.KindNode, api.KindService} {
		if err := w.MarkSynced(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r := e.newReader(t)
	events := make(chan Event) // unbuffered: the watches wait for the receiver
	var dones []<-chan struct{}
	for _, k := range []api.Kind{api.KindNode, api.KindService} {
		dones = append(dones, r.WatchTo(wctx, k, events))
	}
	want := map[string]bool{api.NodeKey("c1", "n1"): true, svc.Key(): true, "synced " + string(api.KindNode): true, "synced " + string(api.KindService): true}
	for len(want) > 0 {
		select {
		case ev := <-events:
			what := ev.Key
			if ev.Type == EventSynced {
				what = "synced " + string(ev.Kind)
			}
			if !want[what] {
				t.Fatalf("unexpected event %s %s %q", ev.Type, ev.Kind, ev.Key)
			}
			delete(want, what)
		case <-time.After(time.Minute):
			t.Fatalf("still waiting for %v", want)
		}
	}
	// One more change is pending in a watch when the context ends: it is
	// dropped, and the watch stops without anyone receiving it.
	if err := w.Upsert(ctx, testNode("n1", 2)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	for _, done := range dones {
		select {
		case <-done:
		case <-time.After(time.Minute):
			t.Fatal("watch still running a minute after its context ended")
		}
	}
}
