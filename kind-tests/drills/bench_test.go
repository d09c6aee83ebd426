package drills

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// BenchmarkNodeDeath measures what a hard node death costs a client in
// another cluster, with the agents' health gossip and without it (the
// baseline: nothing but Kubernetes, whose node controller would take ~40 s
// and more to notice, and in the emulation never does). Each iteration builds
// a mesh, kills c2-node2 and watches a client on c1-node1 for 10 s.
//
//	sudo go test -run '^$' -bench NodeDeath -benchtime 1x ./kind-tests/drills/
func BenchmarkNodeDeath(b *testing.B) {
	for _, health := range []bool{true, false} {
		b.Run(fmt.Sprintf("health=%v", health), func(b *testing.B) {
			requireParts(b, emulator.PartAgent, emulator.PartAPIServer, emulator.PartCLI,
				emulator.PartKubectl, emulator.PartKubeAPIServer, emulator.PartKCM, emulator.PartEtcd)
			var lastFail, failedPct float64
			for range b.N {
				l, f := nodeDeathOnce(b, health)
				lastFail += l
				failedPct += f
			}
			b.ReportMetric(lastFail/float64(b.N), "ms-to-last-failure")
			b.ReportMetric(failedPct/float64(b.N), "%-failed-in-10s")
		})
	}
}

func nodeDeathOnce(b *testing.B, health bool) (lastFailMs, failedPct float64) {
	b.StopTimer()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := emulator.New(ctx, emulator.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if !health {
		r.AgentArgs = append(r.AgentArgs, "--health=false")
	}
	m, err := emulator.NewMesh(ctx, r, bins, emulator.MeshOptions{})
	if err != nil {
		b.Fatal(err)
	}
	env := &Env{Mesh: Emulated{M: m}, Service: "echo", Replicas: 2, Report: &emulator.Report{}}
	if err := Setup(ctx, env); err != nil {
		b.Fatal(err)
	}
	c1, c2 := env.c(0), env.c(1)
	tr, err := env.traffic(ctx, c1, "tcp")
	if err != nil {
		b.Fatal(err)
	}
	defer stop(tr)
	if _, err := env.waitSeen(ctx, tr, time.Now(), c1, c2); err != nil {
		b.Fatal(err)
	}
	victim := env.Mesh.Nodes(c2)[1]
	b.StartTimer()
	killed := time.Now()
	if err := env.Mesh.KillNode(ctx, victim); err != nil {
		b.Fatal(err)
	}
	if err := settle(ctx, 10*time.Second); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	as := tr.Attempts(killed)
	var last time.Time
	for _, a := range as {
		if !a.OK {
			last = a.At.Add(a.Latency)
		}
	}
	if !last.IsZero() {
		lastFailMs = float64(last.Sub(killed)) / float64(time.Millisecond)
	}
	if len(as) > 0 {
		failedPct = 100 * float64(failures(as)) / float64(len(as))
	}
	return lastFailMs, failedPct
}
