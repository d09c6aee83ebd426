package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// collidingKeys returns n service keys whose home index in a table of size
// entries is home.
func collidingKeys(t *testing.T, size uint32, home uint32, n int) []svcKey {
	t.Helper()
	var keys []svcKey
	for port := 1; len(keys) < n; port++ {
		if port > 1<<16-1 {
			t.Fatalf("found %d of %d keys with home %d", len(keys), n, home)
		}
		k := frontendKey(loadbalancer.Frontend{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.96.0.1"), uint16(port)), Protocol: loadbalancer.TCP})
		if svcHash(&k)&(size-1) == home {
			keys = append(keys, k)
		}
	}
	return keys
}

func mustFind(t *testing.T, tab *svcTable, k svcKey, want uint32) {
	t.Helper()
	idx, ok := tab.find(&k)
	if !ok {
		t.Fatalf("%s not found", k.frontend())
	}
	if got := tab.e[idx].Value.Set; got != want {
		t.Fatalf("%s: entry %d has set %d, want %d", k.frontend(), idx, got, want)
	}
}

// TestSvcTable drives the table's writer side over Go memory: placement
// within the probe window, updates that leave the old entry readable until
// released, full windows, and the clean-up of free entries at a run's end.
func TestSvcTable(t *testing.T) {
	const size, home = 64, 60 // the window wraps past the table's end
	keys := collidingKeys(t, size, home, svcProbes+1)

	t.Run("fill a window", func(t *testing.T) {
		tab := newSvcTable(make([]svcEntry, size))
		for i, k := range keys[:svcProbes] {
			if err := tab.put(&k, &svcValue{Set: uint32(i + 1)}); err != nil {
				t.Fatalf("key %d: %v", i, err)
			}
		}
		for i, k := range keys[:svcProbes] {
			mustFind(t, tab, k, uint32(i+1))
		}
		if err := tab.put(&keys[svcProbes], &svcValue{Set: 99}); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("17th key of a window: %v, want errProbeWindowFull", err)
		}
		// An update needs a free entry too: the old one stays live
		// until the new one is.
		if err := tab.put(&keys[0], &svcValue{Set: 100}); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("update in a full window: %v, want errProbeWindowFull", err)
		}
		mustFind(t, tab, keys[0], 1)
		// A delete frees room only after release (the grace period).
		if !tab.remove(&keys[3]) {
			t.Fatal("remove found nothing")
		}
		if _, ok := tab.find(&keys[3]); ok {
			t.Fatal("removed key still found")
		}
		if _, err := tab.reserve(&keys[svcProbes]); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("reserve before release: %v, want errProbeWindowFull", err)
		}
		tab.release(tab.deadCount())
		if err := tab.put(&keys[svcProbes], &svcValue{Set: 17}); err != nil {
			t.Fatalf("after release: %v", err)
		}
		mustFind(t, tab, keys[svcProbes], 17)
		for i, k := range keys[:svcProbes] {
			if i != 3 {
				mustFind(t, tab, k, uint32(i+1))
			}
		}
	})

	t.Run("update", func(t *testing.T) {
		tab := newSvcTable(make([]svcEntry, size))
		k := keys[0]
		if err := tab.put(&k, &svcValue{Set: 1}); err != nil {
			t.Fatal(err)
		}
		first, _ := tab.find(&k)
		if err := tab.put(&k, &svcValue{Set: 2}); err != nil {
			t.Fatal(err)
		}
		mustFind(t, tab, k, 2)
		// The old entry is dead, its value untouched for readers that
		// found it before the switch.
		if s, set := tab.state(first), tab.e[first].Value.Set; s != svcDead || set != 1 {
			t.Fatalf("old entry: state %d set %d, want dead with set 1", s, set)
		}
		if n := tab.deadCount(); n != 1 {
			t.Fatalf("%d dead entries, want 1", n)
		}
		// Released: the old entry precedes a live one, so it turns
		// free, not empty (a probe must go on past it).
		tab.release(1)
		if s := tab.state(first); s != svcFree {
			t.Fatalf("released entry before a live one: state %d, want free", s)
		}
		mustFind(t, tab, k, 2)
		// Deleting the last one empties the run: both entries.
		tab.remove(&k)
		tab.release(tab.deadCount())
		for i := range uint32(size) {
			if s := tab.state(i); s != svcEmpty {
				t.Fatalf("entry %d: state %d after everything was deleted, want empty", i, s)
			}
		}
	})

	t.Run("reserved entries", func(t *testing.T) {
		tab := newSvcTable(make([]svcEntry, size))
		a, err := tab.reserve(&keys[0])
		if err != nil {
			t.Fatal(err)
		}
		b, err := tab.reserve(&keys[0])
		if err != nil {
			t.Fatal(err)
		}
		if a == b {
			t.Fatalf("two reservations got entry %d", a)
		}
		if _, ok := tab.find(&keys[0]); ok {
			t.Fatal("a reserved entry is found before commit")
		}
		// Committed in order, as a bulk load's flusher does: the later
		// value wins and the earlier entry dies.
		tab.commit(a, &keys[0], &svcValue{Set: 1})
		tab.commit(b, &keys[0], &svcValue{Set: 2})
		mustFind(t, tab, keys[0], 2)
		c, err := tab.reserve(&keys[1])
		if err != nil {
			t.Fatal(err)
		}
		tab.unreserve(c)
		if s := tab.state(c); s != svcFree {
			t.Fatalf("unreserved entry: state %d, want free", s)
		}
	})

	t.Run("adopt", func(t *testing.T) {
		tab := newSvcTable(make([]svcEntry, size))
		for i, k := range keys[:4] {
			if err := tab.put(&k, &svcValue{Set: uint32(i + 1)}); err != nil {
				t.Fatal(err)
			}
		}
		// A run stopped between making an update live and killing the
		// old entry leaves two live entries of keys[1]; and one
		// reserved entry.
		shadow, err := tab.reserve(&keys[1])
		if err != nil {
			t.Fatal(err)
		}
		tab.e[shadow].Key, tab.e[shadow].Value = keys[1], svcValue{Set: 42}
		tab.setState(shadow, svcLive)
		if _, err := tab.reserve(&keys[2]); err != nil {
			t.Fatal(err)
		}
		tab.remove(&keys[3])

		again := newSvcTable(tab.e)
		got, vals := again.adopt()
		want := map[svcKey]uint32{keys[0]: 1, keys[1]: 2, keys[2]: 3}
		if len(got) != len(want) {
			t.Fatalf("adopted %d services, want %d", len(got), len(want))
		}
		for i, k := range got {
			if want[k] != vals[i].Set {
				t.Fatalf("%s: adopted set %d, want %d (the entry lookups find)", k.frontend(), vals[i].Set, want[k])
			}
		}
		// The shadowed, reserved and dead entries wait for a grace period.
		if n := again.deadCount(); n != 3 {
			t.Fatalf("%d entries queued dead, want 3", n)
		}
	})
}

// TestSvcTableSize checks the table is a power of two at least twice the
// services it must hold.
func TestSvcTableSize(t *testing.T) {
	for _, tc := range []struct {
		max  int
		want uint32
	}{{1, 64}, {32, 64}, {33, 128}, {65536, 131072}, {100000, 262144}} {
		t.Run(fmt.Sprint(tc.max), func(t *testing.T) {
			if got := svcTableSize(tc.max); got != tc.want {
				t.Fatalf("svcTableSize(%d) = %d, want %d", tc.max, got, tc.want)
			}
		})
	}
}
