package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/cilium/ebpf"
)

// Migrations convert maps pinned by earlier builds into the current layout,
// so an upgrade adopts the pins instead of failing with ErrIncompatiblePin.
// Each copy is written in full before it replaces the old pin, and the old
// map stays alive, unchanged, for the old programs until attach swaps the
// new ones into the links: a reader sees one or the other, each complete.
// The copy is pinned under a temporary name, then renamed over the old pin
// (see pinInPlace), so the canonical path holds one map or the other at
// every moment: a run stopped midway leaves the old map pinned, and the
// next Open removes the temporary pin and migrates again. (Unpinning the
// old map first, a crash before the new pin left none: the next Open
// started from an empty map.)

// migratingSuffix names the temporary pin of a migrated map (see
// pinInPlace).
const migratingSuffix = "_migrating" // bpffs refuses names with a dot

// loadOldPin returns the map pinned under name if it is in an old layout
// (old tells from the pinned map), nil if there is none or it is current.
// It first removes a temporary pin a migration stopped midway left behind:
// that migration did not replace the pin, so the map pinned under name is
// still the one to migrate from, if any.
func loadOldPin(pinDir, name string, old func(*ebpf.Map) bool) (*ebpf.Map, error) {
	if err := os.Remove(filepath.Join(pinDir, name+migratingSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("map %s: remove the pin of a stopped migration: %w", name, err)
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("map %s: load pin: %w", name, err)
	}
	if !old(m) {
		m.Close()
		return nil, nil // current layout, or one NewCollection will refuse
	}
	return m, nil
}

// replacePin writes keys and vals into a new map of spec and pins it in
// place of the map pinned under name; layout names the new layout in
// errors.
func replacePin[K, V any](pinDir, name string, spec *ebpf.MapSpec, keys []K, vals []V, layout string) error {
	s := spec.Copy()
	s.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("map %s: create %s layout: %w", name, layout, err)
	}
	defer m.Close()
	if err := batchWrite(m, name, keys, vals); err != nil {
		return fmt.Errorf("migrate to %s: %w", layout, err)
	}
	if err := pinInPlace(m, pinDir, name); err != nil {
		return fmt.Errorf("map %s: pin %s layout: %w", name, layout, err)
	}
	return nil
}

// pinInPlace pins m under name in pinDir, replacing the map pinned there:
// pinned under a temporary name, then renamed over the old pin, which
// bpffs does atomically. The path never lacks a pin, so a crash midway
// cannot leave the next Open to create the map empty.
func pinInPlace(m *ebpf.Map, pinDir, name string) error {
	tmp := filepath.Join(pinDir, name+migratingSuffix)
	if err := m.Pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(pinDir, name)); err != nil {
		_ = m.Unpin()
		return fmt.Errorf("replace the old pin: %w", err)
	}
	return nil
}

// migrateSlots converts a cm_slots pinned by a build before slot groups
// (one entry per slot: (set, index) -> backend ID) into groups (see
// slotGroup), group 0 included: migrateServices moves it into the heads.
func migrateSlots(pinDir string, spec *ebpf.MapSpec, log *slog.Logger) error {
	old, err := loadOldPin(pinDir, mapSlots, func(m *ebpf.Map) bool {
		return m.Type() == ebpf.Hash && m.KeySize() == spec.KeySize && m.ValueSize() == 4
	})
	if old == nil || err != nil {
		return err
	}
	defer old.Close()

	groups := map[slotKey]slotValue{}
	var (
		k  slotKey // Group holds the old slot index until regrouped
		id uint32
	)
	it := old.Iterate()
	for it.Next(&k, &id) {
		g := slotKey{Set: k.Set, Group: k.Group / slotGroup}
		v := groups[g]
		v[k.Group%slotGroup] = id
		groups[g] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: read old layout: %w", mapSlots, err)
	}
	keys := make([]slotKey, 0, len(groups))
	vals := make([]slotValue, 0, len(groups))
	for k, v := range groups {
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := replacePin(pinDir, mapSlots, spec, keys, vals, "grouped"); err != nil {
		return err
	}
	log.Info("migrated the slot map to slot groups", "map", mapSlots, "slot_groups", len(groups))
	return nil
}

// migrateServices converts a cm_services pinned by a build before the
// open-addressing table (a hash map keyed by svcKey, its values svcValue, or
// headlessValueSize bytes without the head in builds before slot heads) into the
// table (see svcTable). A value without a head gets it from group 0 of its
// set in the pinned cm_slots (run migrateSlots first); group 0 entries stay
// in cm_slots, for the old programs, until adopt sweeps them as belonging to
// no set.
func migrateServices(pinDir string, spec *ebpf.MapSpec, log *slog.Logger) error {
	old, err := loadOldPin(pinDir, mapServices, func(m *ebpf.Map) bool {
		return m.Type() == ebpf.Hash && m.KeySize() == uint32(unsafe.Sizeof(svcKey{})) &&
			(m.ValueSize() == uint32(headlessValueSize) || m.ValueSize() == uint32(unsafe.Sizeof(svcValue{})))
	})
	if old == nil || err != nil {
		return err
	}
	defer old.Close()
	var slots *ebpf.Map
	headless := old.ValueSize() == uint32(headlessValueSize)
	if headless {
		if slots, err = ebpf.LoadPinnedMap(filepath.Join(pinDir, mapSlots), nil); err != nil {
			return fmt.Errorf("map %s: load pin to migrate %s: %w", mapSlots, mapServices, err)
		}
		defer slots.Close()
	}

	var (
		keys []svcKey
		vals []svcValue
		k    svcKey
		v    svcValue
	)
	// An old value is read into v whole, or into its fields before Head.
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&v)), old.ValueSize())
	it := old.Iterate()
	for it.Next(&k, buf) {
		if headless {
			v.Head = slotValue{}
			if err := slots.Lookup(slotKey{Set: v.Set}, &v.Head); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("map %s: service %s: read slot group 0: %w", mapSlots, k.frontend(), err)
			}
		}
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("map %s: read old layout: %w", mapServices, err)
	}

	s := spec.Copy()
	s.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("map %s: create table layout: %w", mapServices, err)
	}
	defer m.Close()
	t, err := openSvcTable(m)
	if err != nil {
		return err
	}
	defer t.close()
	if err := t.fill(); err != nil {
		return err
	}
	for i := range keys {
		if err := t.put(&keys[i], &vals[i]); err != nil {
			return fmt.Errorf("map %s: migrate service %s: %w", mapServices, keys[i].frontend(), err)
		}
	}
	if err := pinInPlace(m, pinDir, mapServices); err != nil {
		return fmt.Errorf("map %s: pin table layout: %w", mapServices, err)
	}
	log.Info("migrated the service map to an open-addressing table", "map", mapServices, "services", len(keys), "headless", headless)
	return nil
}
