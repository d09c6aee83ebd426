package drills

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

var bins *emulator.Binaries

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if os.Geteuid() == 0 {
			root, err := emulator.ModuleRoot()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			dir, err := os.MkdirTemp("", "drills-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			if bins, err = emulator.Build(context.Background(), root, dir, nil); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return m.Run()
	}())
}

// requireParts skips when a part the drills need does not exist in the tree
// yet, and fails when one exists but does not build or (for the tools) was
// not built, under CI=true, where drills must run.
func requireParts(t testing.TB, parts ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("drills need root: network namespaces, cgroups, eBPF")
	}
	err := bins.Require(parts...)
	if err == nil {
		return
	}
	var missing, broken []string
	for _, p := range parts {
		if _, ok := bins.Paths[p]; ok {
			continue
		}
		if e, ok := bins.Broken[p]; ok {
			broken = append(broken, fmt.Sprintf("%s (%v)", p, e))
			continue
		}
		if strings.HasPrefix(bins.Missing[p], "hack/bin/") && emulator.InCI() {
			broken = append(broken, p+" ("+bins.Missing[p]+")")
			continue
		}
		missing = append(missing, p+": "+bins.Missing[p])
	}
	if len(broken) > 0 && emulator.InCI() {
		t.Fatalf("parts exist but are not usable (CI=true: drills must run): %s", strings.Join(broken, "; "))
	}
	t.Skipf("drills need parts not usable yet: %s", strings.Join(append(missing, broken...), "; "))
}

// agentHas reports whether the agent binary mentions flag in its help, which
// tells whether an optional capability (e.g. health gossip) was built in.
func agentHas(flag string) bool {
	out, _ := emulator.CommandOutput(bins.Path(emulator.PartAgent), "--help")
	return strings.Contains(out, flag)
}

// startRun starts an emulator run for a mesh test with every part it needs,
// bounded below go test's default 10 minute timeout so that a stuck test
// fails with its report and logs rather than a goroutine dump. The run is
// closed at the end of the test; after a failure its logs are kept.
func startRun(t *testing.T) (context.Context, *emulator.Run) {
	t.Helper()
	requireParts(t, emulator.PartAgent, emulator.PartAPIServer, emulator.PartCLI,
		emulator.PartKubectl, emulator.PartKubeAPIServer, emulator.PartKCM, emulator.PartEtcd)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	r, err := emulator.New(ctx, emulator.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			r.Fail()
			t.Logf("logs of every process are kept in %s/logs", r.Dir)
		}
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return ctx, r
}

// TestDrills runs every drill of Sequence, in order, on one mesh of two
// clusters of two nodes, and prints the figures.
func TestDrills(t *testing.T) {
	ctx, r := startRun(t)
	// CLUSTERMESH_DRILLS_ROUTING=bgp|agent|harness picks who routes pod
	// CIDRs (see emulator.MeshOptions); empty is the default.
	m, err := emulator.NewMesh(ctx, r, bins, emulator.MeshOptions{
		Clusters: 2, Nodes: 2, Routing: os.Getenv("CLUSTERMESH_DRILLS_ROUTING"),
		// Each side of a connect or disconnect sees it at another time, as
		// on kind, where kubelets refresh Secret mounts tens of seconds
		// apart: the Disconnect drill checks the routes outlive it.
		VolumeLag: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	report := &emulator.Report{}
	env := &Env{Mesh: Emulated{M: m}, Service: "echo", Replicas: 2, Report: report, Logf: t.Logf}
	if m.Routing == emulator.RoutingBGP {
		// The agents and reflectors run bgp.DefaultKindConfig: graceful
		// restart time 15 s, then LLGR (10 min) keeps the routes.
		env.StoreOutage = bgp.DefaultKindConfig().GracefulRestartTime + 5*time.Second
	}
	t.Logf("routing: %s", m.Routing)
	t.Cleanup(func() {
		t.Logf("drill figures (run %s):\n%s", r.Prefix, report)
		path := filepath.Join(os.TempDir(), "clustermesh-drills-report.txt")
		_ = os.WriteFile(path, []byte(report.String()), 0o644)
	})
	RunSequence(ctx, t, env, func(d Drill) string {
		if slices.Contains(d.Needs, NeedHealth) && !agentHas("gossip") {
			return "the agent has no health gossip flags yet"
		}
		return ""
	})
}
