package backoff

import (
	"context"
	"testing"
	"time"
)

func TestScheduleBoundsAndJitter(t *testing.T) {
	tests := []struct {
		name     string
		min, max time.Duration
		wantMin  time.Duration
	}{
		{"defaults", 0, 0, 100 * time.Millisecond},
		{"range", 10 * time.Millisecond, 80 * time.Millisecond, 10 * time.Millisecond},
		{"max below min", 50 * time.Millisecond, time.Millisecond, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(tt.min, tt.max)
			capped := max(tt.max, tt.wantMin)
			base := tt.wantMin
			distinct := map[time.Duration]bool{}
			for i := 0; i < 40; i++ {
				d := b.Next()
				if d < base || d >= time.Duration(float64(base)*(1+Jitter))+1 {
					t.Fatalf("step %d: delay %v outside [%v, %v·%.1f)", i, d, base, base, 1+Jitter)
				}
				distinct[d] = true
				base = min(2*base, capped)
			}
			if len(distinct) < 10 {
				t.Errorf("only %d distinct delays in 40 steps: no jitter", len(distinct))
			}
			b.Reset()
			if d := b.Next(); d >= time.Duration(float64(tt.wantMin)*(1+Jitter))+1 {
				t.Errorf("after Reset: delay %v, want about %v", d, tt.wantMin)
			}
		})
	}
}

func TestSleepStopsOnContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); err == nil {
		t.Fatal("Sleep returned nil for a cancelled context")
	}
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep: %v", err)
	}
}
