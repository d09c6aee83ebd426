// Package poll waits for a condition that becomes true by itself: a store
// converging, a process listening, a route appearing. It is the one
// poll-until loop of the project's tests and test infrastructure, so every
// wait retries on the same schedule (internal/backoff, 10 ms doubling to
// 200 ms) and reports the same way: what was awaited and the condition's
// last error, which says why it did not hold.
//
// Timeouts given to Eventually bound a broken run; they are liveness
// bounds, never performance assertions.
package poll

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/backoff"
)

// The retry schedule: short first, so a condition that holds soon is seen
// soon, and capped, so a slow one does not hammer what it reads.
const (
	minInterval = 10 * time.Millisecond
	maxInterval = 200 * time.Millisecond
)

// Until calls cond until it returns nil or ctx is done. It returns nil, or
// ctx's error together with cond's last error. A condition that can never
// hold any more (the process it waits for exited) returns Final(err): Until
// then returns err at once.
func Until(ctx context.Context, cond func(ctx context.Context) error) error {
	b := backoff.New(minInterval, maxInterval)
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		var f *finalError
		if errors.As(err, &f) {
			return f.err
		}
		if werr := b.Wait(ctx); werr != nil {
			return fmt.Errorf("%w; last: %w", werr, err)
		}
	}
}

// Final marks err as the end of a wait: the condition will never hold.
func Final(err error) error { return &finalError{err} }

type finalError struct{ err error }

func (f *finalError) Error() string { return f.err.Error() }
func (f *finalError) Unwrap() error { return f.err }

// Cond is a condition Eventually accepts, in the three shapes tests write:
// an error saying why it does not hold yet (given a context ending at the
// timeout), a bare bool, or a bool with a description of the state seen.
type Cond interface {
	func(ctx context.Context) error | func() bool | func() (ok bool, state string)
}

// errNotYet is the last error of a bare bool condition that never held.
var errNotYet = errors.New("condition false")

// asErr turns any Cond into the error form.
func asErr[C Cond](cond C) func(context.Context) error {
	switch c := any(cond).(type) {
	case func(context.Context) error:
		return c
	case func() bool:
		return func(context.Context) error {
			if !c() {
				return errNotYet
			}
			return nil
		}
	case func() (bool, string):
		return func(context.Context) error {
			if ok, state := c(); !ok {
				return errors.New(state)
			}
			return nil
		}
	}
	panic(fmt.Sprintf("poll: condition of type %T", cond)) // unreachable: Cond lists every case
}

// Eventually fails tb unless cond holds within timeout; what names the
// awaited state in the failure, which ends with the last reason cond gave.
func Eventually[C Cond](tb testing.TB, timeout time.Duration, what string, cond C) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := Until(ctx, asErr(cond)); err != nil {
		tb.Fatalf("%s: not within %v: %v", what, timeout, err)
	}
}
