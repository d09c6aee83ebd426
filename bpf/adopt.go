package bpf

import (
	"fmt"

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
	var (
		nid uint32
		nv  nodeValue
	)
	it := d.nodes.Iterate()
	for it.Next(&nid, &nv) {
		n := &nodeState{id: nid, ref: nv.ref(), down: nv.Flags&nodeFlagDown != 0}
		if !d.nodeIDs.mark(nid) {
			return fmt.Errorf("map %s: node ID %d beyond MaxNodes", mapNodes, nid)
		}
		d.nodesByRef[n.ref] = n
		d.nodesByID[nid] = n
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapNodes, err)
	}

	var (
		bid uint32
		bv  backendValue
	)
	it = d.backends.Iterate()
	for it.Next(&bid, &bv) {
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
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapBackends, err)
	}

	slots := make(map[slotKey]slotValue)
	var (
		sk slotKey
		sv slotValue
	)
	it = d.slots.Iterate()
	for it.Next(&sk, &sv) {
		slots[sk] = sv
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapSlots, err)
	}

	var (
		key svcKey
		val svcValue
	)
	it = d.services.Iterate()
	for it.Next(&key, &val) {
		if !d.setIDs.mark(val.Set) {
			return fmt.Errorf("map %s: service %s: slot set %d out of range", mapServices, key.frontend(), val.Set)
		}
		s := &svcState{value: val, slots: make([]uint32, int(val.Preferred)+int(val.Fallback))}
		for i := range s.slots {
			id := slotID(&val, slots, i)
			if id == 0 {
				d.log.Warn("adopt: service slot missing", "service", key.frontend().String(), "slot", i)
				continue
			}
			if be, ok := d.backendsByID[id]; ok {
				be.refs++
				s.slots[i] = id
			} else {
				d.log.Warn("adopt: service slot points at a missing backend", "service", key.frontend().String(), "slot", i, "backend_id", id)
			}
		}
		for g := 1; g < slotGroups(len(s.slots)); g++ {
			delete(slots, slotKey{Set: val.Set, Group: uint32(g)})
		}
		d.svcs[key] = s
		d.slotsUsed += len(s.slots)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: %w", mapServices, err)
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
