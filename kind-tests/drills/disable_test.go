package drills

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// nodeState is what of the mesh a node holds, seen without the project's own
// code: programs named cm_* attached to the node's cgroup (cilium/ebpf's
// BPF_PROG_QUERY), entries of the node's bpffs pin directory, and routes of
// the project's protocols in any table of the node's namespace (ip route).
type nodeState struct {
	programs, pins, routes []string
}

func (s nodeState) empty() bool { return len(s.programs)+len(s.pins)+len(s.routes) == 0 }

// cgroupHooks are the cgroup hooks the agent's programs attach to.
var cgroupHooks = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP6Sendmsg,
	ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCGroupUDP6Recvmsg,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername,
}

func stateOf(t *testing.T, n *emulator.Node) nodeState {
	t.Helper()
	var s nodeState
	f, err := os.Open(n.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, hook := range cgroupHooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: hook})
		if err != nil {
			t.Fatalf("node %s: query %s programs: %v", n.Name, hook, err)
		}
		for _, ap := range res.Programs {
			p, err := ebpf.NewProgramFromID(ap.ID)
			if err != nil {
				continue
			}
			info, err := p.Info()
			p.Close()
			if err == nil && strings.HasPrefix(info.Name, "cm_") {
				s.programs = append(s.programs, info.Name)
			}
		}
	}
	entries, err := os.ReadDir(n.BPFDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		s.pins = append(s.pins, e.Name())
	}
	for _, proto := range []string{"195", "196"} {
		out, err := exec.Command("ip", "-n", n.Netns, "route", "show", "table", "all", "proto", proto).CombinedOutput()
		if err != nil {
			t.Fatalf("node %s: ip route: %v: %s", n.Name, err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" {
				s.routes = append(s.routes, line)
			}
		}
	}
	return s
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

// TestDisable runs `clustermesh disable` on one cluster of a working
// two-cluster mesh: refused while c2 is connected, then, after disconnect,
// it stops the agents, cleans every node (no cm_* program attached to the
// node's cgroup, no pin, no route of the project's protocols, a foreign route
// kept), deletes the namespace and the cluster-scoped objects, and c2 still
// serves its own service. A second disable says the mesh is not enabled.
func TestDisable(t *testing.T) {
	ctx, r := startRun(t)
	m, err := emulator.NewMesh(ctx, r, bins, emulator.MeshOptions{Clusters: 2, Nodes: 2, Routing: emulator.RoutingAgent})
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{Mesh: Emulated{M: m}, Service: "echo", Replicas: 2, Report: &emulator.Report{}, Logf: t.Logf}
	if err := Setup(ctx, env); err != nil {
		t.Fatal(err)
	}
	c1, c2 := m.Clusters[0], m.Clusters[1]

	// The mesh works from c1: the global service answers from both
	// clusters (c1's sockets are balanced, its routes reach c2's pods).
	tr, err := env.traffic(ctx, c1.Name, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.waitSeen(ctx, tr, time.Now(), c1.Name, c2.Name); err != nil {
		t.Fatal(err)
	}
	stop(tr)
	// The node checks see what the agents left: they can fail.
	for _, n := range c1.Nodes() {
		s := stateOf(t, n)
		if len(s.programs) == 0 || len(s.pins) == 0 || len(s.routes) == 0 {
			t.Fatalf("node %s before disable: programs %v, pins %v, routes %v; want some of each", n.Name, s.programs, s.pins, s.routes)
		}
	}

	t.Run("refused while connected", func(t *testing.T) {
		out, err := m.CLI(ctx, "disable", "--context", c1.Name)
		if err == nil || !strings.Contains(out, "connected to "+c2.Name) || !strings.Contains(out, "clustermesh disconnect") || !strings.Contains(out, "--force") {
			t.Fatalf("disable of a connected cluster: %v\n%s", err, out)
		}
		if _, err := c1.ControlPlane().Client.AppsV1().DaemonSets(deploy.Namespace).Get(ctx, "clustermesh-agent", metav1.GetOptions{}); err != nil {
			t.Fatalf("refused disable changed the cluster: %v", err)
		}
	})

	if err := m.Disconnect(ctx, c1, c2); err != nil {
		t.Fatal(err)
	}
	// Routes a crashed agent could have left (disconnect made the agents
	// drop theirs): static and BGP, one in another table; and a route of
	// somebody else, which must stay.
	n1 := c1.Nodes()[0]
	ip(t, "-n", n1.Netns, "route", "add", "10.250.1.0/24", "via", c2.Nodes()[0].FabricIP.String(), "proto", "196")
	ip(t, "-n", n1.Netns, "route", "add", "10.250.2.0/24", "via", c2.Nodes()[0].FabricIP.String(), "proto", "195", "table", "4242")
	ip(t, "-n", n1.Netns, "route", "add", "10.250.3.0/24", "via", c2.Nodes()[0].FabricIP.String())

	out, err := m.CLI(ctx, "disable", "--context", c1.Name)
	t.Logf("clustermesh disable --context %s:\n%s", c1.Name, out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no peer connected", "agents stopped", "node " + n1.Name + " clean", "removed from context " + c1.Name} {
		if !strings.Contains(out, want) {
			t.Errorf("disable output lacks %q", want)
		}
	}

	for _, n := range c1.Nodes() {
		if s := stateOf(t, n); !s.empty() {
			t.Errorf("node %s after disable: programs %v, pins %v, routes %v; want none", n.Name, s.programs, s.pins, s.routes)
		}
	}
	if out := ip(t, "-n", n1.Netns, "route", "show", "10.250.3.0/24"); !strings.Contains(out, "via") {
		t.Errorf("disable removed a foreign route on %s", n1.Name)
	}
	for _, p := range c1.ControlPlane().Agents() {
		if !p.Exited() {
			t.Errorf("agent %s still runs", p.Spec.Name)
		}
	}
	k := c1.ControlPlane().Client
	if _, err := k.CoreV1().Namespaces().Get(ctx, deploy.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s after disable: %v, want not found", deploy.Namespace, err)
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=clustermesh"}
	if l, err := k.RbacV1().ClusterRoles().List(ctx, sel); err != nil || len(l.Items) != 0 {
		t.Errorf("cluster roles after disable: %v (%v)", l, err)
	}
	if l, err := k.RbacV1().ClusterRoleBindings().List(ctx, sel); err != nil || len(l.Items) != 0 {
		t.Errorf("cluster role bindings after disable: %v (%v)", l, err)
	}
	if out, err := m.CLI(ctx, "disable", "--context", c1.Name); err != nil || !strings.Contains(out, "not enabled") {
		t.Errorf("second disable: %v\n%s", err, out)
	}

	// c2 lives on: its global service answers from its own pods.
	tr, err = env.traffic(ctx, c2.Name, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer stop(tr)
	if _, err := env.waitOnly(ctx, tr, time.Now(), 10, c2.Name); err != nil {
		t.Fatal(err)
	}
	for _, n := range c2.Nodes() {
		if s := stateOf(t, n); len(s.programs) == 0 || len(s.pins) == 0 {
			t.Errorf("node %s of c2 lost its datapath: programs %v, pins %v", n.Name, s.programs, s.pins)
		}
	}
}
