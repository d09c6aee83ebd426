package apiserver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestPeerUsersGrantedAgain starts an apiserver on an empty store whose
// clusters directory names two connected peers (and certificate files and
// the cluster itself, which are not peers): it creates their read-only
// users, as after a store that lost its data, and grants one added later.
func TestPeerUsersGrantedAgain(t *testing.T) {
	e := newEnv(t, "c1", 1)
	dir := t.TempDir()
	for _, f := range []string{"c1", "c2", "c3", "c2.ca.crt", "c2.client.key", "..data"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e.cfg.ClustersDir = dir
	e.cfg.ClustersDirPoll = 100 * time.Millisecond
	e.start()
	want := func(peers ...string) func(context.Context) error {
		return func(ctx context.Context) error {
			got, err := e.store.Peers(ctx)
			if err != nil {
				return err
			}
			slices.Sort(got)
			if !slices.Equal(got, peers) {
				return fmt.Errorf("peer users %v, want %v", got, peers)
			}
			return nil
		}
	}
	poll.Eventually(t, 30*time.Second, "users for c2 and c3", want("c2", "c3"))
	if err := os.WriteFile(filepath.Join(dir, "c4"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, 30*time.Second, "a user for c4, added later", want("c2", "c3", "c4"))
	// Grants only: a peer whose file went is revoked by disconnect, not here.
	if err := os.Remove(filepath.Join(dir, "c3")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := want("c2", "c3", "c4")(context.Background()); err != nil {
		t.Fatal(err)
	}
}
