package meshcache_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/kvstoretest"
	"github.com/clustermesh/clustermesh/meshcache"
)

// BenchmarkScale runs one mesh of real stores (embedded etcd, one per
// simulated cluster) with a synthetic export per cluster and many
// lightweight agents per cluster (the agents' own follower, package remote,
// with a delegate that holds every object as an agent's maps would, and no
// datapath), in direct mode (each agent follows each peer's store) and
// cached mode (each cluster's mesh cache follows the peers, agents follow
// the local store), side by side, and reports per mode:
//
//   - conns/store: client connections each store serves through the agents'
//     path (peer followers, local followers), mean over the stores;
//   - sync-ms: time from the agents' start to every agent having every
//     peer's every kind synced (all agents at once, as after a mesh-wide
//     restart);
//   - cache-sync-ms (cached): time for every cache to copy every peer,
//     from a cold start of the whole mesh, before the agents start;
//   - join-sync-ms: the same for one more agent once the mesh is up (a
//     new node, a restarted agent);
//   - newcluster-sync-ms, newcluster-seen-ms: once the mesh is up and
//     measured, one more cluster (its store with the same synthetic
//     export, its agents, in cached mode its cache) connects, as the
//     product connects it: its file is added to every existing cache's
//     clusters directory (cached), its agents start with every peer and
//     every existing agent follows it. -sync is the time from the connect
//     to the new cluster's agents having every peer's every kind synced
//     (in cached mode through the new cache's copy of every peer), -seen
//     to every existing agent having the new cluster synced (cached:
//     through every existing cache's copy of it). In cached mode,
//     newcluster-cache-sync-ms and -cache-seen-ms are the caches' copies
//     alone; the agents' followers, which find no config of the peer in
//     their store until its cache copied it, retry with their backoff
//     meanwhile, as an agent's do. The caches rescan their directories
//     every cacheDirPoll (the apiserver's default is 2 s) and the agents
//     here add the peer at once (an agent rescans its directory every
//     1 s): the figures leave the product's polls out, and a Secret
//     volume's update.
//     newcluster-store-cpu-ms and -process-cpu-ms: what the join cost;
//   - prop-p50-ms / prop-p99-ms: an endpoint slice written in cluster 0 →
//     seen by an agent of cluster 1, propWrites writes one after another;
//     in cached mode, paired-direct-p50-ms / -p99-ms: the same writes
//     seen by a follower in cluster 1 reading cluster 0's store directly,
//     at the same moments (SCALE_PROFILE_DIR=dir writes the CPU profile of
//     these writes per mode);
//   - B/remote-endpoint: heap held by the followers per remote endpoint
//     held (all agents together, after a GC);
//   - cache-sync-store-cpu-ms, sync-store-cpu-ms: the CPU all stores spent
//     on the caches' copy and on the agents' sync (profiled: see
//     storeCPU), sync-process-cpu-ms the whole process's;
//   - per write in cluster 0 (churnWrites slices, until every agent of
//     every other cluster holds them): store-writes/write (keys put or
//     deleted in every store), store-put-B/write (their keys' and values'
//     bytes), watch-events/write (events every store sent), store-sent-B/
//     write (bytes every store sent its clients), store-cpu-us/write and
//     process-cpu-us/write. Direct mode writes once and sends one event
//     per agent of the other clusters; cached mode writes 1 + (C−1) times
//     (each cache's copy) and sends C−1 events to the caches plus one per
//     agent: the write amplification the cache pays for the fan-in.
//
// Run: go test -run '^$' -bench BenchmarkScale -benchtime 1x -v ./meshcache/
// (SCALE_CLUSTERS, SCALE_AGENTS per cluster, SCALE_ENDPOINTS per cluster;
// defaults 4, 10, 2000).
func BenchmarkScale(b *testing.B) {
	clusters, agents, endpoints := envInt("SCALE_CLUSTERS", 4), envInt("SCALE_AGENTS", 10), envInt("SCALE_ENDPOINTS", 2000)
	for _, mode := range []string{"direct", "cached"} {
		b.Run(fmt.Sprintf("%s/clusters=%d/agents=%d/endpoints=%d", mode, clusters, agents, endpoints), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runScale(b, mode == "cached", clusters, agents, endpoints)
			}
		})
	}
}

// churnWrites is how many writes in c1 the store cost per write is
// averaged over.
const churnWrites = 200

// propWrites is how many writes in c1 the propagation percentiles are
// taken over, one after another (the p99 of 200 is the second slowest).
const propWrites = 200

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// holder is a lightweight agent's delegate for one peer: it keeps every
// object (as the agent's maps do) and tells when kinds are synced and when
// a watched key arrives.
type holder struct {
	mu      sync.Mutex
	objs    map[string]api.Object
	synced  map[api.Kind]bool
	watch   string
	arrived chan struct{}
	at      time.Time
}

func newHolder() *holder {
	return &holder{objs: map[string]api.Object{}, synced: map[api.Kind]bool{}}
}

func (h *holder) ClusterAccepted(*api.Cluster) {}
func (h *holder) Upsert(_ string, obj api.Object) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.objs[obj.Key()] = obj
	if h.watch != "" && obj.Key() == h.watch {
		h.watch, h.at = "", time.Now()
		close(h.arrived)
	}
}
func (h *holder) Delete(_ string, key api.ParsedKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.objs, key.Key)
}
func (h *holder) Synced(_ string, kind api.Kind) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced[kind] = true
}
func (h *holder) Drain(string) {}

func (h *holder) allSynced() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range remote.Kinds {
		if !h.synced[k] {
			return false
		}
	}
	return true
}

// watchArrivals watches prefix on a store and returns a lookup of when
// each key was first seen (waiting up to timeout for it).
func watchArrivals(ctx context.Context, b *testing.B, cli *clientv3.Client, prefix string) func(key string, timeout time.Duration) (time.Time, bool) {
	b.Helper()
	var mu sync.Mutex
	at := map[string]time.Time{}
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	if resp, ok := <-wch; !ok || !resp.Created {
		b.Fatalf("watch %s: not created", prefix)
	}
	go func() {
		for resp := range wch {
			now := time.Now()
			mu.Lock()
			for _, ev := range resp.Events {
				if _, ok := at[string(ev.Kv.Key)]; !ok {
					at[string(ev.Kv.Key)] = now
				}
			}
			mu.Unlock()
		}
	}()
	return func(key string, timeout time.Duration) (time.Time, bool) {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			mu.Lock()
			t, ok := at[key]
			mu.Unlock()
			if ok {
				return t, true
			}
			time.Sleep(time.Millisecond)
		}
		return time.Time{}, false
	}
}

// holdsAll tells whether every key is held.
func (h *holder) holdsAll(keys []string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range keys {
		if _, ok := h.objs[k]; !ok {
			return false
		}
	}
	return true
}

// arrivedAt is when the key expected last arrived.
func (h *holder) arrivedAt() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.at
}

// expect arms the holder to signal when key arrives.
func (h *holder) expect(key string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.watch, h.arrived = key, make(chan struct{})
	return h.arrived
}

// cacheDirPoll is how often the benchmark's caches rescan their clusters
// directory (the apiserver's default is 2 s): a new cluster's file is
// noticed within it, so a join's figures carry at most this much of the
// poll.
const cacheDirPoll = 100 * time.Millisecond

// scaleMesh is the benchmark's mesh as it is built: its clusters, and in
// cached mode their caches, and their agents.
type scaleMesh struct {
	b          *testing.B
	ctx        context.Context
	wg         *sync.WaitGroup
	m          *meshtest.Mesh
	dir        string
	cached     bool
	nEndpoints int
	// confs are the connection configs written so far, by file name.
	confs map[string]kvstore.Config
	cs    []*meshtest.Cluster
	// agents are every cluster's agents, by cluster name.
	agents map[string][]*scaleAgent
}

// scaleAgent is a lightweight agent: one follower per peer, sharing the
// agent's registry and store clients.
type scaleAgent struct {
	c      *meshtest.Cluster
	reg    *remote.Registry
	shared *kvstore.Shared
	// peers are the followers' delegates, by peer name.
	peers map[string]*holder
}

// conf is the connection config of c's store for user, through its relay.
func (s *scaleMesh) conf(c *meshtest.Cluster, user string) kvstore.Config {
	s.b.Helper()
	name := c.Name + "-" + user
	if cfg, ok := s.confs[name]; ok {
		return cfg
	}
	c.WriteConnFile(s.dir, name, user)
	cfg, err := kvstore.LoadConfig(filepath.Join(s.dir, name))
	if err != nil {
		s.b.Fatal(err)
	}
	s.confs[name] = cfg
	return cfg
}

// addCluster starts one more cluster's store with its synthetic export,
// synced: nEndpoints pods in slices of 10, one service per slice, one node
// per 200 pods (at most 250). Nobody follows it yet.
func (s *scaleMesh) addCluster() *meshtest.Cluster {
	s.b.Helper()
	i := len(s.cs)
	cidr := fmt.Sprintf("10.%d.0.0/16", i+1)
	c := s.m.AddCluster(fmt.Sprintf("c%d", i+1), uint32(i+1), cidr)
	var objs []api.Object
	for sl := 0; sl*10 < s.nEndpoints; sl++ {
		var ips []string
		for e := 0; e < 10 && sl*10+e < s.nEndpoints; e++ {
			ips = append(ips, meshtest.IP(cidr, sl*10+e))
		}
		name := fmt.Sprintf("svc-%d", sl)
		objs = append(objs, c.Service("ns", name, fmt.Sprintf("10.96.%d.%d", sl/250, sl%250+1)), c.Slice("ns", name, "s1", ips...))
	}
	for n := 0; n*200 < s.nEndpoints && n < 250; n++ {
		objs = append(objs, c.Node(fmt.Sprintf("node-%d", n), fmt.Sprintf("192.168.%d.%d", i+1, n+1), fmt.Sprintf("10.%d.%d.0/24", i+1, n)))
	}
	c.Upsert(objs...)
	c.MarkSynced()
	s.cs = append(s.cs, c)
	return c
}

func (s *scaleMesh) cacheDir(c *meshtest.Cluster) string {
	return filepath.Join(s.dir, "cache-"+c.Name)
}

// startCache runs c's mesh cache, its clusters directory listing every
// other cluster of the mesh.
func (s *scaleMesh) startCache(c *meshtest.Cluster) {
	s.b.Helper()
	if err := os.MkdirAll(s.cacheDir(c), 0o700); err != nil {
		s.b.Fatal(err)
	}
	for _, p := range s.cs {
		if p != c {
			s.connectCache(c, p)
		}
	}
	// The cache writes through its store's in-process client, as the
	// clustermesh-apiserver that embeds the store has it do.
	mc, err := meshcache.New(meshcache.Config{Cluster: c.Name, Local: c.InProcessClient(), ClustersDir: s.cacheDir(c), DirPoll: cacheDirPoll})
	if err != nil {
		s.b.Fatal(err)
	}
	s.wg.Add(1)
	go func() { defer s.wg.Done(); _ = mc.Run(s.ctx) }()
}

// connectCache adds peer p's connection file to c's cache's directory, in
// one rename (as a Secret volume is updated): a scan never reads half of
// it.
func (s *scaleMesh) connectCache(c, p *meshtest.Cluster) {
	s.b.Helper()
	// A name with a dot is not a connection file: scans skip it.
	p.WriteConnFile(s.cacheDir(c), p.Name+".new", kvstore.UserRemote)
	if err := os.Rename(filepath.Join(s.cacheDir(c), p.Name+".new"), filepath.Join(s.cacheDir(c), p.Name)); err != nil {
		s.b.Fatal(err)
	}
}

// cacheCopied tells whether c's store holds every synced canary of its
// cache's copy of p.
func cacheCopied(ctx context.Context, c, p *meshtest.Cluster) bool {
	for _, k := range api.SyncedKinds {
		if _, ok, err := c.Admin().Get(ctx, api.SyncedKey(p.Name, k)); err != nil || !ok {
			return false
		}
	}
	return true
}

// cachesCopied is a condition that holds once every cache of the clusters
// cs has copied every peer of peers (each pair is checked until it holds,
// then no more).
func cachesCopied(ctx context.Context, cs, peers []*meshtest.Cluster) func() bool {
	type pair struct{ c, p *meshtest.Cluster }
	var left []pair
	for _, c := range cs {
		for _, p := range peers {
			if p != c {
				left = append(left, pair{c, p})
			}
		}
	}
	return func() bool {
		for len(left) > 0 && cacheCopied(ctx, left[0].c, left[0].p) {
			left = left[1:]
		}
		return len(left) == 0
	}
}

// startAgent runs one more agent of cluster c, following every other
// cluster of the mesh.
func (s *scaleMesh) startAgent(c *meshtest.Cluster) *scaleAgent {
	s.b.Helper()
	a := &scaleAgent{c: c, reg: remote.NewRegistry(), shared: kvstore.NewShared(), peers: map[string]*holder{}}
	if err := a.reg.Claim(&c.Config, true, nil); err != nil {
		s.b.Fatal(err)
	}
	for _, p := range s.cs {
		if p != c {
			s.follow(a, p)
		}
	}
	s.agents[c.Name] = append(s.agents[c.Name], a)
	return a
}

// follow has agent a follow peer p: through p's store in direct mode,
// through its own cluster's store (the cache's copy) in cached mode.
func (s *scaleMesh) follow(a *scaleAgent, p *meshtest.Cluster) {
	s.b.Helper()
	cfg := s.conf(a.c, kvstore.UserAgent)
	if !s.cached {
		cfg = s.conf(p, kvstore.UserRemote)
	}
	a.peers[p.Name] = s.runFollower(p, cfg, a.reg, a.shared)
}

// runFollower runs a follower of peer p through the store cfg names and
// returns its delegate.
func (s *scaleMesh) runFollower(p *meshtest.Cluster, cfg kvstore.Config, reg *remote.Registry, shared *kvstore.Shared) *holder {
	cfg.ClusterID = p.Config.ID
	h := newHolder()
	f := remote.New(remote.Options{Name: p.Name, Config: cfg, Registry: reg, Delegate: h, Shared: shared, ProbeInterval: time.Second})
	s.wg.Add(1)
	go func() { defer s.wg.Done(); f.Run(s.ctx) }()
	return h
}

// allAgents is every agent of the clusters cs.
func (s *scaleMesh) allAgents(cs []*meshtest.Cluster) []*scaleAgent {
	var out []*scaleAgent
	for _, c := range cs {
		out = append(out, s.agents[c.Name]...)
	}
	return out
}

// holders are the agents' delegates for peer, or for every peer if peer
// is empty.
func holders(agents []*scaleAgent, peer string) []*holder {
	var out []*holder
	for _, a := range agents {
		for name, h := range a.peers {
			if peer == "" || name == peer {
				out = append(out, h)
			}
		}
	}
	return out
}

// allSynced is a condition that holds once every holder has every kind
// synced.
func allSynced(hs []*holder) func() bool {
	return func() bool { return !slices.ContainsFunc(hs, func(h *holder) bool { return !h.allSynced() }) }
}

// cond is a condition the benchmark waits for.
type cond struct {
	what string
	ok   func() bool
}

// waitFor polls conds every poll until each holds, and returns how long
// after start each first held; it fails b if one does not hold within 5
// minutes.
func waitFor(b *testing.B, start time.Time, poll time.Duration, conds ...cond) []time.Duration {
	b.Helper()
	took := make([]time.Duration, len(conds))
	done := make([]bool, len(conds))
	for left := len(conds); ; time.Sleep(poll) {
		for i, c := range conds {
			if !done[i] && c.ok() {
				took[i], done[i] = time.Since(start), true
				left--
			}
		}
		if left == 0 {
			return took
		}
		if time.Since(start) > 5*time.Minute {
			for i, c := range conds {
				if !done[i] {
					b.Fatalf("%s: not after 5 minutes", c.what)
				}
			}
		}
	}
}

func runScale(b *testing.B, cached bool, nClusters, nAgents, nEndpoints int) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	s := &scaleMesh{b: b, ctx: ctx, wg: &wg, m: meshtest.New(b), dir: b.TempDir(), cached: cached, nEndpoints: nEndpoints,
		confs: map[string]kvstore.Config{}, agents: map[string][]*scaleAgent{}}
	for i := 0; i < nClusters; i++ {
		s.addCluster()
	}
	cs := s.cs

	// Cached: the caches copy every peer first (a cold start of the whole
	// mesh); the agents start once the copies are complete, as they find
	// them after any restart of their own.
	var cacheSync time.Duration
	cachePhase := startPhase()
	if cached {
		t0 := time.Now()
		for _, c := range cs {
			s.startCache(c)
		}
		cacheSync = waitFor(b, t0, 10*time.Millisecond, cond{"the caches' copy of every peer", cachesCopied(ctx, cs, cs)})[0]
	}
	cacheCost := cachePhase.stop()

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	syncPhase := startPhase()
	for _, c := range cs {
		for a := 0; a < nAgents; a++ {
			s.startAgent(c)
		}
	}
	syncTime := waitFor(b, start, 20*time.Millisecond, cond{"every agent's sync", allSynced(holders(s.allAgents(cs), ""))})[0]
	syncCost := syncPhase.stop()

	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := nAgents * nClusters * (nClusters - 1) * nEndpoints
	perEndpoint := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(held)

	conns := 0
	for _, c := range cs {
		conns += c.RelayConns()
	}

	// One more agent joins cluster 1 once the mesh is up: the time to its
	// sync of every peer is what a new node (or a restarted agent) waits.
	joinStart := time.Now()
	joined := s.startAgent(cs[0])
	joinTime := waitFor(b, joinStart, 10*time.Millisecond, cond{"the joining agent's sync", allSynced(holders([]*scaleAgent{joined}, ""))})[0]

	// Propagation: a slice written in c1, seen by agent 0 of c2.
	// A bare etcd watch splits the path: on c1's own store in direct mode
	// (the floor any reader pays), on c2's store in cached mode (the
	// cache's hop: c1's store → the cache → c2's store), the rest being
	// the agent's own watch of the store the watch is on.
	//
	// In cached mode one more follower in c2 reads c1's store directly
	// (as a direct-mode agent would) and times the same writes: both paths
	// measured at the same moments, under the same load, which the two
	// modes' runs, minutes apart on a shared machine, are not.
	h := s.agents[cs[1].Name][0].peers[cs[0].Name]
	var paired *holder
	if cached {
		reg := remote.NewRegistry()
		if err := reg.Claim(&cs[1].Config, true, nil); err != nil {
			b.Fatal(err)
		}
		paired = s.runFollower(cs[0], s.conf(cs[0], kvstore.UserRemote), reg, nil)
		waitFor(b, time.Now(), 10*time.Millisecond, cond{"the paired direct follower's sync", allSynced([]*holder{paired})})
	}
	var prop, hop, pairedProp []time.Duration
	probePhase := startPhase()
	cidr := "10.1.0.0/16"
	watched := cs[0]
	if cached {
		watched = cs[1]
	}
	seen := watchArrivals(ctx, b, kvstoretest.RawClient(b, s.conf(watched, kvstore.UserAdmin)), api.ClusterPrefix(api.KindEndpoints, cs[0].Name)+"ns/svc-0/probe-")
	for k := 0; k < propWrites; k++ {
		sl := cs[0].Slice("ns", "svc-0", fmt.Sprintf("probe-%d", k), meshtest.IP(cidr, k))
		arrived := h.expect(sl.Key())
		var pairedArrived <-chan struct{}
		if paired != nil {
			pairedArrived = paired.expect(sl.Key())
		}
		t0 := time.Now()
		cs[0].Upsert(sl)
		select {
		case <-arrived:
			prop = append(prop, h.arrivedAt().Sub(t0))
		case <-time.After(30 * time.Second):
			b.Fatalf("write %d in c1 not seen in c2 after 30 s", k)
		}
		if paired != nil {
			select {
			case <-pairedArrived:
				pairedProp = append(pairedProp, paired.arrivedAt().Sub(t0))
			case <-time.After(30 * time.Second):
				b.Fatalf("write %d in c1 not seen by the paired direct follower after 30 s", k)
			}
		}
		if at, ok := seen(sl.Key(), 30*time.Second); ok {
			hop = append(hop, at.Sub(t0))
		} else {
			b.Fatalf("write %d in c1 not seen by the bare watch of %s after 30 s", k, watched.Name)
		}
	}
	probeCost := probePhase.stop()
	slices.Sort(prop)
	slices.Sort(hop)
	slices.Sort(pairedProp)
	if dir := os.Getenv("SCALE_PROFILE_DIR"); dir != "" {
		mode := map[bool]string{false: "direct", true: "cached"}[cached]
		for what, c := range map[string]phaseCost{"probes": probeCost} {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%s.cpu.pprof", mode, what)), c.Profile, 0o600); err != nil {
				b.Log(err)
			}
		}
	}

	// Churn: churnWrites more slices written in c1, one after another,
	// until every agent of every other cluster holds them all: what the
	// stores wrote, sent and spent for them, mesh-wide, per write in c1.
	churnPhase := startPhase()
	var churnKeys []string
	for k := 0; k < churnWrites; k++ {
		sl := cs[0].Slice("ns", fmt.Sprintf("svc-%d", k%((nEndpoints+9)/10)), fmt.Sprintf("churn-%d", k), meshtest.IP(cidr, k))
		churnKeys = append(churnKeys, sl.Key())
		// On a loaded machine a put can time out while the caches copy:
		// it is retried (the same value: at worst one more store write).
		for try := 0; ; try++ {
			err := cs[0].UpsertErr(ctx, sl)
			if err == nil {
				break
			}
			if try == 5 {
				b.Fatal(err)
			}
			b.Logf("churn write %d: %v; retrying", k, err)
		}
	}
	t0 := time.Now()
	for _, ph := range holders(s.allAgents(cs[1:]), cs[0].Name) {
		for !ph.holdsAll(churnKeys) {
			if time.Since(t0) > time.Minute {
				b.Fatal("churn in c1 not seen by every agent after a minute")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	churn := churnPhase.stop()

	// A new cluster joins the mesh once it is up and measured (last: it
	// changes what the figures above are of). Its store and synced export
	// are up before the connect, as a cluster running alone; at the
	// connect, in cached mode its cache starts with every peer and every
	// existing cache's directory gets its file; its agents start, and every
	// existing agent follows it.
	existing := s.allAgents(cs)
	nc := s.addCluster()
	joinPhase := startPhase()
	connect := time.Now()
	if cached {
		s.startCache(nc)
		for _, c := range cs {
			s.connectCache(c, nc)
		}
	}
	for a := 0; a < nAgents; a++ {
		s.startAgent(nc)
	}
	for _, a := range existing {
		s.follow(a, nc)
	}
	joinConds := []cond{
		{"the new cluster's agents' sync of every peer", allSynced(holders(s.agents[nc.Name], ""))},
		{"every existing agent's sync of the new cluster", allSynced(holders(existing, nc.Name))},
	}
	if cached {
		joinConds = append(joinConds,
			cond{"the new cache's copy of every peer", cachesCopied(ctx, []*meshtest.Cluster{nc}, cs)},
			cond{"every existing cache's copy of the new cluster", cachesCopied(ctx, cs, []*meshtest.Cluster{nc})})
	}
	newCluster := waitFor(b, connect, 10*time.Millisecond, joinConds...)
	joinCost := joinPhase.stop()

	perWrite := func(v float64) float64 { return v / churnWrites }
	pctl := func(d []time.Duration, q int) float64 { return float64(d[(len(d)*q+99)/100-1].Microseconds()) / 1000 }
	p := func(q int) float64 { return pctl(prop, q) }

	b.ReportMetric(float64(conns)/float64(nClusters), "conns/store")
	b.ReportMetric(float64(syncTime.Milliseconds()), "sync-ms")
	b.ReportMetric(float64(joinTime.Milliseconds()), "join-sync-ms")
	b.ReportMetric(float64(cacheSync.Milliseconds()), "cache-sync-ms")
	b.ReportMetric(float64(newCluster[0].Milliseconds()), "newcluster-sync-ms")
	b.ReportMetric(float64(newCluster[1].Milliseconds()), "newcluster-seen-ms")
	if cached {
		b.ReportMetric(float64(newCluster[2].Milliseconds()), "newcluster-cache-sync-ms")
		b.ReportMetric(float64(newCluster[3].Milliseconds()), "newcluster-cache-seen-ms")
	}
	b.ReportMetric(ms(joinCost.StoreCPU), "newcluster-store-cpu-ms")
	b.ReportMetric(ms(joinCost.ProcessCPU), "newcluster-process-cpu-ms")
	b.ReportMetric(p(50), "prop-p50-ms")
	b.ReportMetric(p(99), "prop-p99-ms")
	if cached {
		b.ReportMetric(pctl(pairedProp, 50), "paired-direct-p50-ms")
		b.ReportMetric(pctl(pairedProp, 99), "paired-direct-p99-ms")
	}
	b.ReportMetric(pctl(hop, 50), "store-watch-p50-ms")
	b.ReportMetric(pctl(hop, 99), "store-watch-p99-ms")
	b.ReportMetric(perEndpoint, "B/remote-endpoint")
	b.ReportMetric(ms(cacheCost.StoreCPU), "cache-sync-store-cpu-ms")
	b.ReportMetric(ms(syncCost.StoreCPU), "sync-store-cpu-ms")
	b.ReportMetric(ms(syncCost.ProcessCPU), "sync-process-cpu-ms")
	b.ReportMetric(perWrite(churn.Puts+churn.Deletes), "store-writes/write")
	b.ReportMetric(perWrite(churn.PutBytes), "store-put-B/write")
	b.ReportMetric(perWrite(churn.Events), "watch-events/write")
	b.ReportMetric(perWrite(churn.SentBytes), "store-sent-B/write")
	b.ReportMetric(perWrite(float64(churn.StoreCPU.Microseconds())), "store-cpu-us/write")
	b.ReportMetric(perWrite(float64(churn.ProcessCPU.Microseconds())), "process-cpu-us/write")
	b.ReportMetric(0, "ns/op")
	mode := "direct"
	if cached {
		mode = "cached"
	}
	b.Logf("%s: %d clusters × %d agents × %d endpoints: %.1f conns/store, caches' copy %v, agents' sync %v, one more agent's sync %v, propagation p50 %.2f ms p99 %.2f ms, %.0f B per remote endpoint held (%s)",
		mode, nClusters, nAgents, nEndpoints, float64(conns)/float64(nClusters), cacheSync.Round(time.Millisecond), syncTime.Round(time.Millisecond), joinTime.Round(time.Millisecond), p(50), p(99), perEndpoint, strings.TrimSpace(fmt.Sprint(held, " held")))
	b.Logf("%s: stores' CPU: caches' copy %v (process %v), agents' sync %v (process %v); per write in c1 (%d writes): %.1f store writes, %.0f B put, %.1f watch events, %.0f B sent, %.0f µs store CPU, %.0f µs process CPU",
		mode, cacheCost.StoreCPU.Round(time.Millisecond), cacheCost.ProcessCPU.Round(time.Millisecond), syncCost.StoreCPU.Round(time.Millisecond), syncCost.ProcessCPU.Round(time.Millisecond), churnWrites,
		perWrite(churn.Puts+churn.Deletes), perWrite(churn.PutBytes), perWrite(churn.Events), perWrite(churn.SentBytes), perWrite(float64(churn.StoreCPU.Microseconds())), perWrite(float64(churn.ProcessCPU.Microseconds())))
	b.Logf("%s: write in c1 → bare watch of %s's store p50 %.2f ms p99 %.2f ms", mode, watched.Name, pctl(hop, 50), pctl(hop, 99))
	b.Logf("%s: a new cluster joins (%d endpoints, %d agents): its agents synced with every peer after %v, every existing agent with it after %v; stores' CPU %v (process %v)",
		mode, nEndpoints, nAgents, newCluster[0].Round(time.Millisecond), newCluster[1].Round(time.Millisecond), joinCost.StoreCPU.Round(time.Millisecond), joinCost.ProcessCPU.Round(time.Millisecond))
	if cached {
		b.Logf("cached: the new cluster's cache copied every peer after %v, every existing cache copied it after %v", newCluster[2].Round(time.Millisecond), newCluster[3].Round(time.Millisecond))
	}
	if cached {
		b.Logf("cached: the same %d writes, through the cache p50 %.2f ms p99 %.2f ms, read directly from c1's store (paired) p50 %.2f ms p99 %.2f ms: p99 %.2f× direct",
			propWrites, p(50), p(99), pctl(pairedProp, 50), pctl(pairedProp, 99), p(99)/pctl(pairedProp, 99))
	}
	for _, err := range []error{churn.ProfileErr, joinCost.ProfileErr} {
		if err != nil {
			b.Log(err)
		}
	}
}
