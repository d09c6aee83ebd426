package apiserver_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// childEnv selects the role of a re-executed test binary ("apiserver" or
// "node"); childSpecEnv carries its JSON spec. GoBGP binds in the process's
// network namespace, so each runs in its own process started with nsenter.
const (
	childEnv     = "CLUSTERMESH_APISERVER_CHILD"
	childSpecEnv = "CLUSTERMESH_APISERVER_CHILD_SPEC"
)

// childSpec describes what a child runs.
type childSpec struct {
	// apiserver: a Kubernetes control plane on the child's loopback with
	// these nodes, and a clustermesh-apiserver with Config on it.
	Config apiserver.Config `json:"config"`
	Nodes  []childNode      `json:"nodes,omitempty"`
	Dir    string           `json:"dir"`
	// node: the node's store connection file, cluster and name.
	Connection string `json:"connection,omitempty"`
	Cluster    string `json:"cluster,omitempty"`
	Node       string `json:"node,omitempty"`
}

type childNode struct{ Name, IP, PodCIDR string }

// childStatus is the reply to a "status" line on the child's stdin.
type childStatus struct {
	Err     string     `json:"err,omitempty"`
	Status  bgp.Status `json:"status"`
	Metrics string     `json:"metrics,omitempty"`
}

// runChild runs a role until stdin closes; stdout carries "ready" and then
// one JSON status per "status" request.
func runChild(role string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childSpecEnv)), &spec); err != nil {
		log.Error("child spec", "error", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var status func(context.Context) (bgp.Status, error)
	reg := prometheus.NewRegistry()
	var err error
	var wait func()
	switch role {
	case "apiserver":
		status, wait, err = childAPIServer(ctx, spec, reg, log)
	case "node":
		status, wait, err = childNodeSpeaker(ctx, spec, reg, log)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		log.Error("child", "role", role, "error", err)
		return 1
	}
	defer wait()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var resp childStatus
		st, err := status(ctx)
		if err != nil {
			resp.Err = err.Error()
		}
		resp.Status = st
		if mfs, err := reg.Gather(); err == nil {
			var b strings.Builder
			for _, mf := range mfs {
				_, _ = expfmt.MetricFamilyToText(&b, mf)
			}
			resp.Metrics = b.String()
		}
		if out.Encode(resp) != nil {
			break
		}
	}
	cancel()
	return 0
}

// childAPIServer starts a Kubernetes control plane in the child's network
// namespace, creates the nodes, and runs the apiserver (with its reflector)
// on it.
func childAPIServer(ctx context.Context, spec childSpec, reg *prometheus.Registry, log *slog.Logger) (func(context.Context) (bgp.Status, error), func(), error) {
	kube, err := kubetest.StartProcess(ctx, filepath.Join(spec.Dir, "kube"), nil)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range spec.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name},
			Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR}},
		}
		node, err := kube.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			kube.Stop()
			return nil, nil, err
		}
		node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.IP}}
		if _, err := kube.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			kube.Stop()
			return nil, nil, err
		}
	}
	srv, err := apiserver.New(spec.Config, &apiserver.Options{Logger: log, Registerer: reg, Gatherer: reg, RESTConfig: kube.Config})
	if err != nil {
		kube.Stop()
		return nil, nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(rctx) }()
	// The status goes through /status/bgp, as an operator reads it.
	status := func(ctx context.Context) (bgp.Status, error) {
		var st bgp.Status
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+srv.HealthAddr()+"/status/bgp", nil)
		if err != nil {
			return st, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return st, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return st, fmt.Errorf("/status/bgp: %s: %s", resp.Status, b)
		}
		return st, json.NewDecoder(resp.Body).Decode(&st)
	}
	return status, func() {
		cancel()
		if err := <-done; err != nil {
			log.Error("apiserver run", "error", err)
		}
		kube.Stop()
	}, nil
}

// childNodeSpeaker runs a node's BGP speaker configured only from its
// cluster's store: its own api.Node and the cluster's api.Cluster.
func childNodeSpeaker(ctx context.Context, spec childSpec, reg *prometheus.Registry, log *slog.Logger) (func(context.Context) (bgp.Status, error), func(), error) {
	kc, err := kvstore.LoadConfig(spec.Connection)
	if err != nil {
		return nil, nil, err
	}
	var client *kvstore.Client
	for client == nil {
		if client, err = kvstore.New(ctx, kc); err != nil {
			log.Info("store not reachable yet", "error", err)
			time.Sleep(500 * time.Millisecond)
		}
	}
	defer client.Close()
	r := kvstore.NewReader(client, spec.Cluster, nil)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	var node *api.Node
	var cluster *api.Cluster
	nodes, clusters := r.Watch(wctx, api.KindNode), r.Watch(wctx, api.KindCluster)
	for node == nil || cluster == nil || !node.BGPAddress.IsValid() || !cluster.RouteReflector.IsValid() {
		select {
		case ev := <-nodes:
			if n, ok := ev.Object.(*api.Node); ok && n.Name == spec.Node {
				node = n
			}
		case ev := <-clusters:
			if c, ok := ev.Object.(*api.Cluster); ok {
				cluster = c
			}
		case <-time.After(3 * time.Minute):
			return nil, nil, fmt.Errorf("node %s/%s: store has no node with a BGP address or no route reflector", spec.Cluster, spec.Node)
		}
	}
	stop()
	for range nodes {
	}
	for range clusters {
	}
	base := bgp.DefaultKindConfig()
	base.Logger, base.Registerer = log, reg
	base.InstallRoutes = true
	cfg, err := bgp.NodeConfig(base, *node, *cluster)
	if err != nil {
		return nil, nil, err
	}
	sp, err := bgp.NewSpeaker(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := sp.Start(ctx); err != nil {
		return nil, nil, err
	}
	peers, err := bgp.NodePeers(*cluster)
	if err == nil {
		err = sp.SetPeers(ctx, peers)
	}
	if err != nil {
		_ = sp.Stop(context.Background())
		return nil, nil, err
	}
	return sp.Status, func() { _ = sp.Stop(context.Background()) }, nil
}

// TestReflectorsFromStore runs two clusters, each a clustermesh-apiserver
// hosting its route reflector (with a real Kubernetes control plane) and one
// node speaker, every one in its own network namespace on one fabric
// bridge. No peer is given by hand: the apiservers publish their reflector
// and nodes in their stores, the node speakers read their reflector from
// their store, and each reflector finds the other through --clusters-dir.
// Each node's pod CIDR must be installed on the other cluster's node with
// the owning node as next hop (not a reflector).
func TestReflectorsFromStore(t *testing.T) {
	l := newLab(t) // skips unless root
	kubetest.Require(t, nil)

	const rr1, rr2, n1, n2 = "192.0.2.1", "192.0.2.2", "192.0.2.11", "192.0.2.21"
	l.Host("rr1", rr1)
	l.Host("rr2", rr2)
	l.Host("n1", n1)
	l.Host("n2", n2)

	certs := pkitest.New(t, "store")
	dir, write, caFile := certs.Dir, certs.Write, certs.CAFile
	issue := func(prefix, cn string, ips ...string) (string, string) {
		t.Helper()
		o := pki.IssueOptions{CommonName: cn, Client: len(ips) == 0, Server: len(ips) > 0}
		for _, ip := range ips {
			o.IPs = append(o.IPs, net.ParseIP(ip))
		}
		return certs.Issue(prefix, o)
	}
	// connection writes a connection file for cluster's store at ip, as user.
	connection := func(path, ip, user string) string {
		crt, key := issue(strings.ReplaceAll(path, "/", "-")+"-"+user, user)
		return write(path, fmt.Appendf(nil, "endpoints: [\"https://%s:2379\"]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n", ip, caFile, crt, key))
	}

	type cluster struct {
		name, rr, node, nodeIP, podCIDR, peer, peerRR string
		id, asn                                       uint32
	}
	clusters := []cluster{
		{"c1", rr1, "n1", n1, "10.1.1.0/24", "c2", rr2, 1, 65001},
		{"c2", rr2, "n2", n2, "10.2.1.0/24", "c1", rr1, 2, 65002},
	}
	servers := map[string]*labChild{}
	for _, c := range clusters {
		cfg := apiserver.DefaultConfig()
		cfg.ClusterName, cfg.ClusterID = c.name, c.id
		cfg.EtcdDataDir = filepath.Join(dir, c.name, "etcd")
		cfg.EtcdListenClientURL = "https://" + c.rr + ":2379"
		cfg.EtcdCA = caFile
		cfg.EtcdCert, cfg.EtcdKey = issue(c.name+"-server", c.name, c.rr, "127.0.0.1")
		cfg.HealthAddr = "127.0.0.1:0"
		cfg.UnsafeNoFsync = true
		cfg.LeaseTTL = time.Minute
		cfg.BGPReflectorAddress = c.rr + ":179"
		cfg.BGPASN = c.asn
		cfg.BGPShortTimers = true
		// The same directory the agents would mount: the own cluster's file
		// is skipped, the peer's names the peer's store.
		cfg.ClustersDir = filepath.Join(dir, c.name, "clusters")
		connection(filepath.Join(c.name, "clusters", c.name), c.rr, kvstore.UserRemote)
		connection(filepath.Join(c.name, "clusters", c.peer), c.peerRR, kvstore.UserRemote)
		cfg.ClustersDirPoll = 500 * time.Millisecond
		cfg.BGPPeerDrain = 5 * time.Second
		servers[c.name] = l.start("apiserver-"+c.name, "rr"+c.name[1:], "apiserver", childSpec{
			Config: cfg, Dir: filepath.Join(dir, c.name),
			Nodes: []childNode{{Name: c.node, IP: c.nodeIP, PodCIDR: c.podCIDR}},
		})
	}
	nodes := map[string]*labChild{}
	for _, c := range clusters {
		nodes[c.node] = l.start("node-"+c.node, c.node, "node", childSpec{
			Connection: connection(filepath.Join(c.node, c.name), c.rr, kvstore.UserAgent),
			Cluster:    c.name, Node: c.node,
		})
	}
	for _, c := range clusters {
		for _, ch := range []*labChild{servers[c.name], nodes[c.node]} {
			ch.waitReady(t, 4*time.Minute)
		}
	}

	// Every node learns the other cluster's pod CIDR with the owning node
	// as next hop: the reflectors passed it on unchanged.
	for i, c := range clusters {
		other := clusters[1-i]
		want := map[netip.Prefix]netip.Addr{netip.MustParsePrefix(other.podCIDR): netip.MustParseAddr(other.nodeIP)}
		poll.Eventually(t, 2*time.Minute, fmt.Sprintf("%s has %s via %s", c.node, other.podCIDR, other.nodeIP), func() (bool, string) {
			got := l.routes(c.node)
			return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprintf("routes of protocol %d on %s: %v", bgp.RouteProtocol, c.node, got)
		})
	}

	// The connection files are followed live: without c1's file for c2, c1's
	// reflector drops c2's (c1 is the side that dials) once the drain is
	// over, and each node loses the other cluster's CIDR; with the file
	// back, the routes return.
	peerFile := filepath.Join(dir, "c1", "clusters", "c2")
	saved, err := os.ReadFile(peerFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(peerFile); err != nil {
		t.Fatal(err)
	}
	// First the drain (BGPPeerDrain, 5 s here): the peer's reflector stays
	// and so do its routes, while agents may still balance to its pods.
	time.Sleep(time.Second)
	for _, c := range clusters {
		if got := l.routes(c.node); len(got) == 0 {
			t.Errorf("%s lost the other cluster's CIDR within 1 s of the disconnect, before the 5 s drain", c.node)
		}
	}
	for _, c := range clusters {
		poll.Eventually(t, 2*time.Minute, c.node+" loses the other cluster's CIDR", func() (bool, string) {
			got := l.routes(c.node)
			return len(got) == 0, fmt.Sprintf("routes on %s: %v", c.node, got)
		})
	}
	write(filepath.Join("c1", "clusters", "c2"), saved)
	for i, c := range clusters {
		other := clusters[1-i]
		poll.Eventually(t, 2*time.Minute, fmt.Sprintf("%s has %s again", c.node, other.podCIDR), func() (bool, string) {
			got := l.routes(c.node)
			return got[netip.MustParsePrefix(other.podCIDR)] == netip.MustParseAddr(other.nodeIP), fmt.Sprintf("routes on %s: %v", c.node, got)
		})
	}

	// The reflector reports both sessions, learned from the store: its node
	// (iBGP client) and the other cluster's reflector (eBGP), on /status/bgp
	// and in its metrics on the apiserver's registry.
	for _, c := range clusters {
		resp := servers[c.name].status(t)
		if resp.Err != "" {
			t.Fatalf("%s reflector status: %s", c.name, resp.Err)
		}
		st := resp.Status
		got := map[string]bool{}
		for _, p := range st.Peers {
			got[p.Name] = p.Established
		}
		want := map[string]bool{c.name + "/" + c.node: true, c.peer + "/reflector": true}
		if fmt.Sprint(got) != fmt.Sprint(want) || st.Role != "reflector" || st.ASN != c.asn {
			t.Errorf("%s reflector: role %s ASN %d peers %v; want reflector ASN %d peers %v", c.name, st.Role, st.ASN, got, c.asn, want)
		}
		if !strings.Contains(resp.Metrics, "clustermesh_bgp_session_established{") || !strings.Contains(resp.Metrics, "clustermesh_apiserver_exported_objects{") {
			t.Errorf("%s: BGP and apiserver metrics not on one registry:\n%s", c.name, resp.Metrics)
		}
	}
}

// lab is a netlab.Lab with this test's helpers on top: route reads and the
// apiserver and speaker children.
type lab struct {
	*netlab.Lab
}

func newLab(t *testing.T) *lab { return &lab{Lab: netlab.New(t)} }

// routes lists the routes the speakers installed on node short.
func (l *lab) routes(short string) map[netip.Prefix]netip.Addr {
	l.TB.Helper()
	return l.Routes(l.NS(short), bgp.RouteProtocol)
}

// labChild is a re-executed test binary in a namespace.
type labChild struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	log   string
}

// start runs role in namespace short with spec; Cleanup closes its stdin
// (it stops cleanly) and kills it if it has not exited after 30 s.
func (l *lab) start(name, short, role string, spec childSpec) *labChild {
	l.TB.Helper()
	exe, err := os.Executable()
	if err != nil {
		l.TB.Fatal(err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		l.TB.Fatal(err)
	}
	logPath := filepath.Join(l.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		l.TB.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+l.NS(short), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+role, childSpecEnv+"="+string(js))
	cmd.Stderr = logf
	stdin, err := cmd.StdinPipe()
	if err != nil {
		l.TB.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		l.TB.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		l.TB.Fatalf("start %s: %v", name, err)
	}
	c := &labChild{name: name, cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout), log: logPath}
	c.out.Buffer(make([]byte, 1<<20), 16<<20)
	l.TB.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if l.TB.Failed() {
			b, _ := os.ReadFile(logPath)
			lines := strings.Split(string(b), "\n")
			l.TB.Logf("---- log of %s ----\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return c
}

// waitReady waits for the child's "ready" line.
func (c *labChild) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		if !c.out.Scan() {
			got <- fmt.Errorf("exited before ready: %v", c.out.Err())
			return
		}
		if c.out.Text() != "ready" {
			got <- fmt.Errorf("unexpected output %q", c.out.Text())
			return
		}
		got <- nil
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("%s: %v (log %s)", c.name, err, c.log)
		}
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-got
		t.Fatalf("%s: not ready after %s (log %s)", c.name, timeout, c.log)
	}
}

// status asks the child for its BGP status and metrics.
func (c *labChild) status(t *testing.T) childStatus {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "status\n"); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	if !c.out.Scan() {
		t.Fatalf("%s: exited: %v", c.name, c.out.Err())
	}
	var resp childStatus
	if err := json.Unmarshal(c.out.Bytes(), &resp); err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	return resp
}
