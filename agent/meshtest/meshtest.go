package meshtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// Mesh is a set of clusters sharing one CA.
type Mesh struct {
	t     testing.TB
	certs *pkitest.Files
}

// New creates the mesh CA, a store server certificate and a client
// certificate per etcd user in a temporary directory.
func New(t testing.TB) *Mesh {
	t.Helper()
	m := &Mesh{t: t, certs: pkitest.New(t, "server")}
	for _, user := range []string{kvstore.UserAdmin, kvstore.UserRemote, kvstore.UserAgent} {
		m.certs.Client(user)
	}
	return m
}

// Cluster is one cluster's store, writer and relay.
type Cluster struct {
	m        *Mesh
	Name     string
	Config   api.Cluster
	dataDir  string
	listen   string
	srv      *kvstore.Server
	endpoint string
	relay    *relay

	mu     sync.Mutex
	cli    *kvstore.Client
	writer *kvstore.Writer
	stopW  context.CancelFunc
	wdone  chan struct{}
}

// AddCluster starts a cluster's store and writer and writes its config.
func (m *Mesh) AddCluster(name string, id uint32, podCIDRs ...string) *Cluster {
	m.t.Helper()
	c := &Cluster{m: m, Name: name, dataDir: filepath.Join(m.certs.Dir, name+"-etcd")}
	c.Config = api.Cluster{Name: name, ID: id, MaxClusterID: api.DefaultMaxClusterID}
	for _, p := range podCIDRs {
		c.Config.PodCIDRs = append(c.Config.PodCIDRs, netip.MustParsePrefix(p))
	}
	c.startServer()
	c.listen = c.endpoint
	r, err := newRelay(hostPort(c.endpoint))
	if err != nil {
		m.t.Fatal(err)
	}
	c.relay = r
	m.t.Cleanup(func() {
		c.stopWriter()
		c.relay.close()
		if c.srv != nil {
			c.srv.Close()
		}
	})
	c.NewWriter()
	c.Upsert(&c.Config)
	return c
}

func hostPort(endpoint string) string {
	_, hp, _ := strings.Cut(endpoint, "://")
	return hp
}

func (c *Cluster) startServer() {
	c.m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := kvstore.StartServer(ctx, kvstore.ServerConfig{
		Cluster: c.Name, DataDir: c.dataDir, ListenClientURL: c.listen,
		CAFile: c.m.certs.CAFile, CertFile: c.m.certs.ServerCert, KeyFile: c.m.certs.ServerKey,
		UnsafeNoFsync: true,
	})
	if err != nil {
		c.m.t.Fatal(err)
	}
	c.srv, c.endpoint = srv, srv.Endpoint()
}

// StopServer stops the cluster's etcd; its data is kept.
func (c *Cluster) StopServer() {
	c.srv.Close()
	c.srv = nil
}

// StartServer restarts a stopped etcd on the same address and data.
func (c *Cluster) StartServer() { c.startServer() }

// Block cuts agents off the store (existing connections are closed, new ones
// refused); the writer is unaffected. Unblock lets them in again.
func (c *Cluster) Block()   { c.relay.setUp(false) }
func (c *Cluster) Unblock() { c.relay.setUp(true) }

// NewWriter replaces the cluster's writer by a fresh one, as a restarted
// clustermesh-apiserver would: what the new writer does not write before
// MarkSynced is pruned by it.
func (c *Cluster) NewWriter() {
	c.m.t.Helper()
	c.stopWriter()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := kvstore.New(ctx, c.clientConfig(c.endpoint, kvstore.UserAdmin))
	if err != nil {
		c.m.t.Fatal(err)
	}
	w, err := kvstore.NewWriter(cli, c.Name, &kvstore.WriterOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		c.m.t.Fatal(err)
	}
	wctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(wctx) }()
	c.mu.Lock()
	c.cli, c.writer, c.stopW, c.wdone = cli, w, stop, done
	c.mu.Unlock()
}

func (c *Cluster) stopWriter() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.writer == nil {
		return
	}
	c.writer.Close()
	c.stopW()
	<-c.wdone
	c.cli.Close()
	c.writer, c.cli = nil, nil
}

// Admin is the writer's client, acting as the admin user.
func (c *Cluster) Admin() *kvstore.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cli
}

// InProcessClient is a new client of the cluster's store that calls it in
// this process (kvstore.Server.InProcessClient), as the admin user: what
// a clustermesh-apiserver that embeds its store gives its mesh cache. It
// is closed before the store at the end of the test, and does not outlive
// StopServer.
func (c *Cluster) InProcessClient() *kvstore.Client {
	cli := c.srv.InProcessClient()
	c.m.t.Cleanup(func() { cli.Close() })
	return cli
}

// Upsert writes objects through the cluster's writer.
func (c *Cluster) Upsert(objs ...api.Object) {
	c.m.t.Helper()
	c.mu.Lock()
	w := c.writer
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, o := range objs {
		if err := w.Upsert(ctx, o); err != nil {
			c.m.t.Fatalf("cluster %s: upsert %s: %v", c.Name, o.Key(), err)
		}
	}
}

// UpsertErr writes objects through the cluster's writer and returns the
// first error; unlike Upsert it may be called from any goroutine.
func (c *Cluster) UpsertErr(ctx context.Context, objs ...api.Object) error {
	c.mu.Lock()
	w := c.writer
	c.mu.Unlock()
	for _, o := range objs {
		if err := w.Upsert(ctx, o); err != nil {
			return fmt.Errorf("cluster %s: upsert %s: %w", c.Name, o.Key(), err)
		}
	}
	return nil
}

// MarkSyncedErr is MarkSynced for any goroutine.
func (c *Cluster) MarkSyncedErr(ctx context.Context) error {
	c.mu.Lock()
	w := c.writer
	c.mu.Unlock()
	for _, k := range append(slices.Clone(api.SyncedKinds), api.LocalKinds...) {
		if err := w.MarkSynced(ctx, k); err != nil {
			return fmt.Errorf("cluster %s: mark %s synced: %w", c.Name, k, err)
		}
	}
	return nil
}

// Delete removes keys through the cluster's writer.
func (c *Cluster) Delete(keys ...string) {
	c.m.t.Helper()
	c.mu.Lock()
	w := c.writer
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, k := range keys {
		if err := w.Delete(ctx, k); err != nil {
			c.m.t.Fatalf("cluster %s: delete %s: %v", c.Name, k, err)
		}
	}
}

// MarkSynced ends the writer's initial export of every synced kind.
func (c *Cluster) MarkSynced() {
	c.m.t.Helper()
	c.mu.Lock()
	w := c.writer
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, k := range append(slices.Clone(api.SyncedKinds), api.LocalKinds...) {
		if err := w.MarkSynced(ctx, k); err != nil {
			c.m.t.Fatalf("cluster %s: mark %s synced: %v", c.Name, k, err)
		}
	}
}

// PutRaw writes a raw value at key as admin, bypassing the writer's
// validation: how a test plants a malformed value.
func (c *Cluster) PutRaw(key string, value []byte) {
	c.m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Admin().Put(ctx, key, value); err != nil {
		c.m.t.Fatalf("cluster %s: put %s: %v", c.Name, key, err)
	}
}

func (c *Cluster) clientConfig(endpoint, user string) kvstore.Config {
	return kvstore.Config{
		Endpoints: []string{endpoint},
		CAFile:    c.m.certs.CAFile,
		CertFile:  filepath.Join(c.m.certs.Dir, user+".crt"),
		KeyFile:   filepath.Join(c.m.certs.Dir, user+".key"),
		// Short timeouts: tests cut stores off on purpose.
		DialTimeout:    2 * time.Second,
		RequestTimeout: 2 * time.Second,
	}
}

// RelayClient connects to the store through the cluster's relay (the path
// agents take) as user. The client is closed by the test's cleanup.
func (c *Cluster) RelayClient(user string) *kvstore.Client {
	c.m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, err := kvstore.New(ctx, c.clientConfig("https://"+c.relay.addr(), user))
	if err != nil {
		c.m.t.Fatal(err)
	}
	c.m.t.Cleanup(func() { cli.Close() })
	return cli
}

// WriteConnFile writes the connection file of cluster c into dir, under
// fileName (normally c.Name), for an agent acting as user, through the
// cluster's relay.
func (c *Cluster) WriteConnFile(dir, fileName, user string) {
	c.m.t.Helper()
	cfg := c.clientConfig("https://"+c.relay.addr(), user)
	body := fmt.Sprintf("endpoints: [%q]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\ndial-timeout: 2s\nrequest-timeout: 2s\n",
		cfg.Endpoints[0], cfg.CAFile, cfg.CertFile, cfg.KeyFile)
	if err := os.WriteFile(filepath.Join(dir, fileName), []byte(body), 0o600); err != nil {
		c.m.t.Fatal(err)
	}
}

// RelayConns is the number of client connections open through the
// cluster's relay: the clients of its store that take the agents' path.
func (c *Cluster) RelayConns() int {
	c.relay.mu.Lock()
	defer c.relay.mu.Unlock()
	return len(c.relay.conns) / 2
}

// relay is a TCP relay that can refuse and cut connections.
type relay struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	up    bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newRelay(target string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, target: target, up: true, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		up := r.up
		r.mu.Unlock()
		if !up {
			c.Close()
			continue
		}
		b, err := net.DialTimeout("tcp", r.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.conns[c], r.conns[b] = struct{}{}, struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(c, b)
		go r.pipe(b, c)
	}
}

func (r *relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	r.mu.Lock()
	delete(r.conns, dst)
	delete(r.conns, src)
	r.mu.Unlock()
}

func (r *relay) setUp(up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.up = up
	if !up {
		for c := range r.conns {
			c.Close()
		}
	}
}

func (r *relay) close() {
	r.ln.Close()
	r.setUp(false)
	r.wg.Wait()
}
