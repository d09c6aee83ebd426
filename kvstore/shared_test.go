package kvstore

import (
	"context"
	"testing"
	"time"
)

// TestShared checks that users of one store share a client, that the
// pin is per user, and that the client closes with its last user.
func TestShared(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	ctx := context.Background()
	s := NewShared()

	cfg := p.clientConfig(srv.Endpoint(), UserAdmin)
	pinned := cfg
	pinned.ClusterID = 7
	a, relA, err := s.Get(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := s.Get(ctx, pinned)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || s.Len() != 1 {
		t.Fatalf("same store and credentials: %d clients, same=%v; want one shared", s.Len(), a == b)
	}
	other, relO, err := s.Get(ctx, p.clientConfig(srv.Endpoint(), UserAgent))
	if err != nil {
		t.Fatal(err)
	}
	if other == a || s.Len() != 2 {
		t.Fatalf("other credentials share the client (%d clients)", s.Len())
	}
	relO()
	relA()
	relA() // a second release of the same user is a no-op
	if _, err := b.Count(ctx, "clustermesh/"); err != nil {
		t.Fatalf("client closed while a user still holds it: %v", err)
	}
	relB()
	if s.Len() != 0 {
		t.Fatalf("%d clients left after every release", s.Len())
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := b.Count(cctx, "clustermesh/"); err == nil {
		t.Fatal("client still works after its last user released it")
	}

	// A failed dial leaves nothing behind.
	bad := cfg
	bad.Endpoints = []string{"https://127.0.0.1:1"}
	bad.DialTimeout = 500 * time.Millisecond
	if _, _, err := s.Get(ctx, bad); err == nil || s.Len() != 0 {
		t.Fatalf("dial to a closed port: err %v, %d clients", err, s.Len())
	}
}
