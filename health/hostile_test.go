package health

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// refusedCount reads clustermesh_gossip_refused_total{cluster,reason}.
func refusedCount(t *testing.T, reg *prometheus.Registry, cluster, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "clustermesh_gossip_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			if got["cluster"] == cluster && got["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestPoolHostileMembers: members holding the mesh key that are not the
// registry node they claim to be are refused by every member, and their
// crash marks nothing: a member impersonating a node of the local cluster
// from another address, a registered peer node claiming the local
// cluster's ID (which would name the local node of the same name), and a
// member no registry lists.
func TestPoolHostileMembers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ms := startLoopPool(ctx, t, []string{"c1/a", "c1/b", "c2/r"}, 0)
	a, b, r := ms[0], ms[1], ms[2]
	registry := []api.Node{a.node, b.node, r.node}

	// c2/b is a real registry node of the peer cluster; its agent claims
	// cluster ID 1 (the local cluster's), so "b" of ID 1 is local c1/b.
	peerB := testNode("c2", "b", freeLoopbackAddr(t))
	for _, m := range ms {
		m.pool.NodeUpserted(&peerB)
	}
	registry = append(registry, peerB)

	type hostile struct {
		node         api.Node
		id           uint32
		cluster, why string
		field        string
	}
	hostiles := []hostile{
		{node: testNode("c1", "b", freeLoopbackAddr(t)), id: 1, cluster: "c1", why: ReasonAddressMismatch, field: "address"},
		{node: peerB, id: 1, cluster: "c2", why: ReasonClusterIDMismatch, field: "cluster_id"},
		{node: testNode("c2", "ghost", freeLoopbackAddr(t)), id: 2, cluster: unknownCluster, why: ReasonUnknownMember, field: "name"},
	}
	var started []*loopMember
	for _, h := range hostiles {
		started = append(started, startLoopMemberWith(t, h.node, testKey(), 0, append(registry, h.node), func(c *Config) {
			c.ClusterID = h.id
		}))
	}
	for _, m := range ms {
		for _, h := range hostiles {
			if m.node.Cluster == h.node.Cluster && m.node.Name == h.node.Name {
				continue // the impersonator never gossips to the node it impersonates
			}
			poll.Eventually(t, waitTimeout, m.pool.LocalName()+" to refuse "+MemberName(h.node.Cluster, h.node.Name)+": "+h.why, func() bool {
				return refusedCount(t, m.reg, h.cluster, h.why) >= 1
			})
		}
	}
	st := a.pool.Status()
	for _, h := range hostiles {
		found := false
		for _, rf := range st.Refused {
			if rf.Cluster == h.node.Cluster && rf.Node == h.node.Name && rf.Reason == h.why {
				found = true
				if rf.Field != h.field || rf.Addr != h.node.GossipAddress || rf.Count < 1 {
					t.Errorf("refusal %+v: want field %s at %s", rf, h.field, h.node.GossipAddress)
				}
			}
		}
		if !found {
			t.Errorf("status lists no refusal of %s/%s for %s: %+v", h.node.Cluster, h.node.Name, h.why, st.Refused)
		}
	}

	// The hostile members crash. Then the real peer crashes too: once every
	// survivor has marked it, deaths are being acted on, and no survivor
	// may have marked anything else.
	for _, h := range started {
		h.stop()
	}
	r.stop()
	for _, s := range []*loopMember{a, b} {
		poll.Eventually(t, waitTimeout, s.pool.LocalName()+" to mark the real peer unhealthy", func() bool {
			for _, c := range s.sink.snapshot() {
				if c.ref == r.ref() && !c.healthy {
					return true
				}
			}
			return false
		})
		for _, c := range s.sink.snapshot() {
			if !c.healthy && c.ref != r.ref() {
				t.Errorf("%s marked %v unhealthy", s.pool.LocalName(), c.ref)
			}
		}
		// Only the real nodes were ever tracked, named from the registry.
		// (Their states are not asserted: gossip still relaying an alive
		// message r sent before it died may revive it for a moment.)
		for _, ms := range s.pool.Status().Members {
			real := map[string]loadbalancer.NodeRef{"c1/a": a.ref(), "c1/b": b.ref(), "c2/r": r.ref()}
			if ref, ok := real[ms.Name]; !ok || ms.Ref != ref {
				t.Errorf("%s tracks %s as %v", s.pool.LocalName(), ms.Name, ms.Ref)
			}
		}
	}
	bref := loadbalancer.NodeRef{ClusterID: 1, Name: "b"}
	for _, ms := range a.pool.Status().Members {
		if ms.Ref == bref && (!ms.Healthy || ms.Name != "c1/b") {
			t.Errorf("local node b: %+v, want c1/b healthy", ms)
		}
	}
}

// heldDead is a memberlist that holds one live node dead (as after a dead
// message a peer gossiped about it): it is missing from Members, while a
// ping of it is answered or not as the test says.
type heldDead struct {
	members  []*memberlist.Node
	answered bool
	pinged   []string
}

func (h *heldDead) Members() []*memberlist.Node { return h.members }
func (h *heldDead) GetHealthScore() int         { return 0 }
func (h *heldDead) Ping(node string, _ net.Addr) (time.Duration, error) {
	h.pinged = append(h.pinged, node)
	if h.answered {
		return time.Millisecond, nil
	}
	return 0, memberlist.NoPingResponseError{}
}

func testMeta(id uint32) []byte {
	b := make([]byte, metaLen)
	b[0] = metaVersion
	binary.BigEndian.PutUint32(b[metaClusterStart:], id)
	return b
}

// TestPoolDeathNeedsOwnPing: memberlist accepts deaths gossiped by any
// member, so a peer could report a live node of another cluster dead. The
// pool acts on a death only once its own ping of the node goes unanswered:
// answered, the report is refused and counted and the node stays healthy.
func TestPoolDeathNeedsOwnPing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		answered bool
	}{
		{"live node reported dead", true},
		{"dead node", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			self := testNode("c1", "a", netip.MustParseAddrPort("10.0.0.1:7946"))
			victim := testNode("c1", "b", netip.MustParseAddrPort("10.0.0.2:7946"))
			peer := testNode("c2", "r", netip.MustParseAddrPort("10.0.1.1:7946"))
			cfg := DefaultTestConfig()
			cfg.Cluster, cfg.NodeName, cfg.ClusterID = "c1", "a", 1
			cfg.BindAddr = self.GossipAddress
			cfg.Nodes = idResolver(clusterIDs)
			cfg.Logger = testLogger(&lockedBuffer{})
			sink, reg := newRecSink(), prometheus.NewRegistry()
			p, err := New(cfg, sink, reg)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.SetNodes([]api.Node{self, victim, peer}); err != nil {
				t.Fatal(err)
			}
			d := &delegate{p: p}
			var members []*memberlist.Node
			for _, n := range []api.Node{victim, peer} {
				m := &memberlist.Node{Name: MemberName(n.Cluster, n.Name), Addr: n.GossipAddress.Addr().AsSlice(),
					Port: n.GossipAddress.Port(), Meta: testMeta(clusterIDs[n.Cluster])}
				if err := d.NotifyAlive(m); err != nil {
					t.Fatalf("registry node %s refused: %v", m.Name, err)
				}
				d.NotifyJoin(m)
				members = append(members, m)
			}
			ml := &heldDead{members: members, answered: tc.answered}
			tr := newTracker(cfg.safety())
			reported := map[loadbalancer.NodeRef]bool{}
			p.step(ctx, ml, tr, reported, time.Now())

			// Memberlist declares b dead; it leaves Members.
			d.NotifyLeave(members[0])
			ml.members = members[1:]
			for range 3 {
				p.step(ctx, ml, tr, reported, time.Now())
				p.pings.Wait()
			}
			p.step(ctx, ml, tr, reported, time.Now())

			if len(ml.pinged) == 0 || ml.pinged[0] != "c1/b" {
				t.Fatalf("pings %v, want c1/b pinged", ml.pinged)
			}
			bref := loadbalancer.NodeRef{ClusterID: 1, Name: "b"}
			marked := false
			for _, c := range sink.snapshot() {
				if !c.healthy {
					if c.ref != bref {
						t.Errorf("marked %v unhealthy", c.ref)
					}
					marked = true
				}
			}
			refused := refusedCount(t, reg, "c1", ReasonDeathNotConfirmed)
			if tc.answered {
				if marked {
					t.Errorf("live node b marked unhealthy on a death its own ping disproved")
				}
				if refused != 1 {
					t.Errorf("clustermesh_gossip_refused_total{cluster=c1,reason=%s} = %v, want 1", ReasonDeathNotConfirmed, refused)
				}
				st := p.Status()
				if len(st.Refused) != 1 || st.Refused[0].Node != "b" || st.Refused[0].Field != "state" {
					t.Errorf("status refusals %+v, want the death of b", st.Refused)
				}
				return
			}
			if !marked || refused != 0 {
				t.Errorf("dead node b: marked %t, refusals %v; want marked and none refused", marked, refused)
			}
		})
	}
}
