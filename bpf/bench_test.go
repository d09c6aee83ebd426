package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// errSkipped marks a baseline BENCH_NO_IPTABLES left out.
var errSkipped = errors.New("skipped (BENCH_NO_IPTABLES)")

// BenchmarkConnect measures connect() latency to a random one of N services,
// side by side in one run: straight to a backend, through our eBPF maps, and
// through a kube-proxy style iptables DNAT chain loaded with iptables-legacy
// and with iptables-nft. Each path has its own client netns (rules live in
// the netns, never on the host), all wired by veths to one server netns. It
// also reports how long programming takes: N services from empty, and one
// service changed among N.
//
// Run: go test -run '^$' -bench BenchmarkConnect -benchtime 1x ./bpf/
// (BENCH_SIZES=1000,10000 to skip the 100k round).
func BenchmarkConnect(b *testing.B) {
	sizes := benchSizes()
	const (
		samples = 4000
		rounds  = 10
	)

	if os.Getenv("BENCH_BPF_STATS") != "" {
		// The kernel's per-program run time (kernel.bpf_stats_enabled);
		// it adds two clock reads per run, so it is off by default.
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			b.Fatalf("enable bpf stats: %v", err)
		}
		defer st.Close()
	}
	l, pin, cg := newLab(b)
	tp := newTopo(l, 4)
	tp.serveEcho(b)
	legacyNS := addClientNS(tp, "lg", 1)
	nftNS := addClientNS(tp, "nf", 2)
	backends := []netip.AddrPort{tp.v4["be1"], tp.v4["be2"], tp.v4["be3"], tp.v4["be4"]}

	cfg := testConfig(cg, pin)
	cfg.MaxServices = 131072
	cfg.MaxSlots = 2*131072 + 16
	ctx := context.Background()

	type row struct {
		size                     int
		p50, p99                 map[string]time.Duration
		bpfLoad, bpfChange       time.Duration
		legacyLoad, legacyChange time.Duration
		nftLoad, nftChange       time.Duration
		legacyErr, nftErr        error
		rules                    int
		progNs                   map[string]float64 // cm_connect4 run time per run, with BENCH_BPF_STATS
	}
	var rows []row

	for _, n := range sizes {
		r := row{size: n, p50: map[string]time.Duration{}, p99: map[string]time.Duration{}, progNs: map[string]float64{}}
		svcs := make([]loadbalancer.Service, n)
		for i := range svcs {
			svcs[i] = loadbalancer.Service{
				Frontend: loadbalancer.Frontend{Addr: benchVIP(i), Protocol: loadbalancer.TCP},
				Preferred: []loadbalancer.Backend{
					{Addr: backends[i%4], Node: nodeA},
					{Addr: backends[(i+1)%4], Node: nodeA},
				},
			}
		}

		// eBPF: program from empty, change one, measure.
		dp, err := Open(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for _, s := range svcs {
			if err := dp.UpsertService(ctx, s); err != nil {
				b.Fatal(err)
			}
		}
		r.bpfLoad = time.Since(start)
		changed := svcs[n/2]
		changed.Preferred = []loadbalancer.Backend{{Addr: backends[3], Node: nodeA}, {Addr: backends[2], Node: nodeA}}
		start = time.Now()
		if err := dp.UpsertService(ctx, changed); err != nil {
			b.Fatal(err)
		}
		r.bpfChange = time.Since(start)
		if err := dp.UpsertService(ctx, svcs[n/2]); err != nil {
			b.Fatal(err)
		}

		// iptables in their own netns.
		rules := kubeProxyRules(svcs)
		r.rules = strings.Count(rules, "\n-A ")
		if os.Getenv("BENCH_NO_IPTABLES") != "" {
			// The eBPF paths alone (the iptables loads take minutes at 100k).
			r.legacyErr, r.nftErr = errSkipped, errSkipped
		} else {
			r.legacyLoad, r.legacyErr = iptablesRestore(legacyNS, "iptables-legacy-restore", rules, false)
			if r.legacyErr == nil {
				r.legacyChange, r.legacyErr = iptablesRestore(legacyNS, "iptables-legacy-restore", kubeProxyChange(svcs[n/2], backends[3]), true)
			}
			r.nftLoad, r.nftErr = iptablesRestore(nftNS, "iptables-nft-restore", rules, false)
			if r.nftErr == nil {
				r.nftChange, r.nftErr = iptablesRestore(nftNS, "iptables-nft-restore", kubeProxyChange(svcs[n/2], backends[3]), true)
			}
		}

		pick := rand.New(rand.NewPCG(uint64(n), 1))
		vipTarget := func() netip.AddrPort { return benchVIP(pick.IntN(n)) }
		directTarget := func() netip.AddrPort { return backends[pick.IntN(4)] }
		type mode struct {
			name     string
			ns       string
			target   func() netip.AddrPort
			inCgroup bool
		}
		// ebpf-miss connects straight to a backend from inside the cgroup:
		// the cost of the programs for traffic that is not to a service.
		modes := []mode{{"direct", tp.clientNS, directTarget, false}, {"ebpf", tp.clientNS, vipTarget, true},
			{"ebpf-miss", tp.clientNS, directTarget, true}}
		if r.legacyErr == nil {
			modes = append(modes, mode{"iptables-legacy", legacyNS, vipTarget, false})
		}
		if r.nftErr == nil {
			modes = append(modes, mode{"iptables-nft", nftNS, vipTarget, false})
		}
		// Paths take turns in short rounds so that load from other work on
		// the machine falls on all of them alike.
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			lat := map[string][]time.Duration{}
			progRun := map[string]*progRunTime{}
			for i := 0; i < b.N; i++ {
				for _, m := range modes { // warm-up, not counted
					if _, err := measureConnects(m.ns, cg, m.inCgroup, 100, m.target); err != nil {
						b.Fatalf("%s: %v", m.name, err)
					}
				}
				for round := 0; round < rounds; round++ {
					for _, m := range modes {
						before := connectStats(b, dp)
						l, err := measureConnects(m.ns, cg, m.inCgroup, samples/rounds, m.target)
						if err != nil {
							b.Fatalf("%s: %v", m.name, err)
						}
						lat[m.name] = append(lat[m.name], l...)
						if before != nil {
							if progRun[m.name] == nil {
								progRun[m.name] = &progRunTime{}
							}
							progRun[m.name].add(before, connectStats(b, dp))
						}
					}
				}
			}
			for _, m := range modes {
				all := lat[m.name]
				slices.Sort(all)
				r.p50[m.name], r.p99[m.name] = pct(all, 50), pct(all, 99)
			}
			for _, m := range modes {
				b.ReportMetric(float64(r.p50[m.name].Nanoseconds())/1e3, m.name+"-p50-µs")
				b.ReportMetric(float64(r.p99[m.name].Nanoseconds())/1e3, m.name+"-p99-µs")
				if m.name != "direct" {
					b.ReportMetric(float64(r.p50[m.name])/float64(r.p50["direct"]), m.name+"-p50-x-direct")
				}
			}
			for _, name := range []string{"ebpf", "ebpf-miss"} {
				if pr := progRun[name]; pr != nil && pr.count > 0 {
					r.progNs[name] = float64(pr.runtime.Nanoseconds()) / float64(pr.count)
					b.ReportMetric(r.progNs[name], name+"-connect4-run-ns")
					b.ReportMetric(pr.median(), name+"-connect4-run-ns-median")
				}
			}
			b.ReportMetric(r.bpfLoad.Seconds(), "ebpf-program-all-s")
			b.ReportMetric(float64(r.bpfChange.Nanoseconds())/1e3, "ebpf-change-one-µs")
			if r.legacyErr == nil {
				b.ReportMetric(r.legacyLoad.Seconds(), "iptables-legacy-program-all-s")
				b.ReportMetric(float64(r.legacyChange.Nanoseconds())/1e3, "iptables-legacy-change-one-µs")
			}
			if r.nftErr == nil {
				b.ReportMetric(r.nftLoad.Seconds(), "iptables-nft-program-all-s")
				b.ReportMetric(float64(r.nftChange.Nanoseconds())/1e3, "iptables-nft-change-one-µs")
			}
		})
		rows = append(rows, r)

		if err := dp.Remove(); err != nil {
			b.Fatal(err)
		}
		for _, ns := range []struct{ ns, tool string }{{legacyNS, "iptables-legacy"}, {nftNS, "iptables-nft"}} {
			flushNAT(ns.ns, ns.tool)
		}
	}

	// The side-by-side table docs/datapath.md quotes.
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| services | rules | path | connect p50 | p99 | p50 / direct | program all | change one |\n|---|---|---|---|---|---|---|---|\n")
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/1e3) }
	for _, r := range rows {
		for _, m := range []struct {
			mode         string
			load, change time.Duration
			err          error
		}{
			{"direct", 0, 0, nil},
			{"ebpf", r.bpfLoad, r.bpfChange, nil},
			{"ebpf-miss", 0, 0, nil},
			{"iptables-legacy", r.legacyLoad, r.legacyChange, r.legacyErr},
			{"iptables-nft", r.nftLoad, r.nftChange, r.nftErr},
		} {
			if m.err != nil {
				fmt.Fprintf(&sb, "| %d | %d | %s | failed: %v | | | | |\n", r.size, r.rules, m.mode, m.err)
				continue
			}
			load, change := "-", "-"
			if m.mode != "direct" && m.mode != "ebpf-miss" {
				load, change = m.load.Round(time.Millisecond).String(), m.change.Round(time.Microsecond).String()
			}
			fmt.Fprintf(&sb, "| %d | %d | %s | %s | %s | %.2f | %s | %s |\n", r.size, r.rules, m.mode,
				us(r.p50[m.mode]), us(r.p99[m.mode]), float64(r.p50[m.mode])/float64(r.p50["direct"]), load, change)
		}
	}
	b.Log(sb.String())
}

// progRunTime sums a program's run time and runs over measured rounds, and
// keeps each round's mean: their median is what the benchmark reports next
// to the overall mean, as one round in which a vCPU was preempted or stolen
// mid-program moves the mean but not the median.
type progRunTime struct {
	runtime time.Duration
	count   uint64
	rounds  []float64 // ns per run, one per round
}

func (p *progRunTime) add(before, after *ebpf.ProgramStats) {
	rt, n := after.Runtime-before.Runtime, after.RunCount-before.RunCount
	p.runtime += rt
	p.count += n
	if n > 0 {
		p.rounds = append(p.rounds, float64(rt.Nanoseconds())/float64(n))
	}
}

// median is the median of the rounds' means, in ns per run.
func (p *progRunTime) median() float64 {
	r := slices.Clone(p.rounds)
	slices.Sort(r)
	if len(r) == 0 {
		return 0
	}
	return r[len(r)/2]
}

// connectStats reads cm_connect4's run statistics, nil when the kernel does
// not collect them (BENCH_BPF_STATS unset).
func connectStats(b *testing.B, dp *Datapath) *ebpf.ProgramStats {
	if os.Getenv("BENCH_BPF_STATS") == "" {
		return nil
	}
	st, err := dp.coll.Programs["cm_connect4"].Stats()
	if err != nil {
		b.Fatalf("cm_connect4 stats: %v", err)
	}
	return st
}

// benchSizes are the service counts of the scaling benchmarks: 1k, 10k and
// 100k, or those of $BENCH_SIZES (comma-separated).
func benchSizes() []int {
	s := os.Getenv("BENCH_SIZES")
	if s == "" {
		return []int{1000, 10000, 100000}
	}
	var sizes []int
	for _, f := range strings.Split(s, ",") {
		var n int
		fmt.Sscan(f, &n)
		sizes = append(sizes, n)
	}
	return sizes
}

// programBench opens a datapath with room for services and programs them,
// each over two of backends (on nodeA), for the connect benchmarks.
func programBench(b *testing.B, cfg Config, services int, backends []netip.AddrPort) *Datapath {
	b.Helper()
	dp, err := Open(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Remove() })
	for i := 0; i < services; i++ {
		if err := dp.UpsertService(b.Context(), loadbalancer.Service{
			Frontend:  loadbalancer.Frontend{Addr: benchVIP(i), Protocol: loadbalancer.TCP},
			Preferred: []loadbalancer.Backend{{Addr: backends[i%len(backends)], Node: nodeA}, {Addr: backends[(i+1)%len(backends)], Node: nodeA}},
		}); err != nil {
			b.Fatal(err)
		}
	}
	return dp
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[(len(sorted)-1)*p/100]
}

// benchVIP spreads service i over 10.96.0.0/12.
func benchVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)}), 80)
}

// addClientNS adds one more client netns wired to the server netns of tp on
// subnet 10.77.<subnet>.0/24, with a default route towards the servers.
func addClientNS(tp *topo, suffix string, subnet int) string {
	l := tp.lab
	ns := l.Netns(suffix)
	inner, outer := suffix, strings.ToUpper(suffix)
	l.Veth(ns, inner, tp.serverNS, outer)
	l.Addr(ns, inner, fmt.Sprintf("10.77.%d.1/24", subnet))
	l.Addr(tp.serverNS, outer, fmt.Sprintf("10.77.%d.2/24", subnet))
	l.Run("ip", "-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.77.%d.2", subnet))
	return ns
}

// measureConnects times n blocking TCP connects from netns ns. With
// inCgroup, the process joins cgroup cg for the duration, so its sockets
// run through the attached programs (a socket is bound to the cgroup of the
// task that creates it).
func measureConnects(ns, cg string, inCgroup bool, n int, target func() netip.AddrPort) ([]time.Duration, error) {
	if inCgroup {
		orig, err := ownCgroup()
		if err != nil {
			return nil, err
		}
		if err := joinCgroup(cg); err != nil {
			return nil, err
		}
		defer joinCgroup(orig)
	}
	out := make([]time.Duration, 0, n)
	err := netlab.InNetns(ns, func() error {
		linger := &unix.Linger{Onoff: 1, Linger: 0} // RST on close: no TIME_WAIT pile-up
		for i := 0; i < n; i++ {
			ap := target()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger)
			sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
			start := time.Now()
			err = unix.Connect(fd, sa)
			d := time.Since(start)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("connect %s: %w", ap, err)
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return filepath.Join("/sys/fs/cgroup/unified", p), nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 entry in /proc/self/cgroup")
}

func joinCgroup(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(fmt.Sprint(os.Getpid())), 0)
}

// kubeProxyRules renders the nat table kube-proxy (iptables mode) writes for
// these services: OUTPUT -> KUBE-SERVICES -> KUBE-SVC-* (statistic random) ->
// KUBE-SEP-* (DNAT), with the masquerade marks.
func kubeProxyRules(svcs []loadbalancer.Service) string {
	var sb strings.Builder
	sb.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n")
	for i, s := range svcs {
		fmt.Fprintf(&sb, ":%s - [0:0]\n", svcChain(i))
		for j := range s.Preferred {
			fmt.Fprintf(&sb, ":%s - [0:0]\n", sepChain(i, j))
		}
	}
	sb.WriteString("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n")
	sb.WriteString("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n")
	for i, s := range svcs {
		fe := s.Frontend.Addr
		fmt.Fprintf(&sb, "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"bench/svc%d:http cluster IP\" -m tcp --dport %d -j %s\n",
			fe.Addr(), i, fe.Port(), svcChain(i))
	}
	for i, s := range svcs {
		writeSvcChain(&sb, i, s)
	}
	sb.WriteString("COMMIT\n")
	return sb.String()
}

func writeSvcChain(sb *strings.Builder, i int, s loadbalancer.Service) {
	fe := s.Frontend.Addr
	fmt.Fprintf(sb, "-A %s ! -s 10.244.0.0/16 -d %s/32 -p tcp -m comment --comment \"bench/svc%d:http cluster IP\" -m tcp --dport %d -j KUBE-MARK-MASQ\n",
		svcChain(i), fe.Addr(), i, fe.Port())
	for j, be := range s.Preferred {
		if left := len(s.Preferred) - j; left > 1 {
			fmt.Fprintf(sb, "-A %s -m comment --comment \"bench/svc%d:http -> %s\" -m statistic --mode random --probability %.10f -j %s\n",
				svcChain(i), i, be.Addr, 1/float64(left), sepChain(i, j))
		} else {
			fmt.Fprintf(sb, "-A %s -m comment --comment \"bench/svc%d:http -> %s\" -j %s\n", svcChain(i), i, be.Addr, sepChain(i, j))
		}
		fmt.Fprintf(sb, "-A %s -s %s/32 -m comment --comment \"bench/svc%d:http\" -j KUBE-MARK-MASQ\n", sepChain(i, j), be.Addr.Addr(), i)
		fmt.Fprintf(sb, "-A %s -p tcp -m comment --comment \"bench/svc%d:http\" -m tcp -j DNAT --to-destination %s\n", sepChain(i, j), i, be.Addr)
	}
}

// kubeProxyChange is the partial restore kube-proxy (1.28+, --noflush)
// writes when one service's endpoints change: its chains flushed and
// rewritten, the rest untouched.
func kubeProxyChange(s loadbalancer.Service, to netip.AddrPort) string {
	i := benchIndex(s.Frontend.Addr)
	s.Preferred = []loadbalancer.Backend{{Addr: to}, s.Preferred[1]}
	var sb strings.Builder
	sb.WriteString("*nat\n")
	fmt.Fprintf(&sb, ":%s - [0:0]\n:%s - [0:0]\n:%s - [0:0]\n", svcChain(i), sepChain(i, 0), sepChain(i, 1))
	writeSvcChain(&sb, i, s)
	sb.WriteString("COMMIT\n")
	return sb.String()
}

func benchIndex(ap netip.AddrPort) int {
	a := ap.Addr().As4()
	return int(a[1]-96)<<16 | int(a[2])<<8 | int(a[3])
}

func svcChain(i int) string    { return fmt.Sprintf("KUBE-SVC-%016X", i) }
func sepChain(i, j int) string { return fmt.Sprintf("KUBE-SEP-%014X%02X", i, j) }

// iptablesRestore feeds rules to tool inside netns ns and returns how long
// it took. A restore that runs past eight minutes is abandoned.
func iptablesRestore(ns, tool, rules string, noflush bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	args := []string{"--net=/run/netns/" + ns, "--", tool, "-w"}
	if noflush {
		args = append(args, "--noflush")
	}
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Stdin = strings.NewReader(rules)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		return d, fmt.Errorf("%s after %s: %v: %.300s", tool, d.Round(time.Millisecond), err, out)
	}
	return d, nil
}

func flushNAT(ns, tool string) {
	for _, args := range [][]string{{"-t", "nat", "-F"}, {"-t", "nat", "-X"}} {
		exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--", tool, "-w"}, args...)...).Run()
	}
}
