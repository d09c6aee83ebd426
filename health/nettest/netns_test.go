package nettest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// The netns tests run every member as its own process (this test binary,
// re-executed with childEnv set) inside its own network namespace, all on one
// bridge: real UDP/TCP between real network stacks, and a kill that is a
// kill. Members print what their sink receives and their status on stdout.

const (
	childEnv      = "CMHEALTH_CHILD"
	childSelf     = "CMHEALTH_SELF"     // "<cluster>/<node>"
	childClusters = "CMHEALTH_CLUSTERS" // "c1=1,c2=2"
	childNodes    = "CMHEALTH_NODES"    // "c1/n0=10.99.0.1:7946,..."
	childKeyFile  = "CMHEALTH_KEYFILE"
	childProfile  = "CMHEALTH_PROFILE" // timings: "default" (DefaultTestConfig), "probe-150ms", "memberlist-lan", "robust"
	gossipPort    = 7946
)

// runChild is the member process: it runs a Pool until its stdin closes.
func runChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "health child:", err)
		return 2
	}
	if os.Getenv(childRole) == "client" {
		return runClient()
	}
	ids := map[string]uint32{}
	for _, kv := range strings.Split(os.Getenv(childClusters), ",") {
		name, id, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return fail(fmt.Errorf("cluster %q: %w", kv, err))
		}
		ids[name] = uint32(n)
	}
	var nodes []api.Node
	var self api.Node
	for _, kv := range strings.Split(os.Getenv(childNodes), ",") {
		name, addr, _ := strings.Cut(kv, "=")
		cluster, node, _ := strings.Cut(name, "/")
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return fail(fmt.Errorf("node %q: %w", kv, err))
		}
		n := api.Node{Cluster: cluster, Name: node, GossipAddress: ap}
		nodes = append(nodes, n)
		if name == os.Getenv(childSelf) {
			self = n
		}
	}
	cfg := health.DefaultTestConfig()
	switch os.Getenv(childProfile) {
	case "memberlist-lan":
		// memberlist.DefaultLANConfig's failure detector.
		cfg.ProbeInterval = time.Second
		cfg.ProbeTimeout = 500 * time.Millisecond
		cfg.SuspicionMult = 4
		cfg.SuspicionMaxTimeoutMult = 6
		cfg.GossipInterval = 200 * time.Millisecond
	case "probe-150ms":
		cfg.ProbeInterval = 150 * time.Millisecond
		cfg.ProbeTimeout = 50 * time.Millisecond
	case "robust":
		// For the tests that assert exact verdicts on a shared, loaded CI
		// machine (with -race): a live member must stay unresponsive for
		// over a second to be declared dead. The benchmarks measure the
		// defaults.
		cfg.ProbeInterval = 200 * time.Millisecond
		cfg.ProbeTimeout = 80 * time.Millisecond
		cfg.SuspicionMult = 4
	}
	cfg.Cluster, cfg.NodeName, cfg.ClusterID = self.Cluster, self.Name, ids[self.Cluster]
	cfg.BindAddr = self.GossipAddress
	cfg.KeyFile = os.Getenv(childKeyFile)
	level := slog.LevelWarn
	if os.Getenv("HEALTH_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	out := &lineWriter{w: bufio.NewWriter(os.Stdout)}
	// Optional parts of the bpf failover test: a backend server, and the
	// eBPF datapath as the sink.
	stopExtras, sink, err := childExtras(os.Getenv(childSelf), out, printSink{out})
	if err != nil {
		return fail(err)
	}
	defer stopExtras()
	p, err := health.New(cfg, sink, prometheus.NewRegistry())
	if err != nil {
		return fail(err)
	}
	if err := p.SetNodes(nodes); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// The parent holds our stdin: when it closes (or dies), stop.
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := ""
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			s := p.Status()
			line := fmt.Sprintf("STATUS alive=%d suspect=%d dead=%d left=%d unhealthy=%d held=%d isolated=%t score=%d",
				s.Alive, s.Suspect, s.Dead, s.Left, s.Unhealthy, s.Held, s.Isolated, s.HealthScore)
			if line != last {
				out.println(line)
				last = line
			}
		}
	}()
	err = p.Run(ctx)
	cancel()
	wg.Wait()
	if err != nil {
		return fail(err)
	}
	return 0
}

type lineWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (l *lineWriter) println(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w.WriteString(s + "\n")
	l.w.Flush()
}

// printSink reports every call as "SINK <unix ns> <clusterID>/<node> <healthy>".
type printSink struct{ out *lineWriter }

func (s printSink) SetNodeHealth(_ context.Context, ref loadbalancer.NodeRef, healthy bool) error {
	s.out.println(fmt.Sprintf("SINK %d %s %t", time.Now().UnixNano(), ref, healthy))
	return nil
}

// fabric is one network namespace per member of a lab, on a bridge of the
// lab's fabric namespace (or two bridges joined by a trunk); the lab removes
// it all. The bridges forward inside that namespace, so the host's firewall
// (FORWARD policy DROP with bridge netfilter, as dockerd leaves it) does not
// apply.
type fabric struct {
	tb      testing.TB
	netns   string // the lab's fabric namespace, holding bridges, trunk and ports
	bridges []string
	trunk   string
	ns      []string // namespace names
	veth    []string // fabric-side veth names
	addrs   []netip.AddrPort
}

// newFabric creates n member namespaces. With split > 0, members below split
// are on one bridge and the others on a second one, the two bridges joined
// by a veth "trunk" (setTrunk cuts it); otherwise all share one bridge.
func newFabric(l *netlab.Lab, n, split int) *fabric {
	l.TB.Helper()
	fab := l.FabricNetns()
	f := &fabric{tb: l.TB, netns: fab, bridges: []string{"br0"}}
	if split > 0 {
		f.bridges = append(f.bridges, "br2")
		f.trunk = "ta"
		l.Run("ip", "-n", fab, "link", "add", "br2", "type", "bridge")
		l.Up(fab, "br2")
		l.Veth(fab, f.trunk, fab, "tb")
		l.Run("ip", "-n", fab, "link", "set", f.trunk, "master", f.bridges[0])
		l.Run("ip", "-n", fab, "link", "set", "tb", "master", f.bridges[1])
	}
	for i := range n {
		ns := l.Netns(fmt.Sprintf("n%d", i))
		port := fmt.Sprintf("h%d", i)
		addr := netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)})
		br := f.bridges[0]
		if split > 0 && i >= split {
			br = f.bridges[1]
		}
		f.ns = append(f.ns, ns)
		f.veth = append(f.veth, port)
		f.addrs = append(f.addrs, netip.AddrPortFrom(addr, gossipPort))
		l.Veth(fab, port, ns, "eth0")
		l.Run("ip", "-n", fab, "link", "set", port, "master", br)
		l.Addr(ns, "eth0", addr.String()+"/24")
	}
	return f
}

// setPort sets a port of the fabric namespace up or down.
func (f *fabric) setPort(port string, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	if err := netlab.IP(context.Background(), f.netns, "link", "set", port, state); err != nil {
		f.tb.Fatal(err)
	}
}

// setTrunk cuts (up=false) or restores the link between the two bridges.
func (f *fabric) setTrunk(up bool) { f.setPort(f.trunk, up) }

// setLink cuts (up=false) or restores member i's cable.
func (f *fabric) setLink(i int, up bool) { f.setPort(f.veth[i], up) }

// mesh is the set of member processes on a fabric.
type mesh struct {
	tb      testing.TB
	f       *fabric
	names   []string // "<cluster>/<node>"
	refs    []loadbalancer.NodeRef
	env     []string
	profile string
	// memberEnv adds environment for member i's process.
	memberEnv func(i int) []string
	children  []*child
}

type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}

	mu     sync.Mutex
	sinks  []sinkLine
	status string
	stderr bytes.Buffer
}

type sinkLine struct {
	at      time.Time
	ref     string
	healthy bool
}

// newMesh starts one member per fabric namespace; the first half of the
// members are cluster c1 (ID 1), the rest c2 (ID 2).
func newMesh(tb testing.TB, n int, profile string) *mesh {
	tb.Helper()
	return newMeshWith(netlab.New(tb), n, 0, profile, nil)
}

func newMeshWith(l *netlab.Lab, n, split int, profile string, memberEnv func(int) []string) *mesh {
	tb := l.TB
	tb.Helper()
	f := newFabric(l, n, split)
	keyFile := filepath.Join(tb.TempDir(), "mesh.key")
	if err := os.WriteFile(keyFile, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	m := &mesh{tb: tb, f: f, profile: profile, memberEnv: memberEnv, children: make([]*child, n)}
	var nodes []string
	for i := range n {
		cluster, id := "c1", uint32(1)
		if i >= (n+1)/2 {
			cluster, id = "c2", 2
		}
		name := fmt.Sprintf("%s/n%d", cluster, i)
		m.names = append(m.names, name)
		m.refs = append(m.refs, loadbalancer.NodeRef{ClusterID: id, Name: fmt.Sprintf("n%d", i)})
		nodes = append(nodes, name+"="+f.addrs[i].String())
	}
	m.env = append(os.Environ(), childEnv+"=1", childClusters+"=c1=1,c2=2",
		childNodes+"="+strings.Join(nodes, ","), childKeyFile+"="+keyFile, childProfile+"="+profile)
	tb.Cleanup(m.close)
	for i := range n {
		m.start(i)
	}
	return m
}

func (m *mesh) start(i int) {
	m.tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		m.tb.Fatal(err)
	}
	c := &child{name: m.names[i], done: make(chan struct{})}
	c.cmd = exec.Command("nsenter", "--net="+netlab.NetnsPath(m.f.ns[i]), exe, "-test.run=^$")
	c.cmd.Env = append(slices.Clone(m.env), childSelf+"="+m.names[i])
	if m.memberEnv != nil {
		c.cmd.Env = append(c.cmd.Env, m.memberEnv(i)...)
	}
	c.cmd.Stderr = &lockedWriter{c: c}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		m.tb.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		m.tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		m.tb.Fatalf("start member %s: %v", c.name, err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.parse(sc.Text())
		}
		_ = c.cmd.Wait()
	}()
	m.children[i] = c
}

type lockedWriter struct{ c *child }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	if w.c.stderr.Len() < 1<<20 {
		w.c.stderr.Write(b)
	}
	return len(b), nil
}

func (c *child) parse(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case strings.HasPrefix(line, "STATUS "):
		c.status = line
	case strings.HasPrefix(line, "SINK "):
		f := strings.Fields(line)
		if len(f) != 4 {
			return
		}
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		c.sinks = append(c.sinks, sinkLine{at: time.Unix(0, ns), ref: f[2], healthy: f[3] == "true"})
	}
}

func (c *child) snapshot() ([]sinkLine, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.sinks), c.status
}

// statusField returns the integer or boolean field of the last status line.
func (c *child) statusField(key string) string {
	_, st := c.snapshot()
	for _, f := range strings.Fields(st) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// kill hard-kills member i and cuts its link; it returns the instant just
// before.
func (m *mesh) kill(i int) time.Time {
	c := m.children[i]
	t0 := time.Now()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	m.f.setLink(i, false)
	<-c.done
	c.stdin.Close()
	return t0
}

// stop ends member i gracefully (stdin closed) and waits for it.
func (m *mesh) stop(i int) {
	c := m.children[i]
	if c == nil {
		return
	}
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func (m *mesh) close() {
	for i := range m.children {
		m.stop(i)
	}
	if m.tb.Failed() {
		for _, c := range m.children {
			if c != nil {
				_, st := c.snapshot()
				m.tb.Logf("member %s: last %s; stderr:\n%s", c.name, st, tail(c.stderrString(), 4000))
			}
		}
	}
}

func (c *child) stderrString() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitAll waits until cond holds for every listed member.
func (m *mesh) waitAll(ctx context.Context, what string, members []int, cond func(*child) bool) {
	m.tb.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		ok := true
		for _, i := range members {
			if !cond(m.children[i]) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			m.tb.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func (m *mesh) others(i int) []int {
	var o []int
	for j := range m.children {
		if j != i {
			o = append(o, j)
		}
	}
	return o
}

func (m *mesh) all() []int { return m.others(-1) }

func (m *mesh) waitConverged(ctx context.Context) {
	want := strconv.Itoa(len(m.children) - 1)
	m.waitAll(ctx, "every member to see every other alive", m.all(), func(c *child) bool {
		return c.statusField("alive") == want && c.statusField("unhealthy") == "0"
	})
}

// reported returns when member c last reported ref with healthy, after t.
func (c *child) reported(ref loadbalancer.NodeRef, healthy bool, after time.Time) (time.Time, bool) {
	sinks, _ := c.snapshot()
	for _, s := range sinks {
		if s.ref == ref.String() && s.healthy == healthy && !s.at.Before(after) {
			return s.at, true
		}
	}
	return time.Time{}, false
}

// killAndMeasure kills member v and returns, per survivor, the time from the
// kill until it told its sink v is unhealthy, and how many other nodes the
// survivors marked unhealthy meanwhile (false positives).
func (m *mesh) killAndMeasure(ctx context.Context, v int) ([]time.Duration, int) {
	t0 := m.kill(v)
	var lat []time.Duration
	m.waitAll(ctx, m.names[v]+" reported dead by every survivor", m.others(v), func(c *child) bool {
		_, ok := c.reported(m.refs[v], false, t0)
		return ok
	})
	falseMarks := 0
	for _, j := range m.others(v) {
		at, _ := m.children[j].reported(m.refs[v], false, t0)
		lat = append(lat, at.Sub(t0))
		sinks, _ := m.children[j].snapshot()
		for _, s := range sinks {
			if !s.healthy && s.ref != m.refs[v].String() && !s.at.Before(t0) {
				falseMarks++
			}
		}
	}
	return lat, falseMarks
}

// revive restores the links of the killed members, restarts them and waits
// until every member sees every other alive and healthy again.
func (m *mesh) revive(ctx context.Context, killed ...int) {
	for _, v := range killed {
		m.f.setLink(v, true)
		m.start(v)
	}
	m.waitConverged(ctx)
}

// TestNetnsHardKill: five members in two clusters, each in its own
// namespace; one is SIGKILLed and its cable cut. Every survivor reports it
// dead, nobody reports a live node, and after a restart it is restored.
func TestNetnsHardKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	m := newMesh(t, 5, "robust")
	m.waitConverged(ctx)

	const victim = 3 // c2/n3
	lat, _ := m.killAndMeasure(ctx, victim)
	t.Logf("%s reported dead after %v", m.names[victim], lat)
	for _, j := range m.others(victim) {
		sinks, _ := m.children[j].snapshot()
		for _, s := range sinks {
			if s.ref != m.refs[victim].String() && !s.healthy {
				t.Errorf("%s marked live node %s unhealthy", m.names[j], s.ref)
			}
		}
	}

	t1 := time.Now()
	m.revive(ctx, victim)
	for _, j := range m.others(victim) {
		if _, ok := m.children[j].reported(m.refs[victim], true, t1); !ok {
			t.Errorf("%s never restored %s", m.names[j], m.names[victim])
		}
	}
}

// TestNetnsIsolatedMember: one member's cable is cut (the process keeps
// running). The others report it dead and nothing else; the cut-off member
// does not mark the majority of its peers unhealthy. When the cable is back
// everyone converges again.
func TestNetnsIsolatedMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const n, cut = 5, 4
	m := newMesh(t, n, "robust")
	m.waitConverged(ctx)

	t0 := time.Now()
	m.f.setLink(cut, false)
	m.waitAll(ctx, "the cut-off member reported dead by the others", m.others(cut), func(c *child) bool {
		_, ok := c.reported(m.refs[cut], false, t0)
		return ok
	})
	// The isolated member's memberlist declares every peer dead in turn;
	// wait until all of them are (dead=4), so every verdict has been judged.
	m.waitAll(ctx, "the cut-off member to see all its peers dead", []int{cut}, func(c *child) bool {
		return c.statusField("dead") == strconv.Itoa(n-1)
	})
	iso := m.children[cut]
	sinks, st := iso.snapshot()
	var marked []string
	for _, s := range sinks {
		if !s.healthy {
			marked = append(marked, s.ref)
		}
	}
	t.Logf("isolated member: %s; marked unhealthy: %v", st, marked)
	if 2*len(marked) > n-1 {
		t.Errorf("isolated member marked %d of its %d peers unhealthy: %v", len(marked), n-1, marked)
	}
	if iso.statusField("isolated") != "true" {
		t.Errorf("isolated member does not consider itself isolated: %s", st)
	}
	for _, j := range m.others(cut) {
		sinks, _ := m.children[j].snapshot()
		for _, s := range sinks {
			if s.ref != m.refs[cut].String() && !s.healthy {
				t.Errorf("%s marked %s unhealthy while only %s was cut off", m.names[j], s.ref, m.names[cut])
			}
		}
	}

	m.f.setLink(cut, true)
	m.waitConverged(ctx)
}

// BenchmarkNetnsDetection measures, over repeated hard kills of a rotating
// member of a five-member mesh, the time until every survivor has told its
// sink the member is dead (all-*) and until the first one has (first-*),
// and counts live nodes marked unhealthy meanwhile (false-marks). "default"
// runs DefaultConfig's timings, "probe-150ms" a slower probe for loaded
// networks, "memberlist-lan" memberlist's stock LAN failure detector for
// comparison. Run with e.g. -benchtime=30x.
func BenchmarkNetnsDetection(b *testing.B) {
	for _, profile := range []string{"default", "probe-150ms", "memberlist-lan"} {
		b.Run(profile, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			m := newMesh(b, 5, profile)
			m.waitConverged(ctx)
			var all, first []time.Duration
			falseMarks := 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v := i % len(m.children)
				lat, f := m.killAndMeasure(ctx, v)
				falseMarks += f
				all = append(all, slices.Max(lat))
				first = append(first, slices.Min(lat))
				b.StopTimer()
				m.revive(ctx, v)
				b.StartTimer()
			}
			b.StopTimer()
			reportPercentiles(b, "all", all)
			reportPercentiles(b, "first", first)
			b.ReportMetric(float64(falseMarks), "false-marks")
		})
	}
}

func reportPercentiles(b *testing.B, prefix string, d []time.Duration) {
	slices.Sort(d)
	pct := func(p float64) float64 {
		i := int(p*float64(len(d))+0.5) - 1
		i = max(0, min(i, len(d)-1))
		return float64(d[i]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), prefix+"-p50-ms")
	b.ReportMetric(pct(0.99), prefix+"-p99-ms")
	b.ReportMetric(pct(1.0), prefix+"-max-ms")
}

// TestNetnsClusterSplit: the link between the two clusters' networks is cut
// (cluster c1: three agents, c2: two). The majority side marks exactly the
// other cluster's nodes; on the minority side, which sees three of its four
// peers fail although its own health is fine, the quorum rule holds the
// verdicts back: at most half of its peers are ever marked. Everything
// converges when the link is back.
func TestNetnsClusterSplit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	const n, split = 5, 3
	m := newMeshWith(netlab.New(t), n, split, "robust", nil)
	m.waitConverged(ctx)
	majority, minority := []int{0, 1, 2}, []int{3, 4}

	t0 := time.Now()
	m.f.setTrunk(false)
	m.waitAll(ctx, "the majority to mark the minority's nodes", majority, func(c *child) bool {
		for _, j := range minority {
			if _, ok := c.reported(m.refs[j], false, t0); !ok {
				return false
			}
		}
		return true
	})
	m.waitAll(ctx, "the minority to see the majority's nodes dead", minority, func(c *child) bool {
		return c.statusField("dead") == strconv.Itoa(len(majority))
	})
	for _, i := range majority {
		sinks, _ := m.children[i].snapshot()
		for _, s := range sinks {
			if !s.healthy && (s.ref == m.refs[0].String() || s.ref == m.refs[1].String() || s.ref == m.refs[2].String()) {
				t.Errorf("%s marked %s of its own side unhealthy", m.names[i], s.ref)
			}
		}
	}
	for _, i := range minority {
		sinks, st := m.children[i].snapshot()
		marked := map[string]bool{}
		for _, s := range sinks {
			if !s.healthy {
				marked[s.ref] = true
			}
		}
		t.Logf("minority member %s: %s; marked unhealthy: %v", m.names[i], st, marked)
		if 2*len(marked) > n-1 {
			t.Errorf("minority member %s marked %d of its %d peers unhealthy", m.names[i], len(marked), n-1)
		}
	}

	m.f.setTrunk(true)
	m.waitConverged(ctx)
}
