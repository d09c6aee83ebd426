package observe

import (
	"container/heap"
	"sort"
	"time"
)

// SortByTime orders flows of several agents by time, stably (one agent's
// flows keep their order when their clocks tie).
func SortByTime(fs []Flow) {
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].Time.Before(fs[j].Time) })
}

// LastN keeps the last n flows of a time-ordered slice (n ≤ 0: all).
func LastN(fs []Flow, n int) []Flow {
	if n > 0 && len(fs) > n {
		return fs[len(fs)-n:]
	}
	return fs
}

// Merger orders live flows from many agents: a flow is released once it is
// older than the window, so flows that arrive up to the window late (a
// slower agent, a longer path) still come out in time order. A flow that
// arrives later than that is released at once, out of order, rather than
// dropped; Late counts them.
type Merger struct {
	window time.Duration
	h      flowHeap
	// released is the time of the newest flow released so far.
	released time.Time
	// Late counts flows released out of order.
	Late int
}

// NewMerger returns a merger holding flows for window.
func NewMerger(window time.Duration) *Merger { return &Merger{window: window} }

// Add takes one flow.
func (m *Merger) Add(f Flow) { heap.Push(&m.h, f) }

// Ready releases, in time order, every held flow older than now minus the
// window.
func (m *Merger) Ready(now time.Time) []Flow {
	return m.release(func(f *Flow) bool { return !f.Time.After(now.Add(-m.window)) })
}

// Flush releases every held flow, in time order.
func (m *Merger) Flush() []Flow { return m.release(func(*Flow) bool { return true }) }

// Held is the number of flows waiting.
func (m *Merger) Held() int { return len(m.h) }

func (m *Merger) release(ok func(*Flow) bool) []Flow {
	var out []Flow
	for len(m.h) > 0 && ok(&m.h[0]) {
		f := heap.Pop(&m.h).(Flow)
		if f.Time.Before(m.released) {
			m.Late++
		} else {
			m.released = f.Time
		}
		out = append(out, f)
	}
	return out
}

type flowHeap []Flow

func (h flowHeap) Len() int           { return len(h) }
func (h flowHeap) Less(i, j int) bool { return h[i].Time.Before(h[j].Time) }
func (h flowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *flowHeap) Push(x any)        { *h = append(*h, x.(Flow)) }
func (h *flowHeap) Pop() any {
	old := *h
	f := old[len(old)-1]
	*h = old[:len(old)-1]
	return f
}
