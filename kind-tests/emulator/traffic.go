package emulator

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Attempt is one connection attempt of a traffic client.
type Attempt struct {
	At      time.Time
	Latency time.Duration
	OK      bool
	// Backend is the pod name that answered (OK) or the error (not OK).
	Backend string
}

// Traffic is a running probe process on a node: it connects to a target over
// and over (see kind-tests/cmd/probe) and the harness records each attempt.
type Traffic struct {
	Node   *Node
	Target netip.AddrPort
	Proto  string

	proc *Process
	done chan struct{}

	mu       sync.Mutex
	attempts []Attempt
	changed  chan struct{}
}

// TrafficOptions tunes StartTraffic; nil means TCP every 10ms.
type TrafficOptions struct {
	Proto    string // "tcp" (default) or "udp"
	Interval time.Duration
	Timeout  time.Duration
}

// StartTraffic starts a probe in the node's namespace and cgroup, so the
// node's socket load balancer applies to it, aimed at target.
func (n *Node) StartTraffic(bins *Binaries, name string, target netip.AddrPort, opts *TrafficOptions) (*Traffic, error) {
	if err := bins.Require(PartProbe); err != nil {
		return nil, err
	}
	o := TrafficOptions{Proto: "tcp", Interval: 10 * time.Millisecond, Timeout: 500 * time.Millisecond}
	if opts != nil {
		if opts.Proto != "" {
			o.Proto = opts.Proto
		}
		if opts.Interval > 0 {
			o.Interval = opts.Interval
		}
		if opts.Timeout > 0 {
			o.Timeout = opts.Timeout
		}
	}
	pr, pw := io.Pipe()
	t := &Traffic{Node: n, Target: target, Proto: o.Proto, done: make(chan struct{}), changed: make(chan struct{})}
	proc, err := n.StartProcess(ProcessSpec{
		Name: name,
		Path: bins.Path(PartProbe),
		Args: []string{
			"-target", target.String(), "-proto", o.Proto,
			"-interval", o.Interval.String(), "-timeout", o.Timeout.String(),
		},
		Stdout: pw,
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: traffic %s: %w", n.Name, name, err)
	}
	t.proc = proc
	go func() {
		<-proc.Done()
		pw.Close()
	}()
	go t.read(pr)
	return t, nil
}

func (t *Traffic) read(r io.Reader) {
	defer close(t.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		a, ok := parseAttempt(sc.Text())
		if !ok {
			continue
		}
		t.mu.Lock()
		t.attempts = append(t.attempts, a)
		ch := t.changed
		t.changed = make(chan struct{})
		t.mu.Unlock()
		close(ch)
	}
	// Drain so the writer never blocks.
	_, _ = io.Copy(io.Discard, r)
}

func parseAttempt(line string) (Attempt, bool) {
	f := strings.SplitN(line, " ", 4)
	if len(f) != 4 {
		return Attempt{}, false
	}
	ns, err1 := strconv.ParseInt(f[1], 10, 64)
	us, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return Attempt{}, false
	}
	return Attempt{At: time.Unix(0, ns), Latency: time.Duration(us) * time.Microsecond, OK: f[0] == "ok", Backend: f[3]}, true
}

// Stop ends the probe and waits until its last lines are recorded.
func (t *Traffic) Stop(ctx context.Context) error {
	err := t.proc.Stop(ctx)
	<-t.done
	return err
}

// Attempts returns the attempts made at or after since.
func (t *Traffic) Attempts(since time.Time) []Attempt {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := sort.Search(len(t.attempts), func(i int) bool { return !t.attempts[i].At.Before(since) })
	return append([]Attempt(nil), t.attempts[i:]...)
}

// Summary counts attempts.
type Summary struct {
	Total, Failed int
	// PerBackend counts successful attempts by answering pod.
	PerBackend map[string]int
	// Errors counts failed attempts by error text.
	Errors map[string]int
}

// Summarize counts the attempts.
func Summarize(as []Attempt) Summary {
	s := Summary{PerBackend: map[string]int{}, Errors: map[string]int{}}
	for _, a := range as {
		s.Total++
		if a.OK {
			s.PerBackend[a.Backend]++
		} else {
			s.Failed++
			s.Errors[a.Backend]++
		}
	}
	return s
}

// Backends returns the names of the pods that answered, sorted.
func (s Summary) Backends() []string {
	out := make([]string, 0, len(s.PerBackend))
	for b := range s.PerBackend {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}

// WaitFor blocks until the last n consecutive attempts made after since all
// satisfy ok, and returns the first attempt of that run: the moment the
// condition started to hold for good. It fails when ctx ends first (or the
// probe exits), naming what was seen last.
func (t *Traffic) WaitFor(ctx context.Context, since time.Time, n int, ok func(Attempt) bool) (Attempt, error) {
	for {
		t.mu.Lock()
		ch := t.changed
		as := t.attempts
		t.mu.Unlock()
		run := 0
		for i := len(as) - 1; i >= 0 && !as[i].At.Before(since); i-- {
			if !ok(as[i]) {
				break
			}
			run++
		}
		if run >= n {
			// Walk back to where the run started.
			return as[len(as)-run], nil
		}
		select {
		case <-ch:
		case <-t.done:
			return Attempt{}, fmt.Errorf("traffic on %s to %s: probe exited: %v", t.Node.Name, t.Target, t.proc.Err())
		case <-ctx.Done():
			last := "no attempt"
			if len(as) > 0 {
				a := as[len(as)-1]
				last = fmt.Sprintf("ok=%v %s", a.OK, a.Backend)
			}
			return Attempt{}, fmt.Errorf("traffic on %s to %s: condition not met (last attempt: %s): %w", t.Node.Name, t.Target, last, ctx.Err())
		}
	}
}
