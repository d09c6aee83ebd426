package kindenv

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/poll"
)

// nodeState is what of the mesh a kind node holds, seen from the host and
// without the project's code: cm_* programs attached to the node
// container's cgroup (bpftool cgroup tree), entries of its
// /sys/fs/bpf/clustermesh, and routes of protocols 195 and 196 in any table
// of its network namespace.
type nodeState struct{ programs, pins, routes, store []string }

func (s nodeState) String() string {
	return fmt.Sprintf("programs %v, pins %v, routes %v, store data %v", s.programs, s.pins, s.routes, s.store)
}

// storeDir is where a node-local store keeps its data on its node (enable
// picks node-local on these clusters: they have no default StorageClass).
const storeDir = "/var/lib/clustermesh/" + meshNamespace + "/store"

func command(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func stateOf(ctx context.Context, node string) (nodeState, error) {
	var s nodeState
	id, err := command(ctx, "docker", "inspect", "-f", "{{.Id}}", node)
	if err != nil {
		return s, err
	}
	pid, err := command(ctx, "docker", "inspect", "-f", "{{.State.Pid}}", node)
	if err != nil {
		return s, err
	}
	tree, err := command(ctx, "bpftool", "cgroup", "tree")
	if err != nil {
		return s, err
	}
	// Lines of a cgroup's programs follow the line naming the cgroup.
	var cg string
	for _, line := range strings.Split(tree, "\n") {
		if strings.HasPrefix(line, "/") {
			cg = line
			continue
		}
		if f := strings.Fields(line); strings.Contains(cg, strings.TrimSpace(id)) && len(f) > 0 && strings.HasPrefix(f[len(f)-1], "cm_") {
			s.programs = append(s.programs, f[len(f)-1])
		}
	}
	if out, err := command(ctx, "docker", "exec", node, "ls", "-A", "/sys/fs/bpf/clustermesh"); err == nil {
		s.pins = strings.Fields(out)
	} else if !strings.Contains(out, "No such file") {
		return s, err
	}
	if out, err := command(ctx, "docker", "exec", node, "ls", "-A", storeDir); err == nil {
		s.store = strings.Fields(out)
	} else if !strings.Contains(out, "No such file") {
		return s, err
	}
	for _, proto := range []string{"195", "196"} {
		out, err := command(ctx, "nsenter", "-t", strings.TrimSpace(pid), "-n", "ip", "route", "show", "table", "all", "proto", proto)
		if err != nil {
			return s, err
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line != "" {
				s.routes = append(s.routes, line)
			}
		}
	}
	return s, nil
}

// TestKindDisable runs `clustermesh disable` on the first of two real kind
// clusters, after the drills (make kind-drills) or on its own (it enables
// fresh clusters): refused
// while connected; after disconnect, every node of the cluster has no cm_*
// program on its cgroup, no pin, no route of ours and no store data (the
// node-local store is removed too), the namespace is gone,
// and the other cluster's nodes keep their datapath.
func TestKindDisable(t *testing.T) {
	m, opts := kindMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c1, c2 := opts.Clusters[0], opts.Clusters[1]
	// After the drills both clusters are enabled and disconnected, and a
	// node of c2 is dead (NodeDeath): no wait on every agent then. Run on
	// its own, on fresh clusters, the test enables them first.
	if _, err := m.Kube(c1).CoreV1().Namespaces().Get(ctx, meshNamespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if err := m.Enable(ctx); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	if _, err := m.CLI(ctx, "connect", "--context", kubeContext(c1), "--destination-context", kubeContext(c2)); err != nil {
		t.Fatal(err)
	}
	// The checks see what the agents hold (they can fail): with
	// static-all every node routes its cluster's other nodes.
	storeNodes := 0
	for _, n := range m.Nodes(c1) {
		if s, err := stateOf(ctx, n); err == nil && len(s.store) > 0 {
			storeNodes++
		}
	}
	if storeNodes != 1 {
		t.Fatalf("before disable: %d nodes of %s hold store data in %s, want the one of its node-local store", storeNodes, c1, storeDir)
	}
	for _, n := range m.Nodes(c1) {
		wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		err := poll.Until(wctx, func(ctx context.Context) error {
			s, err := stateOf(ctx, n)
			if err != nil {
				return poll.Final(err)
			}
			if len(s.programs) == 0 || len(s.pins) == 0 || len(s.routes) == 0 {
				return fmt.Errorf("node %s: %s; want some of each", n, s)
			}
			return nil
		})
		cancel()
		if err != nil {
			t.Fatalf("before disable: %v", err)
		}
	}

	out, err := m.CLI(ctx, "disable", "--context", kubeContext(c1))
	if err == nil || !strings.Contains(out, "connected to "+c2) {
		t.Fatalf("disable of a connected cluster: %v\n%s", err, out)
	}
	if err := m.Disconnect(ctx, c1, c2); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err = m.CLI(ctx, "disable", "--context", kubeContext(c1))
	t.Logf("clustermesh disable --context %s (%s):\n%s", kubeContext(c1), time.Since(start).Round(100*time.Millisecond), out)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.Nodes(c1) {
		s, err := stateOf(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.programs)+len(s.pins)+len(s.routes)+len(s.store) != 0 {
			t.Errorf("node %s after disable: %s; want none", n, s)
		}
	}
	for _, n := range m.Nodes(c2) {
		if up, _ := command(ctx, "docker", "inspect", "-f", "{{.State.Running}}", n); strings.TrimSpace(up) != "true" {
			continue // killed by the NodeDeath drill
		}
		if s, err := stateOf(ctx, n); err != nil || len(s.programs) == 0 {
			t.Errorf("node %s of %s lost its programs: %s (%v)", n, c2, s, err)
		}
	}
	if _, err := m.Kube(c1).CoreV1().Namespaces().Get(ctx, meshNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace %s after disable: %v, want not found", meshNamespace, err)
	}
	if out, err := m.CLI(ctx, "disable", "--context", kubeContext(c1)); err != nil || !strings.Contains(out, "not enabled") {
		t.Errorf("second disable: %v\n%s", err, out)
	}
}
