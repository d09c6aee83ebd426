package bgp_test

import (
	"fmt"
	"net/netip"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
)

// Peer lists come from the store: a reflector peers with its cluster's nodes
// and with the reflectors of connected clusters; a node with its reflector.
func ExampleReflectorPeers() {
	c1 := api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.MustParseAddrPort("192.0.2.1:179")}
	c2 := api.Cluster{Name: "c2", ASN: 65002, RouteReflector: netip.MustParseAddrPort("192.0.2.2:179")}
	nodes := []api.Node{{Cluster: "c1", Name: "n1", BGPAddress: netip.MustParseAddr("192.0.2.11")}}

	peers, err := bgp.ReflectorPeers(c1, nodes, []api.Cluster{c2})
	if err != nil {
		panic(err)
	}
	for _, p := range peers {
		fmt.Printf("%s as %d passive=%v rr-client=%v next-hop-unchanged=%v\n", p, p.ASN, p.Passive, p.RouteReflectorClient, p.NextHopUnchanged)
	}
	nodePeers, _ := bgp.NodePeers(c1)
	fmt.Println("node c1/n1 peers with", nodePeers[0])
	// Output:
	// c2/reflector(192.0.2.2) as 65002 passive=false rr-client=false next-hop-unchanged=true
	// c1/n1(192.0.2.11) as 65001 passive=true rr-client=true next-hop-unchanged=false
	// node c1/n1 peers with c1/reflector(192.0.2.1)
}
