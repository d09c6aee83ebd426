package drills

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
)

// ErrDrill is wrapped by every drill failure.
var ErrDrill = errors.New("drill failed")

// Env is what drills run against.
type Env struct {
	Mesh *emulator.Mesh
	// Service is the global echo service deployed in every cluster.
	Service string
	// Replicas is how many echo pods each cluster runs normally.
	Replicas int
	Report   *emulator.Report
	// Logf reports progress (t.Logf, or the demo's printer).
	Logf func(format string, args ...any)
	// Wait bounds each wait for a condition; default 90s.
	Wait time.Duration
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

// Traffic starts a probe on node n aimed at the service's ClusterIP in n's
// cluster. The caller stops it.
func (e *Env) Traffic(ctx context.Context, n *emulator.Node, proto string) (*emulator.Traffic, error) {
	vip, err := e.Mesh.ServiceIP(ctx, n.Cluster, e.Service)
	if err != nil {
		return nil, err
	}
	return n.StartTraffic(e.Mesh.Bins, fmt.Sprintf("probe-%s-%d", proto, time.Now().UnixNano()%100000), netip.AddrPortFrom(vip, 80), &emulator.TrafficOptions{Proto: proto})
}

// from returns a predicate: a successful attempt answered by a pod of one of
// the clusters.
func (e *Env) from(clusters ...*emulator.Cluster) func(emulator.Attempt) bool {
	return func(a emulator.Attempt) bool {
		if !a.OK {
			return false
		}
		got := e.Mesh.ClusterOf(e.Service, a.Backend)
		for _, c := range clusters {
			if c.Name == got {
				return true
			}
		}
		return false
	}
}

// waitSeen waits until tr has had answers from every cluster of want since
// since, and returns when the last of them first answered.
func (e *Env) waitSeen(ctx context.Context, tr *emulator.Traffic, since time.Time, want ...*emulator.Cluster) (time.Time, error) {
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
			t, ok := first[c.Name]
			if !ok {
				missing = append(missing, c.Name)
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
		s := emulator.Summarize(tr.Attempts(since))
		return time.Time{}, fmt.Errorf("%w: traffic from %s: no answer from cluster(s) %v (answers: %v, failures: %v)", ErrDrill, tr.Node.Name, missing, s.PerBackend, s.Errors)
	}
	return last, nil
}

// waitOnly waits for n consecutive successful attempts answered by pods of
// the given clusters and returns the first of them.
func (e *Env) waitOnly(ctx context.Context, tr *emulator.Traffic, since time.Time, n int, clusters ...*emulator.Cluster) (emulator.Attempt, error) {
	ctx, cancel := context.WithTimeout(ctx, e.wait())
	defer cancel()
	a, err := tr.WaitFor(ctx, since, n, e.from(clusters...))
	if err != nil {
		names := make([]string, len(clusters))
		for i, c := range clusters {
			names[i] = c.Name
		}
		s := emulator.Summarize(tr.Attempts(since))
		return a, fmt.Errorf("%w: traffic from %s: want %d answers in a row from %v: %v (answers: %v, failures: %v)", ErrDrill, tr.Node.Name, n, names, err, s.PerBackend, s.Errors)
	}
	return a, nil
}

// split formats how many answers each cluster gave.
func (e *Env) split(as []emulator.Attempt) string {
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

func failures(as []emulator.Attempt) int {
	n := 0
	for _, a := range as {
		if !a.OK {
			n++
		}
	}
	return n
}

func (e *Env) c(i int) *emulator.Cluster { return e.Mesh.Clusters[i] }

// settle lets traffic run for d.
func settle(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func stop(tr *emulator.Traffic) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = tr.Stop(ctx)
}
