package enforce

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/policy"
)

// The test binary doubles as a client process: it dials from inside a pod's
// namespace and the datapath's cgroup, where the socket hooks apply.
const dialEnv = "CM_ENFORCE_DIAL"

func TestMain(m *testing.M) {
	if spec := os.Getenv(dialEnv); spec != "" {
		proto, target, _ := strings.Cut(spec, " ")
		fmt.Println(dialOnce(proto, target))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialOnce sends one request and returns "ok" or the error.
func dialOnce(proto, target string) string {
	c, err := net.DialTimeout(proto, target, time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if proto == "udp" {
		if _, err := c.Write([]byte("hi")); err != nil {
			return err.Error()
		}
	}
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		return err.Error()
	}
	return "ok"
}

// dialFrom runs a client in pod namespace ns and the cgroup cg.
func dialFrom(t *testing.T, ns, cg, proto, target string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cgf, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	defer cgf.Close()
	cmd := exec.Command("nsenter", "--net="+netlab.NetnsPath(ns), "--", self)
	cmd.Env = append(os.Environ(), dialEnv+"="+proto+" "+target)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgf.Fd()), Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client in %s: %v\n%s", ns, err, out)
	}
	return strings.TrimSpace(string(out))
}

func serveEcho(t *testing.T, ns string, port int) {
	var (
		ln net.Listener
		pc net.PacketConn
		wg sync.WaitGroup
	)
	if err := netlab.InNetns(ns, func() error {
		var err error
		if ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("api\n"))
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte("api\n"), from)
		}
	}()
	t.Cleanup(func() { ln.Close(); pc.Close(); wg.Wait() })
}

func parseCNP(t *testing.T, doc string) []*policy.Policy {
	t.Helper()
	raw, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := policy.FromCilium(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestEngineEnforces runs the engine against the real datapath on one node
// with three pods: api (local, the server), other (local) and frontend (a
// pod of cluster c2 routed through the node). Every step asserts real TCP
// and UDP outcomes.
func TestEngineEnforces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, eBPF)")
	}
	l := netlab.New(t)
	node := l.Netns("n")
	srv := l.Pod("n", "api", "10.9.1.1", "10.9.1.10")
	fe := l.Pod("n", "fe", "10.9.2.1", "10.9.2.10")
	oth := l.Pod("n", "oth", "10.9.3.1", "10.9.3.10")
	cg := l.Cgroup("cg")
	cfg := bpf.DefaultConfig()
	cfg.CgroupPath, cfg.PinDir = cg, l.BPFFS()
	cfg.MaxServices, cfg.MaxBackends, cfg.MaxSlots, cfg.MaxNodes, cfg.MaxRevNAT = 16, 16, 64, 8, 256
	cfg.MaxIPCache, cfg.MaxPolicyEntries, cfg.MaxPolicyCT = 256, 1024, 256
	dp, err := bpf.Open(context.Background(), cfg)
	if errors.Is(err, bpf.ErrNotSupported) {
		t.Skipf("kernel: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Remove() })
	serveEcho(t, srv, 8080)

	e, err := New(Config{Cluster: "c1", Node: "n1", Datapath: dp})
	if err != nil {
		t.Fatal(err)
	}
	ident := func(cluster string, id uint32, app string) *api.Identity {
		return &api.Identity{Cluster: cluster, ID: id, Namespace: "shop", Labels: map[string]string{"app": app}}
	}
	for _, id := range []*api.Identity{ident("c1", 0x10002, "api"), ident("c1", 0x10003, "other"),
		ident("c2", 0x20001, "frontend"), ident("c2", 0x20003, "other")} {
		e.UpsertIdentity(id)
	}
	pod := func(cluster, node, ip, name string, id uint32) *api.IPCacheEntry {
		return &api.IPCacheEntry{Cluster: cluster, IP: netip.MustParseAddr(ip), Identity: id, Node: node, Namespace: "shop", Pod: name}
	}
	e.UpsertIPCache(pod("c1", "n1", "10.9.1.10", "api-0", 0x10002))
	e.UpsertIPCache(pod("c1", "n1", "10.9.3.10", "other-0", 0x10003))
	e.UpsertIPCache(pod("c2", "c2-n1", "10.9.2.10", "frontend-0", 0x20001))
	e.PoliciesSynced()

	reconcile := func(t *testing.T) {
		t.Helper()
		if err := netlab.InNetns(node, func() error { e.Reconcile(); return nil }); err != nil {
			t.Fatal(err)
		}
		if st := e.Status(); len(st.Errors) > 0 {
			t.Fatalf("reconcile errors: %v", st.Errors)
		}
	}
	const target = "10.9.1.10:8080"
	type probe struct {
		from, proto string
		// want is "ok", or part of the error.
		want string
	}
	steps := []struct {
		name   string
		change func()
		probes []probe
		// status, if set, must appear in `clustermesh-agent policy`'s text.
		status []string
	}{
		{"no policy", func() {}, []probe{
			{fe, "tcp", "ok"}, {oth, "tcp", "ok"}, {fe, "udp", "ok"},
		}, nil},
		{"api admits c2's frontend on TCP 8080 only", func() {
			e.SetPolicy("k/api", "CiliumNetworkPolicy shop/api", parseCNP(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`), nil)
		}, []probe{
			{fe, "tcp", "ok"}, {oth, "tcp", "i/o timeout"}, {fe, "udp", "i/o timeout"},
		}, nil},
		{"other may not leave its pod except to port 9999", func() {
			e.SetPolicy("k/other", "CiliumNetworkPolicy shop/other", parseCNP(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toPorts: [{ports: [{port: "9999"}]}]
`), nil)
		}, []probe{
			{oth, "tcp", "operation not permitted"}, {oth, "udp", "operation not permitted"}, {fe, "tcp", "ok"},
		}, nil},
		{"a refused update keeps the previous policy", func() {
			e.SetPolicy("k/api", "CiliumNetworkPolicy shop/api", nil, errors.New("L7 rule"))
		}, []probe{
			{fe, "tcp", "ok"}, {oth, "tcp", "operation not permitted"},
		}, nil},
		{"frontend's labels change: it leaves the allowed set", func() {
			e.UpsertIPCache(pod("c2", "c2-n1", "10.9.2.10", "frontend-0", 0x20003))
		}, []probe{
			{fe, "tcp", "i/o timeout"},
		}, nil},
		{"and back", func() {
			e.UpsertIPCache(pod("c2", "c2-n1", "10.9.2.10", "frontend-0", 0x20001))
		}, []probe{
			{fe, "tcp", "ok"},
		}, []string{
			"shop/api-0 10.9.1.10 identity 65538",
			"ingress: default deny",
			"allow c2/shop                        TCP/8080   CiliumNetworkPolicy shop/api ingress[0]",
			"refused: CiliumNetworkPolicy shop/api: L7 rule",
		}},
		{"policies deleted: default allow", func() {
			e.DeletePolicy("k/api")
			e.DeletePolicy("k/other")
		}, []probe{
			{fe, "tcp", "ok"}, {oth, "tcp", "ok"}, {fe, "udp", "ok"}, {oth, "udp", "ok"},
		}, nil},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			reconcile(t)
			for _, p := range st.probes {
				if got := dialFrom(t, p.from, cg, p.proto, target); !strings.Contains(got, p.want) {
					t.Errorf("%s from %s: %q, want %q", p.proto, p.from, got, p.want)
				}
			}
			if st.status != nil {
				var text strings.Builder
				s := e.Status()
				_ = s.WriteText(&text)
				for _, want := range st.status {
					if !strings.Contains(text.String(), want) {
						t.Errorf("status lacks %q:\n%s", want, text.String())
					}
				}
			}
		})
	}

	var text strings.Builder
	st := e.Status()
	if err := st.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if len(st.Endpoints) != 2 || st.Endpoints[0].NetnsCookie == 0 || st.Endpoints[0].Ifindex == 0 {
		t.Errorf("endpoints %+v: want api-0 and other-0 with netns and interface found", st.Endpoints)
	}
	t.Logf("status:\n%s", text.String())
}
