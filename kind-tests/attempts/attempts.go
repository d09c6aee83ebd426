// Package attempts records what a traffic probe (kind-tests/cmd/probe)
// reports, one line per connection attempt, and answers the questions the
// drills ask of it: which attempts happened since a moment, and when a
// condition started to hold for good. The probe may run as a process in an
// emulated node or as a pod of a real cluster; either way its standard
// output is read here, so both environments time failovers the same way.
package attempts

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Attempt is one connection attempt of a probe.
type Attempt struct {
	At      time.Time
	Latency time.Duration
	OK      bool
	// Backend is the pod name that answered (OK) or the error (not OK).
	Backend string
}

// Parse reads one probe line ("ok|fail <unix-nanos> <latency-µs> <text>").
func Parse(line string) (Attempt, bool) {
	f := strings.SplitN(line, " ", 4)
	if len(f) != 4 || (f[0] != "ok" && f[0] != "fail") {
		return Attempt{}, false
	}
	ns, err1 := strconv.ParseInt(f[1], 10, 64)
	us, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return Attempt{}, false
	}
	return Attempt{At: time.Unix(0, ns), Latency: time.Duration(us) * time.Microsecond, OK: f[0] == "ok", Backend: f[3]}, true
}

// Log is the attempts of one probe, in the order it made them.
type Log struct {
	// Name says where the probe runs, for errors ("c1-node1 → 10.96.0.10:80").
	Name string

	done chan struct{}

	mu       sync.Mutex
	attempts []Attempt
	changed  chan struct{}
	err      error
}

// NewLog returns an empty log named name.
func NewLog(name string) *Log {
	return &Log{Name: name, done: make(chan struct{}), changed: make(chan struct{})}
}

// Read records the probe lines of r until it ends, then marks the log done
// with err (why the probe's output ended, nil for a normal stop). Lines
// that are not attempts are skipped. Call it once.
func (l *Log) Read(r io.Reader, err func() error) {
	defer func() {
		if err != nil {
			l.mu.Lock()
			l.err = err()
			l.mu.Unlock()
		}
		close(l.done)
	}()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if a, ok := Parse(sc.Text()); ok {
			l.Add(a)
		}
	}
	// Drain so the writer never blocks.
	_, _ = io.Copy(io.Discard, r)
}

// Add records one attempt. Attempts arrive in time order from one probe.
func (l *Log) Add(a Attempt) {
	l.mu.Lock()
	l.attempts = append(l.attempts, a)
	ch := l.changed
	l.changed = make(chan struct{})
	l.mu.Unlock()
	close(ch)
}

// Done is closed once the probe's output has ended.
func (l *Log) Done() <-chan struct{} { return l.done }

// Attempts returns the attempts made at or after since.
func (l *Log) Attempts(since time.Time) []Attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := sort.Search(len(l.attempts), func(i int) bool { return !l.attempts[i].At.Before(since) })
	return append([]Attempt(nil), l.attempts[i:]...)
}

// WaitFor blocks until the last n consecutive attempts made after since all
// satisfy ok, and returns the first attempt of that run: the moment the
// condition started to hold for good. It fails when ctx ends first (or the
// probe's output ends), naming what was seen last.
func (l *Log) WaitFor(ctx context.Context, since time.Time, n int, ok func(Attempt) bool) (Attempt, error) {
	for {
		l.mu.Lock()
		ch := l.changed
		as := l.attempts
		l.mu.Unlock()
		run := 0
		for i := len(as) - 1; i >= 0 && !as[i].At.Before(since); i-- {
			if !ok(as[i]) {
				break
			}
			run++
		}
		if run >= n {
			return as[len(as)-run], nil
		}
		select {
		case <-ch:
		case <-l.done:
			l.mu.Lock()
			err := l.err
			l.mu.Unlock()
			return Attempt{}, fmt.Errorf("traffic %s: probe exited: %v", l.Name, err)
		case <-ctx.Done():
			last := "no attempt"
			if len(as) > 0 {
				a := as[len(as)-1]
				last = fmt.Sprintf("ok=%v %s", a.OK, a.Backend)
			}
			return Attempt{}, fmt.Errorf("traffic %s: condition not met (last attempt: %s): %w", l.Name, last, ctx.Err())
		}
	}
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
