package bpf

import (
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/podnet"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// TestFlowEvents: translations, refusals for lack of a backend and policy
// denials reach the reader with what they name (service, backend, client
// namespace, identities); over its rate a kind is counted and dropped,
// never sent, and every decision is accounted for.
func TestFlowEvents(t *testing.T) {
	l, pin, cg := newLab(t)
	tp := newTopo(l, 2)
	tp.serveEcho(t)
	dp := openTest(t, testConfig(cg, pin))
	ctx := t.Context()
	vip := netip.MustParseAddrPort("10.96.2.1:80")
	empty := netip.MustParseAddrPort("10.96.2.2:80")
	node := loadbalancer.NodeRef{ClusterID: 2, Name: "c2-n1"}
	for _, s := range []loadbalancer.Service{
		{Name: "ns/web", Frontend: loadbalancer.Frontend{Addr: vip, Protocol: loadbalancer.TCP}, Preferred: backendsOf(tp.v4, node, "be1")},
		{Name: "ns/empty", Frontend: loadbalancer.Frontend{Addr: empty, Protocol: loadbalancer.TCP}},
	} {
		if err := dp.UpsertService(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := podnet.Read(netlab.NetnsPath(tp.clientNS))
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("10.77.0.1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dp.SetPolicyEndpoint(PolicyEndpoint{NetnsCookie: ns.Cookie, Identity: 100, IPv4: client}))
	must(dp.SetIPCache(tp.v4["be2"].Addr(), 300))
	must(dp.SetIdentityPolicy(100, IdentityPolicy{Egress: true, Entries: map[PolicyKey]Verdict{{Dir: DirEgress, Peer: IdentityWorld}: Allow}}))
	must(dp.SetEventRates(map[EventKind]uint32{EventTranslate: 1000, EventNoBackend: 1000, EventPolicyDeny: 1000}))

	er, err := dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan Event, 100)
	go func() {
		defer close(events)
		for {
			ev, err := er.Read()
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	defer func() {
		er.Close()
		for range events {
		}
	}()
	next := func(want EventKind) Event {
		t.Helper()
		select {
		case ev := <-events:
			if ev.Kind != want {
				t.Fatalf("event %+v, want kind %s", ev, want)
			}
			if d := time.Since(ev.Time); d < 0 || d > time.Minute {
				t.Errorf("event time %v is not now", ev.Time)
			}
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event", want)
		}
		return Event{}
	}

	runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: vip, Count: 1})
	ev := next(EventTranslate)
	be, ok := dp.Backend(ev.BackendID)
	if ev.Addr != vip || ev.Peer != tp.v4["be1"] || ev.NetnsCookie != ns.Cookie || ev.Proto != 6 || !ok || be.Addr != tp.v4["be1"] || be.Node != node {
		t.Errorf("translate event %+v (backend %+v): want %s → %s from netns %d", ev, be, vip, tp.v4["be1"], ns.Cookie)
	}
	runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: empty, Count: 1})
	if ev := next(EventNoBackend); ev.Addr != empty || ev.NetnsCookie != ns.Cookie {
		t.Errorf("no-backend event %+v: want %s", ev, empty)
	}
	runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: tp.v4["be2"], Count: 1})
	if ev := next(EventPolicyDeny); !ev.Egress || ev.Identity != 100 || ev.PeerIdentity != 300 || ev.Peer != tp.v4["be2"] || ev.Addr.Addr() != client {
		t.Errorf("policy event %+v: want egress 100 → 300 (%s)", ev, tp.v4["be2"])
	}

	// Over the rate: 5 per second and CPU, 60 connects at once.
	before, err := dp.EventCounts()
	must(err)
	must(dp.SetEventRates(map[EventKind]uint32{EventTranslate: 5}))
	runClient(t, tp.clientNS, cg, clientSpec{Mode: "tcp", VIP: vip, Count: 60})
	after, err := dp.EventCounts()
	must(err)
	b, a := before[EventTranslate], after[EventTranslate]
	sent, limited, lost := a.Sent-b.Sent, a.RateLimited-b.RateLimited, a.Lost-b.Lost
	if sent+limited+lost != 60 || limited == 0 {
		t.Errorf("60 translations at 5/s per CPU: %d sent, %d rate-limited, %d lost; want all accounted for and some limited", sent, limited, lost)
	}
	t.Logf("60 translations at 5/s per CPU: %d sent, %d rate-limited, %d lost", sent, limited, lost)
}

// BenchmarkEventRate drives the ingress program with a denied SYN a million
// times in the kernel (BPF_PROG_TEST_RUN), every run sending a policy-deny
// event, while a reader drains them as the agent does: the rate the reader
// sustains, and what the ring buffer drops (counted, never waited for) when
// the programs outpace it.
//
// Run: go test -run '^$' -bench EventRate -benchtime 1x ./bpf/
func BenchmarkEventRate(b *testing.B) {
	_, pin, cg := newLab(b)
	dp, err := Open(b.Context(), testConfig(cg, pin))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Remove() })
	src, dst := netip.MustParseAddr("10.2.0.9"), netip.MustParseAddrPort("10.1.0.5:8080")
	for _, err := range []error{
		dp.SetIPCache(dst.Addr(), 100),
		dp.SetIdentityPolicy(100, IdentityPolicy{Ingress: true}),
		dp.SetEventRates(map[EventKind]uint32{EventPolicyDeny: 1 << 30}),
	} {
		if err != nil {
			b.Fatal(err)
		}
	}
	er, err := dp.Events()
	if err != nil {
		b.Fatal(err)
	}
	read := make(chan int)
	go func() {
		n := 0
		for {
			if _, err := er.Read(); err != nil {
				read <- n
				return
			}
			n++
		}
	}()
	const runs = 1_000_000
	start := time.Now()
	for i := 0; i < b.N; i++ {
		progRunSYNBench(b, dp, src, dst, runs)
	}
	ran := time.Since(start)
	// Let the reader finish what is in the ring (it polls every 100 ms).
	time.Sleep(300 * time.Millisecond)
	er.Close()
	n := <-read
	counts, err := dp.EventCounts()
	if err != nil {
		b.Fatal(err)
	}
	c := counts[EventPolicyDeny]
	b.ReportMetric(float64(c.Sent)/ran.Seconds(), "sent/s")
	b.ReportMetric(float64(c.Lost)/float64(c.Sent+c.Lost), "lost-fraction")
	b.ReportMetric(float64(n), "read")
	b.ReportMetric(float64(c.Sent), "sent")
	b.ReportMetric(float64(c.Lost), "lost")
}
