package meshcache_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/meshtest"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/meshcache"
)

// TestCopyBursts copies a peer's export into the local store through the
// store's in-process client, then a burst of changes of the peer (every
// slice changed, a third of them deleted, some changed twice, new ones):
// what queues up in the mirror's lanes meanwhile is written in batches,
// and the copy must end up equal to the peer's export, key for key and
// byte for byte.
func TestCopyBursts(t *testing.T) {
	m := meshtest.New(t)
	c1 := m.AddCluster("c1", 1, "10.1.0.0/16")
	c2 := m.AddCluster("c2", 2, "10.2.0.0/16")
	const slices = 300
	var objs []api.Object
	for s := range slices {
		name := fmt.Sprintf("svc-%d", s)
		objs = append(objs, c2.Service("ns", name, fmt.Sprintf("10.96.%d.%d", s/250, s%250+1)), c2.Slice("ns", name, "s1", meshtest.IP("10.2.0.0/16", s)))
	}
	c2.Upsert(objs...)
	c2.MarkSynced()

	dir := t.TempDir()
	c2.WriteConnFile(dir, "c2", kvstore.UserRemote)
	mc, err := meshcache.New(meshcache.Config{Cluster: "c1", Local: c1.InProcessClient(), ClustersDir: dir, DirPoll: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = mc.Run(ctx) }()
	defer func() { cancel(); <-done }()

	same := func(what string) {
		t.Helper()
		poll.Eventually(t, time.Minute, what, func(ctx context.Context) error {
			if _, ok, err := c1.Admin().Get(ctx, api.SyncedKey("c2", api.KindEndpoints)); err != nil || !ok {
				return fmt.Errorf("no synced canary of c2's endpoints in c1's store (%v)", err)
			}
			for _, kind := range []api.Kind{api.KindService, api.KindEndpoints} {
				prefix := api.ClusterPrefix(kind, "c2")
				want, err := c2.Admin().List(ctx, prefix, kvstore.ListOptions{})
				if err != nil {
					return err
				}
				got, err := c1.Admin().List(ctx, prefix, kvstore.ListOptions{})
				if err != nil {
					return err
				}
				if len(got) != len(want) {
					return fmt.Errorf("%s: %d keys copied, the peer has %d", kind, len(got), len(want))
				}
				for i := range want {
					if got[i].Key != want[i].Key || !bytes.Equal(got[i].Value, want[i].Value) {
						return fmt.Errorf("%s: copy has %s = %q, the peer %s = %q", kind, got[i].Key, got[i].Value, want[i].Key, want[i].Value)
					}
				}
			}
			return nil
		})
	}
	same("the peer's export copied")

	for s := range slices {
		c2.Upsert(c2.Slice("ns", fmt.Sprintf("svc-%d", s), "s1", meshtest.IP("10.2.0.0/16", s), meshtest.IP("10.2.0.0/16", s+1000)))
		if s%3 == 0 {
			c2.Delete(api.EndpointSliceKey("c2", "ns", fmt.Sprintf("svc-%d", s), "s1"))
		}
		if s%7 == 0 {
			c2.Upsert(c2.Slice("ns", fmt.Sprintf("svc-%d", s), "s2", meshtest.IP("10.2.0.0/16", s+2000)))
		}
	}
	same("the burst of changes copied")
}
