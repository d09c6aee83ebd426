package kvstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// TestLeaseGrantRestricted checks that only the cluster's own writer and
// agents may grant leases: a peer's remote certificate cannot make the
// store hold leases.
func TestLeaseGrantRestricted(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	tests := []struct {
		user    string
		allowed bool
	}{
		{UserAdmin, true},
		{UserAgent, true},
		{UserRemote, false},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			c := newClient(t, p.clientConfig(srv.Endpoint(), tt.user))
			_, err := c.cli.Grant(context.Background(), 60)
			if tt.allowed && err != nil {
				t.Fatalf("grant as %s: %v", tt.user, err)
			}
			if !tt.allowed && (err == nil || !strings.Contains(err.Error(), "may not grant leases")) {
				t.Fatalf("grant as %s: %v, want a refusal", tt.user, err)
			}
		})
	}
}

// TestSpaceAlarmCleared fills a store with a small quota until it refuses
// writes, frees the space, and checks that the server clears the alarm by
// itself so that writes succeed again, counting it.
func TestSpaceAlarmCleared(t *testing.T) {
	p := newTestPKI(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := p.serverConfig(t.TempDir(), "")
	cfg.QuotaBytes = 4 << 20
	cfg.AlarmCheckInterval = 100 * time.Millisecond
	cfg.Metrics = m
	cfg.Logger = testLogger(t)
	srv := startServer(t, cfg)
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	value := make([]byte, 256<<10)
	full := false
	var written []string
	for i := 0; i < 200 && !full; i++ {
		key := fmt.Sprintf("fill/%03d", i)
		err := c.Put(ctx, key, value)
		switch {
		case err == nil:
			written = append(written, key)
		case errors.Is(err, rpctypes.ErrNoSpace) || strings.Contains(err.Error(), rpctypes.ErrNoSpace.Error()):
			full = true
		default:
			t.Fatal(err)
		}
	}
	if !full {
		t.Fatalf("wrote %d values of %d bytes under a %d-byte quota without a space alarm", len(written), len(value), cfg.QuotaBytes)
	}
	for _, k := range written {
		if _, err := c.CompareAndSwap(ctx, nil, DeleteOp(k)); err != nil {
			t.Fatalf("delete %s under the alarm: %v", k, err)
		}
	}
	eventually(t, "writes to succeed again", func() bool { return c.Put(ctx, "after", []byte("x")) == nil })
	if n := testutil.ToFloat64(m.spaceAlarms.WithLabelValues("c1")); n < 1 {
		t.Errorf("clustermesh_kvstore_space_alarms_total = %v, want at least 1", n)
	}
}

// TestMaxRecvBytes checks that a response larger than the client's receive
// limit fails the request instead of being allocated.
func TestMaxRecvBytes(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	admin := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	for i := range 8 {
		if err := admin.Put(ctx, fmt.Sprintf("big/%d", i), make([]byte, 4<<10)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := p.clientConfig(srv.Endpoint(), UserAdmin)
	cfg.MaxRecvBytes = 16 << 10
	small := newClient(t, cfg)
	if _, err := small.List(ctx, "big/", ListOptions{KeysOnly: true}); err != nil {
		t.Fatalf("keys-only listing within the limit: %v", err)
	}
	_, err := small.List(ctx, "big/", ListOptions{})
	if err == nil || !strings.Contains(err.Error(), "larger than max") {
		t.Fatalf("listing 32 KiB with a 16 KiB receive limit: %v, want a refusal", err)
	}
}

// TestReaderQuota checks that a reader holds at most MaxKeys keys of a kind
// and MaxBytes of values, refusing the rest with ErrQuota, keeps what it
// holds, and takes new keys again once room is made.
func TestReaderQuota(t *testing.T) {
	tests := []struct {
		name string
		opts ReaderOptions
	}{
		{"keys", ReaderOptions{MaxKeys: map[api.Kind]int{api.KindNode: 3}}},
		{"bytes", ReaderOptions{MaxBytes: 3 * nodeSize(t)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, false)
			ctx := context.Background()
			w, err := NewWriter(e.admin, "c1", &WriterOptions{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(w.Close)
			for i := range 5 {
				if err := w.Upsert(ctx, testNode(fmt.Sprintf("n%d", i), i)); err != nil {
					t.Fatal(err)
				}
			}
			// Deletes reach the consumer once the writer's canary is there.
			if err := w.MarkSynced(ctx, api.KindNode); err != nil {
				t.Fatal(err)
			}
			opts := tt.opts
			opts.Logger = testLogger(t)
			r := NewReader(e.remote, "c1", &opts)
			rctx, cancel := context.WithCancel(ctx)
			defer cancel()
			ch := r.Watch(rctx, api.KindNode)
			next := func() Event {
				select {
				case ev := <-ch:
					return ev
				case <-time.After(waitTimeout):
					t.Fatal("no event from the reader")
					return Event{}
				}
			}
			upserts, refused := map[string]bool{}, map[string]bool{}
			for len(upserts)+len(refused) < 5 {
				ev := next()
				switch {
				case ev.Type == EventUpsert:
					upserts[ev.Key] = true
				case ev.Type == EventError && errors.Is(ev.Err, ErrQuota):
					refused[ev.Key] = true
				}
			}
			if len(upserts) != 3 || len(refused) != 2 {
				t.Fatalf("%d keys emitted and %d refused, want 3 and 2", len(upserts), len(refused))
			}
			// Room made: a held key goes, a refused one may come in.
			var gone string
			for k := range upserts {
				gone = k
				break
			}
			if err := w.Delete(ctx, gone); err != nil {
				t.Fatal(err)
			}
			if err := w.Upsert(ctx, testNode("n9", 9)); err != nil {
				t.Fatal(err)
			}
			for {
				ev := next()
				if ev.Type == EventUpsert && ev.Key == api.NodeKey("c1", "n9") {
					break
				}
			}
		})
	}
}

func nodeSize(t *testing.T) int64 {
	b, err := testNode("n0", 0).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(b))
}
