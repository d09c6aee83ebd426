package enforce

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/policy"
)

// BenchmarkRecompute measures a full recompute of one local identity's
// policy (policy.Compute, then Compile to datapath entries) with 10,000
// identities over 10 clusters and 1,000 policies, and the heap it holds.
// Each policy selects the endpoint's app and admits one of 100 apps in any
// cluster on one port, so every policy contributes entries.
//
// Run: go test -run '^$' -bench Recompute -benchmem ./agent/enforce/
func BenchmarkRecompute(b *testing.B) {
	for _, size := range []struct{ identities, policies int }{{1000, 100}, {10000, 1000}} {
		b.Run(fmt.Sprintf("identities=%d/policies=%d", size.identities, size.policies), func(b *testing.B) {
			ids := make([]*api.Identity, size.identities)
			ipc := make(map[netip.Addr]uint32, size.identities)
			for i := range ids {
				cluster := fmt.Sprintf("c%d", i%10+1)
				ids[i] = &api.Identity{Cluster: cluster, ID: uint32(i%10+1)<<16 | uint32(i+1), Namespace: "shop",
					Labels: map[string]string{"app": fmt.Sprintf("app%d", i%100), "tier": fmt.Sprint(i % 7)}}
				ipc[netip.AddrFrom4([4]byte{10, byte(i % 10), byte(i >> 8), byte(i)})] = ids[i].ID
			}
			endpoint := ids[0]
			ps := make([]*policy.Policy, size.policies)
			for i := range ps {
				peer, _ := labels.Parse(fmt.Sprintf("app=app%d", i%100))
				subject, _ := labels.Parse("app=app0")
				ps[i] = &policy.Policy{
					Name: fmt.Sprintf("NetworkPolicy shop/p%d", i), Namespace: "shop", Subject: subject,
					Enforces: [2]bool{true, false},
					Rules: []policy.Rule{{Direction: policy.Ingress, Name: fmt.Sprintf("p%d ingress[0]", i),
						Peers: []policy.Peer{{Selector: peer, NamesCluster: true}},
						Ports: []policy.Port{{Protocol: "TCP", Port: uint16(8000 + i%50)}}}},
				}
			}
			opts := policy.Options{LocalCluster: "c1"}
			var entries int
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			var keep any
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// A fresh Computer per round: the cost of one reconcile
				// for one local identity, selector memo included.
				ep := policy.NewComputer(ids, opts).Compute(endpoint, ps)
				compiled, _ := Compile(ep, ipc)
				entries = len(compiled.Entries)
				keep = compiled
			}
			b.StopTimer()
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(entries), "entries")
			b.ReportMetric(float64(after.HeapAlloc-min(after.HeapAlloc, before.HeapAlloc))/(1<<20), "held-MiB")
			runtime.KeepAlive(keep)
		})
	}
}
