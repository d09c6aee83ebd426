package bpf

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/podnet"
	"github.com/clustermesh/clustermesh/internal/netlab"
)

// benchIdentityAddr spreads identity i's address over 10.200.0.0/14.
func benchIdentityAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(200 + i>>16), byte(i >> 8), byte(i)})
}

// BenchmarkPolicyConnect measures what egress policy adds to a connect
// through a service: the same 1,000 services, connected to from two client
// namespaces in the same cgroup, one an endpoint with egress enforced (its
// identity has 1,000 allow entries over 10,000 identities in the ipcache,
// the backends among them), one not an endpoint. Rounds alternate.
//
// Run: go test -run '^$' -bench PolicyConnect -benchtime 1x ./bpf/
func BenchmarkPolicyConnect(b *testing.B) {
	const (
		services   = 1000
		identities = 10000
		entries    = 1000
		samples    = 4000
		rounds     = 10
	)
	l, pin, cg := newLab(b)
	tp := newTopo(l, 4)
	tp.serveEcho(b)
	polNS := addClientNS(tp, "p", 3)
	backends := []netip.AddrPort{tp.v4["be1"], tp.v4["be2"], tp.v4["be3"], tp.v4["be4"]}
	cfg := testConfig(cg, pin)
	cfg.MaxServices, cfg.MaxSlots, cfg.MaxIPCache, cfg.MaxPolicyEntries = 2048, 8192, 2*identities, 4*entries
	dp := programBench(b, cfg, services, backends)
	for i := 0; i < identities; i++ {
		if err := dp.SetIPCache(benchIdentityAddr(i), uint32(1000+i)); err != nil {
			b.Fatal(err)
		}
	}
	pol := IdentityPolicy{Egress: true, Entries: map[PolicyKey]Verdict{}}
	for i, be := range backends {
		if err := dp.SetIPCache(be.Addr(), uint32(500+i)); err != nil {
			b.Fatal(err)
		}
		pol.Entries[PolicyKey{Dir: DirEgress, Peer: uint32(500 + i), Proto: 6, Port: echoPort}] = Allow
	}
	for i := 0; len(pol.Entries) < entries; i++ {
		pol.Entries[PolicyKey{Dir: DirEgress, Peer: uint32(1000 + i*7%identities), Proto: 6, Port: uint16(1000 + i%100)}] = Allow
	}
	if err := dp.SetIdentityPolicy(100, pol); err != nil {
		b.Fatal(err)
	}
	ns, err := podnet.Read(netlab.NetnsPath(polNS))
	if err != nil {
		b.Fatal(err)
	}
	if err := dp.SetPolicyEndpoint(PolicyEndpoint{NetnsCookie: ns.Cookie, Identity: 100, IPv4: netip.MustParseAddr("10.77.3.1")}); err != nil {
		b.Fatal(err)
	}
	pick := rand.New(rand.NewPCG(1, 2))
	vip := func() netip.AddrPort { return benchVIP(pick.IntN(services)) }
	modes := []struct{ name, ns string }{{"policy-off", tp.clientNS}, {"policy-on", polNS}}
	lat := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		for _, m := range modes {
			if _, err := measureConnects(m.ns, cg, true, 100, vip); err != nil {
				b.Fatalf("%s: %v", m.name, err)
			}
		}
		for r := 0; r < rounds; r++ {
			for _, m := range modes {
				d, err := measureConnects(m.ns, cg, true, samples/rounds, vip)
				if err != nil {
					b.Fatalf("%s: %v", m.name, err)
				}
				lat[m.name] = append(lat[m.name], d...)
			}
		}
	}
	p := map[string][2]time.Duration{}
	for _, m := range modes {
		slices.Sort(lat[m.name])
		p[m.name] = [2]time.Duration{pct(lat[m.name], 50), pct(lat[m.name], 99)}
		b.ReportMetric(float64(p[m.name][0].Nanoseconds())/1e3, m.name+"-p50-µs")
		b.ReportMetric(float64(p[m.name][1].Nanoseconds())/1e3, m.name+"-p99-µs")
	}
	b.ReportMetric(float64((p["policy-on"][0] - p["policy-off"][0]).Nanoseconds()), "added-p50-ns")
	b.ReportMetric(float64((p["policy-on"][1] - p["policy-off"][1]).Nanoseconds()), "added-p99-ns")
}

// BenchmarkPolicyIngress compares the ingress check per packet with an
// iptables + ipset implementation of the same rule ("the server admits
// these N peers on TCP 8080"), and with the plain iptables rule list some
// NetworkPolicy implementations write (one rule per peer address), at 100,
// 1,000 and 10,000 peer identities. Each path has its own client
// namespace and veth into one server namespace; the client's address is the
// last peer admitted. It reports:
//   - connect latency (one SYN checked per connect) per path, side by side
//     in alternating rounds, and its difference from the unfiltered path;
//   - the tcx program alone, run by the kernel on a SYN (BPF_PROG_TEST_RUN),
//     in ns per packet.
//
// Run: go test -run '^$' -bench PolicyIngress -benchtime 1x ./bpf/
func BenchmarkPolicyIngress(b *testing.B) {
	if _, err := exec.LookPath("ipset"); err != nil {
		b.Skip("needs ipset (apt install ipset)")
	}
	const (
		samples = 4000
		rounds  = 10
	)
	l, pin, cg := newLab(b)
	tp := newTopo(l, 1)
	tp.serveEcho(b)
	tcxNS := addClientNS(tp, "x", 4)
	setNS := addClientNS(tp, "y", 5)
	linNS := addClientNS(tp, "z", 6)
	server := tp.v4["be1"]
	setName := l.Prefix + "-peers"
	b.Cleanup(func() {
		_ = exec.Command("ip", "netns", "exec", tp.serverNS, "iptables-legacy", "-F", "INPUT").Run()
		_ = exec.Command("ip", "netns", "exec", tp.serverNS, "iptables-legacy", "-F", "CM-LIN").Run()
		_ = exec.Command("ip", "netns", "exec", tp.serverNS, "iptables-legacy", "-X", "CM-LIN").Run()
		_ = exec.Command("ip", "netns", "exec", tp.serverNS, "ipset", "destroy", setName).Run()
	})
	cfg := testConfig(cg, pin)
	cfg.MaxIPCache, cfg.MaxPolicyEntries = 20000, 20000
	dp, err := Open(b.Context(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Remove() })
	if err := netlab.InNetns(tcxNS, func() error {
		i, err := podnet.HostInterface(server.Addr())
		if err != nil {
			return err
		}
		return dp.AttachIngress(i)
	}); err != nil {
		b.Fatal(err)
	}
	if err := dp.SetIPCache(server.Addr(), 500); err != nil {
		b.Fatal(err)
	}
	clients := map[string]netip.Addr{"tcx": netip.MustParseAddr("10.77.4.1"), "iptables-ipset": netip.MustParseAddr("10.77.5.1"), "iptables-rules": netip.MustParseAddr("10.77.6.1")}

	var table strings.Builder
	fmt.Fprintf(&table, "\n| peers | path | connect p50 | p99 | p50 - none | per packet |\n|---|---|---|---|---|---|\n")
	for _, peers := range []int{100, 1000, 10000} {
		// The same admitted set three ways: identities in the ipcache and
		// policy map; addresses in an ipset; addresses as rules.
		pol := IdentityPolicy{Ingress: true, Entries: map[PolicyKey]Verdict{}}
		var set, lin strings.Builder
		fmt.Fprintf(&set, "create %s hash:ip family inet hashsize 16384 maxelem 65536\n", setName)
		lin.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:CM-LIN - [0:0]\n")
		for i := 0; i < peers; i++ {
			a := benchIdentityAddr(i)
			if i >= peers-3 {
				// The clients are the last peers admitted.
				a = []netip.Addr{clients["tcx"], clients["iptables-ipset"], clients["iptables-rules"]}[peers-1-i]
			}
			if err := dp.SetIPCache(a, uint32(1000+i)); err != nil {
				b.Fatal(err)
			}
			pol.Entries[PolicyKey{Dir: DirIngress, Peer: uint32(1000 + i), Proto: 6, Port: echoPort}] = Allow
			fmt.Fprintf(&set, "add %s %s\n", setName, a)
			fmt.Fprintf(&lin, "-A CM-LIN -s %s/32 -j ACCEPT\n", a)
		}
		if err := dp.SetIdentityPolicy(500, pol); err != nil {
			b.Fatal(err)
		}
		lin.WriteString("-A CM-LIN -j DROP\n")
		fmt.Fprintf(&lin, "-A INPUT -i Y -p tcp --syn --dport %d -m set ! --match-set %s src -j DROP\n", echoPort, setName)
		fmt.Fprintf(&lin, "-A INPUT -i Z -p tcp --syn --dport %d -j CM-LIN\nCOMMIT\n", echoPort)
		// The rules referencing the set go first, then the set.
		for _, args := range [][]string{{"iptables-legacy", "-F", "INPUT"}, {"iptables-legacy", "-F", "CM-LIN"}, {"iptables-legacy", "-X", "CM-LIN"}, {"ipset", "destroy", setName}} {
			_ = exec.Command("ip", append([]string{"netns", "exec", tp.serverNS}, args...)...).Run()
		}
		if out, err := runStdin(set.String(), "ip", "netns", "exec", tp.serverNS, "ipset", "restore"); err != nil {
			b.Fatalf("ipset restore: %v\n%s", err, out)
		}
		if out, err := runStdin(lin.String(), "ip", "netns", "exec", tp.serverNS, "iptables-legacy-restore"); err != nil {
			b.Fatalf("iptables restore: %v\n%s", err, out)
		}

		modes := []struct{ name, ns string }{{"none", tp.clientNS}, {"tcx", tcxNS}, {"iptables-ipset", setNS}, {"iptables-rules", linNS}}
		target := func() netip.AddrPort { return server }
		lat := map[string][]time.Duration{}
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				for r := 0; r < rounds; r++ {
					for _, m := range modes {
						d, err := measureConnects(m.ns, cg, false, samples/rounds, target)
						if err != nil {
							b.Fatalf("%s: %v", m.name, err)
						}
						lat[m.name] = append(lat[m.name], d...)
					}
				}
			}
			perPacket := progRunSYN(b, dp, clients["tcx"], server)
			base := time.Duration(0)
			for _, m := range modes {
				slices.Sort(lat[m.name])
				p50, p99 := pct(lat[m.name], 50), pct(lat[m.name], 99)
				if m.name == "none" {
					base = p50
				}
				b.ReportMetric(float64(p50.Nanoseconds())/1e3, m.name+"-p50-µs")
				b.ReportMetric(float64(p99.Nanoseconds())/1e3, m.name+"-p99-µs")
				pp := "-"
				if m.name == "tcx" {
					pp = fmt.Sprintf("%.0f ns (prog run)", perPacket)
				}
				fmt.Fprintf(&table, "| %d | %s | %.1f µs | %.1f µs | %+.2f µs | %s |\n", peers, m.name,
					float64(p50.Nanoseconds())/1e3, float64(p99.Nanoseconds())/1e3, float64((p50-base).Nanoseconds())/1e3, pp)
			}
			b.ReportMetric(perPacket, "tcx-prog-ns/packet")
		})
		if err := dp.DeleteIdentityPolicy(500); err != nil {
			b.Fatal(err)
		}
		for i := 0; i < peers; i++ {
			_ = dp.DeleteIPCache(benchIdentityAddr(i))
		}
	}
	b.Log(table.String())
}

func runStdin(in string, args ...string) ([]byte, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(in)
	return cmd.CombinedOutput()
}

// progRunSYN runs the ingress program on a TCP SYN from src to dst a
// million times in the kernel and returns the mean time per run.
func progRunSYN(b *testing.B, dp *Datapath, src netip.Addr, dst netip.AddrPort) float64 {
	b.Helper()
	d, ret := progRunSYNBench(b, dp, src, dst, 1_000_000)
	if ret != 0 {
		b.Fatalf("prog run: verdict %d, want pass (0)", ret)
	}
	return d
}

// progRunSYNBench runs the ingress program on a SYN runs times and returns
// the mean ns per run and the verdict.
func progRunSYNBench(b *testing.B, dp *Datapath, src netip.Addr, dst netip.AddrPort, runs int) (float64, uint32) {
	b.Helper()
	pkt := make([]byte, 14+20+20)
	pkt[12], pkt[13] = 0x08, 0x00
	ip := pkt[14:]
	ip[0], ip[9] = 0x45, 6
	ip[2], ip[3] = 0, 40
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	tcp := ip[20:]
	tcp[0], tcp[1] = 0x9c, 0x40
	tcp[2], tcp[3] = byte(dst.Port()>>8), byte(dst.Port())
	tcp[12], tcp[13] = 0x50, 0x02
	prog := dp.coll.Programs[progPodIngress]
	ret, d, err := prog.Benchmark(pkt, runs, nil)
	if err != nil {
		b.Fatalf("prog run: %v", err)
	}
	return float64(d.Nanoseconds()), ret
}

// BenchmarkEventsConnect measures what flow events add to a connect through
// a service: rounds alternate between translation events on (every connect
// sends one; a reader drains them) and off, from the same client.
//
// Run: go test -run '^$' -bench EventsConnect -benchtime 1x ./bpf/
func BenchmarkEventsConnect(b *testing.B) {
	const (
		services = 1000
		samples  = 4000
		rounds   = 10
	)
	l, pin, cg := newLab(b)
	tp := newTopo(l, 4)
	tp.serveEcho(b)
	backends := []netip.AddrPort{tp.v4["be1"], tp.v4["be2"], tp.v4["be3"], tp.v4["be4"]}
	cfg := testConfig(cg, pin)
	cfg.MaxServices, cfg.MaxSlots = 2048, 8192
	dp := programBench(b, cfg, services, backends)
	er, err := dp.Events()
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan int)
	go func() {
		n := 0
		for {
			if _, err := er.Read(); err != nil {
				done <- n
				return
			}
			n++
		}
	}()
	pick := rand.New(rand.NewPCG(3, 4))
	vip := func() netip.AddrPort { return benchVIP(pick.IntN(services)) }
	lat := map[string][]time.Duration{}
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			for _, mode := range []string{"events-off", "events-on"} {
				rate := uint32(0)
				if mode == "events-on" {
					rate = 1 << 30
				}
				if err := dp.SetEventRates(map[EventKind]uint32{EventTranslate: rate}); err != nil {
					b.Fatal(err)
				}
				d, err := measureConnects(tp.clientNS, cg, true, samples/rounds, vip)
				if err != nil {
					b.Fatal(err)
				}
				lat[mode] = append(lat[mode], d...)
			}
		}
	}
	er.Close()
	read := <-done
	counts, err := dp.EventCounts()
	if err != nil {
		b.Fatal(err)
	}
	p := map[string][2]time.Duration{}
	for _, m := range []string{"events-off", "events-on"} {
		slices.Sort(lat[m])
		p[m] = [2]time.Duration{pct(lat[m], 50), pct(lat[m], 99)}
		b.ReportMetric(float64(p[m][0].Nanoseconds())/1e3, m+"-p50-µs")
		b.ReportMetric(float64(p[m][1].Nanoseconds())/1e3, m+"-p99-µs")
	}
	b.ReportMetric(float64(p["events-on"][0])/float64(p["events-off"][0]), "p50-on/off")
	c := counts[EventTranslate]
	b.ReportMetric(float64(c.Sent), "events-sent")
	b.ReportMetric(float64(c.Lost), "events-lost")
	b.ReportMetric(float64(read), "events-read")
}
