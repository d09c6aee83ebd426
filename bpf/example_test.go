package bpf_test

import (
	"context"
	"log"
	"net/netip"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// The agent's use of the datapath: open (adopting what a previous run
// pinned), program a service with local backends preferred and a remote one
// as fallback, mark a node dead when gossip says so, and close on exit
// without unpinning, so balancing continues until the next start.
func Example() {
	ctx := context.Background()
	cfg := bpf.DefaultConfig()
	cfg.CgroupPath = "/sys/fs/cgroup/unified" // every socket on the node
	dp, err := bpf.Open(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer dp.Close()

	local := loadbalancer.NodeRef{ClusterID: 1, Name: "node-1"}
	remote := loadbalancer.NodeRef{ClusterID: 2, Name: "node-7"}
	err = dp.UpsertService(ctx, loadbalancer.Service{
		Name:      "default/web",
		Frontend:  loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Protocol: loadbalancer.TCP},
		Preferred: []loadbalancer.Backend{{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), Node: local}},
		Fallback:  []loadbalancer.Backend{{Addr: netip.MustParseAddrPort("10.245.3.9:8080"), Node: remote}},
	})
	if err != nil {
		log.Fatal(err) // errors.Is(err, bpf.ErrMapFull) when a map is out of room
	}
	// Connections to 10.96.0.10:80 go to 10.244.1.5:8080 while node-1 is
	// healthy; from here on, to 10.245.3.9:8080.
	if err := dp.SetNodeHealth(ctx, local, false); err != nil {
		log.Fatal(err)
	}
}
