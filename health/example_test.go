package health_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// logSink stands in for the agent (or the eBPF datapath) as the sink.
type logSink struct{}

func (logSink) SetNodeHealth(_ context.Context, node loadbalancer.NodeRef, healthy bool) error {
	slog.Info("node health", "node", node, "healthy", healthy)
	return nil
}

// A member of the mesh-wide pool: configured for its node, fed the node
// registry, run until the context ends.
func Example() {
	cfg := health.DefaultConfig()
	cfg.Cluster, cfg.NodeName, cfg.ClusterID = "east", "node-1", 1
	cfg.BindAddr = netip.MustParseAddrPort("10.0.0.1:7946")
	cfg.KeyFile = "/etc/clustermesh/mesh.key"

	pool, err := health.New(cfg, logSink{}, prometheus.NewRegistry())
	if err != nil {
		fmt.Println(err)
		return
	}
	// The registry: every node of every connected cluster (the agent does
	// this through AddNodeObserver).
	pool.NodeUpserted(&api.Node{Cluster: "east", Name: "node-1", GossipAddress: cfg.BindAddr})
	pool.NodeUpserted(&api.Node{Cluster: "west", Name: "node-7", GossipAddress: netip.MustParseAddrPort("10.1.0.7:7946")})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = pool.Run(ctx) }()

	st := pool.Status()
	fmt.Println(st.Self, st.Alive, st.Isolated)
}
