package bpf

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestMigrateSlots pins cm_slots in the layout of builds before slot
// groups (one entry per slot) under services of 1 to 9 backends, and checks
// that Open converts it and adopts every slot.
func TestMigrateSlots(t *testing.T) {
	_, pin, cg := newLab(t)
	cfg := testConfig(cg, pin)
	ctx := context.Background()
	dp := openTest(t, cfg)
	var want int
	for i := 1; i <= 9; i++ {
		svc := loadbalancer.Service{Frontend: loadbalancer.Frontend{Addr: netip.MustParseAddrPort(fmt.Sprintf("10.96.0.%d:80", i)), Protocol: loadbalancer.TCP}}
		for j := 0; j < i; j++ {
			svc.Preferred = append(svc.Preferred, loadbalancer.Backend{Addr: netip.MustParseAddrPort(fmt.Sprintf("10.1.0.%d:8080", j+1)), Node: nodeA})
		}
		if err := dp.UpsertService(ctx, svc); err != nil {
			t.Fatal(err)
		}
		want += i
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	// Rewrite the pinned groups as one entry per slot.
	path := filepath.Join(pin, mapSlots)
	grouped, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: mapSlots, Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: uint32(cfg.MaxSlots)})
	if err != nil {
		t.Fatal(err)
	}
	var (
		k slotKey
		v slotValue
	)
	it := grouped.Iterate()
	for it.Next(&k, &v) {
		for i, id := range v {
			if id != 0 {
				if err := old.Update(slotKey{Set: k.Set, Group: k.Group*slotGroup + uint32(i)}, id, ebpf.UpdateAny); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if err := grouped.Unpin(); err != nil {
		t.Fatal(err)
	}
	grouped.Close()
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	old.Close()

	dp = openTest(t, cfg)
	if got := dp.slots.ValueSize(); got != slotGroup*4 {
		t.Fatalf("cm_slots values are %d bytes after Open, want %d", got, slotGroup*4)
	}
	got := checkMaps(t, dp)
	if got[mapServices] != 9 || got[mapSlots] != want || got[mapBackends] != 9 {
		t.Fatalf("after migration: %v, want 9 services, %d slots, 9 backends", got, want)
	}
	if dp.slotsUsed != want {
		t.Fatalf("bookkeeping counts %d slots, want %d", dp.slotsUsed, want)
	}
}
