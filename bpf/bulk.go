package bpf

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

var _ loadbalancer.BulkDatapath = (*Datapath)(nil)

// pendingWrites are the map writes of a bulk load, in the order they must
// reach the kernel: nodes, backends, slot groups, affinity timeouts, then the
// service entries that make the rest reachable. Until the entries are
// written nothing new is reachable, so the queue keeps the invariant of
// single updates (no slot points at a missing backend, no entry at a missing
// slot set) while costing a few batch system calls instead of one call per
// entry.
type pendingWrites struct {
	// cur is the chunk being filled; handOff passes it to the flusher.
	cur *writeChunk

	// Slabs the bookkeeping of the load's services is carved from: one
	// allocation per block of services instead of two per service, and
	// none for services found programmed already (the resync after a
	// restart). stateBlock is the size of a states block.
	states     []svcState
	stateBlock int
	idSlab     []uint32

	// flusher writes handed-off chunks in order while the load goes on,
	// and gives each back on free once written, so a load of any size
	// fills a few chunks over and over instead of queueing every write:
	// the queues were a third of a 100,000-service load's allocations.
	flusher chan *writeChunk
	free    chan *writeChunk
	flushed chan struct{}
	// failed holds the load's first write error, set by the flusher: the
	// load then fails whole (see failure).
	failed atomic.Pointer[error]
}

// writeChunk is one hand-off of queued writes (see pendingWrites for their
// order).
type writeChunk struct {
	nodeIDs    []uint32
	nodeVals   []nodeValue
	backendIDs []uint32
	backendVal []backendValue
	slotKeys   []slotKey
	slotVals   []slotValue
	affKeys    []svcKey
	affVals    []uint32
	svcs       []svcWrite
}

// newWriteChunk returns an empty chunk with room for svcs service entries.
func newWriteChunk(svcs int) *writeChunk {
	return &writeChunk{svcs: make([]svcWrite, 0, svcs)}
}

// reset empties the chunk, keeping its room.
func (w *writeChunk) reset() {
	*w = writeChunk{
		nodeIDs: w.nodeIDs[:0], nodeVals: w.nodeVals[:0],
		backendIDs: w.backendIDs[:0], backendVal: w.backendVal[:0],
		slotKeys: w.slotKeys[:0], slotVals: w.slotVals[:0],
		affKeys: w.affKeys[:0], affVals: w.affVals[:0],
		svcs: w.svcs[:0],
	}
}

// bulkChunk is how many service entries a bulk load queues before handing
// them to the flusher: Go bookkeeping of the next chunk then overlaps the
// kernel's batch writes of this one.
const bulkChunk = 4096

// newPendingWrites returns the queue of a load of svcs services, with its
// flusher started.
func (d *Datapath) newPendingWrites(svcs int) *pendingWrites {
	b := &pendingWrites{
		cur:        newWriteChunk(min(svcs, bulkChunk)),
		stateBlock: min(svcs, bulkChunk),
		free:       make(chan *writeChunk, 8),
	}
	d.startFlusher(b)
	return b
}

// startFlusher starts the goroutine writing handed-off chunks. Chunks are
// written whole and in order, each map before the next (flushBatch), so a
// chunk's entries reach the kernel after its slots, backends and nodes and
// after every earlier chunk's: the invariant of pendingWrites holds. It
// touches only the maps; d.mu stays held by the load.
//
// After the load's first write error no chunk is written: the entries of
// the chunk that failed and of every later one were reserved, and are not
// live in the kernel, so they are given back (an entry lookups must cross
// must not stay empty in the kernel while the copy has it taken).
func (d *Datapath) startFlusher(b *pendingWrites) {
	b.flusher, b.flushed = make(chan *writeChunk, 4), make(chan struct{})
	go func(in <-chan *writeChunk, free chan<- *writeChunk, done chan<- struct{}) {
		defer close(done)
		var idx []uint32
		for w := range in {
			if b.failure() == nil {
				if err := d.flushBatch(w); err != nil {
					b.failed.CompareAndSwap(nil, &err)
				}
			}
			if b.failure() != nil && len(w.svcs) > 0 {
				idx = idx[:0]
				for _, s := range w.svcs {
					idx = append(idx, s.idx)
				}
				if err := d.table.unreserve(idx...); err != nil {
					d.log.Warn("entries reserved in a failed bulk load left taken", "map", mapServices, "entries", len(idx), "error", err)
				}
			}
			w.reset()
			select {
			case free <- w:
			default:
			}
		}
	}(b.flusher, b.free, b.flushed)
}

// failure returns the load's first write error, nil while there is none.
func (b *pendingWrites) failure() error {
	if err := b.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// handOff passes the chunk filled since the last hand-off to the flusher
// and continues in a written one (a new one if none is back yet).
func (b *pendingWrites) handOff() {
	b.flusher <- b.cur
	select {
	case b.cur = <-b.free:
	default:
		b.cur = newWriteChunk(bulkChunk)
	}
}

// drain hands off the rest, waits until the flusher has written
// everything, and returns the load's first write error. The flusher is
// gone afterwards; startFlusher starts another, unless the load failed.
func (b *pendingWrites) drain() error {
	if b.flusher == nil {
		return b.failure() // drained after the load failed
	}
	b.handOff()
	close(b.flusher)
	<-b.flushed
	b.flusher, b.flushed = nil, nil
	return b.failure()
}

// newState returns a svcState from the slab.
func (b *pendingWrites) newState() *svcState {
	if len(b.states) == 0 {
		b.states = make([]svcState, max(b.stateBlock, 1))
	}
	st := &b.states[0]
	b.states = b.states[1:]
	return st
}

// idSlabSize is how many slot IDs one allocation of a load's slab holds.
const idSlabSize = 16384

// slab returns room for n slot IDs, carved from the load's slab.
func (b *pendingWrites) slab(n int) []uint32 {
	if len(b.idSlab) < n {
		b.idSlab = make([]uint32, max(n, idSlabSize))
	}
	s := b.idSlab[:n:n]
	b.idSlab = b.idSlab[n:]
	return s
}

// update writes one entry. Keys and values go to the kernel as pointers to
// the Go mirrors (checkLayout verified their sizes at Open): marshalling by
// value goes through reflection, and a type's first marshal costs tens of
// microseconds, which a single change would otherwise pay.
func update[K, V any](m *ebpf.Map, k *K, v *V) error {
	return m.Update(unsafe.Pointer(k), unsafe.Pointer(v), ebpf.UpdateAny)
}

// remove deletes one entry, the key passed as update does.
func remove[K any](m *ebpf.Map, k *K) error { return m.Delete(unsafe.Pointer(k)) }

func (d *Datapath) writeNode(id uint32, v nodeValue) error {
	if b := d.batch; b != nil {
		w := b.cur
		w.nodeIDs, w.nodeVals = append(w.nodeIDs, id), append(w.nodeVals, v)
		return nil
	}
	return update(d.nodes, &id, &v)
}

func (d *Datapath) writeBackend(id uint32, v backendValue) error {
	if b := d.batch; b != nil {
		w := b.cur
		w.backendIDs, w.backendVal = append(w.backendIDs, id), append(w.backendVal, v)
		return nil
	}
	return update(d.backends, &id, &v)
}

func (d *Datapath) writeSlots(k slotKey, v *slotValue) error {
	if b := d.batch; b != nil {
		w := b.cur
		w.slotKeys, w.slotVals = append(w.slotKeys, k), append(w.slotVals, *v)
		return nil
	}
	key := k // escapes, as in writeService
	return update(d.slots, &key, v)
}

func (d *Datapath) writeAffinity(k svcKey, seconds uint32) error {
	if b := d.batch; b != nil {
		w := b.cur
		w.affKeys, w.affVals = append(w.affKeys, k), append(w.affVals, seconds)
		return nil
	}
	return update(d.coll.Maps[mapSvcAffinity], &k, &seconds)
}

// writeService writes a service entry into the cm_services entry reserved
// for it; in a bulk load, once the load's earlier writes are in the maps.
func (d *Datapath) writeService(w svcWrite) error {
	if b := d.batch; b != nil {
		b.cur.svcs = append(b.cur.svcs, w)
		return nil
	}
	return d.table.commit([]svcWrite{w})
}

// batchWrite writes keys and values with one BATCH_UPDATE where the kernel
// has it, entry by entry from where a batch stopped otherwise.
func batchWrite[K, V any](m *ebpf.Map, name string, keys []K, vals []V) error {
	_, err := batchUpdate(m, name, keys, vals)
	return err
}

// batchUpdate is batchWrite returning how many entries, in order, were
// written: all of them, or on error those before the one that failed.
func batchUpdate[K, V any](m *ebpf.Map, name string, keys []K, vals []V) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := m.BatchUpdate(keys, vals, &ebpf.BatchOptions{})
	if err == nil {
		return len(keys), nil
	}
	for i := n; i < len(keys); i++ {
		if err := update(m, &keys[i], &vals[i]); err != nil {
			return i, fmt.Errorf("map %s: %w", name, err)
		}
	}
	return len(keys), nil
}

// flushBatch writes the queued writes in their order.
func (d *Datapath) flushBatch(b *writeChunk) error {
	if err := batchWrite(d.nodes, mapNodes, b.nodeIDs, b.nodeVals); err != nil {
		return err
	}
	if err := batchWrite(d.backends, mapBackends, b.backendIDs, b.backendVal); err != nil {
		return err
	}
	if err := batchWrite(d.slots, mapSlots, b.slotKeys, b.slotVals); err != nil {
		return err
	}
	if err := batchWrite(d.coll.Maps[mapSvcAffinity], mapSvcAffinity, b.affKeys, b.affVals); err != nil {
		return err
	}
	return d.table.commit(b.svcs)
}

// UpsertServices programs many services at once, as an agent does after a
// restart or a resync: what UpsertService does for each, with the map
// writes gathered into batch calls (see pendingWrites), made by a flusher
// goroutine chunk by chunk while the bookkeeping of the next chunk goes on
// (see bulkChunk). A service
// that cannot be programmed (invalid, no room) is refused alone, by name, in
// the returned errors (nil when every service went in). If the kernel
// refuses a write even entry by entry (it should not: room is checked
// first), the load stops there: nothing after is written, the entries it
// reserved and did not write are given back, and every service of the
// load is reported failed with that first error; the datapath should be
// reopened, which rebuilds its bookkeeping from the maps.
func (d *Datapath) UpsertServices(ctx context.Context, svcs []loadbalancer.Service) map[loadbalancer.Frontend]error {
	errs := map[loadbalancer.Frontend]error{}
	if err := ctx.Err(); err != nil {
		for _, s := range svcs {
			errs[s.Frontend] = err
		}
		return errs
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		for _, s := range svcs {
			errs[s.Frontend] = ErrClosed
		}
		return errs
	}
	// The service state slab is sized once; so is the service map when
	// the load starts from empty maps (after a restart): growing and
	// rehashing it step by step cost more than filling it.
	b := d.newPendingWrites(len(svcs))
	if len(d.svcs) == 0 {
		d.svcs = make(map[svcKey]*svcState, len(svcs))
	}
	d.batch = b
	for _, s := range svcs {
		key, err := validate(s)
		if err == nil {
			err = d.upsertLocked(key, s)
		}
		if err != nil {
			errs[s.Frontend] = err
		}
		if len(b.cur.svcs) >= bulkChunk {
			b.handOff()
		}
	}
	d.batch = nil
	d.updateGauges()
	if cause := b.drain(); cause != nil {
		err := fmt.Errorf("bpf: bulk load: %w (reopen the datapath to adopt the maps)", cause)
		d.log.Error("bulk load failed", "services", len(svcs), "error", err)
		for _, s := range svcs {
			if e, refused := errs[s.Frontend]; !refused || errors.Is(e, cause) {
				errs[s.Frontend] = err
			}
		}
		return errs
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}
