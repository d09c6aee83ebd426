package kvstore

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

func testPolicy(name string) *api.Policy {
	return &api.Policy{Cluster: "c1", Kind: api.PolicyKindNetworkPolicy, Namespace: "shop", Name: name,
		Spec: []byte(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"` + name + `","namespace":"shop"},"spec":{"podSelector":{}}}`)}
}

// TestLocalKinds: the writer exports a kind of api.LocalKinds (policies)
// as it does a synced kind (upsert, delete, MarkSynced pruning an earlier
// writer's leftovers and writing the canary), the cluster's own agents read
// it and see it synced, and a peer reads its canary but not the kind
// itself, while it still reads what the cluster exports.
func TestLocalKinds(t *testing.T) {
	e := newEnv(t, false)
	ctx := context.Background()
	for _, r := range ExportedKeys("c1") {
		if r.Key == api.PolicyPrefix("c1") {
			t.Fatalf("ExportedKeys include the policy prefix %s", r.Key)
		}
	}

	// An earlier writer's policy, gone from Kubernetes since.
	old, _ := e.newWriter(t, nil)
	if err := old.Upsert(ctx, testPolicy("gone")); err != nil {
		t.Fatal(err)
	}
	old.Close()

	w, _ := e.newWriter(t, nil)
	tr := truth{}
	tr.upsert(t, ctx, w, testPolicy("web"))
	tr.upsert(t, ctx, w, testPolicy("api"))
	if err := w.MarkSynced(ctx, api.KindPolicy); err != nil {
		t.Fatalf("MarkSynced(%s): %v", api.KindPolicy, err)
	}
	if _, ok, err := e.admin.Get(ctx, testPolicy("gone").Key()); err != nil || ok {
		t.Errorf("earlier writer's policy: found %v, %v; want it pruned", ok, err)
	}
	tr.delete(t, ctx, w, testPolicy("api").Key())
	if err := w.Upsert(ctx, testNode("n1", 1)); err != nil {
		t.Fatal(err)
	}

	agent := newClient(t, e.pki.clientConfig(e.endpoint, UserAgent))
	r := NewReader(agent, "c1", &ReaderOptions{Logger: testLogger(t), MaxBackoff: time.Second})
	v := watchView(t, r, api.KindPolicy)
	waitConverged(t, v, tr)
	eventually(t, "policies synced for the agent", v.isSynced)

	if err := e.admin.GrantPeer(ctx, "c1", "c2"); err != nil {
		t.Fatal(err)
	}
	e.pki.Client(PeerUser("c2"))
	peer := newClient(t, e.pki.clientConfig(e.endpoint, PeerUser("c2")))
	if _, err := peer.List(ctx, api.PolicyPrefix("c1"), ListOptions{}); !isDenied(err) {
		t.Errorf("peer lists the policies: %v; want permission denied", err)
	}
	if _, _, err := peer.Get(ctx, testPolicy("web").Key()); !isDenied(err) {
		t.Errorf("peer reads a policy: %v; want permission denied", err)
	}
	if _, ok, err := peer.Get(ctx, api.SyncedKey("c1", api.KindPolicy)); err != nil || !ok {
		t.Errorf("peer reads the policies' canary: found %v, %v; want it", ok, err)
	}
	if kvs, err := peer.List(ctx, api.ClusterPrefix(api.KindNode, "c1"), ListOptions{}); err != nil || len(kvs) != 1 {
		t.Errorf("peer lists nodes: %d keys, %v; want 1", len(kvs), err)
	}
	if !slices.Contains(api.LocalKinds, api.KindPolicy) || slices.Contains(api.SyncedKinds, api.KindPolicy) {
		t.Error("policies must be a local kind, not a synced one")
	}
}
