package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		// The embedded etcd's watch stream receiver may outlive the server's
		// Close (etcd says so in v3rpc/watch.go); it belongs to the test's
		// stores, not to the agent.
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3rpc.(*serverWatchStream).recvLoop"),
		// GoBGP's BgpServer.Serve never returns, even after StopBgp; one is
		// left per speaker or reflector the BGP test starts.
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"),
		// A stopping agent leaves its BGP sessions to end with the process
		// (bgp.Speaker.StopForRestart: peers keep its routes by graceful
		// restart), so their goroutines outlive the agent in a test.
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*fsmHandler).loop"),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*fsmHandler).connectLoop"),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*fsmHandler).recvMessage"),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*fsmHandler).recvMessageloop"),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*fsmHandler).sendMessageloop"),
		goleak.IgnoreAnyFunction("github.com/eapache/channels.(*InfiniteChannel).infiniteBuffer"),
	)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runAgent runs the agent command in-process until the test ends or the
// returned function is called.
func runAgent(t *testing.T, args ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCommand()
	cmd.SetArgs(args)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v\n%s", err, out.String())
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	cmd.SetArgs(args)
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// waitStatus polls `clustermesh-agent status -o json` until cond holds.
func waitStatus(t *testing.T, addr string, cond func(*status.Agent) bool) *status.Agent {
	t.Helper()
	var st *status.Agent
	poll.Eventually(t, 30*time.Second, "status to satisfy the condition", func() (bool, string) {
		out, err := runCLI(t, "status", "--status-addr", addr, "-o", "json")
		if err != nil {
			return false, fmt.Sprintf("%v: %s", err, out)
		}
		if st, err = status.Decode([]byte(out)); err != nil {
			t.Fatalf("status -o json is not a status document: %v\n%s", err, out)
		}
		return cond(st), "last output:\n" + out
	})
	return st
}

func twoClusters(t *testing.T) (c1, c2 *meshtest.Cluster, dir string) {
	m := meshtest.New(t)
	c1 = m.AddCluster("c1", 1, "10.1.0.0/16")
	c2 = m.AddCluster("c2", 2, "10.2.0.0/16")
	dir = t.TempDir()
	c1.WriteConnFile(dir, "c1", kvstore.UserAgent)
	c2.WriteConnFile(dir, "c2", kvstore.UserRemote)
	return c1, c2, dir
}

func TestAgentCommandControlPlaneOnly(t *testing.T) {
	c1, c2, dir := twoClusters(t)
	c1.Upsert(c1.Service("ns", "web", "10.96.0.10"), c1.Slice("ns", "web", "a", "10.1.0.5"))
	c2.Upsert(c2.Service("ns", "web", "10.96.1.10"), c2.Slice("ns", "web", "a", "10.2.0.5", "10.2.0.6"))
	c1.MarkSynced()
	c2.MarkSynced()

	gossip, gossip2 := freeAddr(t), freeAddr(t)
	n1 := c1.Node("n1", "127.0.0.1", "10.1.9.0/24")
	n1.GossipAddress = netip.MustParseAddrPort(gossip)
	n2 := c1.Node("n2", "127.0.0.1", "10.1.10.0/24")
	n2.GossipAddress = netip.MustParseAddrPort(gossip2)
	c1.Upsert(n1, n2)
	c1.MarkSynced()

	// A second node's agent: the first one's health pool counts it.
	runAgent(t, "--cluster-name", "c1", "--node-name", "n2", "--clusters-dir", dir,
		"--datapath", "none", "--status-addr", "", "--clusters-dir-poll", "200ms", "--log-level", "warn",
		"--health", "--health-bind", gossip2)

	addr := freeAddr(t)
	runAgent(t, "--cluster-name", "c1", "--node-name", "n1", "--clusters-dir", dir,
		"--datapath", "none", "--status-addr", addr, "--clusters-dir-poll", "200ms", "--log-level", "warn",
		"--health", "--health-bind", gossip)
	st := waitStatus(t, addr, func(st *status.Agent) bool {
		c, ok := st.ClusterByName("c2")
		return ok && c.Synced && st.Frontends == 1
	})
	// The health pool started with the cluster's ID and follows the nodes.
	poll.Eventually(t, 30*time.Second, "clustermesh_health_* metrics (the health pool started)", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), "clustermesh_health_members")
	})
	if st.Datapath != "none" || st.Cluster != "c1" || st.Node != "n1" {
		t.Errorf("status header: %+v", st)
	}
	st = waitStatus(t, addr, func(st *status.Agent) bool {
		return st.Health != nil && st.Health.State == status.SectionRunning && st.Health.Alive == 1
	})
	if h := st.Health; h.Self != "c1/n1" || h.Members != 1 || h.Dead != 0 || h.Isolated ||
		len(h.MemberList) != 1 || h.MemberList[0].Name != "c1/n2" || !h.MemberList[0].Healthy {
		t.Errorf("health section: %+v", h)
	}
	if st.BGP != nil {
		t.Errorf("BGP section without --bgp: %+v", st.BGP)
	}
	out, err := runCLI(t, "status", "--status-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"c1 (local)", "c2", "connected", "frontends=1",
		"Health  state=running  self=c1/n1  members=1  alive=1  suspect=0  dead=0", "isolated=false", "c1/n2"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "BGP") {
		t.Errorf("status output has a BGP section without --bgp:\n%s", out)
	}
	if _, err := runCLI(t, "status", "--status-addr", addr, "-o", "yaml"); err == nil {
		t.Errorf("status -o yaml accepted")
	}
}

func TestAgentCommandRejectsBadFlags(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-name", "C1!", "--node-name", "n", "--clusters-dir", dir, "--datapath", "none", "--status-addr", ""}, "cluster name"},
		{[]string{"--cluster-name", "c1", "--node-name", "n", "--clusters-dir", dir, "--datapath", "xdp", "--status-addr", ""}, "must be bpf or none"},
		{[]string{"--cluster-name", "c1", "--node-name", "n", "--clusters-dir", dir, "--status-addr", ""}, "--bpf-cgroup"},
		{[]string{"--cluster-name", "c1", "--node-name", "n", "--clusters-dir", dir, "--datapath", "none", "--log-level", "loud"}, "--log-level"},
		{[]string{"--cluster-name", "c1", "--node-name", "n", "--clusters-dir", dir, "--datapath", "none", "--log-format", "xml"}, "--log-format"},
		{[]string{"--cluster-name", "c1", "--node-name", "n", "--clusters-dir", dir, "--datapath", "none", "--status-addr", "", "--routes", "ospf"}, "must be bgp, none, static or static-all"},
	} {
		out, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one mentioning %q\n%s", tc.args, err, tc.want, out)
		}
	}
}

// TestAgentCommandBPF runs the agent with the real eBPF datapath on a
// private cgroup and bpffs: a global service whose backend is exported by
// the peer cluster is programmed into the kernel, and a process in the
// cgroup connecting to the service's VIP reaches the backend.
func TestAgentCommandBPF(t *testing.T) {
	l := netlab.New(t)
	cgroup, pins := l.Cgroup("cg"), l.BPFFS()

	// The backend: a TCP server on an address of c2's pod CIDR (on a veth
	// of this run; peers may not export loopback backends), exported by
	// cluster c2.
	const backendIP = "10.2.77.7"
	l.Veth("", l.NS("be"), "", l.NS("bp"))
	l.Addr("", l.NS("be"), backendIP+"/32")
	ln, err := net.Listen("tcp", backendIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello from c2\n"))
			c.Close()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)

	c1, c2, dir := twoClusters(t)
	const vip, oldVIP = "10.96.77.1", "10.96.77.2"
	c1.Upsert(c1.Service("ns", "web", vip))
	es := c2.Slice("ns", "web", "a", backendIP)
	es.Ports[0].Port = port
	c2.Upsert(c2.Service("ns", "web", "10.96.88.1"), es)
	// A service the store drops while the agent is away.
	oldES := c1.Slice("ns", "old", "a", "127.0.0.1")
	oldES.Ports[0].Port = port
	c1.Upsert(c1.Service("ns", "old", oldVIP), oldES)
	c1.MarkSynced()
	c2.MarkSynced()

	agentArgs := func(addr string) []string {
		return []string{"--cluster-name", "c1", "--node-name", "n1", "--clusters-dir", dir,
			"--datapath", "bpf", "--bpf-cgroup", cgroup, "--bpf-pin-dir", pins,
			"--status-addr", addr, "--log-level", "warn"}
	}
	addr := freeAddr(t)
	stop := runAgent(t, agentArgs(addr)...)
	waitStatus(t, addr, func(st *status.Agent) bool { return st.Frontends == 2 })

	// Restart: the new agent adopts the pinned maps (connections stay
	// balanced meanwhile) and, once every cluster synced, deletes the
	// adopted frontend no cluster wants any more.
	stop()
	out, err := runCLI(t, "bpf", "services", "--bpffs", pins)
	if err != nil || !strings.Contains(out, oldVIP+":80") {
		t.Fatalf("pinned maps of the stopped agent lack %s:80 (%v):\n%s", oldVIP, err, out)
	}
	c1.Delete(api.ServiceKey("c1", "ns", "old"), api.EndpointSliceKey("c1", "ns", "old", "a"))
	addr = freeAddr(t)
	runAgent(t, agentArgs(addr)...)
	waitStatus(t, addr, func(st *status.Agent) bool {
		c, ok := st.ClusterByName("c2")
		return ok && c.Synced && st.Frontends == 1
	})
	poll.Eventually(t, 30*time.Second, "stale frontend "+oldVIP+":80 adopted from the previous run to be removed", func() (bool, string) {
		out, err = runCLI(t, "bpf", "services", "--bpffs", pins)
		return err == nil && !strings.Contains(out, oldVIP+":80"), out
	})

	if err != nil {
		t.Fatalf("bpf services: %v\n%s", err, out)
	}
	backend := netip.AddrPortFrom(netip.MustParseAddr(backendIP), port).String()
	if !strings.Contains(out, vip+":80") || !strings.Contains(out, backend) {
		t.Errorf("bpf services lacks %s:80 -> %s:\n%s", vip, backend, out)
	}

	// A client in the balanced cgroup.
	script := fmt.Sprintf(`echo $$ > %s/cgroup.procs && exec 3<>/dev/tcp/%s/80 && head -n1 <&3`, cgroup, vip)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := exec.CommandContext(ctx, "bash", "-c", script).CombinedOutput()
	if err != nil || strings.TrimSpace(string(got)) != "hello from c2" {
		t.Fatalf("connect to %s:80 from the cgroup: %v: %q", vip, err, got)
	}

	// The peer withdraws its backend: the kernel forgets it.
	c2.Delete(api.EndpointSliceKey("c2", "ns", "web", "a"))
	poll.Eventually(t, 30*time.Second, "backend "+backend+" to be removed", func() (bool, string) {
		out, err = runCLI(t, "bpf", "services", "--bpffs", pins, "-o", "json")
		return err == nil && !strings.Contains(out, backend), out
	})
	if !json.Valid([]byte(out)) {
		t.Errorf("bpf services -o json is not JSON:\n%s", out)
	}
}

// TestAgentCommandBGP runs the agent with --bgp against a real route
// reflector (bgp.Reflector) named in the cluster config: the agent's speaker
// peers with it and announces the node's pod CIDR from the store.
func TestAgentCommandBGP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the speaker reads and programs kernel routes")
	}
	rrAddr := netip.MustParseAddr("127.0.0.2")
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()

	rcfg := bgp.DefaultKindConfig()
	rcfg.Name, rcfg.ASN, rcfg.RouterID = "c1/reflector", 65001, rrAddr
	rcfg.ListenAddresses, rcfg.ListenPort = []netip.Addr{rrAddr}, int32(port)
	rr, err := bgp.NewReflector(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	go func() { rdone <- rr.Run(rctx) }()
	t.Cleanup(func() { rcancel(); <-rdone })
	poll.Eventually(t, 20*time.Second, "reflector peers", func(ctx context.Context) error {
		return rr.SetPeers(ctx, []bgp.Peer{{Name: "c1/n1", Address: netip.MustParseAddr("127.0.0.1"), ASN: 65001, Passive: true, RouteReflectorClient: true}})
	})

	c1, _, dir := twoClusters(t)
	c1.Config.ASN = 65001
	c1.Config.RouteReflector = netip.AddrPortFrom(rrAddr, port)
	c1.Upsert(&c1.Config, &api.Node{
		Cluster: "c1", Name: "n1",
		Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.1.77.0/24")},
	})
	c1.MarkSynced()
	addr := freeAddr(t)
	runAgent(t, "--cluster-name", "c1", "--node-name", "n1", "--clusters-dir", dir,
		"--datapath", "none", "--status-addr", addr, "--bgp", "--bgp-listen-port", "-1", "--bgp-short-timers",
		// A table of its own: the speaker adopts and sweeps its protocol's
		// routes in its table, and the host's main table is not the test's.
		"--bgp-route-table", "4242", "--log-level", "warn")

	// The agent's status shows the session and what went over it.
	st := waitStatus(t, addr, func(st *status.Agent) bool {
		return st.BGP != nil && len(st.BGP.Sessions) == 1 && st.BGP.Sessions[0].Established && st.BGP.Sessions[0].Advertised == 1
	})
	b, s := st.BGP, st.BGP.Sessions[0]
	if b.State != status.SectionRunning || b.ASN != 65001 || len(b.Announced) != 1 || b.Announced[0].String() != "10.1.77.0/24" {
		t.Errorf("BGP section: %+v", b)
	}
	if s.Address != rrAddr || s.ASN != 65001 || s.Received != 0 || s.Installed != 0 || s.Refused != 0 {
		t.Errorf("BGP session: %+v", s)
	}
	if st.Health != nil {
		t.Errorf("health section without --health: %+v", st.Health)
	}

	// GoBGP's StartBgp writes package-level route selection options that
	// every BgpServer of the process reads: the reflector is polled only
	// once the agent's speaker has started (its status above says so).
	poll.Eventually(t, 60*time.Second, "reflector to receive the node's pod CIDR", func(ctx context.Context) error {
		st, err := rr.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.Peers) != 1 || !st.Peers[0].Established || st.Peers[0].PrefixesReceived != 1 {
			return fmt.Errorf("peers %+v", st.Peers)
		}
		return nil
	})
	out, err := runCLI(t, "status", "--status-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"BGP  state=running  asn=65001", "announced=10.1.77.0/24", "PEER", "RECEIVED", "INSTALLED", "REFUSED", rrAddr.String(), s.State} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
