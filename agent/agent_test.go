package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		// The embedded etcd's watch stream receiver may outlive the server's
		// Close (etcd says so in v3rpc/watch.go); it belongs to the test's
		// stores, not to the agent.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*serverWatchStream).recvLoop"),
	)
}

// wait bounds a hang; it is not a performance assertion.
const wait = 30 * time.Second

type testAgent struct {
	*agent.Agent
	stop  func()
	dp    *meshtest.Recorder
	dir   string
	reg   *prometheus.Registry
	nodes *nodeLog
}

// nodeLog is a NodeObserver recording what it was told.
type nodeLog struct {
	mu     sync.Mutex
	events []string
}

func (l *nodeLog) NodeUpserted(n *api.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, "+"+n.Cluster+"/"+n.Name)
}

func (l *nodeLog) NodeDeleted(cluster, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, "-"+cluster+"/"+name)
}

// ClusterAccepted makes nodeLog a ClusterObserver: "=c2/2" is cluster c2's
// config with ID 2.
func (l *nodeLog) ClusterAccepted(c *api.Cluster) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, fmt.Sprintf("=%s/%d", c.Name, c.ID))
}

func (l *nodeLog) has(e string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.events, e)
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// startAgent runs an agent of local's cluster with connection files for
// local (as the agent user) and peers (as the remote user).
func startAgent(t testing.TB, node string, local *meshtest.Cluster, peers ...*meshtest.Cluster) *testAgent {
	t.Helper()
	return startAgentWith(t, meshtest.NewRecorder(), nil, node, local, peers...)
}

func startAgentWith(t testing.TB, dp *meshtest.Recorder, mod func(*agent.Config), node string, local *meshtest.Cluster, peers ...*meshtest.Cluster) *testAgent {
	t.Helper()
	dir := t.TempDir()
	local.WriteConnFile(dir, local.Name, kvstore.UserAgent)
	for _, p := range peers {
		p.WriteConnFile(dir, p.Name, kvstore.UserRemote)
	}
	// Files with a '.' are never connection files.
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a cluster"), 0o600); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{dp: dp, dir: dir, reg: prometheus.NewRegistry(), nodes: &nodeLog{}}
	cfg := agent.Config{
		ClusterName: local.Name, NodeName: node, ClustersDir: dir,
		Datapath: ta.dp, DatapathName: "recorder",
		Registerer: ta.reg, Logger: testLogger(t),
		DirPollInterval: 100 * time.Millisecond, ProbeInterval: 300 * time.Millisecond,
		MaxRetryInterval: 500 * time.Millisecond, StatusInterval: time.Second,
		InitialSyncTimeout: 20 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a.AddNodeObserver(ta.nodes)
	ta.Agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	ta.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent Run: %v", err)
			}
		})
	}
	t.Cleanup(ta.stop)
	return ta
}

// waitCluster waits until cond holds for the status of cluster name.
func (ta *testAgent) waitCluster(t testing.TB, name string, what string, cond func(status.Cluster) bool) status.Cluster {
	t.Helper()
	var last status.Cluster
	ta.dp.Wait(t, wait, func() (bool, string) {
		st := ta.Status()
		c, ok := st.ClusterByName(name)
		last = c
		return ok && cond(c), fmt.Sprintf("cluster %s: waiting for %s, status %+v", name, what, c)
	})
	return last
}

func ips(cidr string, from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, meshtest.IP(cidr, i))
	}
	return out
}

func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

const (
	cidr1 = "10.1.0.0/16"
	cidr2 = "10.2.0.0/16"
	cidr3 = "10.3.0.0/16"
)

func vip(cluster, svc int) string { return fmt.Sprintf("10.96.%d.%d", cluster, svc) }

func affinity(a api.Affinity, minLocal uint32) func(*api.Service) {
	return func(s *api.Service) { s.Affinity, s.MinLocalBackends = a, minLocal }
}
func notShared(s *api.Service) { s.Shared = false }
func notGlobal(s *api.Service) { s.Global = false }

// TestMergeAcrossClusters checks the merged services under every affinity
// and shared setting, from the views of two clusters' agents, then local
// failover and return as local backends become not ready or their node
// dies.
func TestMergeAcrossClusters(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c3 := m.AddCluster("c3", 3, cidr3)
	clusters := []*meshtest.Cluster{c1, c2, c3}
	cidrs := []string{cidr1, cidr2, cidr3}
	for i, c := range clusters {
		n := i + 1
		c.Upsert(
			c.Node("node-a", fmt.Sprintf("192.168.%d.1", n), fmt.Sprintf("10.%d.0.0/24", n)),
			c.Service("ns", "none", vip(n, 1)),
			c.Slice("ns", "none", "s1", ips(cidrs[i], 1, 2)...),
			c.Service("ns", "remote", vip(n, 3), affinity(api.AffinityRemote, 0)),
			c.Slice("ns", "remote", "s1", ips(cidrs[i], 30, 30)...),
			c.Slice("ns", "unshared", "s1", ips(cidrs[i], 40, 40)...),
		)
		if c == c1 {
			c.Upsert(c.Service("ns", "local", vip(n, 2), affinity(api.AffinityLocal, 2)),
				c.Slice("ns", "local", "s1", ips(cidrs[i], 20, 21)...))
		} else {
			c.Upsert(c.Service("ns", "local", vip(n, 2)),
				c.Slice("ns", "local", "s1", ips(cidrs[i], 20, 20)...))
		}
		if c == c2 {
			c.Upsert(c.Service("ns", "unshared", vip(n, 4), notShared))
		} else {
			c.Upsert(c.Service("ns", "unshared", vip(n, 4)))
		}
		if c != c3 {
			mod := func(*api.Service) {}
			if c == c1 {
				mod = notGlobal
			}
			c.Upsert(c.Service("ns", "notglobal", vip(n, 5), mod), c.Slice("ns", "notglobal", "s1", ips(cidrs[i], 50, 50)...))
		}
		c.MarkSynced()
	}
	a1 := startAgent(t, "n1", c1, c2, c3)
	a2 := startAgent(t, "n1", c2, c1, c3)

	ip := meshtest.IP
	cases := []struct {
		name  string
		a     *testAgent
		fe    string
		wantP []string
		wantF []string
	}{
		{"c1 view: affinity none merges all", a1, vip(1, 1), concat(ips(cidr1, 1, 2), ips(cidr2, 1, 2), ips(cidr3, 1, 2)), nil},
		{"c1 view: affinity local", a1, vip(1, 2), ips(cidr1, 20, 21), []string{ip(cidr2, 20), ip(cidr3, 20)}},
		{"c1 view: affinity remote", a1, vip(1, 3), []string{ip(cidr2, 30), ip(cidr3, 30)}, []string{ip(cidr1, 30)}},
		{"c1 view: c2's unshared backends excluded", a1, vip(1, 4), []string{ip(cidr1, 40), ip(cidr3, 40)}, nil},
		{"c2 view: unshared service still uses its own", a2, vip(2, 4), []string{ip(cidr1, 40), ip(cidr2, 40), ip(cidr3, 40)}, nil},
		{"c2 view: c1's non-global service lends nothing", a2, vip(2, 5), []string{ip(cidr2, 50)}, nil},
		{"c2 view: affinity none (c1's local affinity is c1's business)", a2, vip(2, 2), concat(ips(cidr1, 20, 21), ips(cidr2, 20, 20), ips(cidr3, 20, 20)), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.a.dp.WaitView(t, meshtest.Frontend(tc.fe), meshtest.Backends(tc.wantP, tc.wantF), wait)
		})
	}
	t.Run("c1 view: local non-global service is not programmed", func(t *testing.T) {
		if got := a1.dp.View(meshtest.Frontend(vip(1, 5))); got != "absent" {
			t.Errorf("non-global frontend programmed: %s", got)
		}
	})
	t.Run("nodes and configs of every cluster reach the observers", func(t *testing.T) {
		// An observer added late is replayed what the agent knows.
		late := &nodeLog{}
		a1.AddNodeObserver(late)
		for i, c := range []string{"c1", "c2", "c3"} {
			for _, obs := range []*nodeLog{a1.nodes, late} {
				if !obs.has("+" + c + "/node-a") {
					t.Errorf("observer never told about %s/node-a", c)
				}
				if e := fmt.Sprintf("=%s/%d", c, i+1); !obs.has(e) {
					t.Errorf("cluster observer never told about %s's config (%s)", c, e)
				}
			}
		}
	})

	local := meshtest.Frontend(vip(1, 2))
	steady := meshtest.Backends(ips(cidr1, 20, 21), []string{ip(cidr2, 20), ip(cidr3, 20)})
	t.Run("local backend not ready: below min-local-backends, spill", func(t *testing.T) {
		es := c1.Slice("ns", "local", "s1", ips(cidr1, 20, 21)...)
		es.Endpoints[1].Ready = false
		c1.Upsert(es)
		a1.dp.WaitView(t, local, meshtest.Backends([]string{ip(cidr1, 20), ip(cidr2, 20), ip(cidr3, 20)}, nil), wait)
	})
	t.Run("local backend ready again: back to local", func(t *testing.T) {
		c1.Upsert(c1.Slice("ns", "local", "s1", ips(cidr1, 20, 21)...))
		a1.dp.WaitView(t, local, steady, wait)
	})
	dead := loadbalancer.NodeRef{ClusterID: 1, Name: "node-" + ip(cidr1, 21)}
	t.Run("node of a local backend dies: spill", func(t *testing.T) {
		ref, ok := a1.NodeRef("c1", dead.Name)
		if !ok || ref != dead {
			t.Fatalf("NodeRef(c1, %s) = %v %t, want %v", dead.Name, ref, ok, dead)
		}
		if err := a1.SetNodeHealth(context.Background(), dead, false); err != nil {
			t.Fatal(err)
		}
		a1.dp.WaitView(t, local, meshtest.Backends(concat(ips(cidr1, 20, 21), []string{ip(cidr2, 20), ip(cidr3, 20)}), nil), wait)
	})
	t.Run("node back: local again", func(t *testing.T) {
		if err := a1.SetNodeHealth(context.Background(), dead, true); err != nil {
			t.Fatal(err)
		}
		a1.dp.WaitView(t, local, steady, wait)
	})
	t.Run("all local backends gone: remote only, and back", func(t *testing.T) {
		c1.Delete(api.EndpointSliceKey("c1", "ns", "local", "s1"))
		a1.dp.WaitView(t, local, meshtest.Backends([]string{ip(cidr2, 20), ip(cidr3, 20)}, nil), wait)
		c1.Upsert(c1.Slice("ns", "local", "s1", ips(cidr1, 20, 21)...))
		a1.dp.WaitView(t, local, steady, wait)
	})
	t.Run("unshared service becomes shared", func(t *testing.T) {
		c2.Upsert(c2.Service("ns", "unshared", vip(2, 4)))
		a1.dp.WaitView(t, meshtest.Frontend(vip(1, 4)), meshtest.Backends([]string{ip(cidr1, 40), ip(cidr2, 40), ip(cidr3, 40)}, nil), wait)
	})
}

// TestPeerOutageAndResync stops a peer's etcd (its state is kept), restarts
// it with a new writer that changes things while agents cannot see it, then
// lets the agent back in: stale entries are pruned, new ones appear, and
// nothing else is touched.
func TestPeerOutageAndResync(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c3 := m.AddCluster("c3", 3, cidr3)
	for i, c := range []*meshtest.Cluster{c1, c2, c3} {
		n := i + 1
		cidr := []string{cidr1, cidr2, cidr3}[i]
		for s := 1; s <= 4; s++ {
			c.Upsert(c.Service("ns", fmt.Sprintf("s%d", s), vip(n, s)))
		}
		c.Upsert(c.Slice("ns", "s1", "a", ips(cidr, 1, 2)...))
		if c != c2 {
			c.Upsert(c.Slice("ns", "s4", "a", ips(cidr, 40, 40)...))
		}
	}
	c2.Upsert(c2.Slice("ns", "s2", "a", meshtest.IP(cidr2, 20)), c2.Node("old", "192.168.2.1", "10.2.0.0/24"))
	for _, c := range []*meshtest.Cluster{c1, c2, c3} {
		c.MarkSynced()
	}
	a := startAgent(t, "n1", c1, c2, c3)
	fe1, fe2, fe3, fe4 := meshtest.Frontend(vip(1, 1)), meshtest.Frontend(vip(1, 2)), meshtest.Frontend(vip(1, 3)), meshtest.Frontend(vip(1, 4))
	before1 := meshtest.Backends(concat(ips(cidr1, 1, 2), ips(cidr2, 1, 2), ips(cidr3, 1, 2)), nil)
	before2 := meshtest.Backends([]string{meshtest.IP(cidr2, 20)}, nil)
	view4 := meshtest.Backends([]string{meshtest.IP(cidr1, 40), meshtest.IP(cidr3, 40)}, nil)
	a.dp.WaitView(t, fe1, before1, wait)
	a.dp.WaitView(t, fe2, before2, wait)
	a.dp.WaitView(t, fe4, view4, wait)
	a.waitCluster(t, "c2", "synced", func(c status.Cluster) bool { return c.Synced && c.Connected })

	c2.Block()
	c2.StopServer()
	st := a.waitCluster(t, "c2", "unreachable", func(c status.Cluster) bool { return c.State == status.StateUnreachable })
	if st.LastError == "" {
		t.Errorf("unreachable cluster reports no error")
	}
	t.Run("state kept while unreachable", func(t *testing.T) {
		if got := a.dp.View(fe1); got != before1 {
			t.Errorf("s1 while c2 is down: %s, want %s", got, before1)
		}
		if got := a.dp.View(fe2); got != before2 {
			t.Errorf("s2 while c2 is down: %s, want %s", got, before2)
		}
		if !slices.ContainsFunc(a.Nodes(), func(n *api.Node) bool { return n.Cluster == "c2" && n.Name == "old" }) {
			t.Errorf("c2's node forgotten while c2 is down")
		}
	})

	// c2 comes back with a new apiserver (writer) that exports a different
	// state; the agent cannot see it yet.
	c2.StartServer()
	c2.NewWriter()
	c2.Upsert(&c2.Config)
	for s := 1; s <= 3; s++ {
		c2.Upsert(c2.Service("ns", fmt.Sprintf("s%d", s), vip(2, s)))
	}
	c2.Upsert(c2.Service("ns", "s4", vip(2, 4)))
	c2.Upsert(
		c2.Slice("ns", "s1", "a", meshtest.IP(cidr2, 1)),  // one backend gone
		c2.Slice("ns", "s1", "b", meshtest.IP(cidr2, 3)),  // new slice
		c2.Slice("ns", "s3", "a", meshtest.IP(cidr2, 30)), // new service backends
		c2.Node("new", "192.168.2.2", "10.2.1.0/24"),      // node "old" gone
	)
	c2.MarkSynced() // prunes s2's slice and node "old"
	calls4 := a.dp.Calls(fe4)
	if got := a.dp.View(fe1); got != before1 {
		t.Fatalf("agent saw c2's changes while cut off: %s", got)
	}

	c2.Unblock()
	a.dp.WaitView(t, fe1, meshtest.Backends(concat(ips(cidr1, 1, 2), []string{meshtest.IP(cidr2, 1), meshtest.IP(cidr2, 3)}, ips(cidr3, 1, 2)), nil), wait)
	a.dp.WaitView(t, fe2, meshtest.Backends(nil, nil), wait)
	a.dp.WaitView(t, fe3, meshtest.Backends([]string{meshtest.IP(cidr2, 30)}, nil), wait)
	a.waitCluster(t, "c2", "connected and synced", func(c status.Cluster) bool { return c.Connected && c.Synced })
	t.Run("nothing else touched", func(t *testing.T) {
		if got := a.dp.Calls(fe4); got != calls4 {
			t.Errorf("frontend %s (no c2 backends) had %d datapath calls during c2's resync", fe4, got-calls4)
		}
		if got := a.dp.View(fe4); got != view4 {
			t.Errorf("s4: %s, want %s", got, view4)
		}
	})
	t.Run("nodes pruned and added", func(t *testing.T) {
		a.dp.Wait(t, wait, func() (bool, string) {
			return a.nodes.has("-c2/old") && a.nodes.has("+c2/new"), "node observer: want -c2/old and +c2/new"
		})
	})
}

// TestPeerRefused connects a peer whose config collides with accepted
// clusters: it is refused with a status naming the conflict, contributes
// nothing, and is accepted once its config is fixed.
// TestPeerConfigLate checks that a peer whose store holds no cluster
// config yet (a cluster being set up, or a mesh cache that has not copied
// a new peer) is taken as soon as its config is written: the agent waits
// on a watch, not on a retry whose backoff grows meanwhile (an hour here:
// without the watch the peer would stay refused).
func TestPeerConfigLate(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	for i, c := range []*meshtest.Cluster{c1, c2} {
		cidr := []string{cidr1, cidr2}[i]
		c.Upsert(c.Service("ns", "s1", vip(i+1, 1)), c.Slice("ns", "s1", "a", meshtest.IP(cidr, 1)))
		c.MarkSynced()
	}
	c2.Delete(api.ClusterKey("c2"))
	retries := &messageCount{msg: "cluster connection ended, retrying", cluster: "c2", n: &atomic.Int64{}}
	a := startAgentWith(t, meshtest.NewRecorder(), func(cfg *agent.Config) {
		cfg.Logger = slog.New(retries)
		cfg.MaxRetryInterval = time.Hour
	}, "n1", c1, c2)
	st := a.waitCluster(t, "c2", "refused", func(c status.Cluster) bool { return c.State == status.StateRefused })
	if !strings.Contains(st.LastError, "no cluster config") {
		t.Fatalf("c2 refused with %q, want it to say no cluster config", st.LastError)
	}
	c2.Upsert(&c2.Config)
	a.waitCluster(t, "c2", "accepted", func(c status.Cluster) bool { return c.State == status.StateConnected })
	a.dp.WaitView(t, meshtest.Frontend(vip(1, 1)), meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1)}, nil), wait)
	if n := retries.n.Load(); n != 0 {
		t.Errorf("the agent retried c2's connection %d times, want it to wait for the config on a watch", n)
	}
}

// messageCount is a slog handler counting records with message msg logged
// for cluster (the "cluster" attribute, as remote.Cluster's logger has);
// the handlers WithAttrs derives share its count.
type messageCount struct {
	msg, cluster string
	attrs        []slog.Attr
	n            *atomic.Int64
}

func (h *messageCount) Enabled(context.Context, slog.Level) bool { return true }

func (h *messageCount) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	for _, a := range h.attrs {
		if a.Key == "cluster" && a.Value.String() == h.cluster {
			h.n.Add(1)
		}
	}
	return nil
}

func (h *messageCount) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clone(h.attrs), as...)
	return &c
}

func (h *messageCount) WithGroup(string) slog.Handler { return h }

func TestPeerRefused(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 3, cidr2) // ID of c3
	c3 := m.AddCluster("c3", 3, cidr3)
	for i, c := range []*meshtest.Cluster{c1, c2, c3} {
		cidr := []string{cidr1, cidr2, cidr3}[i]
		c.Upsert(c.Service("ns", "s1", vip(i+1, 1)), c.Slice("ns", "s1", "a", meshtest.IP(cidr, 1)))
		c.MarkSynced()
	}
	a := startAgent(t, "n1", c1, c3)
	fe := meshtest.Frontend(vip(1, 1))
	without2 := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr3, 1)}, nil)
	a.dp.WaitView(t, fe, without2, wait)

	c2.WriteConnFile(a.dir, "c2", kvstore.UserRemote)
	st := a.waitCluster(t, "c2", "refused for its ID", func(c status.Cluster) bool {
		return c.State == status.StateRefused && strings.Contains(c.LastError, "cluster ID 3 is already used by cluster c3")
	})
	t.Logf("c2 refused: %s", st.LastError)
	if got := a.dp.View(fe); got != without2 {
		t.Errorf("refused cluster contributed backends: %s", got)
	}

	c2.Config.ID = 2
	c2.Config.PodCIDRs[0] = netip.MustParsePrefix("10.1.128.0/17")
	c2.Upsert(&c2.Config)
	st = a.waitCluster(t, "c2", "refused for its CIDR", func(c status.Cluster) bool {
		return c.State == status.StateRefused && strings.Contains(c.LastError, "pod CIDR 10.1.128.0/17 overlaps 10.1.0.0/16 of cluster c1")
	})
	t.Logf("c2 refused: %s", st.LastError)

	t.Run("a file whose store holds another cluster is refused", func(t *testing.T) {
		c2.WriteConnFile(a.dir, "cx", kvstore.UserRemote)
		st := a.waitCluster(t, "cx", "refused", func(c status.Cluster) bool { return c.State == status.StateRefused })
		if !strings.Contains(st.LastError, "no cluster config") {
			t.Errorf("cx refused with %q, want it to say no cluster config", st.LastError)
		}
		if err := os.Remove(filepath.Join(a.dir, "cx")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("others keep working", func(t *testing.T) {
		c3.Upsert(c3.Slice("ns", "s1", "a", meshtest.IP(cidr3, 1), meshtest.IP(cidr3, 2)))
		a.dp.WaitView(t, fe, meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr3, 1), meshtest.IP(cidr3, 2)}, nil), wait)
	})

	c2.Config.PodCIDRs[0] = netip.MustParsePrefix(cidr2)
	c2.Upsert(&c2.Config)
	// An apiserver whose cluster ID changed exports its services again
	// with the new ID; the old ones claim an ID the cluster no longer has.
	c2.Upsert(c2.Service("ns", "s1", vip(2, 1)))
	a.waitCluster(t, "c2", "accepted", func(c status.Cluster) bool { return c.State == status.StateConnected && c.ID == 2 })
	all := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1), meshtest.IP(cidr3, 1), meshtest.IP(cidr3, 2)}, nil)
	a.dp.WaitView(t, fe, all, wait)

	t.Run("the own cluster wins a conflict with an accepted peer", func(t *testing.T) {
		c1.Config.PodCIDRs = append(c1.Config.PodCIDRs, netip.MustParsePrefix("10.3.128.0/17"))
		c1.Upsert(&c1.Config)
		st := a.waitCluster(t, "c3", "evicted", func(c status.Cluster) bool { return c.State == status.StateRefused })
		if !strings.Contains(st.LastError, "overlaps 10.3.128.0/17 of cluster c1") {
			t.Errorf("c3 refused with %q, want it to name c1's CIDR", st.LastError)
		}
		a.dp.WaitView(t, fe, meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1)}, nil), wait)
		if c, _ := a.Status().ClusterByName("c1"); c.State != status.StateConnected {
			t.Errorf("own cluster: %+v", c)
		}
		c1.Config.PodCIDRs = c1.Config.PodCIDRs[:1]
		c1.Upsert(&c1.Config)
		a.dp.WaitView(t, fe, all, wait)
	})
}

// TestMalformedValues plants undecodable and misplaced values in a peer's
// store: each is skipped and reported, the last good value is kept, and
// everything else keeps flowing.
func TestMalformedValues(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c1.Upsert(c1.Service("ns", "s1", vip(1, 1)), c1.Service("ns", "s2", vip(1, 2)))
	c2.Upsert(c2.Service("ns", "s1", vip(2, 1)), c2.Slice("ns", "s1", "a", meshtest.IP(cidr2, 1)), c2.Service("ns", "s2", vip(2, 2)))
	c1.MarkSynced()
	c2.MarkSynced()
	a := startAgent(t, "n1", c1, c2)
	fe1, fe2 := meshtest.Frontend(vip(1, 1)), meshtest.Frontend(vip(1, 2))
	good := meshtest.Backends([]string{meshtest.IP(cidr2, 1)}, nil)
	a.dp.WaitView(t, fe1, good, wait)

	misplaced, err := c1.Service("ns", "s9", vip(1, 9)).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct{ key, value string }{
		{api.ServiceKey("c2", "ns", "garbage"), "\xff\x00not a service"},
		{api.EndpointSliceKey("c2", "ns", "s1", "a"), "{truncated"}, // overwrites a good value
		{api.ServiceKey("c2", "ns", "s9"), string(misplaced)},       // c1's object at c2's key
		{api.NodeKey("c2", "n"), ""},                                // empty
		{api.EndpointSliceKey("c2", "ns", "s2", "zz"), strings.Repeat("\x0a", 64)},
	}
	for _, b := range bad {
		c2.PutRaw(b.key, []byte(b.value))
	}
	st := a.waitCluster(t, "c2", "invalid objects reported", func(c status.Cluster) bool { return c.InvalidObjects >= uint64(len(bad)) })
	t.Logf("last error: %s", st.LastError)
	if !st.Connected {
		t.Errorf("c2 disconnected by malformed values: %+v", st)
	}
	if got := a.dp.View(fe1); got != good {
		t.Errorf("malformed value over a good slice changed the merge: %s, want %s", got, good)
	}
	c2.Upsert(c2.Slice("ns", "s2", "a", meshtest.IP(cidr2, 2)))
	a.dp.WaitView(t, fe2, meshtest.Backends([]string{meshtest.IP(cidr2, 2)}, nil), wait)
	body := scrape(t, a)
	if !strings.Contains(body, `clustermesh_agent_invalid_objects_total{cluster="c2",kind="services"} 2`) {
		t.Errorf("metrics do not count 2 invalid services of c2:\n%s", grep(body, "invalid"))
	}
}

// TestConfigDirLive adds, changes and removes connection files while the
// agent runs, and checks the status endpoint, metrics and the status the
// agent publishes into its own cluster's store.
func TestConfigDirLive(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c1.Upsert(c1.Service("ns", "s1", vip(1, 1)), c1.Slice("ns", "s1", "a", meshtest.IP(cidr1, 1)))
	c2.Upsert(c2.Service("ns", "s1", vip(2, 1)), c2.Slice("ns", "s1", "a", meshtest.IP(cidr2, 1)), c2.Node("n2", "192.168.2.1", "10.2.0.0/24"))
	c1.MarkSynced()
	c2.MarkSynced()
	// State adopted from a previous run: one frontend still wanted, one
	// stale.
	dp := meshtest.NewRecorder()
	stale := meshtest.Frontend("10.96.9.9")
	for _, fe := range []loadbalancer.Frontend{stale, meshtest.Frontend(vip(1, 1))} {
		if err := dp.UpsertService(context.Background(), loadbalancer.Service{Frontend: fe}); err != nil {
			t.Fatal(err)
		}
	}
	a := startAgentWith(t, dp, nil, "n1", c1)
	// An optional subsystem's section (what clustermesh-agent --health
	// adds): full on the endpoint, compact in the store.
	a.AddStatusReporter(func(st *status.Agent) {
		st.Health = &status.Health{State: status.SectionRunning, Members: 2, Alive: 2,
			MemberList: []status.HealthMember{{Name: "c2/n2", State: "alive", Healthy: true}, {Name: "c2/n3", State: "alive", Healthy: true}}}
	})
	fe := meshtest.Frontend(vip(1, 1))
	only1 := meshtest.Backends([]string{meshtest.IP(cidr1, 1)}, nil)
	both := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1)}, nil)
	a.dp.WaitView(t, fe, only1, wait)
	a.dp.WaitView(t, stale, "absent", wait)

	c2.WriteConnFile(a.dir, "c2", kvstore.UserRemote)
	a.dp.WaitView(t, fe, both, wait)
	a.waitCluster(t, "c2", "synced", func(c status.Cluster) bool { return c.Synced })

	t.Run("changed file reconnects, keeping state", func(t *testing.T) {
		calls := a.dp.Calls(fe)
		f := filepath.Join(a.dir, "c2")
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(strings.Replace(string(b), "dial-timeout: 2s", "dial-timeout: 3s", 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		a.waitCluster(t, "c2", "reconnected and synced", func(c status.Cluster) bool {
			return c.Connected && c.Synced && c.Events >= 2*uint64(len(api.SyncedKinds))
		})
		if got := a.dp.View(fe); got != both {
			t.Errorf("after reconnect: %s, want %s", got, both)
		}
		if got := a.dp.Calls(fe); got != calls {
			t.Errorf("reconnect with unchanged state made %d datapath calls", got-calls)
		}
	})
	t.Run("status endpoint and metrics", func(t *testing.T) {
		srv := httptest.NewServer(a.Handler(a.reg))
		defer srv.Close()
		// The metrics listener serves the probes and metrics, not /status.
		msrv := httptest.NewServer(a.MetricsHandler(a.reg))
		defer msrv.Close()
		for path, want := range map[string]int{"/readyz": 200, "/healthz": 200, "/metrics": 200, "/status": 404} {
			resp, err := http.Get(msrv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("metrics listener %s: %d, want %d", path, resp.StatusCode, want)
			}
		}
		st, err := status.Fetch(context.Background(), srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		c, ok := st.ClusterByName("c2")
		if !ok || !c.Synced || c.Objects["services"] != 1 || c.Objects["endpoints"] != 1 || c.Objects["nodes"] != 1 {
			t.Errorf("status of c2: %+v", c)
		}
		if st.Frontends != 1 || st.Datapath != "recorder" {
			t.Errorf("status: %+v", st)
		}
		if st.BGP != nil || st.Health == nil || len(st.Health.MemberList) != 2 {
			t.Errorf("status sections: BGP %+v, health %+v; want only health with 2 members listed", st.BGP, st.Health)
		}
		var out strings.Builder
		if err := status.Print(&out, st); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "c1 (local)") {
			t.Errorf("printed status lacks the local cluster:\n%s", out.String())
		}
		body := scrape(t, a)
		for _, want := range []string{
			`clustermesh_agent_cluster_synced{cluster="c2"} 1`,
			`clustermesh_agent_cluster_connected{cluster="c1"} 1`,
			`clustermesh_agent_objects{cluster="c2",kind="endpoints"} 1`,
			`clustermesh_agent_propagation_seconds_count`,
			`clustermesh_agent_events_total{cluster="c2",kind="services",type="upsert"}`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})
	t.Run("status published into the local store", func(t *testing.T) {
		a.dp.Wait(t, wait, func() (bool, string) {
			kv, found, err := c1.Admin().Get(context.Background(), api.AgentStatusKey("c1", "n1"))
			if err != nil || !found {
				return false, fmt.Sprintf("no status at %s (%v)", api.AgentStatusKey("c1", "n1"), err)
			}
			st, err := status.DecodeStored(kv.Key, kv.Value)
			if err != nil {
				return false, err.Error()
			}
			c, ok := st.ClusterByName("c2")
			compactHealth := st.Health != nil && st.Health.Members == 2 && st.Health.MemberList == nil
			return ok && c.Synced && st.Node == "n1" && compactHealth, fmt.Sprintf("published status %+v, health %+v", st, st.Health)
		})
	})
	t.Run("removed file drains the cluster", func(t *testing.T) {
		if err := os.Remove(filepath.Join(a.dir, "c2")); err != nil {
			t.Fatal(err)
		}
		a.dp.WaitView(t, fe, only1, wait)
		a.dp.Wait(t, wait, func() (bool, string) {
			_, present := a.Status().ClusterByName("c2")
			return !present && a.nodes.has("-c2/n2"), "c2 still in status or its node not deleted"
		})
		if strings.Contains(scrape(t, a), `cluster="c2"`) {
			t.Errorf("metrics still carry series of the removed cluster c2")
		}
	})
	t.Run("stopped agent withdraws its published status", func(t *testing.T) {
		a.stop()
		_, found, err := c1.Admin().Get(context.Background(), api.AgentStatusKey("c1", "n1"))
		if err != nil {
			t.Fatal(err)
		}
		if found {
			t.Errorf("status of a stopped agent still at %s", api.AgentStatusKey("c1", "n1"))
		}
	})
}

func scrape(t testing.TB, a *testAgent) string {
	t.Helper()
	srv := httptest.NewServer(a.Handler(a.reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestRestartWithUnreachablePeer restarts an agent over adopted datapath
// state while a peer's store is unreachable: after the initial sync timeout
// the reachable clusters are programmed, but adopted frontends are pruned
// only once the peer has synced too.
func TestRestartWithUnreachablePeer(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c1.Upsert(c1.Service("ns", "s1", vip(1, 1)), c1.Slice("ns", "s1", "a", meshtest.IP(cidr1, 1)))
	c2.Upsert(c2.Service("ns", "s1", vip(2, 1)), c2.Slice("ns", "s1", "a", meshtest.IP(cidr2, 1)))
	c1.MarkSynced()
	c2.MarkSynced()
	c2.Block()

	dp := meshtest.NewRecorder()
	stale := meshtest.Frontend("10.96.9.9")
	if err := dp.UpsertService(context.Background(), loadbalancer.Service{Frontend: stale}); err != nil {
		t.Fatal(err)
	}
	a := startAgentWith(t, dp, func(c *agent.Config) { c.InitialSyncTimeout = 500 * time.Millisecond }, "n1", c1, c2)
	fe := meshtest.Frontend(vip(1, 1))
	a.dp.WaitView(t, fe, meshtest.Backends([]string{meshtest.IP(cidr1, 1)}, nil), wait)
	select {
	case <-a.InitialSync():
		t.Fatalf("initial sync reported complete while c2 is unreachable")
	default:
	}
	if got := a.dp.View(stale); got == "absent" {
		t.Fatalf("adopted frontend pruned against a partial view")
	}
	c2.Unblock()
	a.dp.WaitView(t, fe, meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1)}, nil), wait)
	a.dp.WaitView(t, stale, "absent", wait)
	select {
	case <-a.InitialSync():
	case <-time.After(wait):
		t.Fatalf("InitialSync not closed after every cluster synced")
	}
}

// TestReadyzBeforeSync checks that an agent that has not synced yet is not
// ready, while it is alive.
func TestReadyzBeforeSync(t *testing.T) {
	a, err := agent.New(agent.Config{ClusterName: "c1", NodeName: "n1", ClustersDir: t.TempDir(), Datapath: agent.NoopDatapath{}, DatapathName: "none"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.MetricsHandler(nil))
	defer srv.Close()
	for path, want := range map[string]int{"/readyz": http.StatusServiceUnavailable, "/healthz": http.StatusOK, "/metrics": http.StatusNotFound} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s before the initial sync: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
