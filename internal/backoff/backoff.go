// Package backoff is the one retry schedule of the project: exponential,
// capped, and jittered.
//
// Jitter matters more than the curve: after a store restart every agent of a
// cluster sees its connection fail in the same instant, and without jitter
// they all reconnect in step, again and again (the thundering herd that
// Cilium's agents once caused against their kvstore). The schedule is
// k8s.io/apimachinery's wait.Backoff, so its arithmetic is the well-kept
// one Kubernetes controllers use; this package only fixes the parameters and
// adds a context-aware wait.
//
// A Backoff is not safe for concurrent use: each retry loop owns its own.
package backoff

import (
	"context"
	"math"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Jitter is the fraction of each delay added at random (a delay d becomes a
// value in [d, d·(1+Jitter)) ).
const Jitter = 0.5

// Backoff yields the delays of one retry loop: Min, then doubling up to
// Max, each with jitter. Reset starts again from Min after a success.
type Backoff struct {
	min, max time.Duration
	cur      wait.Backoff
}

// New returns a schedule from min to max. A non-positive min is taken as
// 100 ms; a max below min is taken as min.
func New(min, max time.Duration) *Backoff {
	if min <= 0 {
		min = 100 * time.Millisecond
	}
	if max < min {
		max = min
	}
	b := &Backoff{min: min, max: max}
	b.Reset()
	return b
}

// Reset makes the next delay Min again.
func (b *Backoff) Reset() {
	b.cur = wait.Backoff{
		Duration: b.min,
		Factor:   2,
		Jitter:   Jitter,
		Steps:    math.MaxInt32,
		Cap:      b.max,
	}
}

// Next returns the delay before the next attempt and advances the schedule.
func (b *Backoff) Next() time.Duration { return b.cur.Step() }

// Wait sleeps for the next delay, or until ctx is done (then it returns
// ctx's error).
func (b *Backoff) Wait(ctx context.Context) error {
	return Sleep(ctx, b.Next())
}

// Sleep waits for d or until ctx is done, whichever is first.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
