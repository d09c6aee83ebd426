package health

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// step is one input to the tracker at offset at from the start of a case:
// a state observation, an ack, or (when check is set) an evaluation whose
// decisions must equal want.
type step struct {
	at     time.Duration
	node   string
	state  MemberState
	ack    bool
	forget bool
	health int
	check  bool
	want   []string // "node=false" / "node=true"
	iso    bool
}

func ref(name string) loadbalancer.NodeRef { return loadbalancer.NodeRef{ClusterID: 1, Name: name} }

func testSafety() safety {
	return safety{maxHealthScore: 3, quorumMinPeers: 2, holdDown: time.Second, maxHoldDown: 4 * time.Second, flapWindow: time.Minute}
}

func TestTracker(t *testing.T) {
	up := func(at time.Duration, nodes ...string) []step {
		var s []step
		for _, n := range nodes {
			s = append(s, step{at: at, node: n, state: StateAlive})
		}
		return s
	}
	eval := func(at time.Duration, health int, iso bool, want ...string) step {
		return step{at: at, check: true, health: health, iso: iso, want: want}
	}
	obs := func(at time.Duration, node string, st MemberState) step { return step{at: at, node: node, state: st} }
	cat := func(parts ...any) []step {
		var s []step
		for _, p := range parts {
			switch v := p.(type) {
			case step:
				s = append(s, v)
			case []step:
				s = append(s, v...)
			}
		}
		return s
	}
	const ms = time.Millisecond
	tests := []struct {
		name  string
		steps []step
	}{
		{"one death in a healthy pool is acted on", cat(
			up(0, "a", "b", "c", "d"),
			eval(0, 0, false),
			obs(500*ms, "b", StateDead),
			eval(500*ms, 0, false, "b=false"),
			eval(600*ms, 0, false), // no repeat
		)},
		{"two of four dead is not more than half", cat(
			up(0, "a", "b", "c", "d"),
			obs(ms, "a", StateDead), obs(ms, "b", StateDead),
			eval(ms, 0, false, "a=false", "b=false"),
		)},
		{"three of four failing: this member is the isolated one", cat(
			up(0, "a", "b", "c", "d"),
			obs(ms, "a", StateDead), obs(ms, "b", StateSuspect), obs(ms, "c", StateSuspect),
			eval(ms, 0, true),
			// Reconnected: the suspects answer again, a stays dead.
			obs(2*ms, "b", StateAlive), obs(2*ms, "c", StateAlive),
			eval(2*ms, 0, false, "a=false"),
		)},
		{"degraded health score holds deaths until it recovers", cat(
			up(0, "a", "b", "c", "d"),
			obs(ms, "a", StateDead),
			eval(ms, 4, true),
			eval(2*ms, 3, false, "a=false"),
		)},
		{"held death dropped when the peer comes back", cat(
			up(0, "a", "b", "c"),
			obs(ms, "a", StateDead),
			eval(ms, 7, true),
			obs(2*ms, "a", StateAlive),
			eval(3*ms, 0, false),
		)},
		{"a single peer is judged by health score only", cat(
			up(0, "a"),
			obs(ms, "a", StateDead),
			eval(ms, 0, false, "a=false"),
		)},
		{"graceful leave is not a death", cat(
			up(0, "a", "b", "c"),
			obs(ms, "a", StateLeft),
			eval(ms, 0, false),
		)},
		{"left peers do not count in the quorum", cat(
			up(0, "a", "b", "c", "d"),
			obs(ms, "a", StateLeft), obs(ms, "b", StateLeft),
			obs(ms, "c", StateDead),
			eval(ms, 0, false, "c=false"),
		)},
		{"never seen alive: never marked", cat(
			up(0, "a", "b"),
			obs(ms, "ghost", StateDead),
			eval(ms, 0, false),
		)},
		{"restored only after the hold-down", cat(
			up(0, "a", "b", "c"),
			obs(0, "a", StateDead),
			eval(0, 0, false, "a=false"),
			obs(100*ms, "a", StateAlive),
			eval(100*ms, 0, false),
			eval(1099*ms, 0, false),
			eval(1100*ms, 0, false, "a=true"),
		)},
		{"suspect interrupts nothing but blocks the restore", cat(
			up(0, "a", "b", "c"),
			obs(0, "a", StateDead),
			eval(0, 0, false, "a=false"),
			obs(100*ms, "a", StateAlive),
			obs(200*ms, "a", StateSuspect),
			eval(1200*ms, 0, false),
			obs(1300*ms, "a", StateAlive),
			eval(1300*ms, 0, false, "a=true"),
		)},
		{"flaps double the hold-down up to the cap", cat(
			up(0, "a", "b", "c"),
			// death 1 at 0, back at 0: hold 1s
			obs(0, "a", StateDead), eval(0, 0, false, "a=false"),
			obs(0, "a", StateAlive), eval(999*ms, 0, false), eval(1000*ms, 0, false, "a=true"),
			// death 2 at 2s, back at 2s: hold 2s
			obs(2000*ms, "a", StateDead), eval(2000*ms, 0, false, "a=false"),
			obs(2000*ms, "a", StateAlive), eval(3999*ms, 0, false), eval(4000*ms, 0, false, "a=true"),
			// death 3: hold 4s; death 4: capped at 4s
			obs(5000*ms, "a", StateDead), eval(5000*ms, 0, false, "a=false"),
			obs(5000*ms, "a", StateAlive), eval(8999*ms, 0, false), eval(9000*ms, 0, false, "a=true"),
			obs(10000*ms, "a", StateDead), eval(10000*ms, 0, false, "a=false"),
			obs(10000*ms, "a", StateAlive), eval(13999*ms, 0, false), eval(14000*ms, 0, false, "a=true"),
		)},
		{"old flaps fall out of the window", cat(
			up(0, "a", "b", "c"),
			obs(0, "a", StateDead), eval(0, 0, false, "a=false"),
			obs(0, "a", StateAlive), eval(time.Second, 0, false, "a=true"),
			obs(2*time.Minute, "a", StateDead), eval(2*time.Minute, 0, false, "a=false"),
			obs(2*time.Minute, "a", StateAlive),
			eval(2*time.Minute+time.Second, 0, false, "a=true"),
		)},
		{"dead again during the hold-down stays down", cat(
			up(0, "a", "b", "c"),
			obs(0, "a", StateDead), eval(0, 0, false, "a=false"),
			obs(100*ms, "a", StateAlive), eval(500*ms, 0, false),
			obs(600*ms, "a", StateDead), eval(2*time.Second, 0, false),
		)},
		{"forgetting drops the peer and its vote", cat(
			up(0, "a", "b", "c", "d"),
			obs(ms, "a", StateDead), obs(ms, "b", StateDead), obs(ms, "c", StateDead),
			eval(ms, 0, true),
			step{at: 2 * ms, node: "a", forget: true},
			step{at: 2 * ms, node: "b", forget: true},
			// c of {c, d} dead: not more than half.
			eval(2*ms, 0, false, "c=false"),
		)},
		{"ack clears our own suspicion", cat(
			up(0, "a", "b", "c"),
			obs(ms, "a", StateSuspect), obs(ms, "b", StateSuspect),
			eval(ms, 0, true),
			step{at: 2 * ms, node: "a", ack: true},
			eval(2*ms, 0, false),
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			tr := newTracker(testSafety())
			for i, s := range tt.steps {
				now := start.Add(s.at)
				switch {
				case s.check:
					changes, iso := tr.evaluate(now, s.health)
					var got []string
					for _, c := range changes {
						if c.ref != ref(c.name) {
							t.Errorf("step %d: change for %s has ref %v", i, c.name, c.ref)
						}
						got = append(got, fmt.Sprintf("%s=%t", c.name, c.healthy))
					}
					if fmt.Sprint(got) != fmt.Sprint(s.want) {
						t.Fatalf("step %d at %s: decisions %v, want %v", i, s.at, got, s.want)
					}
					if iso.isolated != s.iso {
						t.Fatalf("step %d at %s: isolated=%t (%s), want %t", i, s.at, iso.isolated, iso.reason, s.iso)
					}
				case s.forget:
					tr.forget(s.node)
				case s.ack:
					tr.acked(s.node, now)
				default:
					tr.observe(s.node, ref(s.node), s.state, now)
				}
			}
		})
	}
}

func TestTrackerDetection(t *testing.T) {
	start := time.Unix(1000, 0)
	tr := newTracker(testSafety())
	for _, n := range []string{"a", "b", "c"} {
		tr.observe(n, ref(n), StateAlive, start)
	}
	tr.acked("a", start.Add(time.Second))
	tr.observe("a", ref("a"), StateDead, start.Add(1500*time.Millisecond))
	changes, _ := tr.evaluate(start.Add(1600*time.Millisecond), 0)
	if len(changes) != 1 || changes[0].detection != 600*time.Millisecond {
		t.Fatalf("changes %+v, want one death detected 600ms after the last ack", changes)
	}
	if ref, down := tr.forget("a"); !down || ref.Name != "a" {
		t.Fatalf("forget(a) = %v, %t; want a, true", ref, down)
	}
	if _, down := tr.forget("b"); down {
		t.Fatalf("forget(b) reported b as down")
	}
}

func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal(MemberStatus{Name: "c1/a", State: StateSuspect})
	if err != nil {
		t.Fatal(err)
	}
	if want := `"State":"suspect"`; !strings.Contains(string(b), want) {
		t.Fatalf("JSON %s lacks %s", b, want)
	}
}
