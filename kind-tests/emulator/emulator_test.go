package emulator

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

var bins *Binaries

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips
		}
		root, err := ModuleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "harness-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bins, err = Build(context.Background(), root, dir, nil, PartProbe)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, cgroups")
	}
}

func newRun(t *testing.T) *Run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			r.Fail()
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// dialFrom connects from inside netns to addr and returns the echo reply.
func dialFrom(t *testing.T, netns string, proto string, addr netip.AddrPort) string {
	t.Helper()
	line, err := dial(netns, proto, addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

// dial connects from inside netns to addr and returns the first line the
// server sends (for UDP, after sending it a byte).
func dial(netns string, proto string, addr netip.AddrPort, timeout time.Duration) (string, error) {
	var c net.Conn
	err := netlab.InNetns(netns, func() error {
		var err error
		c, err = net.DialTimeout(proto, addr.String(), timeout)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s from %s to %s: %w", proto, netns, addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("x")); err != nil {
			return "", fmt.Errorf("%s from %s to %s: %w", proto, netns, addr, err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s from %s to %s: read: %w", proto, netns, addr, err)
	}
	return strings.TrimSpace(line), nil
}

// TestPodsReachEachOtherAcrossNodes builds 2 clusters x 2 nodes with a pod
// each, routes pod CIDRs statically over the fabric (no tunnel) and checks
// TCP and UDP from every pod and every node to every pod.
func TestPodsReachEachOtherAcrossNodes(t *testing.T) {
	needRoot(t)
	r := newRun(t)
	ctx := context.Background()
	var pods []*Pod
	for _, cn := range []string{"c1", "c2"} {
		c, err := r.AddCluster(ctx, cn)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			n, err := c.AddNode(ctx)
			if err != nil {
				t.Fatal(err)
			}
			p, err := n.AddPod(ctx, "default", "echo-"+n.Name)
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
	}
	if err := r.InstallStaticRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	for _, from := range pods {
		for _, to := range pods {
			for _, proto := range []string{"tcp", "udp"} {
				for _, ns := range []string{from.Netns, from.Node.Netns} {
					got := dialFrom(t, ns, proto, netip.AddrPortFrom(to.IP, EchoPort))
					if got != to.Name {
						t.Errorf("%s from %s to %s (%s): reply %q, want %q", proto, ns, to.Name, to.IP, got, to.Name)
					}
				}
			}
		}
	}
	// Routes go over the fabric without encapsulation: the next hop of a
	// remote pod CIDR is the remote node's fabric address.
	a, b := pods[0].Node, pods[3].Node
	h, err := netlab.Handle(a.Netns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes, err := h.RouteGet(b.PodCIDR.Addr().AsSlice())
	if err != nil || len(routes) == 0 {
		t.Fatalf("route get in %s: %v", a.Name, err)
	}
	if gw, _ := netip.AddrFromSlice(routes[0].Gw.To4()); gw != b.FabricIP {
		t.Errorf("route from %s to %s: gateway %v, want %v", a.Name, b.PodCIDR, routes[0].Gw, b.FabricIP)
	}
}

// TestTrafficAndPodRemoval runs the probe in a node's cgroup against a pod on
// another node, removes the pod and checks the probe records failures.
func TestTrafficAndPodRemoval(t *testing.T) {
	needRoot(t)
	r := newRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := r.AddCluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	n1, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n2, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.InstallStaticRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	pod, err := n2.AddPod(ctx, "default", "web-0")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tr, err := n1.StartTraffic(bins, "probe", netip.AddrPortFrom(pod.IP, EchoPort), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Stop(ctx)
	if _, err := tr.WaitFor(ctx, start, 5, func(a Attempt) bool { return a.OK && a.Backend == "web-0" }); err != nil {
		t.Fatal(err)
	}
	// The probe runs in a child of the node's cgroup.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", tr.proc.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	cgRoot, err := netlab.CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimPrefix(n1.Cgroup, cgRoot) + "/probe"; !strings.Contains(string(b), "0::"+want) {
		t.Errorf("probe cgroup: %q, want %s", b, want)
	}
	removed := time.Now()
	if err := pod.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.WaitFor(ctx, removed, 3, func(a Attempt) bool { return !a.OK }); err != nil {
		t.Fatal(err)
	}
	s := Summarize(tr.Attempts(start))
	t.Logf("attempts %d, failed %d, per backend %v, errors %v", s.Total, s.Failed, s.PerBackend, s.Errors)
	if s.PerBackend["web-0"] == 0 || s.Failed == 0 {
		t.Errorf("summary %+v: want successes before and failures after removal", s)
	}
}

// TestCleanRemovesLeftovers leaves a run behind (no Close) with a process
// running in a node, then checks Clean removes every trace.
func TestCleanRemovesLeftovers(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close() // after Clean, must find nothing left to fail on
	c, err := r.AddCluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.AddPod(ctx, "default", "p"); err != nil {
		t.Fatal(err)
	}
	proc, err := n.StartProcess(ProcessSpec{Name: "sleeper", Path: "sleep", Args: []string{"600"}})
	if err != nil {
		t.Fatal(err)
	}
	done, err := Clean(ctx, r.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clean: %s", strings.Join(done, "; "))
	select {
	case <-proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("process in the run's cgroup survived Clean")
	}
	leftovers := func() []string {
		var out []string
		cgRoot, _ := netlab.CgroupRoot()
		for _, dir := range []string{"/run/netns", cgRoot, netlab.BPFRoot, os.TempDir()} {
			es, _ := os.ReadDir(dir)
			for _, e := range es {
				if strings.HasPrefix(e.Name(), r.Prefix) {
					out = append(out, filepath.Join(dir, e.Name()))
				}
			}
		}
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, r.Prefix) {
				out = append(out, "link "+l.Attrs().Name)
			}
		}
		return out
	}
	if l := leftovers(); len(l) > 0 {
		t.Errorf("left after Clean: %v", l)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close after Clean: %v", err)
	}
}

func TestPrefix(t *testing.T) {
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{NewPrefix(), true},
		{"cmk0a9f", true},
		{"cm0a9f", false},
		{"cmk0a9", false},
		{"cmkzzzz", false},
		{"cmk0a9fe", false},
	} {
		if err := CheckPrefix(tc.p); (err == nil) != tc.ok {
			t.Errorf("CheckPrefix(%q) = %v, want ok=%v", tc.p, err, tc.ok)
		}
	}
}
