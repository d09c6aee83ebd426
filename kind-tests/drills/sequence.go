package drills

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
	"github.com/clustermesh/clustermesh/observe"
)

// Drill is one named drill.
type Drill struct {
	Name string
	// Needs lists parts beyond the mesh's own (agent, apiserver, CLI) the
	// drill depends on; see NeedHealth.
	Needs []string
	Run   func(ctx context.Context, e *Env) error
}

// NeedHealth marks drills that need the agents' node-health gossip.
const NeedHealth = "health"

// Sequence is the order drills run in on one mesh. Drills that deploy
// pods spread over the nodes run before NodeDeath: on kind the killed
// worker stays dead, and a pod scheduled there before Kubernetes notices
// never becomes ready.
var Sequence = []Drill{
	{Name: "GlobalService", Run: GlobalService},
	{Name: "AffinityLocal", Run: AffinityLocal},
	{Name: "RollingUpdate", Run: RollingUpdate},
	{Name: "ServiceSemantics", Run: ServiceSemantics},
	{Name: "AgentRestart", Run: AgentRestart},
	{Name: "StoreDown", Run: StoreDown},
	{Name: "MCS", Run: MCS},
	{Name: "NodeDeath", Needs: []string{NeedHealth}, Run: NodeDeath},
	{Name: "Policy", Needs: []string{NeedPodTraffic}, Run: Policy},
	{Name: "Disconnect", Run: Disconnect},
}

// Setup enables and connects the mesh's clusters with the CLI, deploys the
// echo service with e.Replicas pods in every cluster and marks it global
// (affinity none). It records how long each step took.
func Setup(ctx context.Context, e *Env) error {
	m := e.Mesh
	t0 := time.Now()
	if err := m.Enable(ctx); err != nil {
		return err
	}
	e.Report.Add("setup", "clustermesh enable (all clusters) → agents running", emulator.Ms(time.Since(t0)), "pass")
	t1 := time.Now()
	if err := m.Connect(ctx); err != nil {
		return err
	}
	e.Report.Add("setup", "clustermesh connect", emulator.Ms(time.Since(t1)), "pass")
	// Each cluster's operator lets the other's observers read its flows
	// (clustermesh observe across the mesh; nothing is shared by default).
	if err := m.AllowObservers(ctx); err != nil {
		return err
	}
	for _, c := range m.Clusters() {
		if err := m.DeployEcho(ctx, c, e.Service, e.Replicas); err != nil {
			return err
		}
	}
	for _, c := range m.Clusters() {
		if err := e.waitReadyPods(ctx, c, e.Replicas); err != nil {
			return err
		}
	}
	if err := m.MarkGlobal(ctx, e.Service, "none"); err != nil {
		return err
	}
	return e.checkMeshCache(ctx)
}

// checkMeshCache checks that every cluster's store holds a copy of every
// other cluster's echo service (the mesh cache, on by default), and
// records how long the copies took to appear.
func (e *Env) checkMeshCache(ctx context.Context) error {
	t0 := time.Now()
	for _, c := range e.Mesh.Clusters() {
		cli, err := openStore(ctx, e.Mesh, c)
		if err != nil {
			return err
		}
		defer cli.Close()
		for _, peer := range e.Mesh.Clusters() {
			if peer == c {
				continue
			}
			key := api.ServiceKey(peer, "default", e.Service)
			wctx, cancel := context.WithTimeout(ctx, e.wait())
			err := poll.Until(wctx, func(ctx context.Context) error {
				if _, ok, err := cli.Get(ctx, key); err != nil || !ok {
					return fmt.Errorf("%s not in %s's store (%v)", key, c, err)
				}
				return nil
			})
			cancel()
			if err != nil {
				return fmt.Errorf("%w: mesh cache: %v", ErrDrill, err)
			}
		}
	}
	e.Report.Add("setup", "mesh cache: every peer's service copied into each cluster's store", emulator.Ms(time.Since(t0)), "pass")
	return nil
}

// waitReadyPods waits until cluster c's echo Deployment has n ready pods.
func (e *Env) waitReadyPods(ctx context.Context, c string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	err := poll.Until(ctx, func(ctx context.Context) error {
		ready, total, err := e.Mesh.EchoReady(ctx, c, e.Service)
		if err != nil {
			return err
		}
		if ready != n || total != n {
			return fmt.Errorf("%d of %d replicas ready", ready, total)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster %s: echo %s: want %d ready pods: %w", c, e.Service, n, err)
	}
	return nil
}

// GlobalService: traffic to the service's ClusterIP from a node of either
// cluster reaches backends in both clusters, over TCP and UDP. Figure: time
// from the probes' start to answers from both clusters, and the split.
func GlobalService(ctx context.Context, e *Env) error {
	for _, c := range e.Mesh.Clusters() {
		for _, proto := range []string{"tcp", "udp"} {
			start := time.Now()
			tr, err := e.traffic(ctx, c, proto)
			if err != nil {
				return err
			}
			defer stop(tr)
			seen, err := e.waitSeen(ctx, tr, start, e.Mesh.Clusters()...)
			if err != nil {
				return fmt.Errorf("%s: %w", proto, err)
			}
			mark := time.Now()
			if err := settle(ctx, 2*time.Second); err != nil {
				return err
			}
			as := tr.Attempts(mark)
			e.Report.Add("global service", fmt.Sprintf("%s from %s: answers from every cluster after", proto, c), emulator.Ms(seen.Sub(start)), "pass")
			e.Report.Add("global service", fmt.Sprintf("%s from %s: split over 2 s", proto, c), e.split(as), "pass")
			e.logf("%s from %s reaches every cluster (%s)", proto, c, e.split(as))
		}
	}
	return nil
}

// AffinityLocal: with affinity local, traffic stays in its cluster while
// local backends are ready; scaling the local Deployment to zero moves it
// to the other cluster; scaling back returns it. Figures: failover and
// return times, failed attempts during each.
func AffinityLocal(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	if err := m.MarkGlobal(ctx, e.Service, "local"); err != nil {
		return err
	}
	defer func() { _ = m.MarkGlobal(context.WithoutCancel(ctx), e.Service, "none") }()
	tr, err := e.traffic(ctx, c1, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	start := time.Now()
	if _, err := e.waitOnly(ctx, tr, start, 50, c1); err != nil {
		return fmt.Errorf("before failover: %w", err)
	}
	mark := time.Now()
	if err := settle(ctx, time.Second); err != nil {
		return err
	}
	if as := tr.Attempts(mark); slices.ContainsFunc(as, func(a attempts.Attempt) bool { return !e.from(c1)(a) }) {
		return fmt.Errorf("%w: affinity local with local backends ready: %s", ErrDrill, e.split(as))
	}
	e.Report.Add("affinity local", "all local while local pods ready", e.split(tr.Attempts(mark)), "pass")

	scaled := time.Now()
	if err := m.ScaleEcho(ctx, c1, e.Service, 0); err != nil {
		return err
	}
	first, err := e.waitOnly(ctx, tr, scaled, 30, c2)
	if err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	during := tr.Attempts(scaled)
	e.Report.Add("affinity local", "scale c1 to 0 → traffic on c2 after", emulator.Ms(first.At.Sub(scaled)), "pass")
	e.Report.Add("affinity local", "failed attempts during failover", fmt.Sprint(failures(during)), "pass")
	e.logf("failover to %s after %v (%d failed attempts)", c2, first.At.Sub(scaled), failures(during))

	back := time.Now()
	if err := m.ScaleEcho(ctx, c1, e.Service, e.Replicas); err != nil {
		return err
	}
	ret, err := e.waitOnly(ctx, tr, back, 50, c1)
	if err != nil {
		return fmt.Errorf("return: %w", err)
	}
	e.Report.Add("affinity local", "scale c1 back → traffic local again after", emulator.Ms(ret.At.Sub(back)), "pass")
	e.Report.Add("affinity local", "failed attempts during return", fmt.Sprint(failures(tr.Attempts(back))), "pass")

	// What `clustermesh observe` reports across the mesh: translations of
	// the probe's node to c1 once affinity local held and before the
	// scale-down, to c2 between the failover and the scale-up; every agent
	// of both clusters answers (the grants of Setup reach the agents with
	// the kubelet's next update of their mount, so this retries).
	// --since is relative to each attempt: the window starts before the
	// drill, however long the grants take.
	since := func() string { return (time.Since(start) + 2*time.Second).Round(time.Second).String() }
	var (
		fs     []observe.Flow
		stderr string
	)
	octx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = poll.Until(octx, func(ctx context.Context) error {
		var err error
		fs, stderr, err = m.Observe(ctx, c1, "--service", "default/"+e.Service, "--kind", "translate", "--from-cluster", c1, "--since", since())
		if err != nil {
			return err
		}
		if answered, asked, ok := ObserveAnswered(stderr); !ok || answered != asked || asked != e.nodeCount() {
			return fmt.Errorf("agents answered: %s", strings.TrimSpace(stderr))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w: clustermesh observe: %v", ErrDrill, err)
	}
	e.Report.Add("affinity local", "clustermesh observe: agents of every cluster answered", fmt.Sprintf("%d of %d", e.nodeCount(), e.nodeCount()), "pass")
	const margin = 50 * time.Millisecond
	var before, after []string
	for _, f := range fs {
		if f.Source.Cluster != c1 && f.Cluster != c1 {
			return fmt.Errorf("%w: observe --from-cluster %s returned a flow of %s: %s", ErrDrill, c1, f.Cluster, f.Text())
		}
		if f.Node != tr.From() {
			continue
		}
		switch {
		case f.Time.After(mark) && f.Time.Before(scaled.Add(-margin)):
			before = append(before, f.Destination.Cluster)
		case f.Time.After(first.At.Add(margin)) && f.Time.Before(back.Add(-margin)):
			after = append(after, f.Destination.Cluster)
		}
	}
	verdict := "pass"
	if len(before) == 0 || len(after) == 0 || slices.ContainsFunc(before, func(c string) bool { return c != c1 }) ||
		slices.ContainsFunc(after, func(c string) bool { return c != c2 }) {
		verdict = "FAIL"
	}
	e.Report.Add("affinity local", "observe: translations to c1 before / to c2 after the failover", fmt.Sprintf("%d / %d", len(before), len(after)), verdict)
	if verdict != "pass" {
		var sample []string
		for _, f := range fs[:min(3, len(fs))] {
			sample = append(sample, f.Text())
		}
		return fmt.Errorf("%w: observe from %s: destinations before the failover %v, after %v (want only %s, then only %s); %d flows, first: %s",
			ErrDrill, tr.From(), compact(before), compact(after), c1, c2, len(fs), strings.Join(sample, " | "))
	}

	// --verdict dropped: the connects refused for lack of a backend, if
	// any. Each is one failed attempt of a client, so there are never more
	// of them than the probe's failures (there may be fewer: a failure can
	// also be a timeout, and events are sampled).
	drops, _, err := m.Observe(ctx, c1, "--service", "default/"+e.Service, "--verdict", "dropped", "--since", since())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDrill, err)
	}
	failed := failures(tr.Attempts(start))
	verdict = "pass"
	for _, f := range drops {
		if f.Verdict != "dropped" || f.Kind != "no-backend" {
			verdict = "FAIL"
		}
	}
	if len(drops) > failed {
		verdict = "FAIL"
	}
	e.Report.Add("affinity local", "observe --verdict dropped: no-backend refusals / failed attempts", fmt.Sprintf("%d / %d", len(drops), failed), verdict)
	if verdict != "pass" {
		return fmt.Errorf("%w: observe --verdict dropped: %d flows (want ≤ %d failed attempts, all no-backend)", ErrDrill, len(drops), failed)
	}
	return e.waitReadyPods(ctx, c1, e.Replicas)
}

// compact counts repeated names: "c1×3 c2×1".
func compact(names []string) string {
	counts := map[string]int{}
	for _, n := range names {
		counts[n]++
	}
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s×%d", n, counts[n]))
	}
	return strings.Join(parts, " ")
}

// AgentRestart: SIGKILL the agent of the node a client runs on while the
// client connects continuously; the kubelet restarts it. Pinned eBPF maps
// keep balancing meanwhile: zero failed connections.
func AgentRestart(ctx context.Context, e *Env) error {
	c1 := e.c(0)
	n := e.firstNode(c1)
	tr, err := e.traffic(ctx, c1, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	start := time.Now()
	if _, err := tr.WaitFor(ctx, start, 20, func(a attempts.Attempt) bool { return a.OK }); err != nil {
		return fmt.Errorf("%w: before restart: %v", ErrDrill, err)
	}
	killed := time.Now()
	rctx, cancel := context.WithTimeout(ctx, e.wait())
	err = e.Mesh.RestartAgent(rctx, n)
	cancel()
	if err != nil {
		return err
	}
	restarted := time.Now()
	// Let the new agent settle (adopt the pins, resync) under load.
	if err := settle(ctx, 5*time.Second); err != nil {
		return err
	}
	as := tr.Attempts(killed)
	e.Report.Add("agent restart", "attempts while agent down+restarting (kill→restart+5 s)", fmt.Sprintf("%d over %v", len(as), time.Since(killed).Round(time.Millisecond)), "")
	f := failures(as)
	result := "pass"
	if f > 0 {
		result = "FAIL"
	}
	e.Report.Add("agent restart", "failed connections", fmt.Sprint(f), result)
	e.logf("agent restart on %s: down %v, %d attempts, %d failed", n, restarted.Sub(killed), len(as), f)
	if f > 0 {
		return fmt.Errorf("%w: %d failed connections during agent restart: %s", ErrDrill, f, e.split(as))
	}
	return nil
}

// StoreDown: the second cluster's clustermesh-apiserver (and its embedded
// etcd) is stopped. Traffic from the first cluster keeps reaching the second
// cluster's live backends (stale-while-unreachable). While it is down the
// second cluster scales its echo Deployment up; after the store restarts,
// the first cluster's traffic reaches the new pod, and a key written before
// the outage is still in the store. Figures: failures while down, whether
// the data was kept, convergence time after restart.
func StoreDown(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	tr, err := e.traffic(ctx, c1, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	start := time.Now()
	if _, err := e.waitSeen(ctx, tr, start, c1, c2); err != nil {
		return fmt.Errorf("before: %w", err)
	}
	// A key written before the outage must be there after it: the store
	// keeps identities and revisions across a restart (on kind its pod is
	// replaced, and only its volume carries the data over).
	mark, err := writeCanary(ctx, m, c2)
	if err != nil {
		return err
	}
	down := time.Now()
	if err := m.StopStore(ctx, c2); err != nil {
		return err
	}
	restarted := false
	defer func() {
		if !restarted {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.wait())
			defer cancel()
			_ = m.StartStore(sctx, c2)
		}
	}()
	if err := settle(ctx, 5*time.Second); err != nil {
		return err
	}
	// Change the stopped cluster: one more pod.
	if err := m.ScaleEcho(ctx, c2, e.Service, e.Replicas+1); err != nil {
		return err
	}
	if err := e.waitReadyPods(ctx, c2, e.Replicas+1); err != nil {
		return err
	}
	if err := settle(ctx, 3*time.Second); err != nil {
		return err
	}
	if rest := e.StoreOutage - time.Since(down); rest > 0 {
		if err := settle(ctx, rest); err != nil {
			return err
		}
	}
	as := tr.Attempts(down)
	c2Answers := 0
	for _, a := range as {
		if e.from(c2)(a) {
			c2Answers++
		}
	}
	f := failures(as)
	res := "pass"
	if f > 0 || c2Answers == 0 {
		res = "FAIL"
	}
	e.Report.Add("store down", fmt.Sprintf("%s's store down %v: answers (by cluster)", c2, time.Since(down).Round(time.Second)), e.split(as), res)
	if res != "pass" {
		return fmt.Errorf("%w: while %s's store was down: %s (want answers from %s and no failures)", ErrDrill, c2, e.split(as), c2)
	}
	// clustermesh observe from c1 still prints c1's flows, and names c2
	// (whose nodes only its store lists) as missing.
	fs, stderr, err := m.Observe(ctx, c1, "--since", time.Since(down).Round(time.Second).String(), "--last", "20")
	res = "pass"
	if err != nil || len(fs) == 0 || !strings.Contains(stderr, "missing "+c2) {
		res = "FAIL"
	}
	answered, asked, _ := ObserveAnswered(stderr)
	e.Report.Add("store down", fmt.Sprintf("clustermesh observe from %s: flows, agents answered, %s named missing", c1, c2),
		fmt.Sprintf("%d, %d of %d", len(fs), answered, asked), res)
	if res != "pass" {
		return fmt.Errorf("%w: observe from %s while %s's store is down: %d flows, %v, stderr %q (want %s's flows and %s named missing)", ErrDrill, c1, c2, len(fs), err, stderr, c1, c2)
	}
	newPod, err := m.NewestEchoPod(ctx, c2, e.Service)
	if err != nil {
		return err
	}
	up := time.Now()
	restarted = true
	sctx, cancel := context.WithTimeout(ctx, e.wait())
	err = m.StartStore(sctx, c2)
	cancel()
	if err != nil {
		return err
	}
	if err := checkCanary(ctx, m, c2, mark); err != nil {
		e.Report.Add("store down", "store restarted → data written before kept", "lost", "FAIL")
		return err
	}
	e.Report.Add("store down", "store restarted → data written before kept", fmt.Sprintf("yes (revision %d)", mark.rev), "pass")
	ctxW, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	seen, err := tr.WaitFor(ctxW, up, 1, func(a attempts.Attempt) bool { return a.OK && a.Backend == newPod })
	if err != nil {
		return fmt.Errorf("%w: after %s's store restarted, pod %s added meanwhile never answered: %v", ErrDrill, c2, newPod, err)
	}
	e.Report.Add("store down", "store restarted → pod added while down answers after", emulator.Ms(seen.At.Sub(up)), "pass")
	e.logf("%s converged %v after its store restarted", c2, seen.At.Sub(up))
	if err := m.ScaleEcho(ctx, c2, e.Service, e.Replicas); err != nil {
		return err
	}
	return e.waitReadyPods(ctx, c2, e.Replicas)
}

// NodeDeath: a node of the second cluster hosting echo pods dies hard (off
// the fabric, processes killed, kubelet silent: Kubernetes still calls its
// pods ready). Gossip declares it dead and every agent stops choosing its
// backends. Figures: time from the death to the last failed attempt, and
// the failed attempts.
func NodeDeath(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	var victim string
	var dead []string
	for _, n := range m.Nodes(c2)[1:] {
		pods, err := m.EchoPodsOn(ctx, n, e.Service)
		if err != nil {
			return err
		}
		if len(pods) > 0 {
			victim, dead = n, pods
		}
	}
	if victim == "" {
		return fmt.Errorf("%w: no node of %s other than the first hosts an echo pod", ErrDrill, c2)
	}
	tr, err := e.traffic(ctx, c1, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	start := time.Now()
	if _, err := e.waitSeen(ctx, tr, start, c1, c2); err != nil {
		return fmt.Errorf("before: %w", err)
	}
	// With BGP, the victim's pod CIDR must leave the other cluster's
	// nodes when health gossip declares it dead: BGP itself would keep it
	// for the graceful-restart timers.
	rm, _ := m.(RouteMesh)
	var withdrawn chan routeWithdrawal
	if rm != nil && rm.RoutingBGP() {
		withdrawn = make(chan routeWithdrawal, 1)
	}
	watcher := e.firstNode(c1)
	var victimIP netip.Addr
	var victimRoutes []netip.Prefix
	if withdrawn != nil {
		if victimIP, err = rm.NodeIP(ctx, victim); err != nil {
			return err
		}
		routes, err := rm.MeshRoutes(ctx, watcher)
		if err != nil {
			return err
		}
		if victimRoutes = viaHop(routes, victimIP); len(victimRoutes) == 0 {
			return fmt.Errorf("%w: before the death: %s has no route via %s (%s): %v", ErrDrill, watcher, victim, victimIP, routes)
		}
	}
	killed := time.Now()
	if err := m.KillNode(ctx, victim); err != nil {
		return err
	}
	if withdrawn != nil {
		go func() { withdrawn <- waitWithdrawn(ctx, rm, watcher, victimIP, victimRoutes, killed, e.wait()) }()
	}
	// An attempt that started while KillNode was in progress may still
	// have been answered; from here on the node is gone for sure.
	gone := time.Now()
	// Healthy again: 100 attempts in a row succeed, none from the dead node.
	if _, err := e.waitOnly(ctx, tr, killed, 100, c1, c2); err != nil {
		return fmt.Errorf("after killing %s: %w", victim, err)
	}
	as := tr.Attempts(killed)
	var lastFail time.Time
	for _, a := range as {
		if !a.OK {
			lastFail = a.At.Add(a.Latency)
		}
		if a.OK && slices.Contains(dead, a.Backend) && a.At.After(gone) {
			return fmt.Errorf("%w: pod %s of dead node %s answered %v after the node was gone", ErrDrill, a.Backend, victim, a.At.Sub(gone))
		}
	}
	took := time.Duration(0)
	if !lastFail.IsZero() {
		took = lastFail.Sub(killed)
	}
	e.Report.Add("node death", fmt.Sprintf("kill %s → last failed attempt after", victim), emulator.Ms(took), "pass")
	e.Report.Add("node death", "failed attempts", fmt.Sprintf("%d of %d", failures(as), len(as)), "pass")
	if withdrawn != nil {
		w := <-withdrawn
		res := "pass"
		if w.err != nil {
			res = "FAIL"
		}
		e.Report.Add("node death", fmt.Sprintf("kill %s → its pod CIDR %v withdrawn on %s (BGP) after", victim, w.prefixes, watcher), emulator.Ms(w.after), res)
		if w.err != nil {
			return fmt.Errorf("%w: %s's routes on %s: %v", ErrDrill, victim, watcher, w.err)
		}
	}
	e.logf("node %s dead: backends left load balancing within %v (%d failed attempts)", victim, took, failures(as))
	return nil
}

// routeWithdrawal is when a dead node's routes left a watching node.
type routeWithdrawal struct {
	prefixes []netip.Prefix
	after    time.Duration
	err      error
}

// viaHop returns the destinations routed via hop.
func viaHop(routes map[netip.Prefix]netip.Addr, hop netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for p, h := range routes {
		if h == hop {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// waitWithdrawn polls node's mesh routes until none goes via hop; before
// are the routes via hop seen before the death, named in the result even
// when the first poll already finds them gone.
func waitWithdrawn(ctx context.Context, rm RouteMesh, node string, hop netip.Addr, before []netip.Prefix, since time.Time, limit time.Duration) routeWithdrawal {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	last := before
	for {
		routes, err := rm.MeshRoutes(ctx, node)
		if err == nil {
			via := viaHop(routes, hop)
			if len(via) == 0 {
				return routeWithdrawal{prefixes: last, after: time.Since(since)}
			}
			last = via
		}
		select {
		case <-ctx.Done():
			return routeWithdrawal{prefixes: last, after: time.Since(since), err: fmt.Errorf("still routed via %s after %v: %v", hop, limit, last)}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Disconnect: `clustermesh disconnect` between the first two clusters; each
// cluster's traffic drains to its own backends only, and no connection
// fails meanwhile. Figure: time to drain.
//
// The probes run inside pods where the mesh can: a pod's connection to a
// backend of the other cluster needs that cluster's route back to this
// cluster's pod CIDR, which must outlive the disconnect until this side's
// agents have let go too (--route-drain, --bgp-peer-drain). A probe on a
// node's own address would not see those routes go.
func Disconnect(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	const probePod = "disconnect-probe"
	var trs []Traffic
	for _, c := range []string{c1, c2} {
		var tr Traffic
		var err error
		if pm, ok := m.(PodTrafficMesh); ok {
			kube, kerr := kubeClient(m.Kubeconfig(c))
			if kerr != nil {
				return kerr
			}
			defer func() {
				_ = kube.CoreV1().Pods("default").Delete(context.WithoutCancel(ctx), probePod, metav1.DeleteOptions{})
			}()
			tr, err = pm.StartPodTraffic(ctx, c, probePod, map[string]string{"app": probePod}, e.Service, "tcp", 0)
		} else {
			tr, err = e.traffic(ctx, c, "tcp")
		}
		if err != nil {
			return err
		}
		defer stop(tr)
		trs = append(trs, tr)
	}
	start := time.Now()
	for _, tr := range trs {
		if _, err := e.waitSeen(ctx, tr, start, c1, c2); err != nil {
			return fmt.Errorf("before: %w", err)
		}
	}
	disc := time.Now()
	if err := m.Disconnect(ctx, c1, c2); err != nil {
		return err
	}
	var failed []string
	for i, c := range []string{c1, c2} {
		a, err := e.waitOnly(ctx, trs[i], disc, 100, c)
		if err != nil {
			return fmt.Errorf("after disconnect: %w", err)
		}
		e.Report.Add("disconnect", fmt.Sprintf("%s's traffic only local after", c), emulator.Ms(a.At.Sub(disc)), "pass")
		as := trs[i].Attempts(disc)
		verdict := "pass"
		if n := failures(as); n > 0 {
			verdict = "FAIL"
			failed = append(failed, fmt.Sprintf("%s: %d (%s)", c, n, e.split(as)))
		}
		e.Report.Add("disconnect", fmt.Sprintf("%s's failed attempts while draining", c), fmt.Sprint(failures(as)), verdict)
	}
	if len(failed) > 0 {
		// Each side's routes to the other's pods outlive the disconnect
		// (--route-drain, --bgp-peer-drain) until both sides have let go.
		return fmt.Errorf("%w: failed attempts while draining: %s", ErrDrill, strings.Join(failed, "; "))
	}
	return nil
}

// RollingUpdate: c1's clients reach the service in c2 only (affinity
// remote) while c2's echo Deployment is rolled (one extra pod at a time,
// none unavailable, a preStop sleep). A new pod is ready before an old one
// terminates, and a terminating pod keeps serving while the mesh moves new
// connections to ready backends (serving-but-terminating backends are used
// only when no ready one is left anywhere). Figure: failed attempts during
// the rollout; the drill fails on any.
func RollingUpdate(ctx context.Context, e *Env) error {
	m, c1, c2 := e.Mesh, e.c(0), e.c(1)
	if err := m.MarkGlobal(ctx, e.Service, "remote"); err != nil {
		return err
	}
	defer func() { _ = m.MarkGlobal(context.WithoutCancel(ctx), e.Service, "none") }()
	tr, err := e.traffic(ctx, c1, "tcp")
	if err != nil {
		return err
	}
	defer stop(tr)
	if _, err := e.waitOnly(ctx, tr, time.Now(), 50, c2); err != nil {
		return fmt.Errorf("before the rollout: %w", err)
	}
	kube, err := kubeClient(m.Kubeconfig(c2))
	if err != nil {
		return err
	}
	before := map[string]bool{}
	for _, a := range tr.Attempts(time.Now().Add(-time.Second)) {
		before[a.Backend] = true
	}
	rolled := time.Now()
	if err := rollout(ctx, kube, e.Service, e.wait()); err != nil {
		return fmt.Errorf("cluster %s: %w", c2, err)
	}
	done := time.Now()
	if err := settle(ctx, time.Second); err != nil {
		return err
	}
	as := tr.Attempts(rolled)
	fails := failures(as)
	newPods := 0
	for _, a := range as {
		if a.OK && !before[a.Backend] {
			newPods++
		}
	}
	e.Report.Add("rolling update", "c2's echo Deployment rolled, traffic from c1 (affinity remote)", emulator.Ms(done.Sub(rolled)), "pass")
	verdict := "pass"
	if fails > 0 || newPods == 0 {
		verdict = "FAIL"
	}
	e.Report.Add("rolling update", "failed attempts during the rollout", fmt.Sprintf("%d (%s)", fails, e.split(as)), verdict)
	e.logf("rolled %s's Deployment in %v: %d failed attempts, %d answers from new pods", c2, done.Sub(rolled), fails, newPods)
	if fails > 0 {
		return fmt.Errorf("%w: %d failed attempts during the rollout (%s)", ErrDrill, fails, e.split(as))
	}
	if newPods == 0 {
		return fmt.Errorf("%w: no answer from a new pod after the rollout (%s)", ErrDrill, e.split(as))
	}
	return nil
}
