package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/meshcache"
)

// TestCachedPeers runs the mesh cache between two real stores and an agent
// that follows its peer only through its own cluster's store: the peer's
// objects reach the agent with the peer's store unreachable to the agent
// from the start, an object the peer may not claim never enters the copy,
// the copy follows the peer's changes, stays while the peer is
// unreachable, and is purged after the drain grace once the peer is
// disconnected.
func TestCachedPeers(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c1.Upsert(c1.Service("ns", "web", vip(1, 1)), c1.Service("ns", "stolen", vip(1, 2)))
	c1.MarkSynced()
	c2.Upsert(
		c2.Node("node-a", "192.168.2.1", "10.2.0.0/24"),
		c2.Service("ns", "web", vip(2, 1)),
		c2.Slice("ns", "web", "s1", ips(cidr2, 1, 2)...),
		// c2 claims an address of c1's pod CIDR: refused by the cache.
		c2.Service("ns", "stolen", vip(2, 2)),
		c2.Slice("ns", "stolen", "s1", ips(cidr1, 7, 7)...),
	)
	c2.MarkSynced()

	cacheDir := t.TempDir()
	c1.WriteConnFile(cacheDir, "c1", kvstore.UserAdmin)
	c2.WriteConnFile(cacheDir, "c2", kvstore.UserRemote)
	reg := prometheus.NewRegistry()
	mc, err := meshcache.New(meshcache.Config{Cluster: "c1", Local: c1.InProcessClient(), ClustersDir: cacheDir,
		DirPoll: 100 * time.Millisecond, DrainGrace: time.Second, Registerer: reg, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("cache Run: %v", err)
		}
	})

	local := c1.Admin()
	has := func(key string) bool {
		_, ok, err := local.Get(context.Background(), key)
		return err == nil && ok
	}
	waitTrue(t, "c2's copy with its canaries in c1's store", func() bool {
		return has(api.ClusterKey("c2")) && has(api.ServiceKey("c2", "ns", "web")) &&
			has(api.SyncedKey("c2", api.KindEndpoints)) && has(api.SyncedKey("c2", api.KindService))
	})
	// The cache reports each peer as the agents do, under its own names.
	waitTrue(t, "clustermesh_meshcache_cluster_synced{cluster=c2} = 1", func() bool {
		return gauge(t, reg, "clustermesh_meshcache_cluster_synced", "c2") == 1
	})
	if n := gauge(t, reg, "clustermesh_meshcache_peer_refused_total", "c2"); n < 1 {
		t.Errorf("refusals of c2 counted: %v, want at least the stolen address", n)
	}

	// What the cache admitted is what it copied: the slice without the
	// address c2 may not claim.
	waitTrue(t, "c2's stolen slice copied reduced", func() bool {
		key := api.EndpointSliceKey("c2", "ns", "stolen", "s1")
		kv, ok, err := local.Get(context.Background(), key)
		if err != nil || !ok {
			return false
		}
		obj, err := api.Decode(key, kv.Value)
		if err != nil {
			t.Fatalf("copied slice: %v", err)
		}
		if n := len(obj.(*api.EndpointSlice).Endpoints); n != 0 {
			t.Fatalf("copied slice keeps %d endpoints claiming c1's pod addresses", n)
		}
		return true
	})

	// The agent reaches c2 only through c1's store: c2's own store is
	// blocked for the agent (its connection file points at c2's relay).
	c2.Block()
	a := startAgentWith(t, meshtest.NewRecorder(), func(cfg *agent.Config) { cfg.PeersViaLocalStore = true }, "n1", c1, c2)
	a.dp.WaitView(t, meshtest.Frontend(vip(1, 1)), meshtest.Backends(ips(cidr2, 1, 2), nil), wait)
	if got := a.dp.View(meshtest.Frontend(vip(1, 2))); strings.Contains(got, ips(cidr1, 7, 7)[0]) {
		t.Errorf("refused backend programmed from the copy: %s", got)
	}
	c2.Unblock()

	// Changes of the peer follow; an outage keeps the last copy.
	c2.Upsert(c2.Slice("ns", "web", "s1", ips(cidr2, 1, 3)...))
	a.dp.WaitView(t, meshtest.Frontend(vip(1, 1)), meshtest.Backends(ips(cidr2, 1, 3), nil), wait)
	c2.Block()
	time.Sleep(2 * time.Second) // several probe intervals of the cache's follower
	if !has(api.ServiceKey("c2", "ns", "web")) {
		t.Fatal("c2's copy was dropped while c2 was unreachable")
	}
	a.dp.WaitView(t, meshtest.Frontend(vip(1, 1)), meshtest.Backends(ips(cidr2, 1, 3), nil), wait)
	c2.Unblock()

	// Disconnect: the copy goes once the drain grace is over, canaries
	// and config included.
	if err := os.Remove(filepath.Join(cacheDir, "c2")); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "c2's copy purged after the drain grace", func() bool {
		kvs, err := local.List(context.Background(), api.KeyPrefix, kvstore.ListOptions{KeysOnly: true})
		if err != nil {
			return false
		}
		for _, kv := range kvs {
			if pk, err := api.ParseKey(kv.Key); err == nil && pk.Cluster == "c2" {
				return false
			}
		}
		return true
	})
}

func waitTrue(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gauge sums the samples of a metric family whose cluster label is cluster.
func gauge(t *testing.T, g prometheus.Gatherer, name, cluster string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cluster" && l.GetValue() == cluster {
					sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
