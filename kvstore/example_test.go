package kvstore_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki"
)

// Example runs a cluster's store end to end: an embedded etcd, the
// apiserver's writer exporting a node and marking nodes synced, and a peer's
// reader following it with the read-only remote user.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "kvstore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	files := writeCerts(dir)

	srv, err := kvstore.StartServer(ctx, kvstore.ServerConfig{
		Cluster: "c1", DataDir: filepath.Join(dir, "etcd"), ListenClientURL: "https://127.0.0.1:0",
		CAFile: files["ca"], CertFile: files["server.crt"], KeyFile: files["server.key"],
	})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	connect := func(user string) *kvstore.Client {
		c, err := kvstore.New(ctx, kvstore.Config{
			Endpoints: []string{srv.Endpoint()}, CAFile: files["ca"],
			CertFile: files[user+".crt"], KeyFile: files[user+".key"],
		})
		if err != nil {
			panic(err)
		}
		return c
	}
	admin, remote := connect(kvstore.UserAdmin), connect(kvstore.UserRemote)
	defer admin.Close()
	defer remote.Close()

	// The apiserver's side.
	w, err := kvstore.NewWriter(admin, "c1", nil)
	if err != nil {
		panic(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(runCtx) }()
	defer func() { stop(); <-done; w.Close() }()
	node := &api.Node{Cluster: "c1", Name: "node-1", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	if err := w.Upsert(ctx, node); err != nil {
		panic(err)
	}
	if err := w.MarkSynced(ctx, api.KindNode); err != nil {
		panic(err)
	}

	// A peer agent's side.
	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := kvstore.NewReader(remote, "c1", nil).Watch(watchCtx, api.KindNode)
	for ev := range events {
		fmt.Println(ev.Type, ev.Key)
		if ev.Type == kvstore.EventSynced {
			cancel()
		}
	}
	// Output:
	// upsert clustermesh/v1/nodes/c1/node-1
	// synced
}

func writeCerts(dir string) map[string]string {
	ca, err := pki.NewCA("mesh", 0)
	if err != nil {
		panic(err)
	}
	files := map[string]string{}
	write := func(name string, data []byte) {
		files[name] = filepath.Join(dir, name)
		if err := os.WriteFile(files[name], data, 0o600); err != nil {
			panic(err)
		}
	}
	write("ca", ca.CertPEM())
	cert, key, err := ca.Issue(pki.IssueOptions{CommonName: "c1", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		panic(err)
	}
	write("server.crt", cert)
	write("server.key", key)
	for _, user := range []string{kvstore.UserAdmin, kvstore.UserRemote} {
		cert, key, err := ca.Issue(pki.IssueOptions{CommonName: user, Client: true})
		if err != nil {
			panic(err)
		}
		write(user+".crt", cert)
		write(user+".key", key)
	}
	return files
}
