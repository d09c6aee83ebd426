package poll_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/poll"
)

func TestUntil(t *testing.T) {
	tests := []struct {
		name    string
		holdsAt int // the call from which cond holds; 0: never
		wantErr bool
	}{
		{"at once", 1, false},
		{"after retries", 4, false},
		{"never", 0, true},
		{"final", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			calls := 0
			err := poll.Until(ctx, func(context.Context) error {
				calls++
				if tt.holdsAt < 0 {
					return poll.Final(errExitedTest)
				}
				if tt.holdsAt > 0 && calls >= tt.holdsAt {
					return nil
				}
				return fmt.Errorf("call %d: not yet", calls)
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %t", err, tt.wantErr)
			}
			if !tt.wantErr && calls != tt.holdsAt {
				t.Errorf("cond called %d times, want %d", calls, tt.holdsAt)
			}
			if tt.holdsAt < 0 {
				if !errors.Is(err, errExitedTest) || calls != 1 {
					t.Errorf("err = %v after %d calls, want the final error after one", err, calls)
				}
				return
			}
			if tt.wantErr {
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "not yet") {
					t.Errorf("err = %v, want the deadline and the condition's last error", err)
				}
			}
		})
	}
}

var errExitedTest = errors.New("gone for good")

// recorder is a testing.TB that records a Fatalf instead of stopping.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestEventuallyFailsWithWhatAndLastError(t *testing.T) {
	r := &recorder{TB: t}
	poll.Eventually(r, 50*time.Millisecond, "the answer", func(context.Context) error {
		return errors.New("got 41")
	})
	if !strings.Contains(r.msg, "the answer") || !strings.Contains(r.msg, "got 41") {
		t.Errorf("failure %q does not say what was awaited and why it did not hold", r.msg)
	}
	r.msg = ""
	poll.Eventually(r, time.Second, "the answer", func(context.Context) error { return nil })
	if r.msg != "" {
		t.Errorf("a holding condition failed the test: %q", r.msg)
	}
}

func TestEventuallyConditionShapes(t *testing.T) {
	ok := false
	flip := func() { ok = !ok }
	tests := []struct {
		name string
		run  func(tb testing.TB)
		why  string // in the failure when the condition never holds
	}{
		{"error", func(tb testing.TB) {
			poll.Eventually(tb, 30*time.Millisecond, "x", func(context.Context) error {
				if !ok {
					return errors.New("err-why")
				}
				return nil
			})
		}, "err-why"},
		{"bool", func(tb testing.TB) { poll.Eventually(tb, 30*time.Millisecond, "x", func() bool { return ok }) }, "condition false"},
		{"bool and state", func(tb testing.TB) {
			poll.Eventually(tb, 30*time.Millisecond, "x", func() (bool, string) { return ok, "state-why" })
		}, "state-why"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recorder{TB: t}
			tt.run(r)
			if !strings.Contains(r.msg, tt.why) {
				t.Errorf("failure %q, want it to say %q", r.msg, tt.why)
			}
			flip()
			defer flip()
			r.msg = ""
			tt.run(r)
			if r.msg != "" {
				t.Errorf("a holding condition failed: %q", r.msg)
			}
		})
	}
}
