package agent_test

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/admit"
	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
)

// nodeRoutes is a NodeObserver keeping each node's last pod CIDRs: what the
// static routes and BGP would route to.
type nodeRoutes struct {
	mu    sync.Mutex
	cidrs map[string][]netip.Prefix
}

func (n *nodeRoutes) NodeUpserted(nd *api.Node) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cidrs[nd.Cluster+"/"+nd.Name] = nd.PodCIDRs
}

func (n *nodeRoutes) NodeDeleted(cluster, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.cidrs, cluster+"/"+name)
}

func (n *nodeRoutes) get(node string) ([]netip.Prefix, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.cidrs[node]
	return c, ok
}

// TestHostilePeer runs a rogue cluster c2 with a valid peer certificate
// that writes hostile values into its own store. Each case asserts that
// nothing outside c2's scope changed and that the refusal is visible in the
// agent's status and metrics.
func TestHostilePeer(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	c3 := m.AddCluster("c3", 3, cidr3)
	for i, c := range []*meshtest.Cluster{c1, c2, c3} {
		n := i + 1
		cidr := []string{cidr1, cidr2, cidr3}[i]
		c.Upsert(c.Service("ns", "web", vip(n, 1)), c.Slice("ns", "web", "a", meshtest.IP(cidr, 1)),
			c.Service("ns", "db", vip(n, 2)), c.Slice("ns", "db", "a", meshtest.IP(cidr, 2)),
			c.Node("node-a", fmt.Sprintf("192.168.50.%d", n), strings.Replace(cidr, "/16", "/24", 1)))
		c.MarkSynced()
	}
	routes := &nodeRoutes{cidrs: map[string][]netip.Prefix{}}
	a := startAgentWith(t, meshtest.NewRecorder(), func(cfg *agent.Config) {
		cfg.ProtectedCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("192.168.1.0/24")}
		cfg.PeerLimits = remote.Limits{Objects: map[api.Kind]int{api.KindEndpoints: 4}}
	}, "n1", c1, c2, c3)
	a.AddNodeObserver(routes)
	web, db := meshtest.Frontend(vip(1, 1)), meshtest.Frontend(vip(1, 2))
	webAll := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1), meshtest.IP(cidr3, 1)}, nil)
	dbAll := meshtest.Backends([]string{meshtest.IP(cidr1, 2), meshtest.IP(cidr2, 2), meshtest.IP(cidr3, 2)}, nil)
	a.dp.WaitView(t, web, webAll, wait)
	a.dp.WaitView(t, db, dbAll, wait)

	// refusals waits until c2's status counts more refusals than before and
	// names reason in the last one.
	var seen uint64
	refusals := func(t *testing.T, reason string) {
		t.Helper()
		st := a.waitCluster(t, "c2", "a refusal for "+reason, func(c status.Cluster) bool {
			return c.RefusedObjects > seen && strings.Contains(c.LastRefusal, reason)
		})
		seen = st.RefusedObjects
		if !strings.Contains(st.LastRefusal, "cluster c2") || !st.Connected {
			t.Errorf("refusal %q does not name c2, or c2 was disconnected: %+v", st.LastRefusal, st)
		}
		if !strings.Contains(scrape(t, a), `clustermesh_agent_peer_refused_total{cluster="c2"`) {
			t.Error("metrics lack clustermesh_agent_peer_refused_total for c2")
		}
	}

	t.Run("backends outside c2's pod CIDRs are dropped alone", func(t *testing.T) {
		c2.Upsert(c2.Slice("ns", "web", "a", meshtest.IP(cidr2, 1), meshtest.IP(cidr2, 5),
			"127.0.0.1", "169.254.169.254", meshtest.IP(cidr1, 9), meshtest.IP(cidr3, 9), "10.96.0.10", "192.168.1.1"))
		refusals(t, admit.ReasonProtectedRange)
		want := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr2, 1), meshtest.IP(cidr2, 5), meshtest.IP(cidr3, 1)}, nil)
		a.dp.WaitView(t, web, want, wait)
		if got := a.dp.View(db); got != dbAll {
			t.Errorf("another service changed: %s, want %s", got, dbAll)
		}
	})

	t.Run("node routes outside c2's pod CIDRs are refused", func(t *testing.T) {
		n := c2.Node("node-b", "192.168.50.20", "0.0.0.0/0")
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.3.0.0/24"), netip.MustParsePrefix("10.2.7.0/24"))
		c2.Upsert(n)
		refusals(t, admit.ReasonOutsidePodCIDRs)
		a.dp.Wait(t, wait, func() (bool, string) {
			got, ok := routes.get("c2/node-b")
			return ok && len(got) == 1 && got[0] == netip.MustParsePrefix("10.2.7.0/24"), "node-b's routes: want only 10.2.7.0/24"
		})
		for _, own := range []string{"c1/node-a", "c3/node-a"} {
			if got, ok := routes.get(own); !ok || len(got) != 1 {
				t.Errorf("%s routes changed: %v", own, got)
			}
		}
	})

	t.Run("node addresses that are not c2's are refused", func(t *testing.T) {
		c2.Upsert(c2.Node("node-c", "127.0.0.1", "10.2.8.0/24"))
		refusals(t, admit.ReasonSpecialAddress)
	})

	t.Run("identities of another cluster are refused", func(t *testing.T) {
		id, err := api.MakeIdentity(1, 77, api.DefaultMaxClusterID)
		if err != nil {
			t.Fatal(err)
		}
		c2.Upsert(&api.Identity{Cluster: "c2", ID: id, Namespace: "ns", Labels: map[string]string{"app": "spoof"}})
		refusals(t, admit.ReasonForeignIdentity)
	})

	t.Run("a peer over its quota keeps what it had and others keep working", func(t *testing.T) {
		// c2 holds 2 slices (web/a, db/a); the limit is 4.
		for _, s := range []string{"b", "c", "d", "e"} {
			c2.Upsert(c2.Slice("ns", "db", s, meshtest.IP(cidr2, 100+int(s[0]))))
		}
		refusals(t, admit.ReasonQuota)
		// Two of the four new slices got in, and c2's old ones stayed.
		a.dp.Wait(t, wait, func() (bool, string) {
			got := a.dp.View(db)
			return strings.Count(got, "10.2.") == 3, "db: want c2's old backend and two new ones, got " + got
		})
		// Local changes still flow.
		c1.Upsert(c1.Slice("ns", "web", "a", meshtest.IP(cidr1, 1), meshtest.IP(cidr1, 3)))
		want := meshtest.Backends([]string{meshtest.IP(cidr1, 1), meshtest.IP(cidr1, 3), meshtest.IP(cidr2, 1), meshtest.IP(cidr2, 5), meshtest.IP(cidr3, 1)}, nil)
		a.dp.WaitView(t, web, want, wait)
		if st, _ := a.Status().ClusterByName("c3"); st.RefusedObjects != 0 || !st.Connected {
			t.Errorf("c3 affected by c2's refusals: %+v", st)
		}
	})
}
