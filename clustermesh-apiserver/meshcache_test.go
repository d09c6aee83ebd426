package apiserver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestMeshCacheInProcess runs c2's apiserver, which embeds its store, with
// the mesh cache following c1: the cache must write its copies through the
// store's in-process client (not the owner's TLS client), and what it
// copies that way, the initial listing and a later change, must reach an
// agent of c2 reading its local store over TLS as the agent user.
func TestMeshCacheInProcess(t *testing.T) {
	c1, c2 := newEnv(t, "c1", 1), newEnv(t, "c2", 2)
	dir := t.TempDir()
	crt, key := c1.certs.Client(kvstore.UserRemote)
	conn := fmt.Sprintf("endpoints: [%q]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n", c1.cfg.EtcdListenClientURL, c1.storeCA, crt, key)
	if err := os.WriteFile(filepath.Join(dir, "c1"), []byte(conn), 0o600); err != nil {
		t.Fatal(err)
	}
	c2.cfg.ClustersDir, c2.cfg.ClustersDirPoll, c2.cfg.MeshCache = dir, 200*time.Millisecond, true
	mkNode(t, c1, "node-a", "192.168.1.10", "10.1.1.0/24", "zone-a")
	mkNode(t, c2, "node-a", "192.168.2.10", "10.2.1.0/24", "zone-a")
	c1.start()
	r2 := c2.start()

	poll.Eventually(t, time.Minute, "mesh cache running", func(context.Context) error {
		if r2.srv.MeshCacheStore() == nil {
			return fmt.Errorf("no mesh cache store yet")
		}
		return nil
	})
	if st := r2.srv.MeshCacheStore(); !st.InProcess() {
		t.Fatalf("the mesh cache writes through %v, want the embedded store's in-process client", st.Config().Endpoints)
	}

	acrt, akey := c2.certs.Client(kvstore.UserAgent)
	ctx, cancel := context.WithCancel(context.Background())
	agent, err := kvstore.New(ctx, kvstore.Config{Endpoints: []string{c2.cfg.EtcdListenClientURL}, CAFile: c2.storeCA, CertFile: acrt, KeyFile: akey})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		seen   = map[string]bool{}
		synced bool
	)
	events := kvstore.NewReader(agent, "c1", nil).Watch(ctx, api.KindNode)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			mu.Lock()
			switch ev.Type {
			case kvstore.EventUpsert:
				seen[ev.Key] = true
			case kvstore.EventSynced:
				synced = true
			}
			mu.Unlock()
		}
	}()
	defer func() { cancel(); <-done; agent.Close() }()
	holds := func(key string) func(context.Context) error {
		return func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			if !synced || !seen[key] {
				return fmt.Errorf("agent of c2: synced %v, holds %s: %v", synced, key, seen[key])
			}
			return nil
		}
	}
	poll.Eventually(t, time.Minute, "c1's node copied to c2's store, seen by its agent", holds(api.NodeKey("c1", "node-a")))
	mkNode(t, c1, "node-b", "192.168.1.11", "10.1.2.0/24", "zone-a")
	poll.Eventually(t, time.Minute, "a new node of c1 copied to c2's store, seen by its agent", holds(api.NodeKey("c1", "node-b")))
}
