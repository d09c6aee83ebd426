package drills

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// RunSequence sets the mesh up (Setup) and runs every drill of Sequence as
// a subtest of t, in order, recording failures in env.Report. skip, when it
// returns a reason, skips a drill the environment cannot run. Both
// environments' tests call it, so a drill runs the same way on each.
func RunSequence(ctx context.Context, t *testing.T, env *Env, skip func(Drill) string) {
	t.Helper()
	if err := Setup(ctx, env); err != nil {
		t.Fatalf("setup on %s: %v", env.Mesh.Environment(), err)
	}
	for _, d := range Sequence {
		t.Run(d.Name, func(t *testing.T) {
			why := ""
			if _, ok := env.Mesh.(PodTrafficMesh); !ok && slices.Contains(d.Needs, NeedPodTraffic) {
				why = env.Mesh.Environment() + " runs probes on nodes, not in pods"
			}
			if why == "" && skip != nil {
				why = skip(d)
			}
			{
				if why != "" {
					env.Report.Add(d.Name, why, "-", "skip")
					t.Skip(why)
				}
			}
			dctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if err := d.Run(dctx, env); err != nil {
				env.Report.Add(d.Name, "error", oneLine(err), "FAIL")
				if errors.Is(err, ErrDrill) {
					t.Fatal(err)
				}
				t.Fatalf("drill could not run: %v", err)
			}
		})
	}
}

func oneLine(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return strings.ReplaceAll(s, "\n", " ")
}
