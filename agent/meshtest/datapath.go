package meshtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Recorder is a loadbalancer.Datapath that keeps the programmed state in
// memory and counts calls per frontend, so tests can check both the result
// and that nothing else was touched. Safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	state  map[loadbalancer.Frontend]loadbalancer.Service
	calls  map[loadbalancer.Frontend]int
	health map[loadbalancer.NodeRef]bool
	// OnUpsert, if set, is called after every upsert (benchmarks time
	// propagation with it). Set before use.
	OnUpsert func(loadbalancer.Service)
	// Inner, if set, is a real datapath every call is passed to first; the
	// recorder then records only what Inner accepted. Set before use.
	Inner loadbalancer.Datapath
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	return &Recorder{
		state:  map[loadbalancer.Frontend]loadbalancer.Service{},
		calls:  map[loadbalancer.Frontend]int{},
		health: map[loadbalancer.NodeRef]bool{},
	}
}

var _ loadbalancer.Datapath = (*Recorder)(nil)

// UpsertService implements loadbalancer.Datapath.
func (r *Recorder) UpsertService(ctx context.Context, svc loadbalancer.Service) error {
	if r.Inner != nil {
		if err := r.Inner.UpsertService(ctx, svc); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.state[svc.Frontend] = svc
	r.calls[svc.Frontend]++
	f := r.OnUpsert
	r.mu.Unlock()
	if f != nil {
		f(svc)
	}
	return nil
}

// DeleteService implements loadbalancer.Datapath.
func (r *Recorder) DeleteService(ctx context.Context, fe loadbalancer.Frontend) error {
	if r.Inner != nil {
		if err := r.Inner.DeleteService(ctx, fe); err != nil {
			return err
		}
	}
	r.mu.Lock()
	delete(r.state, fe)
	r.calls[fe]++
	r.mu.Unlock()
	return nil
}

// SetNodeHealth implements loadbalancer.Datapath.
func (r *Recorder) SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error {
	if r.Inner != nil {
		if err := r.Inner.SetNodeHealth(ctx, node, healthy); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.health[node] = healthy
	r.mu.Unlock()
	return nil
}

// Frontends lists the programmed frontends, like a datapath that adopted
// state from a previous agent run (agent.FrontendLister).
func (r *Recorder) Frontends() []loadbalancer.Frontend {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]loadbalancer.Frontend, 0, len(r.state))
	for fe := range r.state {
		out = append(out, fe)
	}
	return out
}

// Calls returns the number of upserts and deletes of fe so far.
func (r *Recorder) Calls(fe loadbalancer.Frontend) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[fe]
}

// Len is the number of programmed frontends.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.state)
}

// View renders the programmed service of fe as "P[a b] F[c]", or "absent".
func (r *Recorder) View(fe loadbalancer.Frontend) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.state[fe]
	if !ok {
		return "absent"
	}
	return Render(s)
}

// Render renders a service's backend sets as "P[a b] F[c]".
func Render(s loadbalancer.Service) string {
	str := func(bs []loadbalancer.Backend) string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Addr.String())
		}
		slices.Sort(out)
		return strings.Join(out, " ")
	}
	return fmt.Sprintf("P[%s] F[%s]", str(s.Preferred), str(s.Fallback))
}

// WaitView waits until fe renders as want, failing the test after timeout
// with the last view seen.
func (r *Recorder) WaitView(t testing.TB, fe loadbalancer.Frontend, want string, timeout time.Duration) {
	t.Helper()
	r.Wait(t, timeout, func() (bool, string) {
		got := r.View(fe)
		return got == want, fmt.Sprintf("frontend %s: got %s, want %s", fe, got, want)
	})
}

// Wait polls cond until it holds, failing the test with cond's description
// after timeout. Timeouts here bound a hang, they are not performance
// assertions.
func (r *Recorder) Wait(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, timeout, "datapath state", cond)
}
