package kvstore

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

// TestCompareAndSwap checks each precondition on a real etcd: the swap
// applies only when every condition holds, and reports which happened.
func TestCompareAndSwap(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	if err := c.Put(ctx, "x/a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	a, _, err := c.Get(ctx, "x/a")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		conds []Cond
		want  bool
	}{
		{"absent holds", []Cond{Absent("x/b")}, true},
		{"absent fails on an existing key", []Cond{Absent("x/a")}, false},
		{"value holds", []Cond{ValueIs("x/a", []byte("1"))}, true},
		{"value fails", []Cond{ValueIs("x/a", []byte("2"))}, false},
		{"revision holds", []Cond{ModRevisionIs("x/a", a.ModRevision)}, true},
		{"revision fails", []Cond{ModRevisionIs("x/a", a.ModRevision+100)}, false},
		{"all must hold", []Cond{Absent("x/b"), ValueIs("x/a", []byte("2"))}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := c.CompareAndSwap(ctx, tt.conds, PutOp("x/b", []byte("b")))
			if err != nil {
				t.Fatal(err)
			}
			if ok != tt.want {
				t.Fatalf("swap applied = %v, want %v", ok, tt.want)
			}
			_, found, err := c.Get(ctx, "x/b")
			if err != nil {
				t.Fatal(err)
			}
			if found != tt.want {
				t.Errorf("x/b present = %v after a swap that applied = %v", found, tt.want)
			}
			if _, err := c.CompareAndSwap(ctx, nil, DeleteOp("x/b")); err != nil {
				t.Fatal(err)
			}
		})
	}
	if n, err := c.Count(ctx, "x/"); err != nil || n != 1 {
		t.Errorf("count x/ = %d (%v), want 1", n, err)
	}
}

// TestLeasedKey checks that a leased value is renewed by Put, removed at
// once by Revoke, and written again under a new lease after it.
func TestLeasedKey(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	l := c.NewLeasedKey("x/status", 10*time.Second)
	if err := l.Put(ctx, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	first, found, err := c.Get(ctx, "x/status")
	if err != nil || !found || string(first.Value) != "v1" || first.Lease == 0 {
		t.Fatalf("after Put: %+v found=%v err=%v, want v1 under a lease", first, found, err)
	}
	if err := l.Put(ctx, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	second, _, _ := c.Get(ctx, "x/status")
	if string(second.Value) != "v2" || second.Lease != first.Lease {
		t.Errorf("second Put: value %q lease %x, want v2 under the same lease %x", second.Value, second.Lease, first.Lease)
	}
	if err := l.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := c.Get(ctx, "x/status"); found {
		t.Error("value still present after Revoke")
	}
	if err := l.Put(ctx, []byte("v3")); err != nil {
		t.Fatal(err)
	}
	third, found, _ := c.Get(ctx, "x/status")
	if !found || third.Lease == first.Lease {
		t.Errorf("Put after Revoke: found=%v lease %x, want a new lease", found, third.Lease)
	}
}

// TestCampaign checks that a second candidate waits while the first leads
// and takes over when the first resigns.
func TestCampaign(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := c.Campaign(ctx, "x/leader/", "one", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	won := make(chan *Leadership, 1)
	go func() {
		l, err := c.Campaign(ctx, "x/leader/", "two", 5*time.Second)
		if err != nil {
			t.Error(err)
		}
		won <- l
	}()
	eventually(t, "two candidates", func() bool { n, _ := c.Count(ctx, "x/leader/"); return n == 2 })
	select {
	case <-won:
		t.Fatal("second candidate leads while the first has not resigned")
	default:
	}
	if err := first.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-ctx.Done():
		t.Fatal("resigned leadership is not done")
	}
	second := <-won
	if second == nil {
		t.Fatal("second candidate did not win")
	}
	if err := second.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// A cancelled campaign returns the context's error.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := c.Campaign(cctx, "x/leader/", "three", 5*time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled campaign: %v, want context.Canceled", err)
	}
}

// TestClusterConfig checks the one read every reader applies before
// trusting a store: missing, foreign and undecodable configs are refused
// with the sentinel that says which.
func TestClusterConfig(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	admin := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	remote := newClient(t, p.clientConfig(srv.Endpoint(), UserRemote))
	ctx := context.Background()
	good, err := (&api.Cluster{Name: "c1", ID: 1}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := (&api.Cluster{Name: "c2", ID: 2}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		value []byte // nil: no key
		want  error
	}{
		{"missing", nil, ErrNoClusterConfig},
		{"garbage", []byte("\xff\xffnot a cluster"), ErrClusterMismatch},
		{"names another cluster", foreign, ErrClusterMismatch},
		{"good", good, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.value != nil {
				if err := admin.Put(ctx, api.ClusterKey("c1"), tt.value); err != nil {
					t.Fatal(err)
				}
			}
			cfg, raw, err := remote.ClusterConfig(ctx, "c1")
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if tt.want == nil && (cfg.Name != "c1" || cfg.ID != 1 || string(raw) != string(good)) {
				t.Errorf("config %+v raw %q", cfg, raw)
			}
		})
	}
}

// TestInMemoryCredentials checks that PEM credentials reach the same store
// as files do, and that ServerCertificate returns the server's identity.
func TestInMemoryCredentials(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	files := p.clientConfig(srv.Endpoint(), UserRemote)
	read := func(path string) []byte {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mem := Config{Endpoints: files.Endpoints, CA: read(files.CAFile), Cert: read(files.CertFile), Key: read(files.KeyFile)}
	c := newClient(t, mem)
	if _, err := c.Count(context.Background(), api.KeyPrefix); err != nil {
		t.Fatal(err)
	}
	cert, err := ServerCertificate(context.Background(), mem, srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "c1" {
		t.Errorf("server certificate names %q, want c1", cert.Subject.CommonName)
	}
	bad := mem
	bad.Key = nil
	if _, err := New(context.Background(), bad); !errors.Is(err, ErrConfig) {
		t.Errorf("config without key: %v, want ErrConfig", err)
	}
}

// TestPins checks the two pins of a connection: a store presenting another
// server certificate is refused at the handshake, and a cluster config with
// another ID than the pinned one is refused as a mismatch.
func TestPins(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), "")) // server CN "c1"
	admin := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	v, err := (&api.Cluster{Name: "c1", ID: 1}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Put(ctx, api.ClusterKey("c1"), v); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		serverName string
		clusterID  uint32
		wantDial   error
		wantConfig error
	}{
		{"no pins", "", 0, nil, nil},
		{"matching pins", "c1", 1, nil, nil},
		{"another server", "c2.clustermesh", 0, ErrServerMismatch, nil},
		{"another ID", "c1", 7, nil, ErrClusterMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := p.clientConfig(srv.Endpoint(), UserRemote)
			cfg.ServerName, cfg.ClusterID = tt.serverName, tt.clusterID
			cfg.DialTimeout = 2 * time.Second
			c, err := New(ctx, cfg)
			if !errors.Is(err, tt.wantDial) {
				t.Fatalf("New: %v, want %v", err, tt.wantDial)
			}
			if err != nil {
				return
			}
			defer c.Close()
			if _, _, err := c.ClusterConfig(ctx, "c1"); !errors.Is(err, tt.wantConfig) {
				t.Errorf("ClusterConfig: %v, want %v", err, tt.wantConfig)
			}
		})
	}
}

// TestAwaitKey checks, on a real etcd, that AwaitKey returns at once for a
// key that exists, returns once a missing key is written (a delete or
// another key's write does not end it), and ends with its context.
func TestAwaitKey(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), ""))
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	ctx := context.Background()
	if err := c.Put(ctx, "await/present", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := c.AwaitKey(ctx, "await/present"); err != nil {
		t.Fatalf("existing key: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- c.AwaitKey(ctx, "await/later") }()
	// Writes that must not end the wait: another key, and a delete of
	// the awaited one.
	if err := c.Put(ctx, "await/other", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CompareAndSwap(ctx, nil, DeleteOp("await/later")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		// Legitimate only if the key exists now, which it does not.
		t.Fatalf("AwaitKey returned %v before the key was written", err)
	default:
	}
	if err := c.Put(ctx, "await/later", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("key written: %v", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.AwaitKey(cctx, "await/never"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait returned %v, want context.Canceled", err)
	}
}
