package drills

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// ErrDrill is wrapped by every drill failure.
var ErrDrill = errors.New("drill failed")

// Env is what drills run against.
type Env struct {
	Mesh Mesh
	// Service is the global echo service deployed in every cluster.
	Service string
	// Replicas is how many echo pods each cluster runs normally.
	Replicas int
	Report   *emulator.Report
	// Logf reports progress (t.Logf, or the demo's printer).
	Logf func(format string, args ...any)
	// Wait bounds each wait for a condition; default 90s.
	Wait time.Duration
	// StoreOutage is the least time StoreDown keeps the store (and the
	// route reflector the clustermesh-apiserver hosts) down. With BGP
	// routing, past the graceful restart time, it shows that routes outlive
	// the control plane by long-lived graceful restart, not by GR alone.
	StoreOutage time.Duration
}

func (e *Env) wait() time.Duration {
	if e.Wait == 0 {
		return 90 * time.Second
	}
	return e.Wait
}

func (e *Env) logf(format string, args ...any) {
	if e.Logf != nil {
		e.Logf(format, args...)
	}
}

// c returns the name of the i-th cluster.
func (e *Env) c(i int) string { return e.Mesh.Clusters()[i] }

// nodeCount is the number of nodes of every cluster.
func (e *Env) nodeCount() int {
	n := 0
	for _, c := range e.Mesh.Clusters() {
		n += len(e.Mesh.Nodes(c))
	}
	return n
}

// firstNode is where a cluster's traffic comes from.
func (e *Env) firstNode(cluster string) string { return e.Mesh.Nodes(cluster)[0] }

// traffic starts a probe on the first node of cluster.
func (e *Env) traffic(ctx context.Context, cluster, proto string) (Traffic, error) {
	return e.Mesh.StartTraffic(ctx, e.firstNode(cluster), e.Service, proto)
}

// from returns a predicate: a successful attempt answered by a pod of one of
// the clusters.
func (e *Env) from(clusters ...string) func(attempts.Attempt) bool {
	return func(a attempts.Attempt) bool {
		return a.OK && slices.Contains(clusters, e.Mesh.ClusterOf(e.Service, a.Backend))
	}
}

// waitSeen waits until tr has had answers from every cluster of want since
// since, and returns when the last of them first answered.
func (e *Env) waitSeen(ctx context.Context, tr Traffic, since time.Time, want ...string) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	var last time.Time
	var missing []string
	err := poll.Until(ctx, func(context.Context) error {
		first := map[string]time.Time{}
		for _, a := range tr.Attempts(since) {
			if !a.OK {
				continue
			}
			if c := e.Mesh.ClusterOf(e.Service, a.Backend); c != "" {
				if _, ok := first[c]; !ok {
					first[c] = a.At
				}
			}
		}
		last, missing = time.Time{}, nil
		for _, c := range want {
			t, ok := first[c]
			if !ok {
				missing = append(missing, c)
			}
			if t.After(last) {
				last = t
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no answer from cluster(s) %v", missing)
		}
		return nil
	})
	if err != nil {
		s := attempts.Summarize(tr.Attempts(since))
		return time.Time{}, fmt.Errorf("%w: traffic from %s: no answer from cluster(s) %v (answers: %v, failures: %v)", ErrDrill, tr.From(), missing, s.PerBackend, s.Errors)
	}
	return last, nil
}

// waitOnly waits for n consecutive successful attempts answered by pods of
// the given clusters and returns the first of them.
func (e *Env) waitOnly(ctx context.Context, tr Traffic, since time.Time, n int, clusters ...string) (attempts.Attempt, error) {
	ctx, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	a, err := tr.WaitFor(ctx, since, n, e.from(clusters...))
	if err != nil {
		s := attempts.Summarize(tr.Attempts(since))
		return a, fmt.Errorf("%w: traffic from %s: want %d answers in a row from %v: %v (answers: %v, failures: %v)", ErrDrill, tr.From(), n, clusters, err, s.PerBackend, s.Errors)
	}
	return a, nil
}

// split formats how many answers each cluster gave.
func (e *Env) split(as []attempts.Attempt) string {
	per := map[string]int{}
	fail := 0
	for _, a := range as {
		if !a.OK {
			fail++
			continue
		}
		per[e.Mesh.ClusterOf(e.Service, a.Backend)]++
	}
	var parts []string
	keys := make([]string, 0, len(per))
	for k := range per {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", k, per[k]))
	}
	parts = append(parts, fmt.Sprintf("failed:%d", fail))
	return strings.Join(parts, " ")
}

func failures(as []attempts.Attempt) int {
	n := 0
	for _, a := range as {
		if !a.OK {
			n++
		}
	}
	return n
}

// settle lets traffic run for d.
func settle(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func stop(tr Traffic) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = tr.Stop(ctx)
}

// rollout restarts the Deployment of service's pods in the default
// namespace (as `kubectl rollout restart` does) and waits until every pod is
// new and ready and no old pod is left, terminating ones included.
func rollout(ctx context.Context, kube kubernetes.Interface, service string, wait time.Duration) error {
	deps, err := kube.AppsV1().Deployments("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	name := ""
	for _, d := range deps.Items {
		if d.Spec.Selector != nil && d.Spec.Selector.MatchLabels["app"] == service {
			name = d.Name
		}
	}
	if name == "" {
		return fmt.Errorf("no Deployment of %s", service)
	}
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"clustermesh.io/restarted-at":%q}}}}}`, time.Now().Format(time.RFC3339Nano))
	d, err := kube.AppsV1().Deployments("default").Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("restart deployment %s: %w", name, err)
	}
	gen := d.Generation
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return poll.Until(wctx, func(ctx context.Context) error {
		d, err := kube.AppsV1().Deployments("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st := d.Status
		if st.ObservedGeneration < gen || st.UpdatedReplicas != want || st.ReadyReplicas != want || st.Replicas != want {
			return fmt.Errorf("deployment %s: %d updated, %d ready, %d in all of %d", name, st.UpdatedReplicas, st.ReadyReplicas, st.Replicas, want)
		}
		pods, err := kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + service})
		if err != nil {
			return err
		}
		if len(pods.Items) != int(want) {
			return fmt.Errorf("deployment %s: %d pods, want %d (old ones still terminating)", name, len(pods.Items), want)
		}
		return nil
	})
}
