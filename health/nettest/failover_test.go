package nettest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// The bpf failover test drives the real eBPF datapath of bpf/ from the pool:
// member 0's sink is a bpf.Datapath attached to a cgroup holding a client
// that connects to a global service in a loop; the other members serve as
// its backends (preferred: cluster c1, fallback: cluster c2). Killing a
// backend's member must move every new connection off it once member 0 has
// marked it dead.

const (
	childRole      = "CMHEALTH_ROLE" // "client" for the connecting loop
	childBackend   = "CMHEALTH_BACKEND"
	childBPFCgroup = "CMHEALTH_BPF_CGROUP"
	childBPFPins   = "CMHEALTH_BPF_PINS"
	childService   = "CMHEALTH_SERVICE" // JSON loadbalancer.Service
	childVIP       = "CMHEALTH_VIP"
	backendPort    = 8080
	connTimeout    = 250 * time.Millisecond
)

// childExtras starts what the environment asks of a member process besides
// the pool: a backend server and/or the eBPF datapath wrapped around sink.
func childExtras(self string, out *lineWriter, sink health.HealthSink) (func(), health.HealthSink, error) {
	var stops []func()
	stop := func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
	}
	if addr := os.Getenv(childBackend); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return stop, nil, fmt.Errorf("backend %s: %w", addr, err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s\n", self)
				c.Close()
			}
		}()
		stops = append(stops, func() { l.Close(); wg.Wait() })
	}
	if cg := os.Getenv(childBPFCgroup); cg != "" {
		cfg := bpf.DefaultConfig()
		cfg.CgroupPath = cg
		cfg.PinDir = os.Getenv(childBPFPins)
		cfg.MaxServices, cfg.MaxBackends, cfg.MaxSlots, cfg.MaxNodes, cfg.MaxRevNAT = 16, 64, 256, 64, 256
		dp, err := bpf.Open(context.Background(), cfg)
		if err != nil {
			return stop, nil, fmt.Errorf("open datapath: %w", err)
		}
		stops = append(stops, func() { _ = dp.Remove() })
		var svc loadbalancer.Service
		if err := json.Unmarshal([]byte(os.Getenv(childService)), &svc); err != nil {
			return stop, nil, fmt.Errorf("service: %w", err)
		}
		if err := dp.UpsertService(context.Background(), svc); err != nil {
			return stop, nil, fmt.Errorf("program %s: %w", svc.Name, err)
		}
		out.println("DATAPATH ready")
		sink = teeSink{dp, sink}
	}
	return stop, sink, nil
}

// teeSink programs the datapath first, then reports: a SINK line's time is
// after the kernel map changed.
type teeSink struct{ first, then health.HealthSink }

func (t teeSink) SetNodeHealth(ctx context.Context, ref loadbalancer.NodeRef, healthy bool) error {
	if err := t.first.SetNodeHealth(ctx, ref, healthy); err != nil {
		return err
	}
	return t.then.SetNodeHealth(ctx, ref, healthy)
}

// runClient connects to the VIP in a loop until stdin closes, printing
// "CONN <start ns> <ok|fail> <answer>" per attempt.
func runClient() int {
	vip := os.Getenv(childVIP)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	w := bufio.NewWriter(os.Stdout)
	for {
		select {
		case <-done:
			return 0
		default:
		}
		start := time.Now()
		answer, err := func() (string, error) {
			c, err := net.DialTimeout("tcp", vip, connTimeout)
			if err != nil {
				return "", err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(connTimeout))
			line, err := bufio.NewReader(c).ReadString('\n')
			return strings.TrimSpace(line), err
		}()
		if err != nil {
			fmt.Fprintf(w, "CONN %d fail -\n", start.UnixNano())
		} else {
			fmt.Fprintf(w, "CONN %d ok %s\n", start.UnixNano(), answer)
		}
		w.Flush()
		time.Sleep(2 * time.Millisecond)
	}
}

type connResult struct {
	start  time.Time
	ok     bool
	answer string
}

type client struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	mu    sync.Mutex
	conns []connResult
}

func (c *client) snapshot() []connResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.conns)
}

// after returns the attempts started at or after t.
func (c *client) after(t time.Time) []connResult {
	var out []connResult
	for _, r := range c.snapshot() {
		if !r.start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

func startClient(tb testing.TB, ns, cgroup, vip string) *client {
	tb.Helper()
	cg, err := os.Open(cgroup)
	if err != nil {
		tb.Fatal(err)
	}
	defer cg.Close()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	c := &client{done: make(chan struct{})}
	c.cmd = exec.Command("nsenter", "--net="+netlab.NetnsPath(ns), exe, "-test.run=^$")
	c.cmd.Env = append(os.Environ(), childEnv+"=1", childRole+"=client", childVIP+"="+vip)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	c.cmd.Stderr = os.Stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("start client: %v", err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 4 || f[0] != "CONN" {
				continue
			}
			ns, _ := strconv.ParseInt(f[1], 10, 64)
			c.mu.Lock()
			c.conns = append(c.conns, connResult{start: time.Unix(0, ns), ok: f[2] == "ok", answer: f[3]})
			c.mu.Unlock()
		}
		_ = c.cmd.Wait()
	}()
	tb.Cleanup(func() {
		c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(5 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// failoverMesh is a five-member mesh whose member 0 runs the eBPF datapath
// for a client in its namespace; members 1, 2 (cluster c1) are the preferred
// backends and 3, 4 (cluster c2) the fallback ones.
type failoverMesh struct {
	*mesh
	client *client
	vip    string
}

func newFailoverMesh(ctx context.Context, tb testing.TB, profile string) *failoverMesh {
	tb.Helper()
	const n = 5
	l := netlab.New(tb)
	pins, cgroup := l.BPFFS(), l.Cgroup("cg")
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	svc := loadbalancer.Service{
		Frontend: loadbalancer.Frontend{Addr: vip, Protocol: loadbalancer.TCP},
		Name:     "default/echo",
	}
	backend := func(i int) string { return fmt.Sprintf("10.99.0.%d:%d", i+1, backendPort) }
	for i := 1; i < n; i++ {
		b := loadbalancer.Backend{Addr: netip.MustParseAddrPort(backend(i)), Node: loadbalancer.NodeRef{ClusterID: 1, Name: fmt.Sprintf("n%d", i)}}
		if i >= (n+1)/2 {
			b.Node.ClusterID = 2
			svc.Fallback = append(svc.Fallback, b)
		} else {
			svc.Preferred = append(svc.Preferred, b)
		}
	}
	js, err := json.Marshal(svc)
	if err != nil {
		tb.Fatal(err)
	}
	m := newMeshWith(l, n, 0, profile, func(i int) []string {
		if i == 0 {
			return []string{childBPFCgroup + "=" + cgroup, childBPFPins + "=" + pins, childService + "=" + string(js)}
		}
		return []string{childBackend + "=" + backend(i)}
	})
	m.waitConverged(ctx)
	f := &failoverMesh{mesh: m, vip: vip.String()}
	f.client = startClient(tb, m.f.ns[0], cgroup, f.vip)
	// Balanced over both preferred backends before anything fails.
	f.waitAnswers(ctx, time.Time{}, 20, "c1/n1", "c1/n2")
	return f
}

// waitAnswers waits until the client has made want consecutive successful
// connections started after t, answered by the listed members only and by
// each of them at least once.
func (f *failoverMesh) waitAnswers(ctx context.Context, t time.Time, want int, from ...string) {
	f.tb.Helper()
	f.waitAll(ctx, fmt.Sprintf("%d connections answered by %v", want, from), []int{0}, func(*child) bool {
		run := 0
		seen := map[string]bool{}
		for _, r := range f.client.after(t) {
			if !r.ok || !slices.Contains(from, r.answer) {
				run, seen = 0, map[string]bool{}
				continue
			}
			run++
			seen[r.answer] = true
		}
		return run >= want && len(seen) == len(from)
	})
}

// failover kills the victims (together) and returns when member 0 has
// marked them all dead (the datapath updated), after which the client's
// connections are answered by next only, and the start of the last failed
// connection after the kill (zero if none failed).
func (f *failoverMesh) failover(ctx context.Context, victims []int, next ...string) (t0, marked, lastFail time.Time) {
	f.tb.Helper()
	for i, v := range victims {
		if t := f.kill(v); i == 0 {
			t0 = t
		}
	}
	f.waitAll(ctx, fmt.Sprintf("member 0 to mark %v dead", victims), []int{0}, func(c *child) bool {
		for _, v := range victims {
			if _, ok := c.reported(f.refs[v], false, t0); !ok {
				return false
			}
		}
		return true
	})
	for _, v := range victims {
		if at, _ := f.children[0].reported(f.refs[v], false, t0); at.After(marked) {
			marked = at
		}
	}
	f.waitAnswers(ctx, marked, 20, next...)
	for _, r := range f.client.after(t0) {
		if !r.ok {
			lastFail = r.start
		}
	}
	return t0, marked, lastFail
}

// TestNetnsBPFFailover: a client balanced by the real eBPF datapath over two
// local backends (cluster c1) with two remote fallbacks (cluster c2). A
// backend's node is hard-killed: once the pool marks it dead no new
// connection goes to it. Then the other local one: traffic moves to c2.
func TestNetnsBPFFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFailoverMesh(ctx, t, "robust")

	for _, phase := range []struct {
		victim int
		next   []string
	}{
		{1, []string{"c1/n2"}},          // one local backend left
		{2, []string{"c2/n3", "c2/n4"}}, // no local backend: remote cluster
	} {
		t0, marked, lastFail := f.failover(ctx, []int{phase.victim}, phase.next...)
		failed := 0
		for _, r := range f.client.after(t0) {
			if r.ok && r.answer == f.names[phase.victim] {
				t.Errorf("connection at %v answered by killed %s", r.start.Sub(t0), r.answer)
			}
			if !r.ok {
				failed++
				if !r.start.Before(marked) {
					t.Errorf("connection started %v after %s was marked dead failed", r.start.Sub(marked), f.names[phase.victim])
				}
			}
		}
		if failed == 0 {
			t.Errorf("no connection failed after killing %s: the test did not catch the datapath using it", f.names[phase.victim])
		}
		t.Logf("killed %s: marked dead after %v; %d connections failed meanwhile, the last started %v after the kill",
			f.names[phase.victim], marked.Sub(t0), failed, lastFail.Sub(t0))
	}
}

// BenchmarkNetnsBPFFailover: repeated hard kills with a client connecting
// through the eBPF datapath. "one-local": one of the two preferred (local)
// backends' node is killed, traffic stays local; "all-local": both are
// killed at once, traffic moves to the other cluster. Reports the time from
// the kill until the datapath of the client's node skips the dead nodes
// (marked-*) and until the start of the last connection that still went to
// one of them (traffic-*).
func BenchmarkNetnsBPFFailover(b *testing.B) {
	for _, tc := range []struct {
		name    string
		victims func(i int) []int
		next    func(i int) []string
	}{
		{"one-local", func(i int) []int { return []int{1 + i%2} }, func(i int) []string { return []string{fmt.Sprintf("c1/n%d", 2-i%2)} }},
		{"all-local", func(int) []int { return []int{1, 2} }, func(int) []string { return []string{"c2/n3", "c2/n4"} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			f := newFailoverMesh(ctx, b, "default")
			var marked, traffic []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				victims := tc.victims(i)
				t0, m, last := f.failover(ctx, victims, tc.next(i)...)
				marked = append(marked, m.Sub(t0))
				if !last.IsZero() {
					traffic = append(traffic, last.Sub(t0))
				}
				b.StopTimer()
				f.revive(ctx, victims...)
				f.waitAnswers(ctx, time.Now(), 20, f.names[1], f.names[2])
				b.StartTimer()
			}
			b.StopTimer()
			reportPercentiles(b, "marked", marked)
			if len(traffic) > 0 {
				reportPercentiles(b, "traffic", traffic)
			}
		})
	}
}
