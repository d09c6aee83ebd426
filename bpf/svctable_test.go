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

// kernelCopy stands for the kernel's map behind a svcTable: it applies the
// table's writes and checks, after each, what svc_find relies on: an entry
// turns live only with the key and value a write before already put there
// (the kernel copies a value's bytes in no particular order), and a live
// entry's key and value never change while it stays live or dead (programs
// may still read a dead one until a grace period has passed).
type kernelCopy struct {
	t      *testing.T
	e      []svcEntry
	writes int
}

func newKernelCopy(t *testing.T, size int) (*kernelCopy, *svcTable) {
	k := &kernelCopy{t: t, e: make([]svcEntry, size)}
	tab := newSvcTable(make([]svcEntry, size))
	tab.write = k.write
	return k, tab
}

func (k *kernelCopy) write(idx []uint32, e []svcEntry) (int, error) {
	k.writes++
	for i, x := range idx {
		old, nu := k.e[x], e[i]
		held := old.State == svcLive || old.State == svcDead
		if held && (old.Key != nu.Key || old.Value != nu.Value) {
			k.t.Fatalf("write %d: entry %d rewritten while programs may read it (state %d -> %d)", k.writes, x, old.State, nu.State)
		}
		if nu.State == svcLive && old.State != svcLive && (old.State != svcReserved || old.Key != nu.Key || old.Value != nu.Value) {
			k.t.Fatalf("write %d: entry %d made live in the write that puts its key and value (was state %d)", k.writes, x, old.State)
		}
		if old.State == svcDead && nu.State != svcDead && nu.State != svcFree && nu.State != svcEmpty {
			k.t.Fatalf("write %d: dead entry %d reused (state %d) before it was freed", k.writes, x, nu.State)
		}
		k.e[x] = nu
	}
	return len(idx), nil
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

// checkSame fails if the table's copy and the kernel's differ.
func (k *kernelCopy) checkSame(tab *svcTable) {
	k.t.Helper()
	for i := range k.e {
		if k.e[i] != tab.e[i] {
			k.t.Fatalf("entry %d: kernel has state %d, the table's copy state %d", i, k.e[i].State, tab.e[i].State)
		}
	}
}

// TestSvcTable drives the table's writer side against a kernelCopy:
// placement within the probe window, updates that leave the old entry
// readable until released, full windows, and the clean-up of free entries
// at a run's end.
func TestSvcTable(t *testing.T) {
	const size, home = 2 * svcProbes, 2*svcProbes - 4 // the window wraps past the table's end
	keys := collidingKeys(t, size, home, svcProbes+1)

	t.Run("fill a window", func(t *testing.T) {
		kc, tab := newKernelCopy(t, size)
		putKeys(t, tab, keys[:svcProbes])
		for i, k := range keys[:svcProbes] {
			mustFind(t, tab, k, uint32(i+1))
		}
		if err := tab.put(&keys[svcProbes], &svcValue{Set: 999}); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("key %d of a window: %v, want errProbeWindowFull", svcProbes+1, err)
		}
		// An update needs a free entry too: the old one stays live
		// until the new one is.
		if err := tab.put(&keys[0], &svcValue{Set: 1000}); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("update in a full window: %v, want errProbeWindowFull", err)
		}
		mustFind(t, tab, keys[0], 1)
		// A delete frees room only after release (the grace period).
		if found, err := tab.remove(&keys[3]); !found || err != nil {
			t.Fatalf("remove: found %v, %v", found, err)
		}
		if _, ok := tab.find(&keys[3]); ok {
			t.Fatal("removed key still found")
		}
		if _, err := tab.reserve(&keys[svcProbes]); !errors.Is(err, errProbeWindowFull) {
			t.Fatalf("reserve before release: %v, want errProbeWindowFull", err)
		}
		if err := tab.release(tab.killMark()); err != nil {
			t.Fatal(err)
		}
		if err := tab.put(&keys[svcProbes], &svcValue{Set: 999}); err != nil {
			t.Fatalf("after release: %v", err)
		}
		mustFind(t, tab, keys[svcProbes], 999)
		for i, k := range keys[:svcProbes] {
			if i != 3 {
				mustFind(t, tab, k, uint32(i+1))
			}
		}
		kc.checkSame(tab)
	})

	t.Run("update", func(t *testing.T) {
		kc, tab := newKernelCopy(t, size)
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
		if s, set := kc.e[first].State, kc.e[first].Value.Set; s != svcDead || set != 1 {
			t.Fatalf("old entry: state %d set %d, want dead with set 1", s, set)
		}
		if n := tab.deadCount(); n != 1 {
			t.Fatalf("%d dead entries, want 1", n)
		}
		// Released: the old entry precedes a live one, so it turns
		// free, not empty (a probe must go on past it).
		if err := tab.release(1); err != nil {
			t.Fatal(err)
		}
		if s := kc.e[first].State; s != svcFree {
			t.Fatalf("released entry before a live one: state %d, want free", s)
		}
		mustFind(t, tab, k, 2)
		// Deleting the last one empties the run: both entries.
		if _, err := tab.remove(&k); err != nil {
			t.Fatal(err)
		}
		if err := tab.release(tab.killMark()); err != nil {
			t.Fatal(err)
		}
		for i := range kc.e {
			if s := kc.e[i].State; s != svcEmpty {
				t.Fatalf("entry %d: state %d after everything was deleted, want empty", i, s)
			}
		}
		kc.checkSame(tab)
	})

	t.Run("release up to a mark", func(t *testing.T) {
		// The reclaim loop takes a mark, waits for a grace period,
		// then releases; an update short of room may release meanwhile.
		// The loop must then free nothing killed after its mark.
		kc, tab := newKernelCopy(t, size)
		putKeys(t, tab, keys[:3])
		a, _ := tab.find(&keys[0])
		if _, err := tab.remove(&keys[0]); err != nil {
			t.Fatal(err)
		}
		loopMark := tab.killMark()
		b, _ := tab.find(&keys[1])
		if _, err := tab.remove(&keys[1]); err != nil {
			t.Fatal(err)
		}
		updateMark := tab.killMark()
		if err := tab.release(updateMark); err != nil { // the update's own wait
			t.Fatal(err)
		}
		c, _ := tab.find(&keys[2])
		if _, err := tab.remove(&keys[2]); err != nil {
			t.Fatal(err)
		}
		if err := tab.release(loopMark); err != nil { // the loop, late
			t.Fatal(err)
		}
		for _, x := range []uint32{a, b} {
			if s := kc.e[x].State; s == svcDead {
				t.Fatalf("entry %d still dead after its release", x)
			}
		}
		if s := kc.e[c].State; s != svcDead {
			t.Fatalf("entry %d killed after both marks: state %d, want dead until a later release", c, s)
		}
		if n := tab.deadCount(); n != 1 {
			t.Fatalf("%d dead entries, want 1", n)
		}
	})

	t.Run("bulk commit", func(t *testing.T) {
		kc, tab := newKernelCopy(t, size)
		if err := tab.put(&keys[0], &svcValue{Set: 1}); err != nil {
			t.Fatal(err)
		}
		// Reservations write nothing; a chunk of commits, one key twice,
		// is one write: not live, live, the dead.
		var ws []svcWrite
		for i, k := range []svcKey{keys[0], keys[1], keys[0]} {
			x, err := tab.reserve(&k)
			if err != nil {
				t.Fatal(err)
			}
			ws = append(ws, svcWrite{idx: x, replaces: k == keys[0], key: k, val: svcValue{Set: uint32(10 + i)}})
		}
		if ws[0].idx == ws[2].idx {
			t.Fatalf("two reservations got entry %d", ws[0].idx)
		}
		if _, ok := tab.find(&keys[1]); ok {
			t.Fatal("a reserved entry is found before commit")
		}
		before := kc.writes
		if err := tab.commit(ws); err != nil {
			t.Fatal(err)
		}
		if n := kc.writes - before; n != 1 {
			t.Fatalf("a chunk of 3 commits took %d writes, want 1", n)
		}
		mustFind(t, tab, keys[0], 12) // the later value wins
		mustFind(t, tab, keys[1], 11)
		if n := tab.deadCount(); n != 2 {
			t.Fatalf("%d dead entries, want 2 (keys[0]'s first entry and its first commit)", n)
		}
		// An entry reserved and given back is free for the next one.
		x, err := tab.reserve(&keys[2])
		if err != nil {
			t.Fatal(err)
		}
		if err := tab.unreserve(x); err != nil {
			t.Fatal(err)
		}
		if y, err := tab.reserve(&keys[2]); err != nil || y != x {
			t.Fatalf("reserve after unreserve: entry %d, %v; want %d", y, err, x)
		}
		if err := tab.unreserve(x); err != nil {
			t.Fatal(err)
		}
		kc.checkSame(tab)
	})

	t.Run("adopt", func(t *testing.T) {
		kc, tab := newKernelCopy(t, size)
		putKeys(t, tab, keys[:4])
		// A run stopped between making an update live and killing the
		// old entry leaves two live entries of keys[1]; one stopped
		// before making an entry live leaves it written, not live.
		shadow, err := tab.reserve(&keys[1])
		if err != nil {
			t.Fatal(err)
		}
		kc.e[shadow] = svcEntry{State: svcLive, Key: keys[1], Value: svcValue{Set: 42}}
		half, err := tab.reserve(&keys[2])
		if err != nil {
			t.Fatal(err)
		}
		kc.e[half] = svcEntry{State: svcReserved, Key: keys[2], Value: svcValue{Set: 43}}
		if _, err := tab.remove(&keys[3]); err != nil {
			t.Fatal(err)
		}

		again := newSvcTable(append([]svcEntry(nil), kc.e...))
		again.write = kc.write
		got, vals, err := again.adopt()
		if err != nil {
			t.Fatal(err)
		}
		want := map[svcKey]uint32{keys[0]: 1, keys[1]: 2, keys[2]: 3}
		if len(got) != len(want) {
			t.Fatalf("adopted %d services, want %d", len(got), len(want))
		}
		for i, k := range got {
			if want[k] != vals[i].Set {
				t.Fatalf("%s: adopted set %d, want %d (the entry lookups find)", k.frontend(), vals[i].Set, want[k])
			}
		}
		// The shadowed, half-written and dead entries wait for a grace
		// period, dead in the kernel too.
		if n := again.deadCount(); n != 3 {
			t.Fatalf("%d entries queued dead, want 3", n)
		}
		for _, x := range []uint32{shadow, half} {
			if s := kc.e[x].State; s != svcDead {
				t.Fatalf("entry %d: state %d in the kernel after adopt, want dead", x, s)
			}
		}
		kc.checkSame(again)
	})
}

// TestSvcTableSize checks the table is a power of two at least twice the
// services it must hold.
func TestSvcTableSize(t *testing.T) {
	for _, tc := range []struct {
		max  int
		want uint32
	}{{1, 256}, {128, 256}, {129, 512}, {65536, 131072}, {100000, 262144}} {
		t.Run(fmt.Sprint(tc.max), func(t *testing.T) {
			if got := svcTableSize(tc.max); got != tc.want {
				t.Fatalf("svcTableSize(%d) = %d, want %d", tc.max, got, tc.want)
			}
		})
	}
}

// putKeys puts keys into tab, the i-th with set i+1.
func putKeys(t *testing.T, tab *svcTable, keys []svcKey) {
	t.Helper()
	for i, k := range keys {
		if err := tab.put(&k, &svcValue{Set: uint32(i + 1)}); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
}
