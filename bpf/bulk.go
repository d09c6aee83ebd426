package bpf

import (
	"context"
	"fmt"
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
	nodeIDs    []uint32
	nodeVals   []nodeValue
	backendIDs []uint32
	backendVal []backendValue
	slotKeys   []slotKey
	slotVals   []slotValue
	affKeys    []svcKey
	affVals    []uint32
	svcKeys    []svcKey
	svcVals    []svcValue

	// Slabs the bookkeeping of the load's services is carved from: one
	// allocation each instead of two per service.
	states []svcState
	idSlab []uint32

	// sent is how far each queue has been handed to the flusher.
	sent struct{ nodes, backends, slots, aff, svcs int }
	// flusher writes handed-off chunks in order while the load goes on.
	flusher chan *pendingWrites
	flushed chan error
	// err is the first write error of the load: once set, the load fails.
	err error
}

// bulkChunk is how many service entries a bulk load queues before handing
// them to the flusher: Go bookkeeping of the next chunk then overlaps the
// kernel's batch writes of this one.
const bulkChunk = 4096

// startFlusher starts the goroutine writing handed-off chunks. Chunks are
// written whole and in order, each map before the next (flushBatch), so a
// chunk's entries reach the kernel after its slots, backends and nodes and
// after every earlier chunk's: the invariant of pendingWrites holds. It
// touches only the maps; d.mu stays held by the load.
func (d *Datapath) startFlusher(b *pendingWrites) {
	b.flusher, b.flushed = make(chan *pendingWrites, 4), make(chan error, 1)
	go func(in <-chan *pendingWrites, out chan<- error) {
		var err error
		for w := range in {
			if err == nil {
				err = d.flushBatch(w)
			}
		}
		out <- err
	}(b.flusher, b.flushed)
}

// handOff passes what was queued since the last hand-off to the flusher.
// The chunk is a view of the queues: the load only appends past it.
func (b *pendingWrites) handOff() {
	w := &pendingWrites{
		nodeIDs: b.nodeIDs[b.sent.nodes:], nodeVals: b.nodeVals[b.sent.nodes:],
		backendIDs: b.backendIDs[b.sent.backends:], backendVal: b.backendVal[b.sent.backends:],
		slotKeys: b.slotKeys[b.sent.slots:], slotVals: b.slotVals[b.sent.slots:],
		affKeys: b.affKeys[b.sent.aff:], affVals: b.affVals[b.sent.aff:],
		svcKeys: b.svcKeys[b.sent.svcs:], svcVals: b.svcVals[b.sent.svcs:],
	}
	b.sent.nodes, b.sent.backends, b.sent.slots = len(b.nodeIDs), len(b.backendIDs), len(b.slotKeys)
	b.sent.aff, b.sent.svcs = len(b.affKeys), len(b.svcKeys)
	b.flusher <- w
}

// drain hands off the rest, waits until the flusher has written
// everything, and returns the load's first write error. The flusher is
// gone afterwards; startFlusher starts another.
func (b *pendingWrites) drain() error {
	b.handOff()
	close(b.flusher)
	if err := <-b.flushed; err != nil && b.err == nil {
		b.err = err
	}
	b.flusher, b.flushed = nil, nil
	return b.err
}

// newState returns a svcState from the slab (a fresh one once it is used
// up).
func (b *pendingWrites) newState() *svcState {
	if len(b.states) == 0 {
		return &svcState{}
	}
	st := &b.states[0]
	b.states = b.states[1:]
	return st
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
		b.nodeIDs, b.nodeVals = append(b.nodeIDs, id), append(b.nodeVals, v)
		return nil
	}
	return update(d.nodes, &id, &v)
}

func (d *Datapath) writeBackend(id uint32, v backendValue) error {
	if b := d.batch; b != nil {
		b.backendIDs, b.backendVal = append(b.backendIDs, id), append(b.backendVal, v)
		return nil
	}
	return update(d.backends, &id, &v)
}

func (d *Datapath) writeSlots(k slotKey, v *slotValue) error {
	if b := d.batch; b != nil {
		b.slotKeys, b.slotVals = append(b.slotKeys, k), append(b.slotVals, *v)
		return nil
	}
	key := k // escapes, as in writeService
	return update(d.slots, &key, v)
}

func (d *Datapath) writeAffinity(k svcKey, seconds uint32) error {
	if b := d.batch; b != nil {
		b.affKeys, b.affVals = append(b.affKeys, k), append(b.affVals, seconds)
		return nil
	}
	return update(d.coll.Maps[mapSvcAffinity], &k, &seconds)
}

func (d *Datapath) writeService(k svcKey, v svcValue) error {
	if b := d.batch; b != nil {
		b.svcKeys, b.svcVals = append(b.svcKeys, k), append(b.svcVals, v)
		return nil
	}
	// Copies: what update takes escapes to the heap, and a bulk load,
	// which only appends, would pay that allocation per service too.
	key, val := k, v
	return update(d.services, &key, &val)
}

// batchWrite writes keys and values with one BATCH_UPDATE where the kernel
// has it, entry by entry from where a batch stopped otherwise.
func batchWrite[K, V any](m *ebpf.Map, name string, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	n, err := m.BatchUpdate(keys, vals, &ebpf.BatchOptions{})
	if err == nil {
		return nil
	}
	for i := n; i < len(keys); i++ {
		if err := update(m, &keys[i], &vals[i]); err != nil {
			return fmt.Errorf("map %s: %w", name, err)
		}
	}
	return nil
}

// flushBatch writes the queued writes in their order.
func (d *Datapath) flushBatch(b *pendingWrites) error {
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
	return batchWrite(d.services, mapServices, b.svcKeys, b.svcVals)
}

// UpsertServices programs many services at once, as an agent does after a
// restart or a resync: what UpsertService does for each, with the map
// writes gathered into batch calls (see pendingWrites), made by a flusher
// goroutine chunk by chunk while the bookkeeping of the next chunk goes on
// (see bulkChunk). A service
// that cannot be programmed (invalid, no room) is refused alone, by name, in
// the returned errors (nil when every service went in). If the kernel
// refuses a write even entry by entry (it should not: room is checked
// first), the services of the load are reported failed and the datapath
// should be reopened, which rebuilds its bookkeeping from the maps.
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
	// Sized up front: growing these slices was most of a large load's
	// time.
	slots, groups := 0, 0
	for _, s := range svcs {
		n := len(s.Preferred) + len(s.Fallback)
		slots += n
		groups += max(slotGroups(n)-1, 0)
	}
	b := &pendingWrites{
		slotKeys: make([]slotKey, 0, groups), slotVals: make([]slotValue, 0, groups),
		svcKeys: make([]svcKey, 0, len(svcs)), svcVals: make([]svcValue, 0, len(svcs)),
		states: make([]svcState, len(svcs)), idSlab: make([]uint32, slots),
	}
	if len(d.svcs) == 0 {
		// Sized once rather than grown (and rehashed) step by step.
		d.svcs = make(map[svcKey]*svcState, len(svcs))
	}
	d.batch = b
	d.startFlusher(b)
	for _, s := range svcs {
		key, err := validate(s)
		if err == nil {
			err = d.upsertLocked(key, s)
		}
		if err != nil {
			errs[s.Frontend] = err
		}
		if len(b.svcKeys)-b.sent.svcs >= bulkChunk {
			b.handOff()
		}
	}
	d.batch = nil
	d.updateGauges()
	if err := b.drain(); err != nil {
		err = fmt.Errorf("bpf: bulk load: %w (reopen the datapath to adopt the maps)", err)
		d.log.Error("bulk load failed", "services", len(svcs), "error", err)
		for _, s := range svcs {
			if _, refused := errs[s.Frontend]; !refused {
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
