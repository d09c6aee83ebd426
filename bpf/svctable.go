package bpf

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// cm_services is an open-addressing hash table kept in a BPF array that
// userspace maps into its memory: a key hashes to a home index and lives in
// one of the svcProbes entries from there (linear probing); each entry is one
// 64-byte cache line holding its state, key and value. A connect among
// 100,000 services then misses the cache once, on that line, where the hash
// map it replaced missed on a bucket and again on its element
// (docs/benchmarks.md, "Connect overhead").
//
// Entries are never changed while a program may read them. An update writes
// the new value into a free entry of the key's window and turns it live with
// its state, written last; then the old entry is marked dead. A program that
// found the old entry keeps reading it unchanged, and a program that looks
// now finds the new one (or, until the old one is dead, whichever comes
// first in its probe: each is whole). Dead entries turn free only after an
// RCU grace period (the Datapath's reclaimer), when no program can still
// hold them.
//
// Ordering: the writer stores the state with an atomic store after the rest
// of the entry; the program reads the state before the rest (socklb.c's
// svc_find). On x86 that is enough (stores and loads keep their order); a
// weakly ordered CPU (arm64) would need an acquire load in the program,
// which clang 14 cannot emit for BPF; the objects are built for x86 today.

// Entry states, as in socklb.c. A probe stops at an empty entry; the others
// that hold no service (dead, free, reserved) do not stop it.
const (
	svcEmpty uint32 = iota
	svcLive
	svcDead
	svcFree
	// svcReserved is taken for a write queued in a bulk load, not yet
	// live (the programs know it only as "not live").
	svcReserved
)

// svcProbes is SVC_PROBES in socklb.c: how far from its home index a key
// may be placed, and so how many entries a lookup reads at most.
const svcProbes = 16

// varSvcMask is the program constant holding the table's size - 1.
const varSvcMask = "svc_mask"

// svcEntry mirrors struct svc_entry: 64 bytes, one cache line.
type svcEntry struct {
	State uint32
	Key   svcKey
	Value svcValue
	Pad   [2]uint32
}

const svcEntryBytes = 64

var _ [svcEntryBytes - unsafe.Sizeof(svcEntry{})]struct{} // not larger
var _ [unsafe.Sizeof(svcEntry{}) - svcEntryBytes]struct{} // not smaller

// errProbeWindowFull is returned when every entry of a key's probe window
// holds a service, or a dead one not freed yet.
var errProbeWindowFull = errors.New("every entry of its probe window is taken")

// svcTableSize is the table's number of entries for maxServices: a power
// of two at least twice maxServices, so the table is at most half full and
// a miss reads about two entries.
func svcTableSize(maxServices int) uint32 {
	n := max(2*maxServices, 64)
	return 1 << bits.Len32(uint32(n-1))
}

// sizeSvcTable sizes cm_services in spec to entries (a power of two) and
// sets the programs' mask to match.
func sizeSvcTable(spec *ebpf.CollectionSpec, entries uint32) error {
	m, v := spec.Maps[mapServices], spec.Variables[varSvcMask]
	if m == nil || v == nil {
		return fmt.Errorf("map %s or constant %s missing from the object", mapServices, varSvcMask)
	}
	m.MaxEntries = entries
	if err := v.Set(entries - 1); err != nil {
		return fmt.Errorf("set %s: %w", varSvcMask, err)
	}
	return nil
}

// svcHash is svc_hash in socklb.c: the home index hash of a key, over its
// five 32-bit words in memory order.
func svcHash(k *svcKey) uint32 {
	w := (*[5]uint32)(unsafe.Pointer(k))
	h := uint32(0x2d358dcc)
	for _, x := range w {
		x *= 0xcc9e2d51
		x = bits.RotateLeft32(x, 15) * 0x1b873593
		h = bits.RotateLeft32(h^x, 13)*5 + 0xe6546b64
	}
	h ^= 20
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// svcTable writes cm_services through its memory mapping. Its methods are
// safe for concurrent use (a bulk load reserves entries while its flusher
// commits earlier ones); the Datapath orders the writes that depend on
// each other.
type svcTable struct {
	mu   sync.Mutex
	e    []svcEntry
	mask uint32
	// dead lists the entries marked dead, oldest first; release frees a
	// prefix of it after a grace period.
	dead []uint32
	// unmap releases the mapping (nil over Go memory, in tests).
	unmap func() error
}

// newSvcTable returns a table over entries (a power of two of them).
func newSvcTable(entries []svcEntry) *svcTable {
	return &svcTable{e: entries, mask: uint32(len(entries) - 1)}
}

// mapSvcTable maps m (cm_services) into memory and returns the table over it.
func mapSvcTable(m *ebpf.Map) (*svcTable, error) {
	n := m.MaxEntries()
	if n == 0 || n&(n-1) != 0 || m.ValueSize() != svcEntryBytes {
		return nil, fmt.Errorf("map %s: %d entries of %d bytes, want a power of two of %d", mapServices, n, m.ValueSize(), svcEntryBytes)
	}
	size := int(n) * svcEntryBytes
	mem, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s: mmap: %w", mapServices, err)
	}
	t := newSvcTable(unsafe.Slice((*svcEntry)(unsafe.Pointer(&mem[0])), n))
	t.unmap = func() error { return unix.Munmap(mem) }
	return t, nil
}

// close unmaps the table; it must not be used afterwards.
func (t *svcTable) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.e = nil
	if t.unmap == nil {
		return nil
	}
	return t.unmap()
}

func (t *svcTable) state(i uint32) uint32 { return atomic.LoadUint32(&t.e[i].State) }

func (t *svcTable) setState(i uint32, s uint32) { atomic.StoreUint32(&t.e[i].State, s) }

// fill writes every entry of a new table once: empty, its index in the
// padding so that no two pages hold the same bytes. On hosts that reclaim
// or merge pages a guest left zero, the first write to such a page costs a
// host fault (see fillTCPVIP); a service update would pay it otherwise.
func (t *svcTable) fill() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.e {
		t.e[i] = svcEntry{Pad: [2]uint32{0, uint32(i) + 1}}
	}
}

// find returns the index of k's live entry, the first in its probe order.
func (t *svcTable) find(k *svcKey) (uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.findLocked(k, ^uint32(0))
}

// findLocked is find skipping entry skip.
func (t *svcTable) findLocked(k *svcKey, skip uint32) (uint32, bool) {
	h := svcHash(k)
	for i := range uint32(svcProbes) {
		idx := (h + i) & t.mask
		switch t.state(idx) {
		case svcEmpty:
			return 0, false
		case svcLive:
			if idx != skip && t.e[idx].Key == *k {
				return idx, true
			}
		}
	}
	return 0, false
}

// reserve takes a free entry of k's probe window for a write of k, which
// commit makes live (or unreserve gives back).
func (t *svcTable) reserve(k *svcKey) (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := svcHash(k)
	for i := range uint32(svcProbes) {
		idx := (h + i) & t.mask
		if s := t.state(idx); s == svcEmpty || s == svcFree {
			t.setState(idx, svcReserved)
			return idx, nil
		}
	}
	return 0, errProbeWindowFull
}

// unreserve gives back an entry reserve took and commit did not use.
func (t *svcTable) unreserve(idx uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state(idx) == svcReserved {
		t.setState(idx, svcFree)
	}
}

// commit writes k and v into the reserved entry idx, turns it live, and
// marks k's previous entry dead: from then on programs find the new value.
func (t *svcTable) commit(idx uint32, k *svcKey, v *svcValue) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := &t.e[idx]
	e.Key, e.Value = *k, *v
	t.setState(idx, svcLive) // after the key and value: see the type's doc
	for {
		old, ok := t.findLocked(k, idx)
		if !ok {
			return
		}
		t.killLocked(old)
	}
}

// put is reserve and commit.
func (t *svcTable) put(k *svcKey, v *svcValue) error {
	idx, err := t.reserve(k)
	if err != nil {
		return err
	}
	t.commit(idx, k, v)
	return nil
}

// remove marks k's live entries dead; it reports whether there was one.
func (t *svcTable) remove(k *svcKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	found := false
	for {
		idx, ok := t.findLocked(k, ^uint32(0))
		if !ok {
			return found
		}
		t.killLocked(idx)
		found = true
	}
}

func (t *svcTable) killLocked(idx uint32) {
	t.setState(idx, svcDead)
	t.dead = append(t.dead, idx)
}

// deadCount is how many dead entries wait to be freed. A caller that then
// waits for a grace period may release that many.
func (t *svcTable) deadCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.dead)
}

// release frees the n oldest dead entries: a grace period has passed since
// they died, so no program reads them. An entry freed just before an empty
// one turns empty, with the free entries before it, so that lookups that
// miss stop early again: no live entry can lie past them, as a probe never
// crosses an empty entry.
func (t *svcTable) release(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n = min(n, len(t.dead))
	for _, idx := range t.dead[:n] {
		t.setState(idx, svcFree)
	}
	for _, idx := range t.dead[:n] {
		if t.state((idx+1)&t.mask) != svcEmpty {
			continue
		}
		for j := idx; t.state(j) == svcFree; j = (j - 1) & t.mask {
			t.setState(j, svcEmpty)
		}
	}
	t.dead = append(t.dead[:0], t.dead[n:]...)
}

// adopt reads a table an earlier run left: it returns the live services,
// each key once. An entry that is not the one lookups find for its key (a
// run stopped between making an update live and killing the old entry), a
// dead entry and a reserved one are queued dead, to be freed after a
// grace period.
func (t *svcTable) adopt() ([]svcKey, []svcValue) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var (
		keys []svcKey
		vals []svcValue
	)
	for i := range t.e {
		idx := uint32(i)
		switch t.state(idx) {
		case svcLive:
			e := &t.e[idx]
			if first, _ := t.findLocked(&e.Key, ^uint32(0)); first != idx {
				t.killLocked(idx)
				continue
			}
			keys, vals = append(keys, e.Key), append(vals, e.Value)
		case svcDead, svcReserved:
			t.killLocked(idx)
		}
	}
	return keys, vals
}
