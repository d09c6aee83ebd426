package apiserver

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// testStore starts an embedded etcd (the real kvstore server) and returns an
// admin client of it.
func testStore(t testing.TB) *kvstore.Client {
	t.Helper()
	certs := pkitest.New(t, "c1")
	adminCert, adminKey := certs.Client(kvstore.UserAdmin)
	srv, err := kvstore.StartServer(context.Background(), kvstore.ServerConfig{
		Cluster: "c1", DataDir: filepath.Join(certs.Dir, "etcd"), CAFile: certs.CAFile,
		CertFile: certs.ServerCert, KeyFile: certs.ServerKey, UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	c, err := kvstore.New(context.Background(), kvstore.Config{
		Endpoints: []string{srv.Endpoint()}, CAFile: certs.CAFile,
		CertFile: adminCert, KeyFile: adminKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAllocatorReplicas runs two allocators, as two apiserver replicas would,
// against one real etcd, acquiring overlapping label sets concurrently: every
// label set must get exactly one number, no number may serve two sets, and
// releases by both must free everything.
func TestAllocatorReplicas(t *testing.T) {
	c := testStore(t)
	ctx := context.Background()
	var allocs [2]*allocator
	for i := range allocs {
		w, err := kvstore.NewWriter(c, "c1", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Close)
		allocs[i] = newAllocator(c, w, "c1", 3, api.DefaultMaxClusterID)
		if err := allocs[i].load(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const sets = 40
	got := [2][sets]uint32{}
	var wg sync.WaitGroup
	errs := make(chan error, 2*sets)
	for r := range allocs {
		for s := range sets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := allocs[r].Acquire(ctx, fmt.Sprintf("pod-%d-%d", r, s), "ns", map[string]string{"app": fmt.Sprint(s)})
				if err != nil {
					errs <- err
				}
				got[r][s] = id
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	owner := map[uint32]int{}
	for s := range sets {
		if got[0][s] != got[1][s] {
			t.Errorf("label set %d: replica 0 got %d, replica 1 got %d", s, got[0][s], got[1][s])
		}
		if prev, dup := owner[got[0][s]]; dup {
			t.Errorf("identity %d given to label sets %d and %d", got[0][s], prev, s)
		}
		owner[got[0][s]] = s
		if cid := api.IdentityClusterID(got[0][s], api.DefaultMaxClusterID); cid != 3 {
			t.Errorf("identity %d carries cluster ID %d, want 3", got[0][s], cid)
		}
	}

	// A restarted allocator finds the same numbers again.
	w, _ := kvstore.NewWriter(c, "c1", nil)
	t.Cleanup(w.Close)
	again := newAllocator(c, w, "c1", 3, api.DefaultMaxClusterID)
	if err := again.load(ctx); err != nil {
		t.Fatal(err)
	}
	if id, err := again.Acquire(ctx, "pod-x", "ns", map[string]string{"app": "7"}); err != nil || id != got[0][7] {
		t.Errorf("after restart, label set 7 got %d (%v), want %d", id, err, got[0][7])
	}
	if err := again.Release(ctx, "pod-x", "ns", map[string]string{"app": "7"}); err != nil {
		t.Fatal(err)
	}

	for r := range allocs {
		for s := range sets {
			if err := allocs[r].Release(ctx, fmt.Sprintf("pod-%d-%d", r, s), "ns", map[string]string{"app": fmt.Sprint(s)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	n, err := c.Count(ctx, ReservationPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d reservation keys left after every release", n)
	}
	n, err = c.Count(ctx, api.ClusterPrefix(api.KindIdentity, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d identity keys left after every release", n)
	}
}

// TestAllocatorCollect checks that reservations no pod uses after a restart
// are freed, and used ones kept.
func TestAllocatorCollect(t *testing.T) {
	c := testStore(t)
	ctx := context.Background()
	w, _ := kvstore.NewWriter(c, "c1", nil)
	t.Cleanup(w.Close)
	a := newAllocator(c, w, "c1", 3, api.DefaultMaxClusterID)
	for _, app := range []string{"kept", "gone"} {
		if _, err := a.Acquire(ctx, "p-"+app, "ns", map[string]string{"app": app}); err != nil {
			t.Fatal(err)
		}
	}
	b := newAllocator(c, w, "c1", 3, api.DefaultMaxClusterID)
	if err := b.load(ctx); err != nil {
		t.Fatal(err)
	}
	kept, err := b.Acquire(ctx, "p-kept", "ns", map[string]string{"app": "kept"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.Collect(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v; want 1 freed", n, err)
	}
	if id, _ := b.Acquire(ctx, "p2", "ns", map[string]string{"app": "kept"}); id != kept {
		t.Errorf("kept identity changed from %d to %d", kept, id)
	}
}

// TestAllocatorChurnOneLabelSet has many pods of one label set come and go
// at once: while a pod holds the identity it must stay published (a release
// by the last other user must never unpublish it under a new user), and
// after every release nothing is left.
func TestAllocatorChurnOneLabelSet(t *testing.T) {
	c := testStore(t)
	ctx := context.Background()
	w, err := kvstore.NewWriter(c, "c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	a := newAllocator(c, w, "c1", 3, api.DefaultMaxClusterID)
	labels := map[string]string{"app": "churn"}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				user := fmt.Sprintf("pod-%d-%d", g, i)
				id, err := a.Acquire(ctx, user, "ns", labels)
				if err != nil {
					t.Error(err)
					return
				}
				if _, found, err := c.Get(ctx, api.IdentityKey("c1", id)); err != nil || !found {
					t.Errorf("%s holds identity %d but it is not published (%v)", user, id, err)
				}
				if err := a.Release(ctx, user, "ns", labels); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, prefix := range []string{ReservationPrefix, api.ClusterPrefix(api.KindIdentity, "c1")} {
		if n, err := c.Count(ctx, prefix); err != nil || n != 0 {
			t.Errorf("%d keys left under %s after every release (%v)", n, prefix, err)
		}
	}
	if n := len(a.locks); n != 0 {
		t.Errorf("%d label-set locks left after every release", n)
	}
}

func TestParseIDKey(t *testing.T) {
	a := newAllocator(nil, nil, "c1", 1, 255)
	for _, local := range []uint32{1, 42, 0xffffffff} {
		got, err := a.parseIDKey(a.idKey(local))
		if err != nil || got != local {
			t.Errorf("parseIDKey(idKey(%d)) = %d, %v", local, got, err)
		}
	}
	for _, key := range []string{
		ReservationPrefix + "c2/ids/7",
		ReservationPrefix + "c1/labels/7",
		ReservationPrefix + "c1/ids/007",
		ReservationPrefix + "c1/ids/7/x",
		ReservationPrefix + "c1/ids/4294967296",
		ReservationPrefix + "c1/ids/",
	} {
		if n, err := a.parseIDKey(key); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("parseIDKey(%q) = %d, %v; want an error naming the key", key, n, err)
		}
	}
}
