package bgp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
)

// birdProc is a bird2 daemon in a namespace with its own config and control
// socket under a temp dir.
type birdProc struct {
	cmd  *exec.Cmd
	sock string
	log  string
	conf string
}

func (l *lab) startBird(name, ns, conf string) *birdProc {
	l.TB.Helper()
	for _, bin := range []string{"bird", "birdc"} {
		if _, err := exec.LookPath(bin); err != nil {
			l.TB.Skipf("needs bird2 (apt-get install bird2): %v", err)
		}
	}
	dir := filepath.Join(l.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.TB.Fatal(err)
	}
	confPath := filepath.Join(dir, "bird.conf")
	b := &birdProc{sock: filepath.Join(dir, "bird.ctl"), log: filepath.Join(dir, "bird.log"), conf: confPath}
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		l.TB.Fatal(err)
	}
	logf, err := os.Create(b.log)
	if err != nil {
		l.TB.Fatal(err)
	}
	defer logf.Close()
	b.cmd = exec.Command("nsenter", "--net=/run/netns/"+ns, "bird", "-f", "-c", confPath, "-s", b.sock, "-P", filepath.Join(dir, "bird.pid"))
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		l.TB.Fatalf("start bird %s: %v", name, err)
	}
	l.TB.Cleanup(func() {
		b.kill()
		if l.TB.Failed() {
			out, _ := os.ReadFile(b.log)
			l.TB.Logf("---- log of bird %s ----\n%s", name, tail(string(out), 30))
		}
	})
	poll.Eventually(l.TB, 10*time.Second, "bird control socket", func() (bool, string) {
		_, err := b.birdc("show status")
		return err == nil, fmt.Sprint(err)
	})
	return b
}

func (b *birdProc) kill() {
	if b.cmd.ProcessState != nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	_ = b.cmd.Wait()
}

func (b *birdProc) birdc(args ...string) (string, error) {
	out, err := exec.Command("birdc", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// routes parses `birdc show route`: prefix -> next hop of the best route
// (an invalid Addr for routes without a gateway, such as blackholes).
func (b *birdProc) routes() (map[netip.Prefix]netip.Addr, error) {
	out, err := b.birdc("show", "route")
	if err != nil {
		return nil, err
	}
	return parseBirdRoutes(out), nil
}

func parseBirdRoutes(out string) map[netip.Prefix]netip.Addr {
	got := map[netip.Prefix]netip.Addr{}
	var cur netip.Prefix
	var seenVia bool
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			if p, err := netip.ParsePrefix(fields[0]); err == nil {
				cur, seenVia = p, false
				got[p] = netip.Addr{}
			}
			continue
		}
		if fields[0] == "via" && len(fields) > 1 && cur.IsValid() && !seenVia {
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				got[cur] = a
				seenVia = true
			}
		}
	}
	return got
}

func TestParseBirdRoutes(t *testing.T) {
	out := `BIRD 2.0.12 ready.
Table master4:
10.1.1.0/24          unicast [n1 04:40:00.123] * (100) [AS65001i]
	via 192.0.2.11 on eth0
                     unicast [n2 04:40:01.000] (100) [AS65001i]
	via 192.0.2.12 on eth0
10.99.0.0/24         blackhole [st 04:40:00.000] * (200)
`
	got := parseBirdRoutes(out)
	if len(got) != 2 || got[netip.MustParsePrefix("10.1.1.0/24")] != netip.MustParseAddr("192.0.2.11") || got[netip.MustParsePrefix("10.99.0.0/24")].IsValid() {
		t.Errorf("parsed %v", got)
	}
}

const torConf = `
log stderr all;
router id 192.0.2.254;
protocol device { scan time 10; }
protocol static st {
	ipv4;
	route 10.99.0.0/24 blackhole;
	route 10.1.1.128/25 blackhole;
	route 192.0.2.128/25 blackhole;
}
template bgp nodes {
	local 192.0.2.254 as 65100;
	passive on;
	hold time 9;
	keepalive time 3;
	connect retry time 1;
	ipv4 { import all; export all; };
}
protocol bgp n1 from nodes { neighbor 192.0.2.11 as 65001; }
protocol bgp n2 from nodes { neighbor 192.0.2.12 as 65001; }
protocol bgp n3 from nodes { neighbor 192.0.2.13 as 65001; }
`

// TestBirdTopOfRack peers node speakers with bird2 as an operator-given
// top-of-rack router.
func TestBirdTopOfRack(t *testing.T) {
	l := newLab(t)
	torNS := l.Host("tor", "192.0.2.254")
	bird := l.startBird("tor", torNS, torConf)
	tor := Peer{Name: "tor", Address: netip.MustParseAddr("192.0.2.254"), ASN: 65100}

	type node struct {
		ip, cidr string
		proc     *child
	}
	nodes := []*node{{ip: "192.0.2.11", cidr: "10.1.1.0/24"}, {ip: "192.0.2.12", cidr: "10.1.2.0/24"}}
	for i, n := range nodes {
		ns := l.Host(fmt.Sprintf("n%d", i+1), n.ip)
		cfg := DefaultKindConfig()
		cfg.Name, cfg.ASN = fmt.Sprintf("c1/n%d", i+1), 65001
		cfg.NodeIPs = []netip.Addr{netip.MustParseAddr(n.ip)}
		cfg.PodCIDRs = []netip.Prefix{netip.MustParsePrefix(n.cidr)}
		cfg.StaticPeers = []Peer{tor}
		n.proc = l.startChild(cfg.Name, ns, "speaker", cfg, nil)
	}

	poll.Eventually(t, 60*time.Second, "bird to learn every pod CIDR", func() (bool, string) {
		got, err := bird.routes()
		if err != nil {
			return false, err.Error()
		}
		for _, n := range nodes {
			if got[netip.MustParsePrefix(n.cidr)] != netip.MustParseAddr(n.ip) {
				return false, fmt.Sprintf("bird routes %v", got)
			}
		}
		return true, ""
	})
	for i, n := range nodes {
		ns := l.NS(fmt.Sprintf("n%d", i+1))
		poll.Eventually(t, 60*time.Second, "bird's prefix on "+ns, func() (bool, string) {
			got := l.Routes(ns, RouteProtocol)
			return got[netip.MustParsePrefix("10.99.0.0/24")] == netip.MustParseAddr("192.0.2.254"), fmt.Sprintf("routes %v", got)
		})
		st := n.proc.status()
		reasons := map[string]RefusalReason{}
		for _, r := range st.Refused {
			reasons[r.Prefix.String()] = r.Reason
		}
		if reasons["192.0.2.128/25"] != RefusedNodeSubnet {
			t.Errorf("%s: node-subnet overlap not refused: %+v", ns, st.Refused)
		}
		if i == 0 && reasons["10.1.1.128/25"] != RefusedLocalPodCIDR {
			t.Errorf("%s: local pod CIDR overlap not refused: %+v", ns, st.Refused)
		}
		m := n.proc.call(childReq{Op: "metrics"}).Metrics
		for _, want := range []string{
			`clustermesh_bgp_routes_refused_total{reason="overlaps-node-subnet",role="speaker"}`,
			`clustermesh_bgp_session_established{peer="192.0.2.254",peer_name="tor",role="speaker"} 1`,
			fmt.Sprintf(`clustermesh_bgp_prefixes_installed{peer="192.0.2.254",peer_name="tor",role="speaker"} %d`, len(st.Installed)),
		} {
			if !strings.Contains(m, want) {
				t.Errorf("%s: metrics lack %s:\n%s", ns, want, m)
			}
		}
		got := l.Routes(ns, RouteProtocol)
		for p := range reasons {
			if _, ok := got[netip.MustParsePrefix(p)]; ok {
				t.Errorf("%s: refused %s is installed", ns, p)
			}
		}
	}

	// A node allowing 3 prefixes from bird (which has 5 for it) is cut off.
	ns3 := l.Host("n3", "192.0.2.13")
	cfg := DefaultKindConfig()
	cfg.Name, cfg.ASN = "c1/n3", 65001
	cfg.NodeIPs = []netip.Addr{netip.MustParseAddr("192.0.2.13")}
	cfg.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.3.0/24")}
	limited := tor
	limited.MaxPrefixes = 3
	cfg.StaticPeers = []Peer{limited}
	n3 := l.startChild(cfg.Name, ns3, "speaker", cfg, nil)
	poll.Eventually(t, 60*time.Second, "prefix-limit cut-off on n3", func() (bool, string) {
		st := n3.status()
		return len(st.Peers) == 1 && st.Peers[0].CutOff != "" && !st.Peers[0].Established, fmt.Sprintf("%+v", st.Peers)
	})
	if m := n3.call(childReq{Op: "metrics"}).Metrics; !strings.Contains(m, `clustermesh_bgp_prefix_limit_cutoffs_total{peer="192.0.2.254",role="speaker"} 1`) {
		t.Errorf("n3: no prefix-limit cut-off metric:\n%s", m)
	}
	poll.Eventually(t, 30*time.Second, "n3 to hold no route from bird", func() (bool, string) {
		got := l.Routes(ns3, RouteProtocol)
		return len(got) == 0, fmt.Sprintf("routes %v", got)
	})
}

// torGRConf is torConf's router, announcing only 10.99.0.0/24, with
// graceful restart and long-lived graceful restart on its sessions to the
// nodes.
var torGRConf = strings.NewReplacer(
	"\troute 10.1.1.128/25 blackhole;\n\troute 192.0.2.128/25 blackhole;\n", "",
	"\tconnect retry time 1;\n", "\tconnect retry time 1;\n\tgraceful restart on;\n\tgraceful restart time 120;\n"+
		"\tlong lived graceful restart on;\n\tlong lived stale time 600;\n",
).Replace(torConf)

// established reports whether bird's protocol name is in state
// Established.
func (b *birdProc) established(name string) (bool, string) {
	out, err := b.birdc("show", "protocols", name)
	if err != nil {
		return false, err.Error()
	}
	return strings.Contains(out, "Established"), out
}

// TestBirdGracefulRestart: a top-of-rack bird2 and the node speakers
// negotiate graceful restart (and LLGR) both ways. Killing bird and starting
// it again removes none of its routes from the nodes (netlink route
// subscription); a node speaker restarting (StopForRestart, then the
// process exits and starts again) keeps its pod CIDR in bird meanwhile;
// a speaker stopped with Stop (a Hard Reset) has it withdrawn at once.
// The nodes run without a session-loss grace, so only graceful restart can
// keep anything.
func TestBirdGracefulRestart(t *testing.T) {
	l := newLab(t)
	torNS := l.Host("tor", "192.0.2.254")
	bird := l.startBird("tor", torNS, torGRConf)
	tor := Peer{Name: "tor", Address: netip.MustParseAddr("192.0.2.254"), ASN: 65100}
	torPrefix := netip.MustParsePrefix("10.99.0.0/24")

	type node struct {
		ns   string
		ip   netip.Addr
		cidr netip.Prefix
		cfg  Config
		proc *child
	}
	var nodes []*node
	for i := 1; i <= 2; i++ {
		n := &node{ip: netip.MustParseAddr(fmt.Sprintf("192.0.2.1%d", i)), cidr: netip.MustParsePrefix(fmt.Sprintf("10.1.%d.0/24", i))}
		n.ns = l.Host(fmt.Sprintf("n%d", i), n.ip.String())
		n.cfg = DefaultKindConfig()
		n.cfg.Name, n.cfg.ASN = fmt.Sprintf("c1/n%d", i), 65001
		n.cfg.NodeIPs, n.cfg.PodCIDRs = []netip.Addr{n.ip}, []netip.Prefix{n.cidr}
		n.cfg.StaticPeers = []Peer{tor}
		n.cfg.SessionLossGrace = 0
		n.proc = l.startChild(n.cfg.Name, n.ns, "speaker", n.cfg, nil)
		nodes = append(nodes, n)
	}
	n1, n2 := nodes[0], nodes[1]
	birdHas := func(b *birdProc, n *node) func() (bool, string) {
		return func() (bool, string) {
			got, err := b.routes()
			if err != nil {
				return false, err.Error()
			}
			return got[n.cidr] == n.ip, fmt.Sprintf("bird routes %v", got)
		}
	}
	nodeHas := func(n *node) func() (bool, string) {
		return func() (bool, string) {
			got := l.Routes(n.ns, RouteProtocol)
			return got[torPrefix] == tor.Address, fmt.Sprintf("routes %v", got)
		}
	}
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, "bird learns "+n.cfg.Name, birdHas(bird, n))
		poll.Eventually(t, 60*time.Second, n.cfg.Name+" installs bird's prefix", nodeHas(n))
		poll.Eventually(t, 30*time.Second, n.cfg.Name+": graceful restart negotiated", func() (bool, string) {
			return bird.established("n" + n.cfg.Name[len(n.cfg.Name)-1:])
		})
	}
	if out, err := bird.birdc("show", "protocols", "all", "n1"); err != nil || strings.Count(out, "Graceful restart") != 2 || strings.Count(out, "Long-lived graceful restart") != 2 {
		t.Errorf("bird's session to n1 lacks graceful restart or LLGR capabilities (%v):\n%s", err, out)
	}

	// bird restarts: the nodes keep its routes.
	deleted := l.watchDeletes(t, n1.ns)
	bird.kill()
	poll.Eventually(t, 60*time.Second, "n1 to see bird gone", func() (bool, string) {
		st := n1.proc.status()
		return len(st.Peers) == 1 && !st.Peers[0].Established, fmt.Sprintf("%+v", st.Peers)
	})
	for _, n := range nodes {
		if ok, detail := nodeHas(n)(); !ok {
			t.Errorf("%s dropped bird's prefix when bird died: %s", n.cfg.Name, detail)
		}
	}
	bird = l.startBird("tor-restarted", torNS, torGRConf)
	for _, n := range nodes {
		poll.Eventually(t, 60*time.Second, "restarted bird learns "+n.cfg.Name, birdHas(bird, n))
	}
	poll.Eventually(t, 60*time.Second, "n1 back in session with bird", func() (bool, string) {
		st := n1.proc.status()
		return len(st.Peers) == 1 && st.Peers[0].Established && len(st.Installed) == 1, fmt.Sprintf("%+v", st)
	})
	if d := deleted(); slices.Contains(d, torPrefix) {
		t.Errorf("n1 deleted bird's prefix while bird restarted: %v", d)
	}

	// A node speaker restarts: bird keeps its pod CIDR as stale, also when
	// the session comes back (birdc sampled all along).
	stopSampling := make(chan struct{})
	sampled := make(chan []string, 1)
	go func() {
		var missing []string
		for {
			select {
			case <-stopSampling:
				sampled <- missing
				return
			case <-time.After(20 * time.Millisecond):
			}
			if ok, detail := birdHas(bird, n1)(); !ok {
				missing = append(missing, time.Now().Format("15:04:05.000")+" "+detail)
			}
		}
	}()
	n1.proc.call(childReq{Op: "exitforrestart"})
	_ = n1.proc.cmd.Wait()
	poll.Eventually(t, 60*time.Second, "bird to see n1 gone", func() (bool, string) {
		ok, out := bird.established("n1")
		return !ok, out
	})
	if ok, detail := birdHas(bird, n1)(); !ok {
		t.Errorf("bird dropped n1's pod CIDR while n1 restarted: %s", detail)
	}
	n1.proc = l.startChild(n1.cfg.Name+"-restarted", n1.ns, "speaker", n1.cfg, nil)
	poll.Eventually(t, 60*time.Second, "bird and n1 in session again", func() (bool, string) { return bird.established("n1") })
	poll.Eventually(t, 60*time.Second, "restarted n1 installs bird's prefix", nodeHas(n1))
	close(stopSampling)
	if missing := <-sampled; len(missing) > 0 {
		t.Errorf("bird lacked n1's pod CIDR while n1 restarted: %d samples, first %s", len(missing), missing[0])
	}
	if ok, detail := birdHas(bird, n1)(); !ok {
		t.Errorf("bird lacks n1's pod CIDR after n1's restart: %s", detail)
	}

	// Stop is a Hard Reset: bird withdraws n2's pod CIDR at once.
	n2.proc.call(childReq{Op: "stop"})
	poll.Eventually(t, 30*time.Second, "bird to drop stopped n2's pod CIDR", func() (bool, string) {
		got, err := bird.routes()
		if err != nil {
			return false, err.Error()
		}
		_, ok := got[n2.cidr]
		return !ok, fmt.Sprintf("bird routes %v", got)
	})
}
