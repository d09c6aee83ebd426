package commands_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/cli/commands"
	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
)

// TestEnableThenConnectAtOnce scripts what users and the drills' setup do:
// enable two clusters and connect them right away, with nothing in between.
// The test's kubelet starts each cluster's apiserver only once enable has
// installed it, as a real one would, so the store is down when enable has
// applied its objects. enable returns only once its store serves: connect,
// told not to wait (--wait-duration -1s checks once), finds both stores up.
// Before the kubelet runs, an enable whose wait runs out says so; after, a
// zero wait is none.
func TestEnableThenConnectAtOnce(t *testing.T) {
	env := clitest.Start(t,
		clitest.Spec{Name: "c1", NodeIP: "127.0.0.31", PodCIDR: "10.1.0.0/24"},
		clitest.Spec{Name: "c2", NodeIP: "127.0.0.32", PodCIDR: "10.2.0.0/24"},
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	try := func(args ...string) (string, error) {
		t.Helper()
		var out, stderr bytes.Buffer
		err := commands.Execute(ctx, append(args, "--kubeconfig", env.Kubeconfig), &out, &stderr)
		t.Logf("$ clustermesh %s\n%s%s", strings.Join(args, " "), out.String(), stderr.String())
		return out.String(), err
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := try(args...)
		if err != nil {
			t.Fatalf("clustermesh %s: %v", strings.Join(args, " "), err)
		}
		return out
	}

	// No kubelet yet: the store cannot serve, and a wait that runs out
	// fails, naming the store and the next step, after the install.
	out, err := try("enable", "--context", "c1", "--cluster-name", "c1", "--cluster-id", "1", "--wait-duration", "-1s")
	var ce *mesh.CheckError
	if !errors.As(err, &ce) || !errors.Is(err, mesh.ErrUnreachable) || !strings.Contains(err.Error(), "gave up") ||
		!strings.Contains(err.Error(), "the store of cluster c1") || ce.Problems[0].Fix == "" {
		t.Fatalf("enable without a running apiserver: err = %v, want the store unreachable, with a fix", err)
	}
	if !strings.Contains(out, "✓ cluster c1 (ID 1) enabled") {
		t.Errorf("enable whose wait ran out: output does not say the install is done:\n%s", out)
	}

	env.Kubelet(t, "c1", "c2")
	for _, args := range [][]string{
		{"enable", "--context", "c1", "--cluster-name", "c1", "--cluster-id", "1"},
		{"enable", "--context", "c2", "--cluster-name", "c2", "--cluster-id", "2", "--inherit-ca-from", "c1"},
	} {
		if out := run(args...); !strings.Contains(out, "✓ store of "+args[2]+" serves at https://") {
			t.Errorf("enable %s: output does not say its store serves:\n%s", args[2], out)
		}
	}
	out = run("connect", "--context", "c1", "--destination-context", "c2", "--wait-duration", "-1s")
	if !strings.Contains(out, "✓ connected c1 with c2") {
		t.Errorf("connect output:\n%s", out)
	}

	// On the command line a zero wait means none: enable returns after
	// applying, connect checks once (a dead endpoint is refused at once,
	// not after the default two minutes).
	if out := run("enable", "--context", "c1", "--cluster-name", "c1", "--cluster-id", "1", "--wait-duration", "0"); !strings.Contains(out, "not waiting for the store") {
		t.Errorf("enable --wait-duration 0: output:\n%s", out)
	}
	_, err = try("connect", "--context", "c1", "--destination-context", "c2", "--destination-endpoint", "https://127.0.0.99:9", "--wait-duration", "0")
	if !errors.Is(err, mesh.ErrUnreachable) || strings.Contains(err.Error(), "waited") {
		t.Errorf("connect --wait-duration 0 to a dead endpoint: err = %v, want unreachable, checked once", err)
	}
}
