package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestUpsertServicesBulk: a bulk load programs what single updates would
// (the same maps, real traffic reaching the right backends), refuses alone
// the services that cannot go in, by name, and is adopted after a restart.
func TestUpsertServicesBulk(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 2)
	tp.serveEcho(t)
	cfg := testConfig(cg, pin)
	cfg.MaxServices = 40
	dp, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var svcs []loadbalancer.Service
	for i := 0; i < 40; i++ {
		name := []string{"be1", "be2"}[i%2]
		svcs = append(svcs, loadbalancer.Service{Name: fmt.Sprintf("ns/s%d", i),
			Frontend:  loadbalancer.Frontend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 3, byte(i)}), 80), Protocol: loadbalancer.TCP},
			Preferred: backendsOf(tp.v4, nodeA, name)})
	}
	// One invalid service and one over capacity are refused alone.
	bad := loadbalancer.Service{Name: "ns/bad", Frontend: loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.3.200:0"), Protocol: loadbalancer.TCP}}
	over := loadbalancer.Service{Name: "ns/over", Frontend: loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.3.201:80"), Protocol: loadbalancer.TCP},
		Preferred: backendsOf(tp.v4, nodeA, "be1")}
	errs := dp.UpsertServices(t.Context(), append(slices.Clone(svcs), bad, over))
	if len(errs) != 2 || errs[bad.Frontend] == nil || errs[over.Frontend] == nil {
		t.Fatalf("bulk load errors %v: want the invalid and the over-capacity service refused", errs)
	}
	t.Logf("refusals: %v", slices.Collect(maps.Values(errs)))
	check := func(when string, dp *Datapath) {
		t.Helper()
		for _, i := range []int{0, 1, 17, 39} {
			res := runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: svcs[i].Frontend.Addr, Count: 5})
			want := []string{"be1", "be2"}[i%2]
			if res.NumErrors != 0 || res.Backends[want] != 5 {
				t.Errorf("%s: service %d reached %v (%v), want %s only", when, i, res.Backends, res.Errors, want)
			}
		}
		if got := checkMaps(t, dp); got[mapServices] != 40 || got[mapBackends] != 2 || got[mapSlots] != 40 {
			t.Errorf("%s: maps hold %v, want 40 services, 2 backends, 40 slots", when, got)
		}
	}
	check("after the bulk load", dp)
	// Replacing every service in bulk (each to the other backend) keeps
	// the invariant and frees the old sets.
	for i := range svcs {
		svcs[i].Preferred = backendsOf(tp.v4, nodeA, []string{"be2", "be1"}[i%2])
	}
	if errs := dp.UpsertServices(t.Context(), svcs); errs != nil {
		t.Fatalf("bulk replace: %v", errs)
	}
	for i := range svcs {
		svcs[i].Preferred = backendsOf(tp.v4, nodeA, []string{"be1", "be2"}[i%2])
	}
	if errs := dp.UpsertServices(t.Context(), svcs); errs != nil {
		t.Fatalf("bulk replace back: %v", errs)
	}
	dp.Close()
	dp2 := openTest(t, cfg)
	check("after a restart", dp2)
}

// TestUpsertServicesBulkChunks loads more services than one flusher chunk
// holds, with 1 to 6 backends each (slot groups full, partial and two), then
// replaces them all in bulk with too few slots for both generations, so the
// load has to drain the flusher and free retired sets midway. The maps must
// match the bookkeeping throughout and after a restart.
func TestUpsertServicesBulkChunks(t *testing.T) {
	_, pin, cg := newLab(t)
	n := 3*bulkChunk + 5
	svcs := make([]loadbalancer.Service, n)
	slots := 0
	for i := range svcs {
		svcs[i] = loadbalancer.Service{Frontend: loadbalancer.Frontend{Addr: benchVIP(i), Protocol: loadbalancer.TCP}}
		for j := 0; j <= i%6; j++ {
			svcs[i].Preferred = append(svcs[i].Preferred, loadbalancer.Backend{
				Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + (i+j)%32)}), 8080), Node: []loadbalancer.NodeRef{nodeA, nodeB}[j%2]})
		}
		slots += len(svcs[i].Preferred)
	}
	cfg := testConfig(cg, pin)
	cfg.MaxServices, cfg.MaxBackends, cfg.MaxSlots = n, 128, slots+slots/2
	dp := openTest(t, cfg)
	want := func(when string, dp *Datapath) {
		t.Helper()
		if got := checkMaps(t, dp); got[mapServices] != n || got[mapSlots] != slots {
			t.Fatalf("%s: maps hold %v, want %d services and %d slots", when, got, n, slots)
		}
	}
	if errs := dp.UpsertServices(t.Context(), svcs); errs != nil {
		t.Fatalf("bulk load: %v", errs)
	}
	want("after the bulk load", dp)
	for i := range svcs {
		svcs[i].Preferred = slices.Clone(svcs[i].Preferred)
		slices.Reverse(svcs[i].Preferred)
	}
	if errs := dp.UpsertServices(t.Context(), svcs); errs != nil {
		t.Fatalf("bulk replace: %v", errs)
	}
	want("after the bulk replace", dp)
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	want("after a restart", openTest(t, cfg))
}

// TestUpsertServicesBulkRefused makes the kernel refuse the first chunk of
// service entries of a bulk load, after the whole batch or part of it, with
// the flusher going on alone or drained midway: one service, late in the
// load, short of slots until the sets an earlier load's services retire in
// this one are freed. The load must fail whole, with the first error and
// the advice to reopen; give back every entry it reserved and did not
// write, so that no entry committed later lies past one the kernel has
// empty; keep the table's copy equal to the map; and a reopened datapath
// must take the load again.
func TestUpsertServicesBulkRefused(t *testing.T) {
	const wide, wideBackends, bigBackends = 10, 40, 350
	n := 3*bulkChunk + 5
	big := n - 200
	backend := func(a, b, c byte) loadbalancer.Backend {
		return loadbalancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, a, b, c}), 8080), Node: nodeA}
	}
	svcs := make([]loadbalancer.Service, n)
	for i := range svcs {
		svcs[i] = loadbalancer.Service{Frontend: loadbalancer.Frontend{Addr: benchVIP(i), Protocol: loadbalancer.TCP},
			Preferred: []loadbalancer.Backend{backend(1, 0, byte(1+i%32))}}
	}
	for j := range bigBackends {
		svcs[big].Preferred = append(svcs[big].Preferred, backend(2, byte(j>>8), byte(j)))
	}
	slots := n + bigBackends // the big service has one backend more
	for _, tc := range []struct {
		name    string
		midway  bool // an earlier load of wide services, which this one retires
		applied int  // entries of the refused write the kernel took
	}{
		{"flusher alone", false, 0},
		{"flusher alone, batch stopped halfway", false, bulkChunk},
		{"drained midway", true, 0},
		{"drained midway, batch stopped halfway", true, bulkChunk + 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, pin, cg := newLab(t)
			cfg := testConfig(cg, pin)
			cfg.MaxServices, cfg.MaxBackends, cfg.MaxSlots = n, 1024, 2*slots
			if tc.midway {
				// Room for the wide sets, every small service and 100
				// slots more: the big one needs more than that until
				// the wide sets are freed, the services after it not.
				cfg.MaxSlots = wide*wideBackends + n - 1 + 100
			}
			dp := openTest(t, cfg)
			if tc.midway {
				ws := slices.Clone(svcs[:wide])
				for i := range ws {
					ws[i].Preferred = nil
					for j := range wideBackends {
						ws[i].Preferred = append(ws[i].Preferred, backend(3, byte(i), byte(j)))
					}
				}
				if errs := dp.UpsertServices(t.Context(), ws); errs != nil {
					t.Fatalf("load of wide services: %v", errs)
				}
			}
			restore := refuseWrite(dp.table, 1, tc.applied)
			errs := dp.UpsertServices(t.Context(), svcs)
			restore()
			m := dp.coll.Maps[mapServices]
			checkKernel(t, dp.table, m)
			dp.mu.Lock()
			reserved := 0
			for _, e := range dp.table.e {
				if e.State == svcReserved {
					reserved++
				}
			}
			dp.mu.Unlock()
			_, kernel, err := readAll[uint32, svcEntry](m)
			if err != nil {
				t.Fatal(err)
			}
			if lost := unreachable(kernel); reserved != 0 || len(lost) != 0 {
				t.Fatalf("after the failed load: %d entries left reserved, %d live entries past an empty one", reserved, len(lost))
			}
			for _, s := range svcs {
				if err := errs[s.Frontend]; !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "reopen the datapath") {
					t.Fatalf("service %s: error %v, want the load's first error, with the advice to reopen", s.Frontend, err)
				}
			}
			if err := dp.Close(); err != nil {
				t.Fatal(err)
			}
			dp = openTest(t, cfg)
			if errs := dp.UpsertServices(t.Context(), svcs); errs != nil {
				t.Fatalf("load after reopening: %v", errs)
			}
			if got := checkMaps(t, dp); got[mapServices] != n || got[mapSlots] != slots {
				t.Fatalf("after reopening: maps hold %v, want %d services and %d slots", got, n, slots)
			}
		})
	}
}
