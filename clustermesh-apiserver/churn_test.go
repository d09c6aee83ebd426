package apiserver_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestRestartUnderChurn restarts the apiserver twice while pods come and go
// and a service flips between global and not, then checks that the store
// converges to exactly what Kubernetes holds: nothing stale from before a
// restart, nothing missed while it was down.
func TestRestartUnderChurn(t *testing.T) {
	e := newEnv(t, "churn", 21)
	ctx := context.Background()
	ns := "churn-" + kubetest.RandomSuffix(4)
	mkNode(t, e, "node-a", "192.168.1.10", "10.244.0.0/16", "zone-a")
	mkNamespace(t, e, ns, nil)
	for app := range 3 {
		mkService(t, e, ns, fmt.Sprintf("app-%d", app), map[string]string{"clustermesh.io/global": "true"})
	}
	mkService(t, e, ns, "flip", nil)

	r := e.start()
	stop := make(chan struct{})
	var changes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := createPod(ctx, e, ns, fmt.Sprintf("p-%d", i), fmt.Sprintf("app-%d", i%3), "node-a", fmt.Sprintf("10.244.%d.%d", 1+i/200, 1+i%200)); err != nil {
				t.Error(err)
				return
			}
			if i >= 6 {
				if err := deletePod(ctx, e, ns, fmt.Sprintf("p-%d", i-6)); err != nil {
					t.Error(err)
					return
				}
			}
			changes.Add(1)
			if i%4 == 0 {
				global := "true"
				if i%8 == 0 {
					global = "false"
				}
				if _, err := e.kube.Kubectl(ctx, "annotate", "--overwrite", "service", "-n", ns, "flip", "clustermesh.io/global="+global); err != nil {
					t.Error(err)
					return
				}
			}
		}
	}()
	for range 2 {
		time.Sleep(2 * time.Second)
		r.stop()
		time.Sleep(time.Second)
		r = e.start()
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d pods created during two restarts", changes.Load())
	poll.Eventually(t, waitTimeout, "store matches Kubernetes after restarts under churn", func(ctx context.Context) error {
		return expectStore(ctx, e)
	})
}
