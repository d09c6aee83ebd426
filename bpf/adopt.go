package bpf

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// adopt rebuilds the userspace mirror from maps an earlier run left pinned,
// then sweeps what the earlier run had not freed yet (retired sets, or a set
// half written when it crashed): slots of sets no service entry points at
// (and group 0 entries, which a build before slot heads wrote),
// backends no slot uses, nodes neither used nor down. The sweep waits for a
// grace period first and deletes in the same order as the reclaimer (slots,
// then backends, then nodes), so the invariant holds while it runs.
func (d *Datapath) adopt() error {
	nids, nvals, err := readAll[uint32, nodeValue](d.nodes)
	if err != nil {
		return fmt.Errorf("map %s: %w", mapNodes, err)
	}
	for i, nid := range nids {
		nv := &nvals[i]
		n := &nodeState{id: nid, ref: nv.ref(), down: nv.Flags&nodeFlagDown != 0}
		if !d.nodeIDs.mark(nid) {
			return fmt.Errorf("map %s: node ID %d beyond MaxNodes", mapNodes, nid)
		}
		d.nodesByRef[n.ref] = n
		d.nodesByID[nid] = n
	}

	bids, bvals, err := readAll[uint32, backendValue](d.backends)
	if err != nil {
		return fmt.Errorf("map %s: %w", mapBackends, err)
	}
	for i, bid := range bids {
		bv := bvals[i]
		n, ok := d.nodesByID[bv.NodeID]
		if !ok {
			// Cannot happen with our write order; keep the backend usable
			// by recreating a node entry that names the ID.
			ref := loadbalancer.NodeRef{ClusterID: bv.ClusterID, Name: fmt.Sprintf("unknown-node-%d", bv.NodeID)}
			v, _ := newNodeValue(ref, false)
			if err := d.nodes.Update(bv.NodeID, v, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("map %s: recreate node %d: %w", mapNodes, bv.NodeID, err)
			}
			n = &nodeState{id: bv.NodeID, ref: ref}
			d.nodeIDs.mark(bv.NodeID)
			d.nodesByRef[ref] = n
			d.nodesByID[bv.NodeID] = n
		}
		if !d.backendIDs.mark(bid) {
			return fmt.Errorf("map %s: backend ID %d beyond MaxBackends", mapBackends, bid)
		}
		be := &backendState{id: bid, key: backendKey{addr: bv.Addr, port: bv.Port, node: bv.NodeID}, value: bv}
		d.backendsByKey[be.key] = be
		d.backendsByID[bid] = be
		n.refs++
	}

	sks, svs, err := readAll[slotKey, slotValue](d.slots)
	if err != nil {
		return fmt.Errorf("map %s: %w", mapSlots, err)
	}
	slots := make(map[slotKey]slotValue, len(sks))
	for i, sk := range sks {
		slots[sk] = svs[i]
	}

	keys, vals, err := d.table.adopt()
	if err != nil {
		return err
	}
	// One state slab and a map sized once, as in a bulk load.
	states := make([]svcState, len(keys))
	d.svcs = make(map[svcKey]*svcState, len(keys))
	for i, key := range keys {
		val := &vals[i]
		if !d.setIDs.mark(val.Set) {
			return fmt.Errorf("map %s: service %s: slot set %d out of range", mapServices, key.frontend(), val.Set)
		}
		ids := d.ids[:0]
		for j := range int(val.Preferred) + int(val.Fallback) {
			id := slotID(val, slots, j)
			if id == 0 {
				d.log.Warn("adopt: service slot missing", "service", key.frontend().String(), "slot", j)
			} else if be, ok := d.backendsByID[id]; ok {
				be.refs++
			} else {
				d.log.Warn("adopt: service slot points at a missing backend", "service", key.frontend().String(), "slot", j, "backend_id", id)
				id = 0
			}
			ids = append(ids, id)
		}
		d.ids = ids
		for g := 1; g < slotGroups(len(ids)); g++ {
			delete(slots, slotKey{Set: val.Set, Group: uint32(g)})
		}
		s := &states[i]
		s.value = *val
		// The state's head must match its slots (see keepSlots): a slot
		// found missing reads 0 in both.
		copy(s.value.Head[:], ids)
		d.keepSlots(s, ids)
		d.svcs[key] = s
		d.slotsUsed += len(ids)
	}

	// What is left in slots belongs to no service entry.
	if len(slots) > 0 {
		if err := d.waitReaders(); err != nil {
			return err
		}
	}
	for k := range slots {
		if err := remove(d.slots, &k); err != nil {
			return fmt.Errorf("map %s: delete stale slots %d/%d: %w", mapSlots, k.Set, k.Group*slotGroup, err)
		}
	}
	for id, be := range d.backendsByID {
		if be.refs == 0 {
			be.refs = 1
			d.unrefBackend(id)
		}
	}
	for _, n := range d.nodesByID {
		d.maybeFreeNode(n)
	}
	if len(slots) > 0 {
		d.log.Info("adopt: freed slot sets the previous run had retired", "slot_groups", len(slots))
	}
	return nil
}

// readBatch is how many entries readAll asks the kernel for per call.
const readBatch = 4096

// readAll returns every entry of m, read with BPF_MAP_LOOKUP_BATCH (a few
// system calls for the whole map, the keys and values copied as memory),
// or entry by entry where the kernel has no batch lookup. Reading 100,000
// services entry by entry took two system calls and two reflective decodes
// each, most of an agent restart's time.
func readAll[K, V any](m *ebpf.Map) ([]K, []V, error) {
	size := readBatch
	if m.Type() == ebpf.Array {
		// Every entry exists: read them all in place.
		size = max(size, int(m.MaxEntries())+readBatch)
	}
	keys, vals := make([]K, size), make([]V, size)
	var (
		cursor ebpf.MapBatchCursor
		n      int
	)
	for {
		got, err := m.BatchLookup(&cursor, keys[n:n+readBatch], vals[n:n+readBatch], nil)
		n += got
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return keys[:n], vals[:n], nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) && n == 0 {
			return iterateAll[K, V](m)
		}
		if err != nil {
			return nil, nil, err
		}
		// Room for one more batch past n (growing only if short).
		keys, vals = slices.Grow(keys[:n], readBatch)[:n+readBatch], slices.Grow(vals[:n], readBatch)[:n+readBatch]
	}
}

// iterateAll is readAll entry by entry.
func iterateAll[K, V any](m *ebpf.Map) ([]K, []V, error) {
	var (
		keys []K
		vals []V
		k    K
		v    V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys, vals = append(keys, k), append(vals, v)
	}
	return keys, vals, it.Err()
}
