package bpf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestMigrate pins cm_services and cm_slots in the layouts of earlier
// builds under services of 1 to 9 backends, and checks that Open converts
// them and adopts every slot: before slot groups (one cm_slots entry per
// slot), before slot heads (groups from 0 in cm_slots, service entries
// without a head) and before the open-addressing table (cm_services a hash
// map of service entries with heads); also after a migration stopped
// between pinning the new map and replacing the old pin. While Open
// migrates, cm_services and cm_slots are never unpinned (watched with
// inotify: no deletion or rename of either), so a crash at any moment
// leaves a map there to adopt; no temporary pin is left.
func TestMigrate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		grouped bool // cm_slots in groups (else one entry per slot)
		heads   bool // service entries with heads, slots from group 1
		stopped bool // a migration left the temporary pins behind
	}{
		{"before slot groups", false, false, false},
		{"before slot heads", true, false, false},
		{"before the service table", true, true, false},
		{"before slot groups, after a migration stopped midway", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
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
			pinOldLayout(t, pin, cfg, tc.grouped, tc.heads)
			if tc.stopped {
				pinStoppedMigration(t, pin)
			}

			removed := watchRemovals(t, pin)
			dp = openTest(t, cfg)
			renamed := false // the copy's temporary pin, seen by the watch
			for _, name := range removed() {
				if name == mapServices || name == mapSlots {
					t.Errorf("Open unpinned %s while migrating it", name)
				}
				renamed = renamed || name == mapServices+migratingSuffix
			}
			if !renamed {
				t.Errorf("no temporary pin of %s renamed in place", mapServices)
			}
			for _, name := range []string{mapServices, mapSlots} {
				if _, err := os.Stat(filepath.Join(pin, name+migratingSuffix)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("temporary pin of %s left after Open: %v", name, err)
				}
			}
			if got := dp.slots.ValueSize(); got != slotGroup*4 {
				t.Fatalf("cm_slots values are %d bytes after Open, want %d", got, slotGroup*4)
			}
			if m := dp.coll.Maps[mapServices]; m.Type() != ebpf.Array || m.ValueSize() != svcEntryBytes {
				t.Fatalf("cm_services is a %s of %d-byte values after Open, want an array of %d", m.Type(), m.ValueSize(), svcEntryBytes)
			}
			got := checkMaps(t, dp)
			if got[mapServices] != 9 || got[mapSlots] != want || got[mapBackends] != 9 {
				t.Fatalf("after migration: %v, want 9 services, %d slots, 9 backends", got, want)
			}
			if dp.slotsUsed != want {
				t.Fatalf("bookkeeping counts %d slots, want %d", dp.slotsUsed, want)
			}
		})
	}
}

// pinStoppedMigration pins what a migration stopped before replacing the
// old pins leaves: copies in the new layouts under the temporary names,
// here empty ones.
func pinStoppedMigration(t *testing.T, pin string) {
	t.Helper()
	spec, err := loadSocklb()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{mapServices, mapSlots} {
		s := spec.Maps[name].Copy()
		s.Pinning, s.MaxEntries = ebpf.PinNone, 256
		m, err := ebpf.NewMap(s)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(pin, name+migratingSuffix)); err != nil {
			t.Fatal(err)
		}
	}
}

// watchRemovals watches dir with inotify; the function it returns stops
// and returns the names deleted from dir or renamed away meanwhile.
func watchRemovals(t *testing.T, dir string) func() []string {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_DELETE|unix.IN_MOVED_FROM); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return func() []string {
		defer unix.Close(fd)
		var names []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				return names
			}
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
					t.Fatal("inotify queue overflowed")
				}
				names = append(names, string(bytes.TrimRight(name, "\x00")))
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// pinOldLayout replaces the pinned cm_services and cm_slots by copies in an
// earlier build's layout: a hash map of service entries, with heads and
// slots from group 1 (heads), or without a head and slots in groups from 0
// (grouped) or one entry per slot.
func pinOldLayout(t *testing.T, pin string, cfg Config, grouped, heads bool) {
	t.Helper()
	svcPath, slotPath := filepath.Join(pin, mapServices), filepath.Join(pin, mapSlots)
	cur, err := ebpf.LoadPinnedMap(svcPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	curSlots, err := ebpf.LoadPinnedMap(slotPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer curSlots.Close()
	groups := map[slotKey]slotValue{}
	var (
		sk slotKey
		sv slotValue
	)
	it := curSlots.Iterate()
	for it.Next(&sk, &sv) {
		groups[sk] = sv
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}

	oldSvcSpec := &ebpf.MapSpec{Name: mapServices, Type: ebpf.Hash, KeySize: 20, ValueSize: uint32(headlessValueSize), MaxEntries: uint32(cfg.MaxServices)}
	if heads {
		oldSvcSpec.ValueSize = uint32(unsafe.Sizeof(svcValue{}))
	}
	oldSvcs, err := ebpf.NewMap(oldSvcSpec)
	if err != nil {
		t.Fatal(err)
	}
	defer oldSvcs.Close()
	oldSlots := &ebpf.MapSpec{Name: mapSlots, Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: uint32(cfg.MaxSlots)}
	if grouped {
		oldSlots.ValueSize = slotGroup * 4
	}
	old, err := ebpf.NewMap(oldSlots)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	keys, vals := liveServices(t, cur)
	for j, k := range keys {
		v := vals[j]
		if err := oldSvcs.Update(k, unsafe.Slice((*byte)(unsafe.Pointer(&v)), oldSvcSpec.ValueSize), ebpf.UpdateAny); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < int(v.Preferred)+int(v.Fallback); i++ {
			if heads && i < slotGroup {
				continue
			}
			id := slotID(&v, groups, i)
			if !grouped {
				if err := old.Update(slotKey{Set: v.Set, Group: uint32(i)}, id, ebpf.UpdateAny); err != nil {
					t.Fatal(err)
				}
				continue
			}
			g := slotKey{Set: v.Set, Group: uint32(i / slotGroup)}
			var gv slotValue
			if err := old.Lookup(g, &gv); err != nil && i%slotGroup != 0 {
				t.Fatal(err)
			}
			gv[i%slotGroup] = id
			if err := old.Update(g, gv, ebpf.UpdateAny); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, m := range []struct {
		cur, old *ebpf.Map
		path     string
	}{{cur, oldSvcs, svcPath}, {curSlots, old, slotPath}} {
		if err := m.cur.Unpin(); err != nil {
			t.Fatal(err)
		}
		if err := m.old.Pin(m.path); err != nil {
			t.Fatal(err)
		}
	}
}
