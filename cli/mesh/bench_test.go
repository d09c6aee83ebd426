package mesh_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
)

// BenchmarkStatus measures one status collection (a dozen Kubernetes reads
// and the store reads) against a real kube-apiserver and store, with the
// CLI's client rate limit (50 QPS) side by side with client-go's default
// (5 QPS), which a `status --wait` poll would otherwise hit.
//
//	go test -run '^$' -bench BenchmarkStatus -benchtime 20x ./cli/mesh
func BenchmarkStatus(b *testing.B) {
	env := clitest.Start(b, clitest.Spec{Name: "c1", NodeIP: "127.0.0.31", PodCIDR: "10.1.0.0/24"})
	ctx := context.Background()
	c1 := env.Clusters["c1"]
	if _, err := mesh.Enable(ctx, c1.C, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1}); err != nil {
		b.Fatal(err)
	}
	env.RunProcesses(b, "c1")
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := mesh.WaitStatus(wctx, c1.C, mesh.StatusOptions{}, 200*time.Millisecond, nil); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		qps   float32
		burst int
	}{
		{"client-go-default-5qps", 5, 10},
		{"cli-50qps", 0, 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := rest.CopyConfig(c1.Kube.Config)
			cfg.QPS, cfg.Burst = tc.qps, tc.burst
			c, err := mesh.NewCluster("c1", cfg)
			if err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for b.Loop() {
				start := time.Now()
				st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
				if err != nil {
					b.Fatal(err)
				}
				if !st.Ready {
					b.Fatalf("not ready: %v", st.Problems)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
