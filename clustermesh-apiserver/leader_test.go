package apiserver_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
)

// TestLeaderElection runs two replicas on one external store: one exports,
// the other stands by (and says so on /readyz); when the leader stops, the
// standby takes over and the store follows Kubernetes again, including a
// change made during the handover.
func TestLeaderElection(t *testing.T) {
	e := newEnv(t, "ha", 5)
	dir := t.TempDir()
	srv, err := kvstore.StartServer(context.Background(), kvstore.ServerConfig{
		Cluster: "ha", DataDir: filepath.Join(dir, "etcd"), ListenClientURL: e.cfg.EtcdListenClientURL,
		CAFile: e.cfg.EtcdCA, CertFile: e.cfg.EtcdCert, KeyFile: e.cfg.EtcdKey, UnsafeNoFsync: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the apiservers, whose cleanups were registered later.
	t.Cleanup(func() { srv.Close() })
	conf := filepath.Join(dir, "ha.yaml")
	yaml := fmt.Sprintf("endpoints: [%q]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n",
		srv.Endpoint(), e.cfg.EtcdCA, e.admin[0], e.admin[1])
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	e.cfg.KVStoreConfig = conf
	ns := "ha-" + kubetest.RandomSuffix(4)
	mkNode(t, e, "node-a", "192.168.1.10", "10.244.0.0/16", "zone-a")
	mkNamespace(t, e, ns, nil)
	mkService(t, e, ns, "web", map[string]string{apiserver.AnnotationGlobal: "true"})
	mkPod(t, e, ns, "web-0", "web", "node-a", "10.244.1.1")

	leader := e.start()
	standby := e.startNoWait()
	poll.Eventually(t, waitTimeout, "second replica stands by", func(context.Context) error {
		if !standby.srv.Standby() {
			return fmt.Errorf("second replica is not standing by")
		}
		return nil
	})
	poll.Eventually(t, waitTimeout, "two candidates in the election, one leader", func(ctx context.Context) error {
		n, err := e.store.Count(ctx, apiserver.LeaderPrefix+"ha/")
		if err != nil {
			return err
		}
		if n != 2 {
			return fmt.Errorf("%d election keys, want 2", n)
		}
		return nil
	})
	resp, err := http.Get("http://" + standby.srv.HealthAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || standby.srv.Ready() {
		t.Errorf("standby: /readyz %s, Ready() %v; want 200 (must not block rollouts) and not Ready", resp.Status, standby.srv.Ready())
	}
	poll.Eventually(t, waitTimeout, "leader exports", func(ctx context.Context) error { return expectStore(ctx, e) })
	if !standby.srv.Standby() || !leader.srv.Ready() {
		t.Fatalf("standby %v, leader ready %v: want one exporter and one standby", standby.srv.Standby(), leader.srv.Ready())
	}

	leader.stop()
	mkPod(t, e, ns, "web-1", "web", "node-a", "10.244.1.2")
	rmPod(t, e, ns, "web-0")
	poll.Eventually(t, time.Minute, "standby to take over after the leader resigned", standby.srv.Ready)
	poll.Eventually(t, waitTimeout, "new leader exports", func(ctx context.Context) error {
		got, err := e.dump(ctx)
		if err != nil {
			return err
		}
		if _, ok := got[api.NodeKey("ha", "node-a")]; !ok {
			return fmt.Errorf("node missing")
		}
		return expectStore(ctx, e)
	})
}
