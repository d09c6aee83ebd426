package flows

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/loadbalancer"
	"github.com/clustermesh/clustermesh/observe"
)

// The kernel side (events from real traffic) is bpf.TestFlowEvents; these
// are the agent's pure parts: naming, the ring, filters and the stream.

type fakeSource struct{}

func (fakeSource) Events() (*bpf.EventReader, error) { return nil, nil }
func (fakeSource) Backend(id uint32) (loadbalancer.Backend, bool) {
	return loadbalancer.Backend{Addr: netip.MustParseAddrPort("10.2.0.7:8080"), Node: loadbalancer.NodeRef{ClusterID: 2, Name: "c2-n3"}}, id == 9
}
func (fakeSource) EventCounts() (map[bpf.EventKind]bpf.EventCounts, error) { return nil, nil }

type fakeNames struct{}

func (fakeNames) ServiceOf(fe loadbalancer.Frontend) (string, bool) {
	return "shop/api", fe.Addr == netip.MustParseAddrPort("10.96.0.10:80")
}
func (fakeNames) ClusterName(id uint32) string { return map[uint32]string{1: "c1", 2: "c2"}[id] }
func (fakeNames) PodOf(ip netip.Addr) (*api.IPCacheEntry, bool) {
	en, ok := map[string]*api.IPCacheEntry{
		"10.2.0.7": {Cluster: "c2", Node: "c2-n3", Namespace: "shop", Pod: "api-7", Identity: 0x20002},
		"10.1.0.5": {Cluster: "c1", Node: "c1-n1", Namespace: "shop", Pod: "web-5", Identity: 0x10001},
	}[ip.String()]
	return en, ok
}
func (fakeNames) PodOfNetns(cookie uint64) (*api.IPCacheEntry, bool) {
	if cookie == 42 {
		return &api.IPCacheEntry{Cluster: "c1", Node: "c1-n1", IP: netip.MustParseAddr("10.1.0.5"), Namespace: "shop", Pod: "web-5"}, true
	}
	return nil, false
}
func (fakeNames) Identity(id uint32) (*api.Identity, bool) {
	return &api.Identity{Cluster: "c2", ID: id, Namespace: "other"}, id == 0x20009
}

func TestEnrichFilterServe(t *testing.T) {
	o, err := New(Config{Cluster: "c1", Node: "c1-n1", Source: fakeSource{}, Resolver: fakeNames{}, Capacity: 3})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	events := []bpf.Event{
		{Time: now, Kind: bpf.EventTranslate, NetnsCookie: 42, Addr: netip.MustParseAddrPort("10.96.0.10:80"),
			Peer: netip.MustParseAddrPort("10.2.0.7:8080"), Proto: 6, Fallback: true, BackendID: 9},
		{Time: now, Kind: bpf.EventNoBackend, NetnsCookie: 7, Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: 17},
		{Time: now, Kind: bpf.EventPolicyDeny, Addr: netip.MustParseAddrPort("10.1.0.5:8080"), Peer: netip.MustParseAddrPort("10.2.0.9:41000"),
			Proto: 6, Identity: 0x10001, PeerIdentity: 0x20009},
	}
	for _, ev := range events {
		o.add(o.enrich(ev))
	}
	got := o.Recent(nil)
	want := []string{
		"c1/c1-n1 translate   forwarded TCP  shop/web-5 10.1.0.5 (c1/c1-n1) → svc shop/api → shop/api-7 10.2.0.7:8080 (c2/c2-n3) id 131074 fallback",
		"c1/c1-n1 no-backend  dropped   UDP  (c1/c1-n1) → svc shop/api → 10.96.0.10:80 ",
		"c1/c1-n1 policy-deny dropped   TCP  10.2.0.9:41000 (c2) id 131081 → shop/web-5 10.1.0.5:8080 (c1/c1-n1) id 65537 ingress",
	}
	if len(got) != len(want) {
		t.Fatalf("ring holds %d flows, want %d", len(got), len(want))
	}
	for i := range want {
		text := got[i].Text()
		if _, after, _ := strings.Cut(text, " "); after != want[i] {
			t.Errorf("flow %d:\n got  %q\n want %q", i, after, want[i])
		}
	}

	// The ring keeps the last Capacity flows.
	o.add(o.enrich(events[0]))
	if got := o.Recent(nil); len(got) != 3 || got[0].Kind != "no-backend" || got[2].Kind != "translate" {
		t.Errorf("after one more flow the ring is %v", got)
	}

	srv := httptest.NewServer(o.Handler())
	defer srv.Close()
	get := func(query string) []observe.Flow {
		t.Helper()
		resp, err := http.Get(srv.URL + "/flows?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out []observe.Flow
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var f observe.Flow
			if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
				t.Fatal(err)
			}
			out = append(out, f)
		}
		return out
	}
	for q, n := range map[string]int{"": 3, "verdict=dropped": 2, "to-cluster=c2": 1, "from-cluster=c2": 1, "pod=web-5": 2, "kind=policy-deny": 1, "last=1": 1, "service=shop/api": 2} {
		if got := get(q); len(got) != n {
			t.Errorf("?%s: %d flows, want %d", q, len(got), n)
		}
	}
	if resp, _ := http.Get(srv.URL + "/flows?since=yesterday"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad since: status %d", resp.StatusCode)
	}

	// follow: the replay, then live flows that match.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/flows?follow=true&kind=translate", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || !strings.Contains(sc.Text(), `"translate"`) {
		t.Fatalf("follow: replay line %q", sc.Text())
	}
	go func() {
		// Wait for the subscription, then send one that does not match
		// and one that does.
		for {
			o.mu.Lock()
			n := len(o.subs)
			o.mu.Unlock()
			if n > 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		o.add(o.enrich(events[1]))
		o.add(o.enrich(events[0]))
	}()
	if !sc.Scan() || !strings.Contains(sc.Text(), `"translate"`) || !strings.Contains(sc.Text(), `"fallback"`) {
		t.Fatalf("follow: live line %q", sc.Text())
	}
}

// BenchmarkRingMemory measures the heap a full ring holds per 10,000 flows
// (realistic names), and the cost of adding one flow.
//
// Run: go test -run '^$' -bench RingMemory -benchmem ./agent/flows/
func BenchmarkRingMemory(b *testing.B) {
	const capacity = 10000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	o, err := New(Config{Cluster: "c1", Node: "c1-node1", Source: fakeSource{}, Resolver: fakeNames{}, Capacity: capacity})
	if err != nil {
		b.Fatal(err)
	}
	ev := bpf.Event{Time: time.Now(), Kind: bpf.EventTranslate, NetnsCookie: 42, Addr: netip.MustParseAddrPort("10.96.0.10:80"),
		Peer: netip.MustParseAddrPort("10.2.0.7:8080"), Proto: 6, BackendID: 9}
	for i := 0; i < capacity; i++ {
		o.add(o.enrich(ev))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := float64(after.HeapAlloc-min(after.HeapAlloc, before.HeapAlloc)) / (1 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o.add(o.enrich(ev))
	}
	b.ReportMetric(held, "MiB/10k-flows")
	runtime.KeepAlive(o)
}
