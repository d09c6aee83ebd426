package kvstore

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// leaseCountsMatch checks the writer's books: every owned key counted once
// in its lease's slot.
func leaseCountsMatch(t *testing.T, w *Writer) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	per := map[*leaseSlot]int{}
	for _, k := range w.keys {
		per[k.lease]++
	}
	for _, s := range w.leases {
		if !s.canary && s.count != per[s] {
			t.Errorf("lease %x: count %d, holds %d keys", s.id, s.count, per[s])
		}
	}
}

// TestWriterApply writes batches (new keys across several leases, changed,
// unchanged and deleted ones) and checks that a reader converges on them,
// that a batch with a refused change writes nothing, and that a batch
// failing on a lost lease leaves the writer able to write its changes one
// by one.
func TestWriterApply(t *testing.T) {
	e := newEnv(t, false)
	w, _ := e.newWriter(t, &WriterOptions{MaxKeysPerLease: 3})
	ctx := context.Background()
	v := watchView(t, e.newReader(t), api.KindNode)
	tr := truth{}
	put := func(cs ...Change) {
		t.Helper()
		if err := w.Apply(ctx, cs); err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Object == nil {
				delete(tr, c.DeleteKey)
				continue
			}
			b, err := c.Object.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			tr[c.Object.Key()] = b
		}
	}
	var cs []Change
	for i := range 10 {
		cs = append(cs, Change{Object: testNode(fmt.Sprintf("n%d", i), i)})
	}
	put(cs...)
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, v, tr)
	leaseCountsMatch(t, w)

	changed := testNode("n1", 1)
	changed.Zone = "zone-changed"
	put(Change{Object: testNode("n0", 0)}, Change{Object: changed},
		Change{DeleteKey: api.NodeKey("c1", "n2")}, Change{DeleteKey: api.NodeKey("c1", "n3")}, Change{DeleteKey: api.NodeKey("c1", "n4")},
		Change{Object: testNode("n10", 10)}, Change{Object: testNode("n11", 11)})
	waitConverged(t, v, tr)
	leaseCountsMatch(t, w)

	foreign := testNode("x", 99)
	foreign.Cluster = "c2"
	if err := w.Apply(ctx, []Change{{Object: testNode("n12", 12)}, {Object: foreign}}); !errors.Is(err, ErrNotOwned) {
		t.Fatalf("batch with another cluster's node: err = %v, want ErrNotOwned", err)
	}
	if err := w.Apply(ctx, []Change{{Object: testNode("n12", 12)}, {DeleteKey: api.NodeKey("c1", "n12")}}); err == nil {
		t.Fatal("batch naming a key twice: no error")
	}
	if n := e.storeCount(t); n != int64(len(tr)) {
		t.Fatalf("store holds %d nodes after refused batches, want %d", n, len(tr))
	}

	// A lost lease fails the batch whole; one by one, the writer replaces
	// the lease and rewrites its keys.
	w.mu.Lock()
	lost := w.keys[api.NodeKey("c1", "n0")].lease.id
	w.mu.Unlock()
	if _, err := e.admin.cli.Revoke(ctx, lost); err != nil {
		t.Fatal(err)
	}
	moved := testNode("n0", 0)
	moved.Zone = "zone-moved"
	err := w.Apply(ctx, []Change{{Object: moved}, {Object: testNode("n13", 13)}})
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("batch on a lost lease: err = %v, want ErrLeaseNotFound", err)
	}
	leaseCountsMatch(t, w)
	tr.upsert(t, ctx, w, moved)
	tr.upsert(t, ctx, w, testNode("n13", 13))
	waitConverged(t, v, tr)
	leaseCountsMatch(t, w)
}
