package bpf

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
)

// cm_services is an open-addressing hash table kept in a BPF array: a key
// hashes to a home index and lives in one of the svcProbes entries from
// there (linear probing); each entry is one 64-byte cache line holding its
// state, key and value. A connect among 100,000 services then misses the
// cache once, on that line, where the hash map it replaced missed on a
// bucket and again on its element (docs/benchmarks.md, "Connect overhead").
//
// Entries are never changed while a program may read them. An update writes
// the new value into a free entry of the key's window, first with a state
// that is not live, then again, the same bytes, live; then it marks the old
// entry dead (again the same bytes but the state). The three go in one
// batch update, which the kernel applies element by element, in order. A program reads the state
// first (socklb.c's svc_find): once it sees an entry live, the rest of the
// entry is already written and stays unchanged, so it reads one whole entry,
// the old one or the new one. Dead entries turn free only after an RCU grace
// period (the Datapath's reclaimer), when no program can still hold them.
// The kernel copies an array value in place with no order among its bytes:
// hence the two writes, and the states' values all below 256, so that a
// state read while its word is rewritten is the old one or the new one.
//
// Ordering: x86 keeps stores in order, and loads in order; a weakly ordered
// CPU (arm64) would need an acquire load of the state in the program, which
// clang 14 cannot emit for BPF; the objects are built for x86 today.
//
// The array is not memory-mapped (BPF_F_MMAPABLE), though that would save
// the system calls: on the machines measured here a program's reads of an
// mmapable array's scattered entries cost microseconds each, 5.5 µs of run
// time per connect at 10,000 services in a 16 MiB table against 0.9 µs for
// the same table unmapped (docs/benchmarks.md).

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
const svcProbes = 128

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
// a miss reads about two entries, and at least twice the probe window.
func svcTableSize(maxServices int) uint32 {
	n := max(2*maxServices, 2*svcProbes)
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

// svcTable writes cm_services and keeps a copy of what it wrote. Its
// methods are safe for concurrent use (a bulk load reserves entries while
// its flusher commits earlier ones); the Datapath orders the writes that
// depend on each other.
type svcTable struct {
	mu sync.Mutex
	// e holds every entry as last written to the kernel, but for entries
	// reserved and not committed yet: reserved here, still empty or free
	// in the kernel.
	e    []svcEntry
	mask uint32
	// dead lists the entries marked dead, oldest first, each with the
	// number of kills up to it; release frees those killed before a grace
	// period began. kills counts every kill.
	dead  []deadEntry
	kills uint64
	// write writes entries to the kernel's map, in order, and returns how
	// many it wrote (all but on error); nil over Go memory alone (tests).
	// Tests wrap it to make the kernel refuse a write.
	write func(idx []uint32, e []svcEntry) (int, error)
	// idx and out queue writes for flushLocked: entry idx[i] as out[i];
	// prev[i] is the entry as it was before, for flushLocked to put back
	// if the kernel does not take out[i].
	idx  []uint32
	out  []svcEntry
	prev []svcEntry
}

// newSvcTable returns a table of entries (a power of two of them), written
// nowhere but in entries.
func newSvcTable(entries []svcEntry) *svcTable {
	return &svcTable{e: entries, mask: uint32(len(entries) - 1)}
}

// openSvcTable returns the table of m (cm_services), its entries read from
// the kernel.
func openSvcTable(m *ebpf.Map) (*svcTable, error) {
	n := m.MaxEntries()
	if n == 0 || n&(n-1) != 0 || m.ValueSize() != svcEntryBytes {
		return nil, fmt.Errorf("map %s: %d entries of %d bytes, want a power of two of %d", mapServices, n, m.ValueSize(), svcEntryBytes)
	}
	_, entries, err := readAll[uint32, svcEntry](m)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", mapServices, err)
	}
	if len(entries) != int(n) {
		return nil, fmt.Errorf("map %s: read %d of %d entries", mapServices, len(entries), n)
	}
	t := newSvcTable(entries)
	t.write = func(idx []uint32, e []svcEntry) (int, error) { return batchUpdate(m, mapServices, idx, e) }
	return t, nil
}

// close drops the table's copy; it must not be used afterwards.
func (t *svcTable) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.e, t.write = nil, nil
}

// flushLocked writes the queued entries to the kernel in one batch. Each
// operation queues its writes and flushes them once, so a flush that fails
// undoes the operation in the copy: the writes the kernel did not take are
// put back, newest first, and the dead list keeps only entries still dead.
// The copy then holds what the kernel does, also after a batch stopped
// halfway (the kernel applies a batch in order and counts what it applied).
// Without this the copy could show dead an entry programs still find live
// and free it, or reuse one the kernel still has dead, with no grace
// period in between. On error it returns the key of the entry the kernel
// refused, to name the service.
func (t *svcTable) flushLocked() (svcKey, error) {
	defer func() { t.idx, t.out, t.prev = t.idx[:0], t.out[:0], t.prev[:0] }()
	if t.write == nil || len(t.idx) == 0 {
		return svcKey{}, nil
	}
	n, err := t.write(t.idx, t.out)
	if err == nil {
		return svcKey{}, nil
	}
	n = min(max(n, 0), len(t.idx)-1) // a failed write took fewer than all
	for i := len(t.idx) - 1; i >= n; i-- {
		t.e[t.idx[i]] = t.prev[i]
	}
	t.dead = slices.DeleteFunc(t.dead, func(d deadEntry) bool { return t.e[d.idx].State != svcDead })
	return t.out[n].Key, fmt.Errorf("entry %d: %w", t.idx[n], err)
}

// setLocked sets the state of entry i and queues the entry, as it is now,
// for flushLocked.
func (t *svcTable) setLocked(i uint32, state uint32) {
	t.prev = append(t.prev, t.e[i])
	t.e[i].State = state
	t.idx, t.out = append(t.idx, i), append(t.out, t.e[i])
}

// fill writes every entry of a new table once: empty, its index in the
// padding so that no two pages hold the same bytes. On hosts that reclaim
// or merge pages a guest left zero, the first write to such a page costs a
// host fault (see fillTCPVIP); a service update would pay it otherwise.
func (t *svcTable) fill() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	const chunk = 4096
	for i := range t.e {
		t.e[i] = svcEntry{Pad: [2]uint32{0, uint32(i) + 1}}
		t.setLocked(uint32(i), svcEmpty)
		if len(t.idx) == chunk || i == len(t.e)-1 {
			if _, err := t.flushLocked(); err != nil {
				return fmt.Errorf("map %s: fill: %w", mapServices, err)
			}
		}
	}
	return nil
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
		switch t.e[idx].State {
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
// commit makes live (or unreserve gives back). Reserving writes nothing:
// until commit, the kernel has the entry as it was (empty or free), which
// no lookup of a key placed later needs to cross before that key is
// committed, as commits come in the order of their reservations.
func (t *svcTable) reserve(k *svcKey) (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := svcHash(k)
	for i := range uint32(svcProbes) {
		idx := (h + i) & t.mask
		if s := t.e[idx].State; s == svcEmpty || s == svcFree {
			t.e[idx].State = svcReserved
			return idx, nil
		}
	}
	return 0, errProbeWindowFull
}

// unreserve gives back entries reserve took and commit did not make live:
// free, in the kernel too (one may have been empty there: free is safe
// whatever was placed past it meanwhile; or written, not live, by a commit
// the kernel refused halfway). Entries no longer reserved are left alone.
func (t *svcTable) unreserve(idx ...uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range idx {
		if t.e[i].State == svcReserved {
			t.setLocked(i, svcFree)
		}
	}
	if _, err := t.flushLocked(); err != nil {
		return fmt.Errorf("map %s: give back reserved entries: %w", mapServices, err)
	}
	return nil
}

// svcWrite is one entry for commit: key and value into the reserved entry
// idx; replaces tells that the key may have live entries already (an
// update), which commit then marks dead.
type svcWrite struct {
	idx      uint32
	replaces bool
	key      svcKey
	val      svcValue
}

// commit writes each w's key and value into its reserved entry, makes it
// live, and marks the key's previous entries dead, in the order of ws (a
// later write of a key replaces an earlier one): from then on programs find
// the new values. One batch of writes: every entry not live, then for each
// w its entry live and the entries it replaces dead.
func (t *svcTable) commit(ws []svcWrite) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range ws {
		w := &ws[i]
		e := &t.e[w.idx]
		e.Key, e.Value = w.key, w.val
		t.setLocked(w.idx, svcReserved) // not live: the bytes land in any order
	}
	for i := range ws {
		w := &ws[i]
		t.setLocked(w.idx, svcLive) // the same bytes but the state
		if w.replaces {
			t.killOthersLocked(&w.key, w.idx)
		}
	}
	if k, err := t.flushLocked(); err != nil {
		return fmt.Errorf("map %s: service %s: write entry: %w", mapServices, k.frontend(), err)
	}
	return nil
}

// killOthersLocked marks every live entry of k but keep dead.
func (t *svcTable) killOthersLocked(k *svcKey, keep uint32) {
	for {
		old, ok := t.findLocked(k, keep)
		if !ok {
			return
		}
		t.killLocked(old)
	}
}

// put is reserve and commit of one entry.
func (t *svcTable) put(k *svcKey, v *svcValue) error {
	idx, err := t.reserve(k)
	if err != nil {
		return err
	}
	return t.commit([]svcWrite{{idx: idx, replaces: true, key: *k, val: *v}})
}

// remove marks k's live entries dead; it reports whether there was one.
func (t *svcTable) remove(k *svcKey) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	found := false
	for {
		idx, ok := t.findLocked(k, ^uint32(0))
		if !ok {
			break
		}
		t.killLocked(idx)
		found = true
	}
	if _, err := t.flushLocked(); err != nil {
		return false, fmt.Errorf("map %s: service %s: mark entry dead: %w", mapServices, k.frontend(), err)
	}
	return found, nil
}

// deadEntry is an entry marked dead, and the kill count once it was.
type deadEntry struct {
	idx  uint32
	kill uint64
}

func (t *svcTable) killLocked(idx uint32) {
	t.setLocked(idx, svcDead)
	t.kills++
	t.dead = append(t.dead, deadEntry{idx: idx, kill: t.kills})
}

// deadCount is how many dead entries wait to be freed.
func (t *svcTable) deadCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.dead)
}

// killMark is the number of kills so far: a caller that then waits for a
// grace period may release up to it. A count of dead entries would not do:
// another release may free some of them meanwhile, and a count would then
// reach entries killed after the wait began.
func (t *svcTable) killMark() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.kills
}

// release frees the dead entries killed up to mark (see killMark): a grace
// period has passed since they died, so no program reads them. An entry
// freed just before an empty one turns empty, with the free entries before
// it, so that lookups that miss stop early again: no live entry can lie
// past them, as a probe never crosses an empty entry.
func (t *svcTable) release(mark uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(t.dead) && t.dead[n].kill <= mark {
		n++
	}
	for _, d := range t.dead[:n] {
		t.setLocked(d.idx, svcFree)
	}
	for _, d := range t.dead[:n] {
		idx := d.idx
		if next := (idx + 1) & t.mask; t.e[next].State != svcEmpty {
			continue
		}
		for j := idx; t.e[j].State == svcFree; j = (j - 1) & t.mask {
			t.setLocked(j, svcEmpty)
		}
	}
	if k, err := t.flushLocked(); err != nil {
		return fmt.Errorf("map %s: free dead entries: service %s: %w", mapServices, k.frontend(), err)
	}
	t.dead = append(t.dead[:0], t.dead[n:]...)
	return nil
}

// adopt reads a table an earlier run left: it returns the live services,
// each key once. An entry that is not the one lookups find for its key (a
// run stopped between making an update live and killing the old entry), a
// dead entry and one written but not made live are marked dead, to be freed
// after a grace period.
func (t *svcTable) adopt() ([]svcKey, []svcValue, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var (
		keys []svcKey
		vals []svcValue
	)
	for i := range t.e {
		idx := uint32(i)
		switch t.e[idx].State {
		case svcLive:
			e := &t.e[idx]
			if first, ok := t.findLocked(&e.Key, ^uint32(0)); !ok || first != idx {
				t.killLocked(idx)
				continue
			}
			keys, vals = append(keys, e.Key), append(vals, e.Value)
		case svcDead, svcReserved:
			t.killLocked(idx)
		}
	}
	if k, err := t.flushLocked(); err != nil {
		return nil, nil, fmt.Errorf("map %s: mark stale entries dead: service %s: %w", mapServices, k.frontend(), err)
	}
	return keys, vals, nil
}
