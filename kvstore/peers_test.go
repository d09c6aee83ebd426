package kvstore

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/clustermesh/clustermesh/api"
)

// TestPeerUserScope grants peer c2 on c1's store and checks, with c2's
// certificate (common name remote-c2), each row of the credentials table in
// docs/security.md: it reads what c1 exports and nothing else, writes
// nothing, grants no lease; after RevokePeer the certificate is refused,
// also by a client that connected before the revocation.
func TestPeerUserScope(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	ctx := context.Background()
	admin := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	p.Client(PeerUser("c2"))

	exported := []string{api.ClusterKey("c1"), api.ClusterPrefix(api.KindService, "c1") + "ns/svc", api.SyncedKey("c1", api.KindService)}
	private := []string{api.ClusterPrefix(api.KindAgents, "c1") + "node1", api.ClusterKey("c3"), api.ClusterPrefix(api.KindService, "c3") + "ns/svc", "clustermesh/v1/allocator/lock"}
	for _, k := range append(append([]string{}, exported...), private...) {
		if err := admin.Put(ctx, k, []byte("{}")); err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
	}

	if err := admin.GrantPeer(ctx, "c1", "c2"); err != nil {
		t.Fatal(err)
	}
	// Twice converges.
	if err := admin.GrantPeer(ctx, "c1", "c2"); err != nil {
		t.Fatal(err)
	}
	if peers, err := admin.Peers(ctx); err != nil || len(peers) != 1 || peers[0] != "c2" {
		t.Fatalf("peers = %v, %v; want [c2]", peers, err)
	}
	peer := newClient(t, p.clientConfig(srv.Endpoint(), PeerUser("c2")))
	for _, k := range exported {
		if _, ok, err := peer.Get(ctx, k); err != nil || !ok {
			t.Errorf("peer reads exported %s: found %v, %v; want it", k, ok, err)
		}
	}
	if kvs, err := peer.List(ctx, api.ClusterPrefix(api.KindService, "c1"), ListOptions{}); err != nil || len(kvs) != 1 {
		t.Errorf("peer lists c1's services: %d keys, %v; want 1", len(kvs), err)
	}
	for _, k := range private {
		if _, _, err := peer.Get(ctx, k); !isDenied(err) {
			t.Errorf("peer reads private %s: %v; want permission denied", k, err)
		}
	}
	if _, err := peer.List(ctx, api.KeyPrefix, ListOptions{}); !isDenied(err) {
		t.Errorf("peer lists the whole store: %v; want permission denied", err)
	}
	for _, k := range append(append([]string{}, exported...), api.ClusterPrefix(api.KindNode, "c2")+"n1") {
		if err := peer.Put(ctx, k, []byte("{}")); !isDenied(err) {
			t.Errorf("peer writes %s: %v; want permission denied", k, err)
		}
	}
	if _, err := peer.cli.Grant(ctx, 60); err == nil || !strings.Contains(err.Error(), "may not grant leases") {
		t.Errorf("peer grants a lease: %v; want a refusal", err)
	}

	if err := admin.RevokePeer(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if err := admin.RevokePeer(ctx, "c2"); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	// The client connected before the revocation is refused from its next
	// request on.
	if _, _, err := peer.Get(ctx, api.ClusterKey("c1")); err == nil {
		t.Error("revoked peer still reads the cluster config")
	}
	// A new connection with the same certificate is refused too.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if c, err := New(cctx, p.clientConfig(srv.Endpoint(), PeerUser("c2"))); err == nil {
		c.Close()
		t.Error("revoked peer's certificate opens a client")
	}
	if peers, err := admin.Peers(ctx); err != nil || len(peers) != 0 {
		t.Fatalf("peers after revoke = %v, %v; want none", peers, err)
	}
}

func isDenied(err error) bool {
	return err != nil && (errors.Is(err, rpctypes.ErrPermissionDenied) || strings.Contains(err.Error(), "permission denied"))
}
