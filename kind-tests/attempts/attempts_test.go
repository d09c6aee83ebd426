package attempts

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		line    string
		ok      bool
		success bool
		backend string
	}{
		{"ok 1700000000000000000 120 echo-c1-abc", true, true, "echo-c1-abc"},
		{"fail 1700000000000000000 500000 dial tcp 10.96.0.1:80: i/o timeout", true, false, "dial tcp 10.96.0.1:80: i/o timeout"},
		{"ok notanumber 1 x", false, false, ""},
		{"maybe 1700000000000000000 1 x", false, false, ""},
		{"garbage", false, false, ""},
	} {
		a, ok := Parse(tc.line)
		if ok != tc.ok || (ok && (a.OK != tc.success || a.Backend != tc.backend)) {
			t.Errorf("Parse(%q) = %+v, %v", tc.line, a, ok)
		}
	}
}

// TestWaitFor feeds a log by hand and checks WaitFor finds the start of the
// first run of n matching attempts, and fails with the reader's error once
// the probe's output ends.
func TestWaitFor(t *testing.T) {
	l := NewLog("test")
	t0 := time.Unix(1000, 0)
	add := func(sec int, ok bool, backend string) {
		l.Add(Attempt{At: t0.Add(time.Duration(sec) * time.Second), OK: ok, Backend: backend})
	}
	isB := func(a Attempt) bool { return a.OK && a.Backend == "b" }
	res := make(chan Attempt, 1)
	go func() {
		a, err := l.WaitFor(context.Background(), t0, 3, isB)
		if err != nil {
			t.Error(err)
		}
		res <- a
	}()
	add(1, true, "a")
	add(2, true, "b")
	add(3, false, "timeout")
	add(4, true, "b")
	add(5, true, "b")
	add(6, true, "b")
	if a := <-res; !a.At.Equal(t0.Add(4 * time.Second)) {
		t.Errorf("run starts at %v, want %v", a.At, t0.Add(4*time.Second))
	}
	// The output ends: lines read meanwhile are kept, and waiting fails
	// with why it ended.
	l.Read(strings.NewReader("ok 1007000000000 10 b\nnoise\n"), func() error { return errors.New("pod deleted") })
	if _, err := l.WaitFor(context.Background(), t0, 10, isB); err == nil || !strings.Contains(err.Error(), "pod deleted") {
		t.Errorf("WaitFor after the probe exited: %v, want the reader's error", err)
	}
	s := Summarize(l.Attempts(t0))
	if s.Total != 7 || s.Failed != 1 || s.PerBackend["b"] != 5 || len(s.Backends()) != 2 {
		t.Errorf("Summarize = %+v", s)
	}
	if got := len(l.Attempts(t0.Add(5 * time.Second))); got != 3 {
		t.Errorf("attempts since +5s = %d, want 3", got)
	}
}
