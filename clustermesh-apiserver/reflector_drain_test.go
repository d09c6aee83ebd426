package apiserver

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

// TestReflectorPeerDrain: a cluster whose connection file is removed stays
// among the reflector's remote clusters (its last config) for the drain,
// then leaves; followed again and read back, it is live, not draining; a
// zero drain drops it at once.
func TestReflectorPeerDrain(t *testing.T) {
	now := time.Unix(1000, 0)
	c2 := api.Cluster{Name: "c2", ASN: 64514, RouteReflector: netip.MustParseAddrPort("192.0.2.2:1790")}
	newHost := func(drain time.Duration) *reflectorHost {
		h := &reflectorHost{log: slog.New(slog.DiscardHandler), cluster: "c1", dir: t.TempDir(), drain: drain,
			now: func() time.Time { return now }, refreshed: make(chan struct{}, 1),
			remotes: map[string]*remoteCluster{}, draining: map[string]drainingCluster{}}
		done := make(chan struct{})
		close(done)
		cl := c2
		h.remotes["c2"] = &remoteCluster{digest: "d", cancel: func() {}, done: done, cluster: &cl}
		return h
	}
	names := func(cs []api.Cluster) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return fmt.Sprint(out)
	}
	h := newHost(2 * time.Minute)
	if got := names(h.remoteClusters()); got != "[c2]" {
		t.Fatalf("connected: %s", got)
	}
	// The directory is empty: c2's file is gone.
	h.scanDir(context.Background())
	if got := names(h.remoteClusters()); got != "[c2]" {
		t.Errorf("just disconnected: %s, want c2 kept while draining", got)
	}
	now = now.Add(119 * time.Second)
	if got := names(h.remoteClusters()); got != "[c2]" {
		t.Errorf("at 119 s: %s, want c2 still draining", got)
	}
	now = now.Add(time.Second)
	if got := names(h.remoteClusters()); got != "[]" {
		t.Errorf("after the drain: %s, want none", got)
	}
	if len(h.draining) != 0 {
		t.Errorf("draining after the drain: %v", h.draining)
	}

	// Followed again (a reconnect or a rotated file) and read back: live.
	h = newHost(2 * time.Minute)
	h.scanDir(context.Background())
	cl := c2
	done := make(chan struct{})
	close(done)
	h.remotes["c2"] = &remoteCluster{digest: "d2", cancel: func() {}, done: done, cluster: &cl}
	if got := names(h.remoteClusters()); got != "[c2]" || len(h.draining) != 0 {
		t.Errorf("followed again: %s, draining %v; want c2 live only", got, h.draining)
	}

	h = newHost(0)
	h.scanDir(context.Background())
	if got := names(h.remoteClusters()); got != "[]" {
		t.Errorf("no drain: %s, want c2 gone at once", got)
	}
}
