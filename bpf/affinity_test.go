package bpf

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestSessionAffinity: with sessionAffinity ClientIP, every connect of a
// client (a pod's network namespace) reaches the backend it was first
// given, over TCP and UDP, while another client may get another; the
// backend's node going down moves the client to another backend, where it
// stays; after the timeout without connects a client is picked afresh.
func TestSessionAffinity(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 4)
	tp.serveEcho(t)
	other := addClientNS(tp, "o", 7)
	dp := openTest(t, testConfig(cg, pin))
	ctx := context.Background()
	vip := netip.MustParseAddrPort("10.96.1.1:80")
	nodes := map[string]loadbalancer.NodeRef{}
	var backends []loadbalancer.Backend
	for i, name := range []string{"be1", "be2", "be3", "be4"} {
		n := loadbalancer.NodeRef{ClusterID: uint32(1 + i%2), Name: "node-" + name}
		nodes[name] = n
		backends = append(backends, loadbalancer.Backend{Addr: tp.v4[name], Node: n})
	}
	program := func(proto loadbalancer.Protocol, timeout time.Duration) {
		t.Helper()
		if err := dp.UpsertService(ctx, loadbalancer.Service{Name: "ns/sticky", Frontend: loadbalancer.Frontend{Addr: vip, Protocol: proto},
			Preferred: backends, AffinityTimeout: timeout}); err != nil {
			t.Fatal(err)
		}
	}
	program(loadbalancer.TCP, time.Hour)
	program(loadbalancer.UDP, time.Hour)

	// sticky returns the one backend a client reached in n connects, or
	// fails when it reached several.
	sticky := func(ns, mode string, n int) string {
		t.Helper()
		res := runClient(t, ns, cg, clientSpec{Mode: mode, VIP: vip, Count: n})
		if res.NumErrors != 0 {
			t.Fatalf("%s from %s: %v", mode, ns, res.Errors)
		}
		got := slices.Sorted(maps.Keys(res.Backends))
		if len(got) != 1 {
			t.Fatalf("%s from %s: %d connects reached %v, want one backend", mode, ns, n, res.Backends)
		}
		return got[0]
	}
	first := sticky(tp.clientNS, "tcp", 40)
	if again := sticky(tp.clientNS, "tcp", 40); again != first {
		t.Fatalf("second run reached %s, first %s", again, first)
	}
	sticky(tp.clientNS, "udp", 20)
	// Another client is a separate session (it may land on the same
	// backend by chance; it must still stick).
	sticky(other, "tcp", 40)

	// The node of the backend goes down: the client moves, and sticks.
	if err := dp.SetNodeHealth(ctx, nodes[first], false); err != nil {
		t.Fatal(err)
	}
	moved := sticky(tp.clientNS, "tcp", 40)
	if moved == first {
		t.Fatalf("still on %s after its node went down", first)
	}
	if err := dp.SetNodeHealth(ctx, nodes[first], true); err != nil {
		t.Fatal(err)
	}
	if back := sticky(tp.clientNS, "tcp", 20); back != moved {
		t.Fatalf("node back up: client moved again to %s (was %s)", back, moved)
	}

	// Without affinity the client spreads again.
	program(loadbalancer.TCP, 0)
	res := runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: vip, Count: 100})
	if res.NumErrors != 0 || len(res.Backends) < 2 {
		t.Fatalf("affinity off: %v (%v), want several backends", res.Backends, res.Errors)
	}

	// With a one-second timeout, a client idle for longer is picked afresh:
	// over eight idle gaps it reaches more than one backend (all eight
	// picks landing on one of four backends has probability 4^-7).
	program(loadbalancer.TCP, time.Second)
	seen := map[string]bool{}
	for i := 0; i < 8 && len(seen) < 2; i++ {
		seen[sticky(tp.clientNS, "tcp", 5)] = true
		time.Sleep(1100 * time.Millisecond)
	}
	if len(seen) < 2 {
		t.Fatalf("after idle gaps past the timeout the client always reached %v", seen)
	}
}
