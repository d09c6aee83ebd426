package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
)

type routeLog struct {
	mu     sync.Mutex
	routes map[netip.Prefix]netip.Addr
	fail   bool
}

func (l *routeLog) Upsert(_ context.Context, r Route) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return errors.New("injected")
	}
	l.routes[r.Prefix] = r.NextHop
	return nil
}

func (l *routeLog) Delete(_ context.Context, r Route) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return errors.New("injected")
	}
	delete(l.routes, r.Prefix)
	return nil
}

func (l *routeLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for p, nh := range l.routes {
		out = append(out, p.String()+" via "+nh.String())
	}
	slices.Sort(out)
	return out
}

func (l *routeLog) List(context.Context) ([]Route, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Route
	for p, nh := range l.routes {
		out = append(out, Route{Prefix: p, NextHop: nh})
	}
	return out, nil
}

func TestStaticRoutesAdopt(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &routeLog{routes: map[netip.Prefix]netip.Addr{
		netip.MustParsePrefix("10.2.0.0/24"): netip.MustParseAddr("192.168.2.1"), // still wanted
		netip.MustParsePrefix("10.9.0.0/24"): netip.MustParseAddr("192.168.9.1"), // stale
	}}
	s := NewStaticRoutes("c1", w, nil)
	gate := make(chan struct{})
	s.AdoptAfter(gate)
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	s.NodeUpserted(node("c2", "a", "192.168.2.1", "10.2.0.0/24"))
	s.NodeUpserted(node("c3", "a", "192.168.3.1", "10.3.0.0/24"))
	want := []string{"10.2.0.0/24 via 192.168.2.1", "10.3.0.0/24 via 192.168.3.1", "10.9.0.0/24 via 192.168.9.1"}
	waitRoutes(t, w, want)
	close(gate)
	s.signal()
	waitRoutes(t, w, want[:2])
}

func waitRoutes(t *testing.T, w *routeLog, want []string) {
	t.Helper()
	poll.Eventually(t, 10*time.Second, fmt.Sprintf("routes %q", want), func() (bool, string) {
		got := w.list()
		return slices.Equal(got, want), fmt.Sprintf("routes %q", got)
	})
}

func node(cluster, name, addr string, cidrs ...string) *api.Node {
	n := &api.Node{Cluster: cluster, Name: name, Addresses: []netip.Addr{netip.MustParseAddr(addr)}}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
	}
	return n
}

func TestStaticRoutes(t *testing.T) {
	ctx := context.Background()
	w := &routeLog{routes: map[netip.Prefix]netip.Addr{}}
	s := NewStaticRoutes("c1", w, nil)
	steps := []struct {
		name string
		do   func()
		fail bool
		want []string
	}{
		{"local nodes get no route", func() { s.NodeUpserted(node("c1", "a", "192.168.1.1", "10.1.0.0/24")) }, false, nil},
		{"remote node routed via its first address", func() {
			s.NodeUpserted(node("c2", "a", "192.168.2.1", "10.2.0.0/24", "10.2.1.0/24"))
		}, false, []string{"10.2.0.0/24 via 192.168.2.1", "10.2.1.0/24 via 192.168.2.1"}},
		{"node changes CIDR and address", func() { s.NodeUpserted(node("c2", "a", "192.168.2.9", "10.2.1.0/24")) }, false, []string{"10.2.1.0/24 via 192.168.2.9"}},
		{"node without address is ignored", func() { s.NodeUpserted(&api.Node{Cluster: "c3", Name: "x"}) }, false, []string{"10.2.1.0/24 via 192.168.2.9"}},
		{"second remote cluster", func() { s.NodeUpserted(node("c3", "b", "192.168.3.1", "10.3.0.0/24")) }, false, []string{"10.2.1.0/24 via 192.168.2.9", "10.3.0.0/24 via 192.168.3.1"}},
		{"failed writes are retried", func() { s.NodeDeleted("c3", "b") }, true, []string{"10.2.1.0/24 via 192.168.2.9", "10.3.0.0/24 via 192.168.3.1"}},
		{"retry succeeds", func() {}, false, []string{"10.2.1.0/24 via 192.168.2.9"}},
		{"deleted node's routes removed", func() { s.NodeDeleted("c2", "a") }, false, nil},
	}
	for _, st := range steps {
		st.do()
		w.mu.Lock()
		w.fail = st.fail
		w.mu.Unlock()
		s.reconcile(ctx)
		if got := w.list(); !slices.Equal(got, st.want) {
			t.Errorf("%s: routes %q, want %q", st.name, got, st.want)
		}
	}
}

// TestStaticRoutesOwnCluster checks static-all: the own cluster's other
// nodes are routed, this node never, remote clusters as before.
func TestStaticRoutesOwnCluster(t *testing.T) {
	ctx := context.Background()
	w := &routeLog{routes: map[netip.Prefix]netip.Addr{}}
	s := NewStaticRoutes("c1", w, nil)
	s.OwnCluster("a")
	for _, n := range []*api.Node{
		node("c1", "a", "192.168.1.1", "10.1.0.0/24"),
		node("c1", "b", "192.168.1.2", "10.1.1.0/24"),
		node("c2", "a", "192.168.2.1", "10.2.0.0/24"),
	} {
		s.NodeUpserted(n)
	}
	s.reconcile(ctx)
	want := []string{"10.1.1.0/24 via 192.168.1.2", "10.2.0.0/24 via 192.168.2.1"}
	if got := w.list(); !slices.Equal(got, want) {
		t.Fatalf("routes %q, want %q (no route to this node's own pod CIDR)", got, want)
	}
	s.NodeDeleted("c1", "b")
	s.reconcile(ctx)
	if got := w.list(); !slices.Equal(got, want[1:]) {
		t.Fatalf("after the local node left: routes %q, want %q", got, want[1:])
	}
}

// TestStaticRoutesDrain checks that a drained (disconnected) cluster's routes
// outlive its nodes for the drain, while a node its own cluster deletes loses
// its routes at once, and a cluster that comes back keeps its routes.
func TestStaticRoutesDrain(t *testing.T) {
	ctx := context.Background()
	w := &routeLog{routes: map[netip.Prefix]netip.Addr{}}
	s := NewStaticRoutes("c1", w, nil)
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	s.Drain(time.Minute)
	c2a, c2b, c3 := "10.2.0.0/24 via 192.168.2.1", "10.2.1.0/24 via 192.168.2.2", "10.3.0.0/24 via 192.168.3.1"
	drain := func(cluster string, nodes ...string) func() {
		return func() {
			s.ClusterDrained(cluster)
			for _, n := range nodes {
				s.NodeDeleted(cluster, n)
			}
		}
	}
	for _, st := range []struct {
		name string
		do   func()
		want []string
	}{
		{"two clusters routed", func() {
			s.NodeUpserted(node("c2", "a", "192.168.2.1", "10.2.0.0/24"))
			s.NodeUpserted(node("c2", "b", "192.168.2.2", "10.2.1.0/24"))
			s.NodeUpserted(node("c3", "a", "192.168.3.1", "10.3.0.0/24"))
		}, []string{c2a, c2b, c3}},
		{"a node deleted by its cluster goes at once", func() { s.NodeDeleted("c2", "b") }, []string{c2a, c3}},
		{"a drained cluster's routes stay", drain("c2", "a"), []string{c2a, c3}},
		{"still within the drain", func() { now = now.Add(59 * time.Second) }, []string{c2a, c3}},
		{"gone once the drain passed", func() { now = now.Add(time.Second) }, []string{c3}},
		{"drained, then back before the drain passed", func() {
			drain("c3", "a")()
			now = now.Add(10 * time.Second)
			s.NodeUpserted(node("c3", "a", "192.168.3.1", "10.3.0.0/24"))
		}, []string{c3}},
		{"back for good: a later node deletion is immediate", func() { s.NodeDeleted("c3", "a") }, nil},
	} {
		st.do()
		s.reconcile(ctx)
		if got := w.list(); !slices.Equal(got, st.want) {
			t.Errorf("%s: routes %q, want %q", st.name, got, st.want)
		}
	}
}
