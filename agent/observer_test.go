package agent_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/api"
)

// objectLog records what an ObjectObserver is told, one line per call.
type objectLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *objectLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *objectLog) ObjectUpserted(cluster string, obj api.Object) {
	l.add("upsert %s %s", cluster, obj.Key())
}
func (l *objectLog) ObjectDeleted(cluster string, key api.ParsedKey) {
	l.add("delete %s %s", cluster, key.Key)
}
func (l *objectLog) ObjectsSynced(cluster string, kind api.Kind) {
	l.add("synced %s %s", cluster, kind)
}
func (l *objectLog) ClusterDrained(cluster string) { l.add("drained %s", cluster) }

func (l *objectLog) has(line string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.lines, line)
}

func (l *objectLog) with(part string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, part) {
			out = append(out, s)
		}
	}
	return out
}

// TestObjectObserver: the policy engine's inputs reach it through the
// agent: every cluster's identities and ipcache entries, the local
// cluster's policies and their synced canary, deletions; a peer's policy
// never does (its user cannot read the prefix, and peers' policies are not
// followed).
func TestObjectObserver(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, cidr1)
	c2 := m.AddCluster("c2", 2, cidr2)
	pol := func(c *meshtest.Cluster, name string) *api.Policy {
		return &api.Policy{Cluster: c.Name, Kind: api.PolicyKindNetworkPolicy, Namespace: "shop", Name: name,
			Spec: []byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"` + name + `","namespace":"shop"},"spec":{"podSelector":{}}}`)}
	}
	id := func(c *meshtest.Cluster, n uint32) *api.Identity {
		return &api.Identity{Cluster: c.Name, ID: n, Namespace: "shop", Labels: map[string]string{"app": "api"}}
	}
	c1.Upsert(pol(c1, "api"), id(c1, 0x10001),
		&api.IPCacheEntry{Cluster: "c1", IP: netip.MustParseAddr("10.1.0.5"), Identity: 0x10001, Node: "n1"})
	c2.Upsert(pol(c2, "secret"), id(c2, 0x20001),
		&api.IPCacheEntry{Cluster: "c2", IP: netip.MustParseAddr("10.2.0.5"), Identity: 0x20001, Node: "n1"})
	c1.MarkSynced()
	c2.MarkSynced()

	log := &objectLog{}
	startAgentWith(t, meshtest.NewRecorder(), func(cfg *agent.Config) {
		cfg.ObjectObservers = []agent.ObjectObserver{log}
	}, "n1", c1, c2)

	want := []string{
		"upsert c1 " + api.PolicyKey("c1", api.PolicyKindNetworkPolicy, "shop", "api"),
		"upsert c1 " + api.IdentityKey("c1", 0x10001),
		"upsert c2 " + api.IdentityKey("c2", 0x20001),
		"upsert c1 " + api.IPCacheKey("c1", netip.MustParseAddr("10.1.0.5")),
		"upsert c2 " + api.IPCacheKey("c2", netip.MustParseAddr("10.2.0.5")),
		"synced c1 policies",
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range want {
		for !log.has(w) {
			if time.Now().After(deadline) {
				t.Fatalf("observer never told %q; got %q", w, log.with(""))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	c1.Delete(api.PolicyKey("c1", api.PolicyKindNetworkPolicy, "shop", "api"))
	for w := "delete c1 " + api.PolicyKey("c1", api.PolicyKindNetworkPolicy, "shop", "api"); !log.has(w); {
		if time.Now().After(deadline) {
			t.Fatalf("observer never told %q", w)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := log.with("policies/c2"); len(got) > 0 {
		t.Errorf("a peer's policy reached the observer: %q", got)
	}
	if got := log.with("synced c2 policies"); len(got) > 0 {
		t.Errorf("a peer's policies were followed: %q", got)
	}
}
