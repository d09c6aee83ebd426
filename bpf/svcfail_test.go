package bpf

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// errRefused stands for a kernel refusing a write of cm_services.
var errRefused = errors.New("injected: kernel refused the write")

// newKernelTable returns a svcTable over a real BPF array of size entries,
// filled, and the map. It skips where maps cannot be created (no root).
func newKernelTable(t *testing.T, size uint32) (*svcTable, *ebpf.Map) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: mapServices, Type: ebpf.Array, KeySize: 4, ValueSize: svcEntryBytes, MaxEntries: size})
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("create a BPF map: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	tab, err := openSvcTable(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := tab.fill(); err != nil {
		t.Fatal(err)
	}
	return tab, m
}

// refuseWrite makes the kernel refuse the call-th of the table's next
// writes (from 1) after it took the first applied entries: a batch update
// stopped there, for real in the map. The other writes, and that one if it
// has at most applied entries, go through.
func refuseWrite(tab *svcTable, call, applied int) (restore func()) {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	real := tab.write
	calls := 0 // tab.mu is held around write
	tab.write = func(idx []uint32, e []svcEntry) (int, error) {
		calls++
		if calls != call || len(idx) <= applied {
			return real(idx, e)
		}
		if _, err := real(idx[:applied], e[:applied]); err != nil {
			return 0, err
		}
		return applied, errRefused
	}
	return func() {
		tab.mu.Lock()
		defer tab.mu.Unlock()
		tab.write = real
	}
}

// checkKernel fails unless the table's copy is what m holds: equal
// entries, but for one reserved in the copy, which the kernel has not live
// (reserving writes nothing); and unless the dead list holds exactly the
// entries dead in the copy, so each is freed once, after a grace period.
func checkKernel(t *testing.T, tab *svcTable, m *ebpf.Map) {
	t.Helper()
	_, kernel, err := readAll[uint32, svcEntry](m)
	if err != nil {
		t.Fatal(err)
	}
	tab.mu.Lock()
	defer tab.mu.Unlock()
	for i, k := range kernel {
		c := tab.e[i]
		if c.State == svcReserved && k.State != svcLive || c == k {
			continue
		}
		t.Errorf("entry %d: kernel has state %d key %s set %d, the copy state %d key %s set %d",
			i, k.State, k.Key.frontend(), k.Value.Set, c.State, c.Key.frontend(), c.Value.Set)
	}
	listed := map[uint32]bool{}
	for _, d := range tab.dead {
		if listed[d.idx] || tab.e[d.idx].State != svcDead {
			t.Errorf("dead list: entry %d listed twice or not dead (state %d)", d.idx, tab.e[d.idx].State)
		}
		listed[d.idx] = true
	}
	for i, e := range tab.e {
		if e.State == svcDead && !listed[uint32(i)] {
			t.Errorf("entry %d dead but not listed to be freed", i)
		}
	}
}

// unreachable returns the live entries of kernel (a table's entries) that
// a lookup of their key does not reach: an empty entry lies between their
// home and them.
func unreachable(kernel []svcEntry) []uint32 {
	mask := uint32(len(kernel) - 1)
	var out []uint32
	for i, e := range kernel {
		if e.State != svcLive {
			continue
		}
		h := svcHash(&e.Key)
		for j := range uint32(svcProbes) {
			idx := (h + j) & mask
			if idx == uint32(i) {
				break
			}
			if kernel[idx].State == svcEmpty {
				out = append(out, uint32(i))
				break
			}
		}
	}
	return out
}

// TestSvcTableWriteRefused makes the kernel refuse each operation's write
// after 0, 1, … of its entries, and checks that the copy then holds what
// the real map does, that the error names the service, and that the table
// goes on: what a failed commit reserved is given back, dead entries are
// freed, and the copy still equals the map.
func TestSvcTableWriteRefused(t *testing.T) {
	const size, home = 2 * svcProbes, 2*svcProbes - 3 // the window wraps
	keys := collidingKeys(t, size, home, 6)
	// Before each operation: keys 0, 2, 3 live at home, +2, +3; key 1
	// replaced (+1 dead, its new entry at +4) then removed (+4 dead, and
	// +5 empty, so release turns +4 empty too).
	setup := func(t *testing.T) (*svcTable, *ebpf.Map) {
		tab, m := newKernelTable(t, size)
		putKeys(t, tab, keys[:4])
		if err := tab.put(&keys[1], &svcValue{Set: 10}); err != nil {
			t.Fatal(err)
		}
		if _, err := tab.remove(&keys[1]); err != nil {
			t.Fatal(err)
		}
		return tab, m
	}
	commit := func(tab *svcTable, ks ...svcKey) (string, error) {
		var ws []svcWrite
		for i, k := range ks {
			idx, err := tab.reserve(&k)
			if err != nil {
				return "", err
			}
			ws = append(ws, svcWrite{idx: idx, replaces: true, key: k, val: svcValue{Set: uint32(100 + i)}})
		}
		return "", tab.commit(ws)
	}
	for _, tc := range []struct {
		name string
		// op runs the operation; it returns the service its error must
		// name ("" for none).
		op func(tab *svcTable) (string, error)
	}{
		{"commit a new key", func(tab *svcTable) (string, error) {
			_, err := commit(tab, keys[4])
			return keys[4].frontend().String(), err
		}},
		{"commit a replacing key", func(tab *svcTable) (string, error) {
			_, err := commit(tab, keys[0])
			return keys[0].frontend().String(), err
		}},
		{"commit a chunk", func(tab *svcTable) (string, error) { return commit(tab, keys[4], keys[5], keys[0]) }},
		{"remove", func(tab *svcTable) (string, error) {
			_, err := tab.remove(&keys[2])
			return keys[2].frontend().String(), err
		}},
		{"release", func(tab *svcTable) (string, error) { return "", tab.release(tab.killMark()) }},
		{"unreserve", func(tab *svcTable) (string, error) {
			idx, err := tab.reserve(&keys[4])
			if err != nil {
				return "", err
			}
			return "", tab.unreserve(idx)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for applied := 0; ; applied++ {
				tab, m := setup(t)
				restore := refuseWrite(tab, 1, applied)
				name, err := tc.op(tab)
				restore()
				if err == nil {
					if applied == 0 {
						t.Fatal("no write to refuse")
					}
					checkKernel(t, tab, m)
					t.Logf("refused after 0 to %d of %d entries", applied-1, applied)
					break
				}
				if !errors.Is(err, errRefused) || !strings.Contains(err.Error(), name) {
					t.Fatalf("refused after %d entries: error %q, want %v naming %q", applied, err, errRefused, name)
				}
				checkKernel(t, tab, m)
				// The table goes on: reservations given back, dead
				// entries freed, and the copy still the map.
				var reserved []uint32
				for i, e := range tab.e {
					if e.State == svcReserved {
						reserved = append(reserved, uint32(i))
					}
				}
				if err := tab.unreserve(reserved...); err != nil {
					t.Fatal(err)
				}
				if err := tab.release(tab.killMark()); err != nil {
					t.Fatal(err)
				}
				if n := tab.deadCount(); n != 0 {
					t.Fatalf("refused after %d entries: %d dead entries left after release", applied, n)
				}
				checkKernel(t, tab, m)
				if t.Failed() {
					t.Fatalf("refused after %d entries", applied)
				}
			}
		})
	}
}
