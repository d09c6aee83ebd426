// Command demo shows the mesh end to end on one machine, as an operator
// would see it: two emulated Kubernetes clusters (real etcd, kube-apiserver
// and kube-controller-manager; nodes and pods are Linux network namespaces),
// joined with the real clustermesh CLI, an echo service made global with it,
// traffic driven at the service, one cluster's backends failed, and a table
// of what happened with timings. Everything is torn down at the end, on
// Ctrl-C and on failure.
//
// Run it as root from the repository root (see kind-tests/demo.sh):
//
//	sudo kind-tests/demo.sh
//
// The first run builds kube-apiserver, kube-controller-manager, kubectl and
// etcd from source (several minutes); later runs reuse them.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/clustermesh/clustermesh/kind-tests/drills"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
	"github.com/clustermesh/clustermesh/observe"
)

func main() {
	keep := flag.Bool("keep", false, "keep the clusters running until Ctrl-C instead of tearing down at the end")
	verbose := flag.Bool("v", false, "show the harness's own logs")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *keep, *verbose)
	if err != nil && ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "\n✗ demo interrupted")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "\n✗ demo failed: %v\n", err)
		os.Exit(1)
	}
}

// out prints the demo's narrative.
type out struct{}

func (o *out) step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

func (o *out) info(format string, args ...any) {
	fmt.Printf("    "+format+"\n", args...)
}

func run(ctx context.Context, keep, verbose bool) error {
	o := &out{}
	if os.Geteuid() != 0 {
		return errors.New("run as root (sudo): the demo creates network namespaces, cgroups and eBPF programs")
	}
	root, err := emulator.ModuleRoot()
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	fmt.Println(`clustermesh demo: two Kubernetes clusters joined into one mesh, on this machine.

Each cluster runs a real etcd, kube-apiserver and kube-controller-manager.
Nodes and pods are Linux network namespaces on a shared bridge (no Docker);
the demo plays the kubelet. The mesh is the real thing: clustermesh-apiserver
per cluster, clustermesh-agent per node (eBPF socket load balancing, memberlist
health), installed and joined with the clustermesh CLI and kubectl.`)

	o.step("Building Kubernetes tools (kube-apiserver, kube-controller-manager, kubectl, etcd)")
	if err := buildTools(ctx, o, root); err != nil {
		return err
	}
	o.step("Building clustermesh from this checkout")
	dir, err := os.MkdirTemp("", "clustermesh-demo-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := emulator.Build(ctx, root, dir, log)
	if err != nil {
		return err
	}
	if err := bins.Require(emulator.PartAgent, emulator.PartAPIServer, emulator.PartCLI, emulator.PartKubectl,
		emulator.PartKubeAPIServer, emulator.PartKCM, emulator.PartEtcd); err != nil {
		return fmt.Errorf("cannot run the demo: %w", err)
	}
	o.info("built clustermesh, clustermesh-apiserver, clustermesh-agent")

	o.step("Creating two clusters, c1 and c2, with two nodes each")
	r, err := emulator.New(ctx, emulator.Options{Log: log})
	if err != nil {
		return err
	}
	failed := true
	defer func() {
		if failed {
			r.Fail()
		}
		fmt.Println("\n==> Tearing down (namespaces, processes, cgroups, eBPF pins)")
		if err := r.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "    teardown incomplete: %v\n    run: sudo go run ./kind-tests/cmd/cleanup\n", err)
			return
		}
		if failed {
			fmt.Printf("    done; logs of every process kept in %s/logs\n", r.Dir)
		} else {
			fmt.Println("    done")
		}
	}()
	o.info("run prefix %s (every namespace, link and cgroup is named with it)", r.Prefix)
	m, err := emulator.NewMesh(ctx, r, bins, emulator.MeshOptions{Clusters: 2, Nodes: 2})
	if err != nil {
		return err
	}
	for _, c := range m.Clusters {
		var nodes []string
		for _, n := range c.Nodes() {
			nodes = append(nodes, fmt.Sprintf("%s (%s, pods %s)", n.Name, n.FabricIP, n.PodCIDR))
		}
		o.info("%s: kube-apiserver %s; nodes %s", c.Name, c.ControlPlane().Kube.URL, strings.Join(nodes, ", "))
	}
	o.info("kubeconfig with contexts c1 and c2: %s", r.Kubeconfig())
	switch m.Routing {
	case emulator.RoutingBGP:
		o.info("pod CIDRs: routed over BGP (no tunnel): every agent's speaker announces its node's pod CIDRs to its cluster's route reflector in the clustermesh-apiserver; the reflectors of connected clusters peer")
	case emulator.RoutingAgent:
		o.info("pod CIDRs: routed inside each cluster by the demo (as a CNI would), between clusters by the agents")
	default:
		o.info("pod CIDRs: routed between all nodes by static routes the demo installs")
	}
	m.OnCommand = func(cmdline string) { fmt.Printf("    $ %s\n", cmdline) }

	report := &emulator.Report{}
	env := &drills.Env{Mesh: drills.Emulated{M: m}, Service: "echo", Replicas: 2, Report: report, Logf: func(string, ...any) {}}

	o.step("Installing the mesh in both clusters, connecting them, deploying an echo service")
	if err := drills.Setup(ctx, env); err != nil {
		return err
	}
	c1, c2 := m.Clusters[0], m.Clusters[1]
	vip, err := m.ServiceIP(ctx, c1, "echo")
	if err != nil {
		return err
	}

	o.step("Traffic: a client on %s connects to service echo (ClusterIP %s:80) every 10 ms", c1.Nodes()[0].Name, vip)
	tr, err := c1.Nodes()[0].StartTraffic(bins, "demo-client", netip.AddrPortFrom(vip, 80), nil)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = tr.Stop(sctx)
	}()
	start := time.Now()
	if err := waitBoth(ctx, tr, m, start); err != nil {
		return err
	}
	mark := time.Now()
	sleep(ctx, 3*time.Second)
	o.info("answers over 3 s: %s", split(m, tr.Attempts(mark)))
	report.Add("global", "answers by cluster (affinity none)", split(m, tr.Attempts(mark)), "pass")

	o.step("Prefer local backends: affinity local")
	if err := m.MarkGlobal(ctx, "echo", "local"); err != nil {
		return err
	}
	t0 := time.Now()
	first, err := waitOnly(ctx, tr, m, t0, 50, c1.Name)
	if err != nil {
		return err
	}
	o.info("all answers from c1 after %v", first.At.Sub(t0).Round(time.Millisecond))
	mark = time.Now()
	sleep(ctx, 2*time.Second)
	o.info("answers over 2 s: %s", split(m, tr.Attempts(mark)))
	report.Add("affinity local", "answers by cluster while c1's pods are ready", split(m, tr.Attempts(mark)), "pass")

	follow := startFollow(ctx, m, c1.Name, "--service", "default/echo", "--kind", "translate", "--from-cluster", c1.Name)
	sleep(ctx, 1500*time.Millisecond)
	o.step("Failing c1's backends: scale c1's echo Deployment to 0")
	failAt := time.Now()
	if err := m.ScaleEcho(ctx, c1, "echo", 0); err != nil {
		return err
	}
	fo, err := waitOnly(ctx, tr, m, failAt, 30, c2.Name)
	if err != nil {
		return err
	}
	during := tr.Attempts(failAt)
	o.info("traffic moved to c2 after %v; %d connection attempt(s) failed meanwhile", fo.At.Sub(failAt).Round(time.Millisecond), countFailed(during))
	// What `clustermesh observe --follow`, started before the failover,
	// printed as it happened: the last translations before it, the first
	// ones after.
	sleep(ctx, 1500*time.Millisecond) // the follower's merge window
	fs := follow.stop()
	var beforeF, afterF []string
	for _, f := range fs {
		if f.Time.Before(failAt) {
			beforeF = append(beforeF, f.Text())
		} else if f.Time.After(fo.At) && len(afterF) < 3 {
			afterF = append(afterF, f.Text())
		}
	}
	o.info("clustermesh observe --follow --context %s --service default/echo (flows around the failover, %d seen):", c1.Name, len(fs))
	for _, l := range append(beforeF[max(0, len(beforeF)-3):], afterF...) {
		fmt.Printf("      %s\n", l)
	}
	if follow.err != nil {
		o.info("observe: %v", follow.err)
	}
	report.Add("failover", "c1 scaled to 0 → answers from c2 after", emulator.Ms(fo.At.Sub(failAt)), "pass")
	report.Add("failover", "failed attempts during failover", fmt.Sprint(countFailed(during)), "")

	o.step("Restoring c1's backends: scale back to 2")
	backAt := time.Now()
	if err := m.ScaleEcho(ctx, c1, "echo", 2); err != nil {
		return err
	}
	rb, err := waitOnly(ctx, tr, m, backAt, 50, c1.Name)
	if err != nil {
		return err
	}
	o.info("traffic back on c1 after %v", rb.At.Sub(backAt).Round(time.Millisecond))
	report.Add("failback", "c1 scaled back → answers from c1 after", emulator.Ms(rb.At.Sub(backAt)), "pass")

	o.step("Hard failure: node %s loses power (off the network, every process killed, Kubernetes not told)", c2.Nodes()[1].Name)
	if err := m.MarkGlobal(ctx, "echo", "none"); err != nil {
		return err
	}
	noneAt := time.Now()
	if err := waitBoth(ctx, tr, m, noneAt); err != nil {
		return err
	}
	victim := c2.Nodes()[1]
	var deadPods []string
	for _, p := range victim.Pods() {
		deadPods = append(deadPods, p.Name)
	}
	o.info("back to affinity none: answers from both clusters; %s runs %s", victim.Name, strings.Join(deadPods, ", "))
	killAt := time.Now()
	if err := victim.Kill(ctx); err != nil {
		return err
	}
	sleep(ctx, 5*time.Second)
	after := tr.Attempts(killAt)
	var lastFail time.Time
	for _, a := range after {
		if !a.OK {
			lastFail = a.At.Add(a.Latency)
		}
	}
	took := time.Duration(0)
	if !lastFail.IsZero() {
		took = lastFail.Sub(killAt)
	}
	result := "pass"
	if countFailed(tr.Attempts(time.Now().Add(-2*time.Second))) > 0 {
		result = "FAIL"
		o.info("traffic still fails 5 s after the failure: %s", split(m, after))
	} else {
		o.info("the agents' health gossip declared it dead: last failed attempt %v after the failure; next 5 s: %s",
			took.Round(time.Millisecond), split(m, after))
	}
	report.Add("node death", victim.Name+" killed → last failed attempt after", emulator.Ms(took), result)
	report.Add("node death", "failed attempts in the 5 s after", fmt.Sprintf("%d of %d", countFailed(after), len(after)), "")

	o.step("Mesh status as the CLI reports it")
	if s, err := m.CLI(ctx, "status", "--context", c1.Name); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
			o.info("%s", line)
		}
	} else {
		o.info("(status failed: %v)", err)
	}

	all := tr.Attempts(start)
	report.Add("total", "client attempts / failed", fmt.Sprintf("%d / %d", len(all), countFailed(all)), "")
	fmt.Println("\n==> What happened")
	report.Print(os.Stdout)
	failed = false
	if keep {
		fmt.Printf("\nClusters keep running (kubectl --kubeconfig %s --context c1 get pods). Ctrl-C to tear down.\n", r.Kubeconfig())
		<-ctx.Done()
	}
	return nil
}

// buildTools runs `make -C hack` when a tool is missing, showing progress:
// the first build compiles Kubernetes from source and takes minutes.
func buildTools(ctx context.Context, o *out, root string) error {
	missing := false
	for _, t := range []string{"kube-apiserver", "kube-controller-manager", "kubectl", "etcd"} {
		if _, err := os.Stat(filepath.Join(root, "hack", "bin", t)); err != nil {
			missing = true
		}
	}
	if !missing {
		o.info("already built in hack/bin")
		return nil
	}
	o.info("first run: compiling Kubernetes from source through the Go module proxy.")
	o.info("This takes several minutes (about 6-7 on 2 cores, ~2 GB of memory); later runs skip it.")
	cmd := exec.CommandContext(ctx, "make", "-C", filepath.Join(root, "hack"))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("make -C hack: %w", err)
	}
	var tail []string
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			tail = append(tail, l)
			if len(tail) > 20 {
				tail = tail[1:]
			}
		case <-tick.C:
			o.info("… still compiling (%v elapsed)", time.Since(start).Round(time.Second))
		case err := <-done:
			if err != nil {
				return fmt.Errorf("building the Kubernetes tools failed: %w\n%s", err, strings.Join(tail, "\n"))
			}
			o.info("built in %v", time.Since(start).Round(time.Second))
			return nil
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func waitBoth(ctx context.Context, tr *emulator.Traffic, m *emulator.Mesh, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		seen := map[string]bool{}
		for _, a := range tr.Attempts(since) {
			if a.OK {
				seen[m.ClusterOf("echo", a.Backend)] = true
			}
		}
		if seen["c1"] && seen["c2"] {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("traffic never reached both clusters: %s", split(m, tr.Attempts(since)))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func waitOnly(ctx context.Context, tr *emulator.Traffic, m *emulator.Mesh, since time.Time, n int, cluster string) (emulator.Attempt, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	a, err := tr.WaitFor(ctx, since, n, func(a emulator.Attempt) bool {
		return a.OK && m.ClusterOf("echo", a.Backend) == cluster
	})
	if err != nil {
		return a, fmt.Errorf("waiting for %d answers in a row from %s: %w (seen: %s)", n, cluster, err, split(m, tr.Attempts(since)))
	}
	return a, nil
}

func split(m *emulator.Mesh, as []emulator.Attempt) string {
	per := map[string]int{}
	failed := 0
	for _, a := range as {
		if !a.OK {
			failed++
			continue
		}
		per[m.ClusterOf("echo", a.Backend)]++
	}
	var keys []string
	for k := range per {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, per[k]))
	}
	parts = append(parts, fmt.Sprintf("failed %d", failed))
	return strings.Join(parts, ", ")
}

func countFailed(as []emulator.Attempt) int {
	n := 0
	for _, a := range as {
		if !a.OK {
			n++
		}
	}
	return n
}

// follower is a running `clustermesh observe --follow -o json`.
type follower struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	flows  []observe.Flow
	err    error
}

// startFollow starts `clustermesh observe --follow` from cluster's context,
// as an operator would in a second terminal.
func startFollow(ctx context.Context, m *emulator.Mesh, cluster string, args ...string) *follower {
	ctx, cancel := context.WithCancel(ctx)
	f := &follower{cancel: cancel, done: make(chan struct{})}
	argv := append([]string{"--kubeconfig", m.Run.Kubeconfig(), "observe", "--context", cluster, "--follow", "-o", "json"}, args...)
	cmd := exec.CommandContext(ctx, m.Bins.Path(emulator.PartCLI), argv...)
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		f.err = err
		close(f.done)
		return f
	}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 4096), observe.MaxLine)
		for sc.Scan() {
			var fl observe.Flow
			if json.Unmarshal(sc.Bytes(), &fl) == nil {
				f.mu.Lock()
				f.flows = append(f.flows, fl)
				f.mu.Unlock()
			}
		}
		_ = cmd.Wait()
	}()
	return f
}

// stop ends the follower and returns what it printed.
func (f *follower) stop() []observe.Flow {
	f.cancel()
	<-f.done
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flows
}
