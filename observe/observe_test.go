package observe

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMerger(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	at := func(ms int, node string) Flow {
		return Flow{Time: t0.Add(time.Duration(ms) * time.Millisecond), Node: node}
	}
	m := NewMerger(time.Second)
	// Two agents, interleaved and out of order on arrival.
	for _, f := range []Flow{at(300, "b"), at(100, "a"), at(200, "b"), at(1500, "a")} {
		m.Add(f)
	}
	got := m.Ready(t0.Add(1300 * time.Millisecond))
	if len(got) != 3 || got[0].Node != "a" || got[1].Time != at(200, "").Time || got[2].Time != at(300, "").Time {
		t.Fatalf("ready at 1.3 s: %v, want the three flows up to 300 ms in order", got)
	}
	if m.Held() != 1 {
		t.Fatalf("held %d, want 1", m.Held())
	}
	// A flow older than what was released comes out at once, counted late.
	m.Add(at(250, "c"))
	if got := m.Ready(t0.Add(1300 * time.Millisecond)); len(got) != 1 || got[0].Node != "c" || m.Late != 1 {
		t.Fatalf("late flow: %v, late %d", got, m.Late)
	}
	if got := m.Flush(); len(got) != 1 || got[0].Node != "a" || m.Held() != 0 {
		t.Fatalf("flush: %v", got)
	}
}

func TestSortLast(t *testing.T) {
	t0 := time.Now()
	fs := []Flow{{Time: t0.Add(3), Node: "x"}, {Time: t0.Add(1)}, {Time: t0.Add(3), Node: "y"}, {Time: t0.Add(2)}}
	SortByTime(fs)
	if fs[0].Time != t0.Add(1) || fs[2].Node != "x" || fs[3].Node != "y" {
		t.Fatalf("sorted: %v (ties must keep their order)", fs)
	}
	for _, tc := range []struct{ n, want int }{{0, 4}, {2, 2}, {9, 4}} {
		if got := LastN(fs, tc.n); len(got) != tc.want {
			t.Errorf("LastN(%d) = %d flows, want %d", tc.n, len(got), tc.want)
		}
	}
}

func TestFilterRoundTrip(t *testing.T) {
	f := Filter{Kind: "translate", Verdict: "forwarded", Service: "default/echo", FromCluster: "c1", ToCluster: "c2",
		Namespace: "default", Pod: "p", Since: time.Date(2026, 12, 4, 1, 2, 3, 4, time.UTC)}
	got, err := ParseFilter(Request{Filter: f, Last: 5, Follow: true}.Query())
	if err != nil || got != f {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, f)
	}
}

func TestStream(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		status  int
		flows   int
		wantErr string
	}{
		{"two flows", `{"kind":"translate"}` + "\n" + `{"kind":"no-backend"}` + "\n", 200, 2, ""},
		{"refused", "no", 403, 0, "agent refused"},
		{"line over the bound", `{"kind":"` + strings.Repeat("x", MaxLine) + `"}` + "\n", 200, 0, "too long"},
		{"not json", "{\n", 200, 0, "flow line"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				fmt.Fprint(w, tc.body)
			}))
			defer srv.Close()
			n := 0
			err := Stream(context.Background(), srv.Client(), srv.URL, Request{}, func(Flow) error { n++; return nil })
			if n != tc.flows || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("%d flows, error %v; want %d flows, error containing %q", n, err, tc.flows, tc.wantErr)
			}
		})
	}
}
