package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

func testConfig(cg, pinDir string) Config {
	cfg := DefaultConfig()
	cfg.CgroupPath = cg
	cfg.PinDir = pinDir
	cfg.MaxServices = 64
	cfg.MaxBackends = 64
	cfg.MaxSlots = 256
	cfg.MaxNodes = 16
	cfg.MaxRevNAT = 1024
	return cfg
}

func openTest(t *testing.T, cfg Config) *Datapath {
	t.Helper()
	dp, err := Open(context.Background(), cfg)
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel too old: %v", err)
	}
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	t.Cleanup(func() { dp.Remove() })
	return dp
}

var (
	nodeA = loadbalancer.NodeRef{ClusterID: 1, Name: "node-a"}
	nodeB = loadbalancer.NodeRef{ClusterID: 1, Name: "node-b"}
	nodeC = loadbalancer.NodeRef{ClusterID: 2, Name: "node-c"}
	nodeD = loadbalancer.NodeRef{ClusterID: 2, Name: "node-d"}
)

func backendsOf(tp map[string]netip.AddrPort, node loadbalancer.NodeRef, names ...string) []loadbalancer.Backend {
	var out []loadbalancer.Backend
	for _, n := range names {
		out = append(out, loadbalancer.Backend{Addr: tp[n], Node: node})
	}
	return out
}

func keysOf(m map[string]int) []string {
	return slices.Sorted(maps.Keys(m))
}

// TestTraffic drives real connections from a process in the cgroup through
// the programs: TCP, unconnected and connected UDP, IPv4 and IPv6; affinity;
// node health, including for backends programmed after the node went down.
func TestTraffic(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 4)
	tp.serveEcho(t)
	dp := openTest(t, testConfig(cg, pin))
	ctx := context.Background()

	vip4 := netip.MustParseAddrPort("10.96.0.10:80")
	vip6 := netip.MustParseAddrPort("[fd00:96::10]:80")
	program := func(vip netip.AddrPort, proto loadbalancer.Protocol, addrs map[string]netip.AddrPort) {
		t.Helper()
		svc := loadbalancer.Service{
			Name:      "default/echo",
			Frontend:  loadbalancer.Frontend{Addr: vip, Protocol: proto},
			Preferred: append(backendsOf(addrs, nodeA, "be1"), backendsOf(addrs, nodeB, "be2")...),
			Fallback:  backendsOf(addrs, nodeC, "be3"),
		}
		if err := dp.UpsertService(ctx, svc); err != nil {
			t.Fatalf("upsert %s: %v", svc.Frontend, err)
		}
	}
	for _, proto := range []loadbalancer.Protocol{loadbalancer.TCP, loadbalancer.UDP} {
		program(vip4, proto, tp.v4)
		program(vip6, proto, tp.v6)
	}

	expect := func(t *testing.T, name string, spec clientSpec, want ...string) {
		t.Helper()
		res := runClient(t, tp.clientNS, cg, spec)
		if res.NumErrors != 0 {
			t.Fatalf("%s: %d errors, first: %v", name, res.NumErrors, res.Errors)
		}
		if got := keysOf(res.Backends); !slices.Equal(got, want) {
			t.Fatalf("%s: reached backends %v (%v), want exactly %v", name, got, res.Backends, want)
		}
		if res.PeerNotVIP != 0 {
			t.Fatalf("%s: %d replies did not come from the VIP", name, res.PeerNotVIP)
		}
		// Uniform picks: with 100 draws over at most 2 backends, fewer than
		// 12 for one of them has a probability below 1e-14.
		for _, w := range want {
			if n := res.Backends[w]; len(want) <= 2 && n < spec.Count*12/100 {
				t.Fatalf("%s: backend %s got %d of %d picks: not uniform (%v)", name, w, n, spec.Count, res.Backends)
			}
		}
	}

	// Both preferred backends are used (each is missed by 100 uniform
	// picks with probability 2^-99), the fallback never.
	for _, c := range []struct {
		name string
		spec clientSpec
	}{
		{"tcp4", clientSpec{Mode: "tcp", VIP: vip4, Count: 100}},
		{"udp4", clientSpec{Mode: "udp", VIP: vip4, Count: 100}},
		{"udpconn4", clientSpec{Mode: "udpconn", VIP: vip4, Count: 100}},
		{"tcp6", clientSpec{Mode: "tcp", VIP: vip6, Count: 100}},
		{"tcp4-mapped-on-ipv6-socket", clientSpec{Mode: "tcp6", VIP: netip.AddrPortFrom(netip.AddrFrom16(vip4.Addr().As16()), vip4.Port()), Count: 100}},
		{"udp6", clientSpec{Mode: "udp", VIP: vip6, Count: 100}},
		{"udpconn6", clientSpec{Mode: "udpconn", VIP: vip6, Count: 100}},
	} {
		t.Run(c.name, func(t *testing.T) { expect(t, c.name, c.spec, "be1", "be2") })
	}

	// Mostly-unhealthy set: 4 of 6 slots on down nodes, so all three random
	// draws miss about 30% of the time and the exact reservoir pass picks.
	nodeE := loadbalancer.NodeRef{ClusterID: 3, Name: "node-e"}
	nodeF := loadbalancer.NodeRef{ClusterID: 3, Name: "node-f"}
	sparse := loadbalancer.Service{
		Frontend: loadbalancer.Frontend{Addr: netip.MustParseAddrPort("10.96.0.11:80"), Protocol: loadbalancer.TCP},
		Preferred: slices.Concat(backendsOf(tp.v4, nodeE, "be3", "be4"), backendsOf(tp.v4, nodeA, "be1"),
			backendsOf(tp.v4, nodeF, "be3", "be4"), backendsOf(tp.v4, nodeB, "be2")),
	}
	if err := dp.SetNodeHealth(ctx, nodeE, false); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetNodeHealth(ctx, nodeF, false); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpsertService(ctx, sparse); err != nil {
		t.Fatal(err)
	}
	expect(t, "mostly unhealthy set", clientSpec{Mode: "tcp", VIP: sparse.Frontend.Addr, Count: 100}, "be1", "be2")
	if err := dp.DeleteService(ctx, sparse.Frontend); err != nil {
		t.Fatal(err)
	}

	tcp := clientSpec{Mode: "tcp", VIP: vip4, Count: 100}
	udp := clientSpec{Mode: "udp", VIP: vip4, Count: 100}
	setHealth := func(n loadbalancer.NodeRef, healthy bool) {
		t.Helper()
		if err := dp.SetNodeHealth(ctx, n, healthy); err != nil {
			t.Fatalf("set health of %s: %v", n, err)
		}
	}

	setHealth(nodeA, false)
	expect(t, "node-a down", tcp, "be2")
	expect(t, "node-a down (udp)", udp, "be2")

	setHealth(nodeB, false)
	expect(t, "all preferred down: fallback", tcp, "be3")
	expect(t, "all preferred down: fallback (udp)", udp, "be3")

	setHealth(nodeA, true)
	expect(t, "node-a back", tcp, "be1")

	// A node marked down before any backend of it exists: its backends are
	// skipped from the moment they are programmed.
	setHealth(nodeD, false)
	if err := dp.UpsertService(ctx, loadbalancer.Service{
		Frontend:  loadbalancer.Frontend{Addr: vip4, Protocol: loadbalancer.TCP},
		Preferred: append(backendsOf(tp.v4, nodeA, "be1"), backendsOf(tp.v4, nodeD, "be4")...),
	}); err != nil {
		t.Fatal(err)
	}
	expect(t, "backend on a down node programmed later", tcp, "be1")

	setHealth(nodeA, false)
	res := runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: vip4, Count: 5})
	if res.NumErrors != 5 || !strings.Contains(res.Errors[0], "operation not permitted") {
		t.Fatalf("no healthy backend: want every connect refused with EPERM, got %+v", res)
	}

	setHealth(nodeD, true)
	expect(t, "node-d back", tcp, "be4")

	// A deleted service is no longer translated: nothing listens on the VIP.
	if err := dp.DeleteService(ctx, loadbalancer.Frontend{Addr: vip4, Protocol: loadbalancer.TCP}); err != nil {
		t.Fatal(err)
	}
	if res := runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: vip4, Count: 1}); res.NumErrors != 1 {
		t.Fatalf("deleted service still reachable: %+v", res)
	}

	var out bytes.Buffer
	cmd := NewDebugCommand()
	cmd.SetArgs([]string{"services", "--bpffs", pin})
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("bpf services: %v", err)
	}
	for _, want := range []string{"10.96.0.10:80/UDP", "[fd00:96::10]:80/TCP", "10.77.0.12:8080", "node-b", "DOWN", "nodes down: 1/node-a", "fallback"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bpf services output lacks %q:\n%s", want, out.String())
		}
	}
	t.Logf("bpf services:\n%s", out.String())

	out.Reset()
	cmd = NewDebugCommand(WithPinDir(pin))
	cmd.SetArgs([]string{"services", "-o", "json"})
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("bpf services -o json: %v", err)
	}
	var dump Dump
	if err := json.Unmarshal(out.Bytes(), &dump); err != nil {
		t.Fatalf("bpf services -o json: %v\n%s", err, out.String())
	}
	if len(dump.Services) != 3 || len(dump.Services[0].Preferred) != 2 || dump.Services[0].Preferred[0].Healthy {
		t.Fatalf("bpf services -o json: unexpected %+v", dump)
	}
}

// checkMaps checks the invariants a reader relies on and returns the
// number of entries per map: every active slot points at a programmed
// backend, no slot outside an active set, no unreferenced backend.
// liveServices returns the live entries of a pinned or open cm_services.
// It fails t if an entry is not the one lookups of its key find (a second
// live entry of a key, left by an update) or if any entry is neither empty,
// live nor free once retired entries were freed.
func liveServices(t testing.TB, m *ebpf.Map) ([]svcKey, []svcValue) {
	t.Helper()
	_, entries, err := readAll[uint32, svcEntry](m)
	if err != nil {
		t.Fatal(err)
	}
	tab := newSvcTable(entries)
	keys, vals, err := tab.adopt()
	if err != nil {
		t.Fatal(err)
	}
	if n := tab.deadCount(); n != 0 {
		t.Fatalf("%s: %d entries dead, reserved or shadowed by another of their key", mapServices, n)
	}
	return keys, vals
}

func checkMaps(t testing.TB, dp *Datapath) map[string]int {
	t.Helper()
	// Free retired sets first: the counts below are of active ones.
	dp.mu.Lock()
	err := dp.reclaimLocked()
	dp.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	count := func(m *ebpf.Map, k, v any) int {
		n := 0
		it := m.Iterate()
		for it.Next(k, v) {
			n++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	d, err := ReadDump(dp.cfg.PinDir)
	if err != nil {
		t.Fatal(err)
	}
	used := map[uint32]bool{}
	slots := 0
	for _, s := range d.Services {
		for _, b := range append(slices.Clone(s.Preferred), s.Fallback...) {
			if b.Missing {
				t.Fatalf("service %s: slot points at missing backend %d", s.Frontend, b.ID)
			}
			used[b.ID] = true
			slots++
		}
	}
	var (
		sk slotKey
		sv slotValue
		u  uint32
		bv backendValue
		nv nodeValue
	)
	// Slots, not groups: every non-zero ID in cm_slots and in the heads
	// of the service entries.
	inMap := 0
	it := dp.slots.Iterate()
	for it.Next(&sk, &sv) {
		if sk.Group == 0 {
			t.Fatalf("cm_slots holds group 0 of set %d: it belongs in the service entry", sk.Set)
		}
		for _, id := range sv {
			if id != 0 {
				inMap++
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	keys, vals := liveServices(t, dp.coll.Maps[mapServices])
	for _, svv := range vals {
		for _, id := range svv.Head {
			if id != 0 {
				inMap++
			}
		}
	}
	if len(keys) != len(dp.svcs) {
		t.Fatalf("%d live entries in %s, %d services programmed", len(keys), mapServices, len(dp.svcs))
	}
	n := map[string]int{
		mapSlots:    inMap,
		mapBackends: count(dp.backends, &u, &bv),
		mapNodes:    count(dp.nodes, &u, &nv),
		mapServices: len(d.Services),
	}
	if n[mapSlots] != slots {
		t.Fatalf("%d slots in the map, %d in active sets", n[mapSlots], slots)
	}
	if n[mapBackends] != len(used) {
		t.Fatalf("%d backends in the map, %d referenced", n[mapBackends], len(used))
	}
	return n
}

// TestAdoptAndFull programs, closes, reopens (adopting the pins), checks the
// bookkeeping survived, and fills each map to its limit.
func TestAdoptAndFull(t *testing.T) {
	_, pin, cg := newLab(t)
	cfg := testConfig(cg, pin)
	cfg.MaxServices = 4
	cfg.MaxBackends = 6
	cfg.MaxSlots = 12
	cfg.MaxNodes = 3
	ctx := context.Background()

	be := func(i int, node loadbalancer.NodeRef) loadbalancer.Backend {
		return loadbalancer.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 80), Node: node}
	}
	fe := func(i int) loadbalancer.Frontend {
		return loadbalancer.Frontend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, 0, byte(i)}), 80), Protocol: loadbalancer.TCP}
	}
	notBPF := cfg
	notBPF.PinDir = t.TempDir()
	if _, err := Open(ctx, notBPF); !errors.Is(err, ErrNotBPFFS) {
		t.Fatalf("pin dir on a plain filesystem: want ErrNotBPFFS, got %v", err)
	}

	dp, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Two services sharing backend 1.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dp.UpsertService(ctx, loadbalancer.Service{Frontend: fe(1), Preferred: []loadbalancer.Backend{be(1, nodeA), be(2, nodeA)}, Fallback: []loadbalancer.Backend{be(3, nodeB)}}))
	must(dp.UpsertService(ctx, loadbalancer.Service{Frontend: fe(2), Preferred: []loadbalancer.Backend{be(1, nodeA)}}))
	must(dp.SetNodeHealth(ctx, nodeC, false))
	if got := checkMaps(t, dp); got[mapBackends] != 3 || got[mapNodes] != 3 || got[mapSlots] != 4 {
		t.Fatalf("after programming: %v", got)
	}
	must(dp.Close())

	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	dp = openTest(t, cfg)
	cfg.Registerer = nil
	if got := len(dp.Frontends()); got != 2 {
		t.Fatalf("adopted %d frontends, want 2", got)
	}
	if n := dp.nodesByRef[nodeC]; n == nil || !n.down {
		t.Fatalf("node-c down flag not adopted: %+v", n)
	}
	// The agent's resync after a restart: re-upserting the same service
	// writes nothing (the revision stays).
	rev := dp.svcs[frontendKey(fe(2))].value.Rev
	must(dp.UpsertService(ctx, loadbalancer.Service{Frontend: fe(2), Preferred: []loadbalancer.Backend{be(1, nodeA)}}))
	if got := dp.svcs[frontendKey(fe(2))].value.Rev; got != rev {
		t.Fatalf("unchanged re-upsert rewrote the service: rev %d -> %d", rev, got)
	}
	// Shrink service 1 to backend 1: backends 2 and 3 and node-b go.
	must(dp.UpsertService(ctx, loadbalancer.Service{Frontend: fe(1), Preferred: []loadbalancer.Backend{be(1, nodeA)}}))
	if got := checkMaps(t, dp); got[mapBackends] != 1 || got[mapNodes] != 2 || got[mapSlots] != 2 {
		t.Fatalf("after shrink: %v", got)
	}
	must(dp.DeleteService(ctx, fe(2)))
	if got := checkMaps(t, dp); got[mapBackends] != 1 || got[mapSlots] != 1 {
		t.Fatalf("after delete of a sharing service: %v", got)
	}

	// Full maps: the refused update changes nothing.
	for _, c := range []struct {
		name string
		svc  loadbalancer.Service
	}{
		{"slots", loadbalancer.Service{Frontend: fe(3), Preferred: slices.Repeat([]loadbalancer.Backend{be(1, nodeA)}, 12)}},
		{"backends", loadbalancer.Service{Frontend: fe(3), Preferred: []loadbalancer.Backend{be(1, nodeA), be(2, nodeA), be(3, nodeA), be(4, nodeA), be(5, nodeA), be(6, nodeA), be(7, nodeA)}}},
		{"nodes", loadbalancer.Service{Frontend: fe(3), Preferred: []loadbalancer.Backend{be(2, nodeB), be(3, nodeD)}}},
	} {
		before := checkMaps(t, dp)
		err := dp.UpsertService(ctx, c.svc)
		if !errors.Is(err, ErrMapFull) || !strings.Contains(err.Error(), c.name) {
			t.Fatalf("%s: want ErrMapFull naming the map, got %v", c.name, err)
		}
		if after := checkMaps(t, dp); !maps.Equal(before, after) {
			t.Fatalf("%s: refused update changed the maps: %v -> %v", c.name, before, after)
		}
	}
	if got := gauge(t, reg, "clustermesh_bpf_map_full_total", "cm_slots"); got != 1 {
		t.Fatalf("clustermesh_bpf_map_full_total{map=cm_slots} = %v, want 1", got)
	}
	if got := gauge(t, reg, "clustermesh_bpf_backends", ""); got != 1 {
		t.Fatalf("clustermesh_bpf_backends = %v, want 1", got)
	}
	for i := 2; i <= 4; i++ {
		must(dp.UpsertService(ctx, loadbalancer.Service{Frontend: fe(i), Preferred: []loadbalancer.Backend{be(1, nodeA)}}))
	}
	if err := dp.UpsertService(ctx, loadbalancer.Service{Name: "ns/fifth", Frontend: fe(5), Preferred: []loadbalancer.Backend{be(1, nodeA)}}); !errors.Is(err, ErrMapFull) ||
		!strings.Contains(err.Error(), "ns/fifth") || !strings.Contains(err.Error(), "4 of 4") {
		t.Fatalf("fifth service: want ErrMapFull naming the service and 4 of 4, got %v", err)
	}
	if got := gauge(t, reg, "clustermesh_bpf_map_capacity", mapServices); got != 4 {
		t.Fatalf("clustermesh_bpf_map_capacity{map=cm_services} = %v, want 4", got)
	}
	// Room returns: the refused service goes in, the others stay.
	must(dp.DeleteService(ctx, fe(4)))
	must(dp.UpsertService(ctx, loadbalancer.Service{Name: "ns/fifth", Frontend: fe(5), Preferred: []loadbalancer.Backend{be(1, nodeA)}}))
	if got := len(dp.Frontends()); got != 4 {
		t.Fatalf("after room returned: %d frontends, want 4", got)
	}

	// Resizing pinned maps is refused clearly.
	dp.Close()
	cfg.MaxServices = 8
	if _, err := Open(ctx, cfg); !errors.Is(err, ErrIncompatiblePin) {
		t.Fatalf("reopen with another size: want ErrIncompatiblePin, got %v", err)
	}
	cfg.MaxServices = 4
	dp = openTest(t, cfg)
	if got := len(dp.Frontends()); got != 4 {
		t.Fatalf("adopted %d frontends, want 4", got)
	}
}

// gauge returns the value of a gauge or counter, of the series whose "map"
// label is label (any series if label is empty).
func gauge(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func TestValidate(t *testing.T) {
	be := func(s string) loadbalancer.Backend {
		return loadbalancer.Backend{Addr: netip.MustParseAddrPort(s), Node: nodeA}
	}
	fe := func(s string, p loadbalancer.Protocol) loadbalancer.Frontend {
		return loadbalancer.Frontend{Addr: netip.MustParseAddrPort(s), Protocol: p}
	}
	for _, c := range []struct {
		name string
		svc  loadbalancer.Service
		ok   bool
	}{
		{"v4", loadbalancer.Service{Frontend: fe("10.0.0.1:80", loadbalancer.TCP), Preferred: []loadbalancer.Backend{be("10.1.0.1:8080")}}, true},
		{"v4-mapped frontend", loadbalancer.Service{Frontend: fe("[::ffff:10.0.0.1]:80", loadbalancer.UDP), Preferred: []loadbalancer.Backend{be("10.1.0.1:8080")}}, true},
		{"v6", loadbalancer.Service{Frontend: fe("[fd00::1]:80", loadbalancer.TCP), Fallback: []loadbalancer.Backend{be("[fd01::1]:8080")}}, true},
		{"no backends", loadbalancer.Service{Frontend: fe("10.0.0.1:80", loadbalancer.TCP)}, true},
		{"mixed families", loadbalancer.Service{Frontend: fe("10.0.0.1:80", loadbalancer.TCP), Preferred: []loadbalancer.Backend{be("[fd01::1]:8080")}}, false},
		{"port 0", loadbalancer.Service{Frontend: fe("10.0.0.1:0", loadbalancer.TCP)}, false},
		{"backend port 0", loadbalancer.Service{Frontend: fe("10.0.0.1:80", loadbalancer.TCP), Preferred: []loadbalancer.Backend{be("10.1.0.1:0")}}, false},
		{"sctp", loadbalancer.Service{Frontend: fe("10.0.0.1:80", 132)}, false},
		{"long node name", loadbalancer.Service{Frontend: fe("10.0.0.1:80", loadbalancer.TCP), Preferred: []loadbalancer.Backend{{Addr: netip.MustParseAddrPort("10.1.0.1:1"), Node: loadbalancer.NodeRef{Name: strings.Repeat("n", 300)}}}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := validate(c.svc)
			if c.ok && err != nil {
				t.Fatalf("want ok, got %v", err)
			}
			if !c.ok && !errors.Is(err, ErrInvalidService) {
				t.Fatalf("want ErrInvalidService, got %v", err)
			}
		})
	}
}

func TestIDAllocator(t *testing.T) {
	a := newIDAllocator(3)
	var got []uint32
	for i := 0; i < 3; i++ {
		id, ok := a.alloc()
		if !ok {
			t.Fatal("allocator full too early")
		}
		got = append(got, id)
	}
	if _, ok := a.alloc(); ok {
		t.Fatal("allocated beyond max")
	}
	a.release(2)
	a.release(1)
	// Cycles on: 1 comes back before 2, both only now.
	if id, _ := a.alloc(); id != 1 {
		t.Fatalf("next id %d, want 1 (first free after the cursor)", id)
	}
	if !slices.Equal(got, []uint32{1, 2, 3}) {
		t.Fatalf("ids %v", got)
	}
}

// TestLayout checks the Go mirrors against the key and value sizes the
// compiled object declares.
func TestLayout(t *testing.T) {
	spec, err := loadSocklb()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name       string
		key, value any
	}{
		{mapServices, uint32(0), svcEntry{}},
		{mapSlots, slotKey{}, slotValue{}},
		{mapBackends, uint32(0), backendValue{}},
		{mapNodes, uint32(0), nodeValue{}},
	} {
		m := spec.Maps[c.name]
		if got := binary.Size(c.key); uint32(got) != m.KeySize {
			t.Errorf("map %s: Go key is %d bytes, C key %d", c.name, got, m.KeySize)
		}
		if got := binary.Size(c.value); uint32(got) != m.ValueSize {
			t.Errorf("map %s: Go value is %d bytes, C value %d", c.name, got, m.ValueSize)
		}
	}
}
