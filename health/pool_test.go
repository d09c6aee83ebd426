package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// recSink records the calls of a pool, in order.
type recSink struct {
	mu    sync.Mutex
	calls []sinkCall
	wake  chan struct{}
}

type sinkCall struct {
	ref     loadbalancer.NodeRef
	healthy bool
	at      time.Time
}

func newRecSink() *recSink { return &recSink{wake: make(chan struct{}, 1)} }

func (s *recSink) SetNodeHealth(_ context.Context, ref loadbalancer.NodeRef, healthy bool) error {
	s.mu.Lock()
	s.calls = append(s.calls, sinkCall{ref: ref, healthy: healthy, at: time.Now()})
	s.mu.Unlock()
	signal(s.wake)
	return nil
}

func (s *recSink) snapshot() []sinkCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkCall(nil), s.calls...)
}

// waitTimeout bounds a wait for the pool to converge; a liveness bound of a
// broken run, not a performance assertion.
const waitTimeout = 60 * time.Second

// testLogger logs into buf, shown when the test fails, or to stderr with
// HEALTH_TEST_LOG set.
func testLogger(buf *lockedBuffer) *slog.Logger {
	if os.Getenv("HEALTH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// lockedBuffer keeps the last logs of a member.
type lockedBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 1<<20 {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-1<<19:]...)
	}
	return len(p), nil
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf[max(0, len(b.buf)-n):])
}

// loopMember is an in-process pool member on a loopback address.
type loopMember struct {
	node   api.Node
	pool   *Pool
	sink   *recSink
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func freeLoopbackAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	// A TCP port memberlist can also take for UDP; retry on the rare
	// collision with a UDP user.
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ap := netip.MustParseAddrPort(l.Addr().String())
		l.Close()
		u, err := net.ListenPacket("udp", ap.String())
		if err != nil {
			continue
		}
		u.Close()
		return ap
	}
	t.Fatal("no free loopback port")
	return netip.AddrPort{}
}

func testNode(cluster, name string, addr netip.AddrPort) api.Node {
	return api.Node{Cluster: cluster, Name: name, GossipAddress: addr}
}

var clusterIDs = map[string]uint32{"c1": 1, "c2": 2}

// idResolver names nodes with the cluster IDs of clusterIDs, like the
// agent does with the IDs clusters were accepted with.
type idResolver map[string]uint32

func (r idResolver) NodeRef(cluster, node string) (loadbalancer.NodeRef, bool) {
	id, ok := r[cluster]
	return loadbalancer.NodeRef{ClusterID: id, Name: node}, ok
}

func startLoopMember(t *testing.T, node api.Node, key []byte, leave time.Duration, registry []api.Node) *loopMember {
	t.Helper()
	return startLoopMemberWith(t, node, key, leave, registry, nil)
}

// startLoopMemberWith is startLoopMember with a hook that may change the
// member's config (a hostile member claiming another identity).
func startLoopMemberWith(t *testing.T, node api.Node, key []byte, leave time.Duration, registry []api.Node, tweak func(*Config)) *loopMember {
	t.Helper()
	cfg := DefaultTestConfig()
	robustTimings(&cfg)
	cfg.Cluster, cfg.NodeName, cfg.ClusterID = node.Cluster, node.Name, clusterIDs[node.Cluster]
	cfg.BindAddr = node.GossipAddress
	cfg.Key = key
	cfg.LeaveTimeout = leave
	cfg.Nodes = idResolver(clusterIDs)
	logs := &lockedBuffer{}
	cfg.Logger = testLogger(logs)
	if tweak != nil {
		tweak(&cfg)
	}
	m := &loopMember{node: node, sink: newRecSink(), reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member %s logs:\n%s", MemberName(node.Cluster, node.Name), logs.tail(6000))
		}
	})
	var err error
	m.pool, err = New(cfg, m.sink, m.reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.pool.SetNodes(registry); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- m.pool.Run(ctx) }()
	t.Cleanup(m.stop)
	return m
}

// stop ends Run (a crash when the member was started with leave 0) and
// waits for it; it is idempotent.
func (m *loopMember) stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	<-m.done
	m.cancel = nil
}

func (m *loopMember) ref() loadbalancer.NodeRef {
	return loadbalancer.NodeRef{ClusterID: clusterIDs[m.node.Cluster], Name: m.node.Name}
}

func (m *loopMember) sees(name string, st MemberState) bool {
	for _, ms := range m.pool.Status().Members {
		if ms.Name == name {
			return ms.State == st
		}
	}
	return false
}

// robustTimings slow the failure detector down for the tests that assert
// exact verdicts on a shared, loaded CI machine (with -race): a live member
// must stay unresponsive for over a second to be declared dead. The
// benchmarks measure the default timings.
func robustTimings(c *Config) {
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 80 * time.Millisecond
	c.SuspicionMult = 4
}

func testKey() []byte { return []byte("0123456789abcdef0123456789abcdef") }

// startLoopPool starts one member per node name, "c1/n0" style, all knowing
// each other, and waits until everyone sees everyone alive.
func startLoopPool(ctx context.Context, t *testing.T, names []string, leave time.Duration) []*loopMember {
	t.Helper()
	var nodes []api.Node
	for _, n := range names {
		var cluster, node string
		fmt.Sscanf(n, "%2s/%s", &cluster, &node)
		nodes = append(nodes, testNode(cluster, node, freeLoopbackAddr(t)))
	}
	var ms []*loopMember
	for _, n := range nodes {
		ms = append(ms, startLoopMember(t, n, testKey(), leave, nodes))
	}
	poll.Eventually(t, waitTimeout, "every member to see every other alive", func() bool {
		for _, m := range ms {
			if m.pool.Status().Alive != len(ms)-1 {
				return false
			}
		}
		return true
	})
	return ms
}

// TestPoolCrashDetectedAndRestored runs four real memberlist members over
// loopback UDP/TCP: one crashes (no leave), every survivor marks it unhealthy
// and nobody else; it restarts and is restored after the hold-down; removed
// from the registry, a dead node is reset to healthy.
func TestPoolCrashDetectedAndRestored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ms := startLoopPool(ctx, t, []string{"c1/n0", "c1/n1", "c2/n0", "c2/n1"}, 0)
	victim, survivors := ms[2], []*loopMember{ms[0], ms[1], ms[3]}

	victim.stop()
	for _, s := range survivors {
		poll.Eventually(t, waitTimeout, s.pool.LocalName()+" to mark the victim unhealthy", func() bool {
			for _, c := range s.sink.snapshot() {
				if c.ref == victim.ref() && !c.healthy {
					return true
				}
			}
			return false
		})
	}
	for _, s := range survivors {
		for _, c := range s.sink.snapshot() {
			if c.ref != victim.ref() && !c.healthy {
				t.Errorf("%s: live node marked unhealthy: %+v", s.pool.LocalName(), c)
			}
		}
		st := s.pool.Status()
		// Alive or suspect: a failed probe of a live member under a loaded
		// CI machine is a suspicion, not a death.
		if st.Dead != 1 || st.Unhealthy != 1 || st.Alive+st.Suspect != 2 {
			t.Errorf("%s: status %+v, want 2 up, 1 dead, 1 unhealthy", s.pool.LocalName(), st)
		}
		if got := metricValue(t, s.reg, "clustermesh_health_transitions_total", "healthy", "false"); got != 1 {
			t.Errorf("%s: clustermesh_health_transitions_total{healthy=false} = %v, want 1", s.pool.LocalName(), got)
		}
		if n := metricValue(t, s.reg, "clustermesh_health_detection_seconds", "", ""); n != 1 {
			t.Errorf("%s: detection histogram has %v samples, want 1", s.pool.LocalName(), n)
		}
	}

	// Restart on the same address: every survivor restores it after the
	// hold-down.
	var registry []api.Node
	for _, m := range ms {
		registry = append(registry, m.node)
	}
	back := startLoopMember(t, victim.node, testKey(), 0, registry)
	for _, s := range survivors {
		poll.Eventually(t, waitTimeout, s.pool.LocalName()+" to restore the victim", func() bool {
			calls := s.sink.snapshot()
			last := calls[len(calls)-1]
			return last.ref == victim.ref() && last.healthy
		})
	}
	if st := back.pool.Status(); st.Unhealthy != 0 {
		t.Errorf("restarted member marks nodes unhealthy: %+v", st)
	}

	// A dead node deleted from the registry is forgotten and reset.
	back.stop()
	s := survivors[0]
	poll.Eventually(t, waitTimeout, "the victim to be marked again", func() bool { return s.pool.Status().Unhealthy == 1 })
	s.pool.NodeDeleted(victim.node.Cluster, victim.node.Name)
	poll.Eventually(t, waitTimeout, "the deleted node to be reset healthy", func() bool {
		calls := s.sink.snapshot()
		last := calls[len(calls)-1]
		return last.ref == victim.ref() && last.healthy && len(s.pool.Status().Members) == 2
	})
}

// TestPoolGracefulLeave: a member that stops with a leave is not a death.
func TestPoolGracefulLeave(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms := startLoopPool(ctx, t, []string{"c1/a", "c1/b", "c2/a"}, time.Second)
	leaver := ms[1]
	leaver.stop()
	for _, s := range []*loopMember{ms[0], ms[2]} {
		poll.Eventually(t, waitTimeout, s.pool.LocalName()+" to see the leave", func() bool { return s.sees("c1/b", StateLeft) })
		for _, c := range s.sink.snapshot() {
			if !c.healthy {
				t.Errorf("%s: node marked unhealthy on a graceful leave: %+v", s.pool.LocalName(), c)
			}
		}
	}
}

// TestPoolAdmission: a member with the wrong key, and one missing from the
// registry, never become members.
func TestPoolAdmission(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ms := startLoopPool(ctx, t, []string{"c1/a", "c1/b"}, 0)
	registry := []api.Node{ms[0].node, ms[1].node}

	intruder := testNode("c1", "intruder", freeLoopbackAddr(t))
	for _, m := range ms {
		m.pool.NodeUpserted(&intruder)
	}
	wrongKey := startLoopMember(t, intruder, []byte("fedcba9876543210"), 0, append(registry, intruder))
	unknown := startLoopMember(t, testNode("c2", "unlisted", freeLoopbackAddr(t)), testKey(), 0, registry)
	poll.Eventually(t, waitTimeout, "the intruder's join attempts to fail", func() bool {
		return metricValue(t, wrongKey.reg, "clustermesh_health_join_attempts_total", "result", "error") >= 2
	})
	poll.Eventually(t, waitTimeout, "the unlisted member to contact the pool", func() bool {
		return metricValue(t, unknown.reg, "clustermesh_health_join_attempts_total", "result", "ok") >= 1
	})
	// Let a few gossip rounds pass after the contact.
	time.Sleep(time.Second)
	for _, m := range ms {
		st := m.pool.Status()
		if len(st.Members) != 1 || st.Members[0].State == StateDead {
			t.Errorf("%s: members %+v, want only the other registered member", m.pool.LocalName(), st.Members)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := func() Config {
		c := DefaultTestConfig()
		c.Cluster, c.NodeName, c.ClusterID = "c1", "n1", 1
		c.BindAddr = netip.MustParseAddrPort("127.0.0.1:7946")
		return c
	}
	tests := []struct {
		name string
		mod  func(*Config)
		err  error
	}{
		{"no cluster", func(c *Config) { c.Cluster = "" }, ErrInvalidConfig},
		{"no cluster ID", func(c *Config) { c.ClusterID = 0 }, ErrInvalidConfig},
		{"port 0", func(c *Config) { c.BindAddr = netip.MustParseAddrPort("127.0.0.1:0") }, ErrInvalidConfig},
		{"unspecified advertise", func(c *Config) { c.AdvertiseAddr = netip.MustParseAddrPort("0.0.0.0:7946") }, ErrInvalidConfig},
		{"probe timeout above interval", func(c *Config) { c.ProbeTimeout = 2 * c.ProbeInterval }, ErrInvalidConfig},
		{"short key", func(c *Config) { c.Key = []byte("short") }, ErrInvalidKey},
		{"missing key file", func(c *Config) { c.KeyFile = "/nonexistent/key" }, os.ErrNotExist},
		{"hold-down above max", func(c *Config) { c.HoldDown = time.Hour }, ErrInvalidConfig},
		{"negative max health score", func(c *Config) { c.MaxHealthScore = -1 }, ErrInvalidConfig},
		{"no quorum peers", func(c *Config) { c.QuorumMinPeers = 0 }, ErrInvalidConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			_, err := New(c, newRecSink(), nil)
			if !errors.Is(err, tt.err) {
				t.Fatalf("New: %v, want %v", err, tt.err)
			}
		})
	}
	if _, err := New(good(), newRecSink(), nil); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	if _, err := New(good(), nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("nil sink: %v", err)
	}
}

func TestSetNodesReportsBadNodesKeepsOthers(t *testing.T) {
	c := DefaultTestConfig()
	c.Cluster, c.NodeName, c.ClusterID = "c1", "n1", 1
	c.BindAddr = netip.MustParseAddrPort("127.0.0.1:7946")
	p, err := New(c, newRecSink(), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = p.SetNodes([]api.Node{
		testNode("c1", "good", netip.MustParseAddrPort("10.0.0.1:7946")),
		testNode("c1", "noport", netip.MustParseAddrPort("10.0.0.2:0")),
		testNode("c2", "noagent", netip.AddrPort{}),
	})
	if !errors.Is(err, ErrInvalidNode) {
		t.Fatalf("SetNodes: %v, want ErrInvalidNode", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.registry["c1/good"]; !ok {
		t.Errorf("good node lost: %v", p.registry)
	}
	if _, ok := p.registry["c2/noagent"]; !ok {
		t.Errorf("node without gossip address lost: %v", p.registry)
	}
	if _, ok := p.registry["c1/noport"]; ok {
		t.Errorf("bad node registered")
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdef")
	tests := []struct {
		name    string
		content string
		want    []byte
		err     error
	}{
		{"raw 16", string(raw), raw, nil},
		{"base64 32 with newline", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n", []byte("0123456789abcdef0123456789abcdef"), nil},
		{"base64 of a bad length", "c2hvcnQ=\n", nil, ErrInvalidKey},
		{"garbage", "not a key!", nil, ErrInvalidKey},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := fmt.Sprintf("%s/key%d", dir, i)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadKey(path)
			if !errors.Is(err, tt.err) || string(got) != string(tt.want) {
				t.Fatalf("LoadKey = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

// metricValue returns the value of the named counter or gauge (or the sample
// count of a histogram) whose label has the given value, from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

// TestPoolFollowsRegistry: two members that start knowing only themselves
// join when the registry tells each about the other.
func TestPoolFollowsRegistry(t *testing.T) {
	a := testNode("c1", "a", freeLoopbackAddr(t))
	b := testNode("c2", "b", freeLoopbackAddr(t))
	ma := startLoopMember(t, a, testKey(), 0, []api.Node{a})
	mb := startLoopMember(t, b, testKey(), 0, []api.Node{b})
	time.Sleep(300 * time.Millisecond)
	if st := ma.pool.Status(); len(st.Members) != 0 {
		t.Fatalf("a has members before the registry lists any: %+v", st.Members)
	}
	ma.pool.NodeUpserted(&b)
	// A node announced without a gossip address is reached at its first
	// address on the member's own gossip port.
	aNoGossip := api.Node{Cluster: a.Cluster, Name: a.Name, Addresses: []netip.Addr{a.GossipAddress.Addr()}}
	if got := mb.pool.gossipAddr(aNoGossip); got != netip.AddrPortFrom(a.GossipAddress.Addr(), b.GossipAddress.Port()) {
		t.Errorf("gossip address of a node without one: %v", got)
	}
	mb.pool.NodeUpserted(&a)
	poll.Eventually(t, waitTimeout, "a and b to see each other", func() bool {
		return ma.sees("c2/b", StateAlive) && mb.sees("c1/a", StateAlive)
	})
	bref := loadbalancer.NodeRef{ClusterID: 2, Name: "b"}
	if got := ma.pool.Status().Members[0].Ref; got != bref {
		t.Errorf("a names b %v, want 2/b from the registry", got)
	}
	// A peer seen alive is told healthy once, so that a verdict an earlier
	// agent process left in the datapath does not outlive it.
	poll.Eventually(t, waitTimeout, "a to tell its sink b is healthy", func() bool {
		calls := ma.sink.snapshot()
		return len(calls) > 0 && calls[0].ref == bref && calls[0].healthy
	})
}

func TestConfigFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	c.Flags(fs)
	err := fs.Parse([]string{"--health-bind=10.0.0.5:7000", "--health-key-file=/etc/mesh.key",
		"--health-probe-interval=200ms", "--health-hold-down=5s"})
	if err != nil {
		t.Fatal(err)
	}
	if c.BindAddr != netip.MustParseAddrPort("10.0.0.5:7000") || c.KeyFile != "/etc/mesh.key" ||
		c.ProbeInterval != 200*time.Millisecond || c.HoldDown != 5*time.Second {
		t.Fatalf("flags not applied: %+v", c)
	}
	if c.ProbeTimeout != DefaultConfig().ProbeTimeout {
		t.Errorf("unset flag changed probe timeout to %s", c.ProbeTimeout)
	}
	if err := fs.Parse([]string{"--health-bind=nonsense"}); err == nil {
		t.Errorf("bad --health-bind accepted")
	}
}

// TestPoolAdvertiseFromRegistry: a member bound to 0.0.0.0 without an
// advertise address advertises its own registry entry's address.
func TestPoolAdvertiseFromRegistry(t *testing.T) {
	a := testNode("c1", "a", freeLoopbackAddr(t))
	b := testNode("c1", "b", freeLoopbackAddr(t))
	// a's registry entry has only its node address; the port is the bind
	// port.
	aEntry := api.Node{Cluster: "c1", Name: "a", Addresses: []netip.Addr{a.GossipAddress.Addr()}}
	anyA := a
	anyA.GossipAddress = netip.AddrPortFrom(netip.IPv4Unspecified(), a.GossipAddress.Port())
	ma := startLoopMember(t, anyA, testKey(), 0, []api.Node{aEntry, b})
	mb := startLoopMember(t, b, testKey(), 0, []api.Node{a, b})
	poll.Eventually(t, waitTimeout, "a and b to see each other", func() bool {
		return ma.sees("c1/b", StateAlive) && mb.sees("c1/a", StateAlive)
	})
	ma.pool.mu.Lock()
	local := ma.pool.ml.LocalNode()
	ma.pool.mu.Unlock()
	if got := netip.AddrPortFrom(netip.MustParseAddr(local.Addr.String()), local.Port); got != a.GossipAddress {
		t.Errorf("a advertises %v, want its registry address %v", got, a.GossipAddress)
	}
}
