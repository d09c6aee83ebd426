package bgp

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/route"
)

// rtprotBird is the rtnetlink protocol bird2 installs routes with.
const rtprotBird = 12

// benchPrefixes returns n /24s, one node's worth each.
func benchPrefixes(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
	}
	return out
}

// BenchmarkConvergence measures, per iteration, the time from announcing N
// node prefixes at an origin to all of them installed in the kernel of every
// receiver, and from killing the origin to all of them removed everywhere.
// Via the reflector it also measures the withdrawal the mesh does for a
// node its health gossip declares dead: from SetDeadNextHops(origin) on
// every receiver to the N routes gone from their kernels ("dead-withdraw";
// the routes are restored before the origin is killed). "origin-updates"
// and "rr-updates" count the UPDATE messages the origin sent and the
// reflector relayed (to both receivers) for one announcement of N
// prefixes. "announce-first" is the time until every receiver's kernel
// holds its first route (the pipeline's latency; the rest of "announce"
// is its throughput). "announce-cpu" and "withdraw-cpu" are the CPU time
// of every process of the setup meanwhile, and "…-cpu-origin", "…-cpu-rr"
// and "…-cpu-receivers" the same per role.
//
//	gobgp-direct:    origin speaker -> 1 receiver speaker (eBGP)
//	gobgp-reflector: origin speaker -> route reflector -> 2 receiver speakers (iBGP)
//	bird-direct:     bird2 -> bird2 with its kernel protocol (the baseline)
//	bird-reflector:  bird2 -> bird2 reflector -> 2 bird2 with their kernel protocol
//
// Every clock starts when the prefixes are handed to the origin (see
// benchBird) and stops when the last receiver's kernel holds them all.
//
// The sizes are BENCH_BGP_SIZES (comma-separated), 100,1000,10000 unless
// set. Run:
//
//	go test -run '^$' -bench Convergence -benchtime 3x ./bgp/
//	BENCH_BGP_SIZES=1000 go test -run '^$' -bench Convergence -benchtime 10x ./bgp/
func BenchmarkConvergence(b *testing.B) {
	sizes, err := benchSizes(os.Getenv("BENCH_BGP_SIZES"))
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("gobgp-direct/prefixes=%d", n), func(b *testing.B) { benchGoBGP(b, n, false) })
		b.Run(fmt.Sprintf("gobgp-reflector/prefixes=%d", n), func(b *testing.B) { benchGoBGP(b, n, true) })
		b.Run(fmt.Sprintf("bird-direct/prefixes=%d", n), func(b *testing.B) { benchBird(b, n, false) })
		b.Run(fmt.Sprintf("bird-reflector/prefixes=%d", n), func(b *testing.B) { benchBird(b, n, true) })
	}
}

// benchSizes parses BENCH_BGP_SIZES.
func benchSizes(env string) ([]int, error) {
	if env == "" {
		return []int{100, 1000, 10000}, nil
	}
	var out []int
	for _, f := range strings.Split(env, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 65536 {
			return nil, fmt.Errorf("BENCH_BGP_SIZES: %q is not a prefix count in 1..65536", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// convergence holds each iteration's times.
type convergence struct {
	call, announce, withdraw, session []time.Duration
	first                             []time.Duration
	deadWithdraw                      []time.Duration
	originUpdates, rrUpdates          []uint64
	// cpu holds the CPU time the BGP processes used during each announce
	// and withdraw, which a loaded machine (where wall times swing)
	// changes much less: all of them ("announce-cpu") and per role
	// ("announce-cpu-rr").
	cpu map[string][]time.Duration
}

// roles are the processes of one setup by role: the origin, the reflector
// (none direct) and the receivers.
type roles struct{ origin, rr, recv []int }

// newRoles names the roles of origin and pids, the reflector first if
// there is one, then the receivers.
func newRoles(origin int, pids []int, reflector bool) roles {
	if reflector {
		return roles{origin: []int{origin}, rr: pids[:1], recv: pids[1:]}
	}
	return roles{origin: []int{origin}, recv: pids}
}

// cpu reads every role's CPU time so far.
func (r roles) cpu() map[string]time.Duration {
	return map[string]time.Duration{"origin": cpuTime(r.origin...), "rr": cpuTime(r.rr...), "receivers": cpuTime(r.recv...)}
}

// addCPU records the CPU each role, and all together, used in phase since
// before.
func (c *convergence) addCPU(phase string, r roles, before map[string]time.Duration) {
	if c.cpu == nil {
		c.cpu = map[string][]time.Duration{}
	}
	var total time.Duration
	for role, t := range r.cpu() {
		if (role == "rr" && len(r.rr) == 0) || (role == "origin" && phase == "withdraw") {
			continue // no reflector; a killed origin
		}
		name := phase + "-cpu-" + role
		c.cpu[name] = append(c.cpu[name], t-before[role])
		total += t - before[role]
	}
	c.cpu[phase+"-cpu"] = append(c.cpu[phase+"-cpu"], total)
}

func (c *convergence) report(b *testing.B) {
	all := map[string][]time.Duration{
		"announce-call": c.call, "announce-first": c.first, "announce": c.announce, "withdraw": c.withdraw, "restart-session": c.session,
		"dead-withdraw": c.deadWithdraw,
	}
	for name, ds := range c.cpu {
		all[name] = ds
	}
	for name, ds := range all {
		slices.Sort(ds)
		if len(ds) == 0 {
			continue
		}
		b.ReportMetric(ms(ds[len(ds)/2]), name+"-p50-ms")
		b.ReportMetric(ms(ds[(len(ds)*99+99)/100-1]), name+"-p99-ms")
	}
	for name, ns := range map[string][]uint64{"origin-updates": c.originUpdates, "rr-updates": c.rrUpdates} {
		if len(ns) > 0 {
			slices.Sort(ns)
			b.ReportMetric(float64(ns[len(ns)/2]), name)
		}
	}
	b.ReportMetric(0, "ns/op")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is the user plus system time processes pids used so far (in
// clock ticks of 10 ms); a process gone counts 0.
func cpuTime(pids ...int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command name, which may hold spaces: state is
		// field 3, utime 14 and stime 15.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * 10 * time.Millisecond
	}
	return total
}

// routeWatch counts a namespace's routes of one protocol from a netlink
// subscription, so waiting for convergence burns no CPU polling.
type routeWatch struct {
	mu      sync.Mutex
	set     map[netip.Prefix]bool
	first   time.Time // when the set last went from empty to not
	changed chan struct{}
	err     error
}

func (l *lab) watchRoutes(tb testing.TB, ns string, proto netlink.RouteProtocol) *routeWatch {
	tb.Helper()
	h, err := netnsHandle(ns)
	if err != nil {
		tb.Fatal(err)
	}
	w := &routeWatch{set: map[netip.Prefix]bool{}, changed: make(chan struct{}, 1)}
	ch := make(chan netlink.RouteUpdate, 8192)
	done := make(chan struct{})
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &h, ListExisting: true, ReceiveBufferSize: 16 << 20, ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for u := range ch {
			if u.Protocol != proto || u.Dst == nil {
				continue
			}
			p, ok := route.PrefixOf(u.Dst)
			if !ok {
				continue
			}
			w.mu.Lock()
			if u.Type == unix.RTM_NEWROUTE {
				if len(w.set) == 0 {
					w.first = time.Now()
				}
				w.set[p] = true
			} else if u.Type == unix.RTM_DELROUTE {
				delete(w.set, p)
			}
			w.mu.Unlock()
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}()
	tb.Cleanup(func() { close(done); <-finished; h.Close() })
	return w
}

// firstRoute is when the last of watches got its first route.
func firstRoute(watches []*routeWatch) time.Time {
	var last time.Time
	for _, w := range watches {
		w.mu.Lock()
		if w.first.After(last) {
			last = w.first
		}
		w.mu.Unlock()
	}
	return last
}

// waitCount returns when every watch holds want routes.
func waitCount(b *testing.B, watches []*routeWatch, want int) {
	b.Helper()
	timeout := time.After(2 * time.Minute)
	for _, w := range watches {
		for {
			w.mu.Lock()
			n, err := len(w.set), w.err
			w.mu.Unlock()
			if err != nil {
				b.Fatalf("route subscription: %v", err)
			}
			if n == want {
				break
			}
			select {
			case <-w.changed:
			case <-timeout:
				b.Fatalf("receiver holds %d routes, want %d", n, want)
			}
		}
	}
}

func benchGoBGP(b *testing.B, n int, reflector bool) {
	l := newLab(b)
	origin := Peer{Name: "origin", Address: netip.MustParseAddr("192.0.2.10"), ASN: 65010}
	peerOfOrigin := []Peer{}
	var receivers []*routeWatch
	var recvProcs []*child
	var rrProc *child
	var pids []int // of the reflector and receivers
	cfg := DefaultKindConfig()
	// Measure BGP withdrawal, not our grace nor graceful restart (which
	// keeps a killed origin's routes on purpose).
	cfg.SessionLossGrace = 0
	cfg.GracefulRestartTime = 0
	cfg.MaxPrefixes = 0
	if reflector {
		origin.ASN = 65001
		rrNS := l.Host("rr", "192.0.2.1")
		rcfg := cfg
		rcfg.Name, rcfg.ASN, rcfg.RouterID = "rr", 65001, netip.MustParseAddr("192.0.2.1")
		rrPeers := []Peer{{Name: "origin", Address: origin.Address, ASN: 65001, Passive: true, RouteReflectorClient: true}}
		for i := 1; i <= 2; i++ {
			rrPeers = append(rrPeers, Peer{Name: fmt.Sprintf("r%d", i), Address: netip.MustParseAddr(fmt.Sprintf("192.0.2.2%d", i)), ASN: 65001, Passive: true, RouteReflectorClient: true})
		}
		rrProc = l.startChild("rr", rrNS, "reflector", rcfg, rrPeers)
		pids = append(pids, rrProc.cmd.Process.Pid)
		rr := Peer{Name: "rr", Address: netip.MustParseAddr("192.0.2.1"), ASN: 65001}
		for i := 1; i <= 2; i++ {
			ns, proc := l.startReceiver(b, i, cfg, 65001, rr)
			receivers = append(receivers, l.watchRoutes(b, ns, RouteProtocol))
			recvProcs = append(recvProcs, proc)
			pids = append(pids, proc.cmd.Process.Pid)
		}
		// The first announcement must not wait for a receiver's session
		// with the reflector to come up (it would add up to a second).
		for _, proc := range recvProcs {
			poll.Eventually(b, 2*time.Minute, proc.name+"'s session with the reflector", func() (bool, string) {
				st := proc.status()
				return len(st.Peers) > 0 && st.Peers[0].Established, fmt.Sprintf("%+v", st.Peers)
			})
		}
		peerOfOrigin = append(peerOfOrigin, rr)
	} else {
		ns, proc := l.startReceiver(b, 1, cfg, 65001, Peer{Name: "origin", Address: origin.Address, ASN: origin.ASN, Passive: true})
		receivers = append(receivers, l.watchRoutes(b, ns, RouteProtocol))
		pids = append(pids, proc.cmd.Process.Pid)
		peerOfOrigin = append(peerOfOrigin, Peer{Name: "r1", Address: netip.MustParseAddr("192.0.2.21"), ASN: 65001})
	}
	originNS := l.Host("origin", origin.Address.String())
	ocfg := cfg
	ocfg.Name, ocfg.ASN = "origin", origin.ASN
	ocfg.NodeIPs = []netip.Addr{origin.Address}
	prefixes := benchPrefixes(n)

	var c convergence
	for b.Loop() {
		t0 := time.Now()
		proc := l.startChild("origin", originNS, "speaker", ocfg, peerOfOrigin)
		poll.Eventually(b, 2*time.Minute, "origin sessions", func() (bool, string) {
			st := proc.status()
			for _, p := range st.Peers {
				if !p.Established {
					return false, fmt.Sprintf("%+v", st.Peers)
				}
			}
			return true, ""
		})
		c.session = append(c.session, time.Since(t0))
		rs := newRoles(proc.cmd.Process.Pid, pids, reflector)
		rrSent0 := updatesSent(rrProc)
		cpu0 := rs.cpu()
		t0 = time.Now()
		proc.call(childReq{Op: "announce", Prefixes: prefixes})
		c.call = append(c.call, time.Since(t0))
		waitCount(b, receivers, n)
		c.announce = append(c.announce, time.Since(t0))
		c.first = append(c.first, firstRoute(receivers).Sub(t0))
		c.addCPU("announce", rs, cpu0)
		if os.Getenv(cpuProfileEnv) != "" {
			proc.call(childReq{Op: "stopprofile"})
		}
		c.originUpdates = append(c.originUpdates, updatesSent(proc))
		if rrProc != nil {
			c.rrUpdates = append(c.rrUpdates, updatesSent(rrProc)-rrSent0)
			c.deadWithdraw = append(c.deadWithdraw, deadWithdraw(b, recvProcs, receivers, origin.Address, n))
		}
		cpu0 = rs.cpu()
		t0 = time.Now()
		proc.kill()
		waitCount(b, receivers, 0)
		c.withdraw = append(c.withdraw, time.Since(t0))
		c.addCPU("withdraw", rs, cpu0)
	}
	c.report(b)
}

// updatesSent is the UPDATE messages p sent to its peers so far; 0 for
// nil (no reflector).
func updatesSent(p *child) uint64 {
	if p == nil {
		return 0
	}
	var n uint64
	for _, ps := range p.status().Peers {
		n += ps.UpdatesSent
	}
	return n
}

// deadWithdraw declares dead on every receiver at once, as health gossip
// does on every node, and returns the time until their kernels hold none of
// the n routes; then it declares it alive again and waits for the routes
// to be back.
func deadWithdraw(b *testing.B, procs []*child, watches []*routeWatch, dead netip.Addr, n int) time.Duration {
	b.Helper()
	set := func(addrs []netip.Addr) {
		errs := make(chan error, len(procs))
		for _, p := range procs {
			go func() {
				_, err := p.try(childReq{Op: "dead", Addrs: addrs})
				errs <- err
			}()
		}
		for range procs {
			if err := <-errs; err != nil {
				b.Fatalf("set dead next hops: %v", err)
			}
		}
	}
	t0 := time.Now()
	set([]netip.Addr{dead})
	waitCount(b, watches, 0)
	d := time.Since(t0)
	set(nil)
	waitCount(b, watches, n)
	return d
}

// startReceiver starts speaker r<i> at 192.0.2.2<i> peering with peer, and
// returns its namespace and process.
func (l *lab) startReceiver(b *testing.B, i int, cfg Config, asn uint32, peer Peer) (string, *child) {
	ip := netip.MustParseAddr(fmt.Sprintf("192.0.2.2%d", i))
	ns := l.Host(fmt.Sprintf("r%d", i), ip.String())
	cfg.Name, cfg.ASN = fmt.Sprintf("r%d", i), asn
	cfg.NodeIPs = []netip.Addr{ip}
	return ns, l.startChild(cfg.Name, ns, "speaker", cfg, []Peer{peer})
}

// birdBGP is a bird2 BGP session to an iBGP or eBGP neighbor with the
// benchmark's timers.
func birdBGP(name, local string, localAS uint32, neighbor string, neighborAS uint32, extra string) string {
	return fmt.Sprintf(`
protocol bgp %s {
	local %s as %d;
	neighbor %s as %d;
	hold time 9;
	keepalive time 3;
	connect retry time 1;
	error wait time 1, 2;
%s}
`, name, local, localAS, neighbor, neighborAS, extra)
}

// benchBird is benchGoBGP with bird2 on every node: the origin, the
// reflector (rr client sessions, no kernel protocol) and the receivers
// (kernel protocol exporting every route).
//
// The clock starts where GoBGP's does, when the prefixes are handed to the
// origin: GoBGP's gets them in its Announce call, bird's in its config,
// written at that moment and loaded with `birdc configure` (its static
// protocol then originates them). The origin starts with no routes.
func benchBird(b *testing.B, n int, reflector bool) {
	l := newLab(b)
	originNS := l.Host("origin", "192.0.2.10")
	receiver := func(i int, neighbor string, neighborAS uint32, passive bool) (string, *birdProc) {
		ip := fmt.Sprintf("192.0.2.2%d", i)
		ns := l.Host(fmt.Sprintf("r%d", i), ip)
		// iBGP sessions are multihop unless "direct" (all nodes share a
		// subnet here): then the next hop is a direct gateway.
		extra := "\tdirect;\n\tipv4 { import all; export none; };\n"
		if passive {
			extra = "\tpassive on;\n" + extra
		}
		return ns, l.startBird(fmt.Sprintf("r%d", i), ns, "router id "+ip+";\nprotocol device { scan time 10; }\n"+
			"protocol kernel { ipv4 { import none; export all; }; }\n"+birdBGP("up", ip, 65001, neighbor, neighborAS, extra))
	}
	var recv []*routeWatch
	var pids []int // of the reflector and receivers
	originSession := birdBGP("up", "192.0.2.10", 65010, "192.0.2.21", 65001, "\tipv4 { import none; export all; };\n")
	if reflector {
		rrNS := l.Host("rr", "192.0.2.1")
		conf := "router id 192.0.2.1;\nprotocol device { scan time 10; }\n"
		for _, c := range [][2]string{{"origin", "192.0.2.10"}, {"r1", "192.0.2.21"}, {"r2", "192.0.2.22"}} {
			conf += birdBGP(c[0], "192.0.2.1", 65001, c[1], 65001, "\tdirect;\n\tpassive on;\n\trr client;\n\trr cluster id 192.0.2.1;\n\tipv4 { import all; export all; };\n")
		}
		rr := l.startBird("rr", rrNS, conf)
		pids = append(pids, rr.cmd.Process.Pid)
		originSession = birdBGP("up", "192.0.2.10", 65001, "192.0.2.1", 65001, "\tdirect;\n\tipv4 { import none; export all; };\n")
	}
	if reflector {
		for i := 1; i <= 2; i++ {
			ns, p := receiver(i, "192.0.2.1", 65001, false)
			recv = append(recv, l.watchRoutes(b, ns, rtprotBird))
			pids = append(pids, p.cmd.Process.Pid)
			// As for GoBGP: the reflector's sessions are up before the
			// first announcement.
			poll.Eventually(b, 2*time.Minute, fmt.Sprintf("r%d's session with the reflector", i), func() (bool, string) {
				out, err := p.birdc("show", "protocols", "up")
				return err == nil && strings.Contains(out, "Established"), out
			})
		}
	} else {
		ns, p := receiver(1, "192.0.2.10", 65010, true)
		recv = append(recv, l.watchRoutes(b, ns, rtprotBird))
		pids = append(pids, p.cmd.Process.Pid)
	}
	var routes strings.Builder
	for _, p := range benchPrefixes(n) {
		fmt.Fprintf(&routes, "\troute %s blackhole;\n", p)
	}
	originConf := func(routes string) string {
		return "router id 192.0.2.10;\nprotocol device { scan time 10; }\nprotocol static st {\n\tipv4;\n" + routes + "}\n" + originSession
	}
	var c convergence
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		origin := l.startBird(fmt.Sprintf("origin%d", i), originNS, originConf(""))
		poll.Eventually(b, 2*time.Minute, "bird session", func() (bool, string) {
			out, err := origin.birdc("show", "protocols", "up")
			return err == nil && strings.Contains(out, "Established"), out
		})
		c.session = append(c.session, time.Since(t0))
		rs := newRoles(origin.cmd.Process.Pid, pids, reflector)
		cpu0 := rs.cpu()
		t0 = time.Now()
		if err := os.WriteFile(origin.conf, []byte(originConf(routes.String())), 0o644); err != nil {
			b.Fatal(err)
		}
		if out, err := origin.birdc("configure"); err != nil || !strings.Contains(out, "Reconfigured") {
			b.Fatalf("birdc configure: %v: %s", err, out)
		}
		c.call = append(c.call, time.Since(t0))
		waitCount(b, recv, n)
		c.announce = append(c.announce, time.Since(t0))
		c.first = append(c.first, firstRoute(recv).Sub(t0))
		c.addCPU("announce", rs, cpu0)
		cpu0 = rs.cpu()
		t0 = time.Now()
		origin.kill()
		waitCount(b, recv, 0)
		c.withdraw = append(c.withdraw, time.Since(t0))
		c.addCPU("withdraw", rs, cpu0)
	}
	c.report(b)
}
