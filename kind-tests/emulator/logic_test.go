package emulator

import (
	"context"
	"testing"
	"time"
)

func TestRemapPath(t *testing.T) {
	mounts := map[string]string{
		"/var/lib/clustermesh/clusters": "/tmp/run/pod/clusters",
		"/var/lib/clustermesh":          "/tmp/run/pod/lib",
		"/sys/fs/bpf":                   "/sys/fs/bpf/cmk0000/c1/n1",
	}
	for _, tc := range []struct{ in, want string }{
		{"--clusters-dir=/var/lib/clustermesh/clusters", "--clusters-dir=/tmp/run/pod/clusters"},
		{"/var/lib/clustermesh/clusters/c1.crt", "/tmp/run/pod/clusters/c1.crt"},
		{"--etcd-ca=/var/lib/clustermesh/server/ca.crt", "--etcd-ca=/tmp/run/pod/lib/server/ca.crt"},
		{"--bpf-pin-dir=/sys/fs/bpf", "--bpf-pin-dir=/sys/fs/bpf/cmk0000/c1/n1"},
		// A longer name sharing a prefix is not under the mount point.
		{"/var/lib/clustermesh-other/x", "/var/lib/clustermesh-other/x"},
		{"--cluster-name=c1", "--cluster-name=c1"},
	} {
		if got := remapPath(tc.in, mounts); got != tc.want {
			t.Errorf("remapPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseAttempt(t *testing.T) {
	for _, tc := range []struct {
		line    string
		ok      bool
		success bool
		backend string
	}{
		{"ok 1700000000000000000 120 echo-c1-abc", true, true, "echo-c1-abc"},
		{"fail 1700000000000000000 500000 dial tcp 10.96.0.1:80: i/o timeout", true, false, "dial tcp 10.96.0.1:80: i/o timeout"},
		{"ok notanumber 1 x", false, false, ""},
		{"garbage", false, false, ""},
	} {
		a, ok := parseAttempt(tc.line)
		if ok != tc.ok || (ok && (a.OK != tc.success || a.Backend != tc.backend)) {
			t.Errorf("parseAttempt(%q) = %+v, %v", tc.line, a, ok)
		}
	}
}

// TestWaitFor feeds a Traffic by hand and checks WaitFor finds the start of
// the first run of n matching attempts and fails when the probe ends.
func TestWaitFor(t *testing.T) {
	tr := &Traffic{Node: &Node{Name: "n"}, done: make(chan struct{}), changed: make(chan struct{}), proc: &Process{}}
	t0 := time.Unix(1000, 0)
	add := func(sec int, ok bool, backend string) {
		tr.mu.Lock()
		tr.attempts = append(tr.attempts, Attempt{At: t0.Add(time.Duration(sec) * time.Second), OK: ok, Backend: backend})
		ch := tr.changed
		tr.changed = make(chan struct{})
		tr.mu.Unlock()
		close(ch)
	}
	isB := func(a Attempt) bool { return a.OK && a.Backend == "b" }
	res := make(chan Attempt, 1)
	go func() {
		a, err := tr.WaitFor(context.Background(), t0, 3, isB)
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
	close(tr.done)
	if _, err := tr.WaitFor(context.Background(), t0, 10, isB); err == nil {
		t.Error("WaitFor after the probe exited: want an error")
	}
	s := Summarize(tr.Attempts(t0))
	if s.Total != 6 || s.Failed != 1 || s.PerBackend["b"] != 4 {
		t.Errorf("Summarize = %+v", s)
	}
}
