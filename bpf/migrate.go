package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// migrateSlots converts a cm_slots pinned by a build before slot groups
// (one entry per slot: (set, index) -> backend ID) into the grouped layout
// (see slotGroup), so an upgrade adopts the pins instead of failing with
// ErrIncompatiblePin.
//
// The grouped copy is written in full before it replaces the old pin, and
// the old map stays alive, unchanged, for the old programs until attach
// swaps the new ones into the links: a reader sees one or the other, each
// complete. A crash between unpinning the old map and pinning the new one
// leaves no cm_slots: the next Open creates it empty, and adopt reports the
// services' slots missing until the agent re-upserts them.
func migrateSlots(pinDir string, spec *ebpf.MapSpec, log *slog.Logger) error {
	pin := filepath.Join(pinDir, mapSlots)
	old, err := ebpf.LoadPinnedMap(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("map %s: load pin: %w", mapSlots, err)
	}
	defer old.Close()
	if old.Type() != ebpf.Hash || old.KeySize() != spec.KeySize || old.ValueSize() != 4 {
		return nil // current layout, or one NewCollection will refuse
	}

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

	s := spec.Copy()
	s.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("map %s: create grouped layout: %w", mapSlots, err)
	}
	defer m.Close()
	keys := make([]slotKey, 0, len(groups))
	vals := make([]slotValue, 0, len(groups))
	for k, v := range groups {
		keys, vals = append(keys, k), append(vals, v)
	}
	if err := batchWrite(m, mapSlots, keys, vals); err != nil {
		return fmt.Errorf("migrate to slot groups: %w", err)
	}
	if err := old.Unpin(); err != nil {
		return fmt.Errorf("map %s: unpin old layout: %w", mapSlots, err)
	}
	if err := m.Pin(pin); err != nil {
		return fmt.Errorf("map %s: pin grouped layout: %w", mapSlots, err)
	}
	log.Info("migrated the slot map to slot groups", "map", mapSlots, "slot_groups", len(groups))
	return nil
}
