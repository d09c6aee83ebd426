package bpf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// Freeing what an update replaced is deferred: a program that read a service
// entry just before the switch may still look up the old set's slots and
// backends. The kernel runs these programs inside RCU read-side sections, so
// once a grace period has passed after the switch no program can hold the old
// entry any more. Updating a map-in-map makes the kernel wait for exactly
// that (synchronize_rcu in maybe_wait_bpf_programs), which is how userspace
// waits for it. A grace period takes milliseconds, so retired sets are batched
// and freed by a background loop, or at once when an update needs their room.

func (d *Datapath) newSyncMap() error {
	inner := &ebpf.MapSpec{Name: "cm_sync_inner", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	var err error
	if d.syncInner, err = ebpf.NewMap(inner); err != nil {
		return fmt.Errorf("bpf: grace-period map: %w", err)
	}
	d.syncOuter, err = ebpf.NewMap(&ebpf.MapSpec{Name: "cm_sync", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: inner})
	if err != nil {
		d.syncInner.Close()
		d.syncOuter, d.syncInner = nil, nil
		return fmt.Errorf("bpf: grace-period map: %w", err)
	}
	return nil
}

// waitReaders returns after an RCU grace period: every program that started
// before the call has finished. Safe without d.mu.
func (d *Datapath) waitReaders() error {
	if err := d.syncOuter.Update(uint32(0), d.syncInner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("wait for running programs: %w", err)
	}
	return nil
}

// retire queues the slot set of a service entry that was just replaced or
// deleted. Called with d.mu held.
func (d *Datapath) retire(s *svcState) {
	d.seq++
	d.retired = append(d.retired, retiredSet{seq: d.seq, set: s.value.Set, slots: s.slots})
}

// reclaimLocked waits for a grace period and frees every retired set and
// dead service entry. Called with d.mu held, when room is needed now or on
// Close.
func (d *Datapath) reclaimLocked() error {
	if len(d.retired) == 0 && d.table.deadCount() == 0 {
		return nil
	}
	mark := d.table.killMark()
	if err := d.waitReaders(); err != nil {
		return err
	}
	if err := d.table.release(mark); err != nil {
		return err
	}
	d.freeRetired(d.seq)
	return nil
}

// freeRetired deletes the slots of the retired sets up to seq, then drops
// their backend references (deleting backends, then nodes, nobody uses).
func (d *Datapath) freeRetired(upTo uint64) {
	n := 0
	for _, r := range d.retired {
		if r.seq > upTo {
			break
		}
		n++
		// Every group of the set goes before any backend it names.
		for g := 1; g < slotGroups(len(r.slots)); g++ {
			if err := remove(d.slots, &slotKey{Set: r.set, Group: uint32(g)}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				d.log.Warn("delete retired slots", "set", r.set, "slot", g*slotGroup, "error", err)
			}
		}
		for _, bid := range r.slots {
			if bid != 0 {
				d.unrefBackend(bid)
			}
		}
		d.slotsUsed -= len(r.slots)
		d.setIDs.release(r.set)
	}
	d.retired = append(d.retired[:0], d.retired[n:]...)
	d.updateGauges()
}

// reclaimLoop frees retired sets and dead service entries every
// ReclaimInterval. It waits for the grace period without d.mu, so updates go
// on meanwhile, and then frees only what was retired before the wait began.
func (d *Datapath) reclaimLoop(ctx context.Context) {
	defer close(d.reclaimDone)
	t := time.NewTicker(d.cfg.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		pending, upTo, dead, mark := len(d.retired), d.seq, 0, uint64(0)
		if !d.closed {
			dead, mark = d.table.deadCount(), d.table.killMark()
		}
		d.mu.Unlock()
		if pending == 0 && dead == 0 {
			continue
		}
		if err := d.waitReaders(); err != nil {
			d.log.Warn("free replaced slot sets", "error", err)
			continue
		}
		d.mu.Lock()
		if !d.closed {
			if err := d.table.release(mark); err != nil {
				d.log.Warn("free replaced service entries", "map", mapServices, "error", err)
			}
			d.freeRetired(upTo)
		}
		d.mu.Unlock()
	}
}
