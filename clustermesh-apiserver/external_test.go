package apiserver_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestExternalStore runs the apiserver against an etcd it does not embed,
// described by a kvstore connection file (--kvstore-config), and checks that
// its exports outlive it: a stopped apiserver's keys stay until their leases
// expire, so peers keep seeing the cluster across a restart.
func TestExternalStore(t *testing.T) {
	e := newEnv(t, "ext", 12)
	dir := t.TempDir()
	srv, err := kvstore.StartServer(context.Background(), kvstore.ServerConfig{
		Cluster: "ext", DataDir: filepath.Join(dir, "etcd"), ListenClientURL: e.cfg.EtcdListenClientURL,
		CAFile: e.cfg.EtcdCA, CertFile: e.cfg.EtcdCert, KeyFile: e.cfg.EtcdKey, UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the apiservers, whose cleanups were registered later.
	t.Cleanup(func() { srv.Close() })
	conf := filepath.Join(dir, "ext.yaml")
	yaml := fmt.Sprintf("endpoints: [%q]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		srv.Endpoint(), e.cfg.EtcdCA, e.admin[0], e.admin[1])
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfg.KVStoreConfig = conf
	e.cfg.EtcdDataDir = "" // must not be needed
	e.cfg.PodCIDRs = []string{"10.7.0.0/16"}
	mkNode(t, e, "node-x", "192.168.7.1", "10.7.0.0/24", "z")

	r := e.start()
	if got := r.srv.StoreURL(); got != srv.Endpoint() {
		t.Errorf("StoreURL = %s, want the external %s", got, srv.Endpoint())
	}
	poll.Eventually(t, waitTimeout, "node exported to the external store", func(ctx context.Context) error {
		got, err := e.dump(ctx)
		if err != nil {
			return err
		}
		if _, ok := got[api.NodeKey("ext", "node-x")]; !ok {
			return fmt.Errorf("no node key; store has %d keys", len(got))
		}
		// --cluster-pod-cidrs wins over the nodes' ranges.
		if c, ok := got[api.ClusterKey("ext")].(*api.Cluster); !ok || len(c.PodCIDRs) != 1 || c.PodCIDRs[0] != netip.MustParsePrefix("10.7.0.0/16") {
			return fmt.Errorf("cluster config %+v, want pod CIDRs [10.7.0.0/16]", got[api.ClusterKey("ext")])
		}
		return nil
	})
	r.stop()
	got, err := e.dump(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{api.ClusterKey("ext"), api.NodeKey("ext", "node-x"), api.SyncedKey("ext", api.KindNode)} {
		if _, ok := got[k]; !ok {
			t.Errorf("%s gone after the apiserver stopped; want it kept until its lease expires", k)
		}
	}
}
