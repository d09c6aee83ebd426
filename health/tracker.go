package health

import (
	"fmt"
	"sort"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// MemberState is a peer's state as this member sees it.
type MemberState int

const (
	// StateAlive: memberlist holds the peer alive.
	StateAlive MemberState = iota
	// StateSuspect: alive for memberlist, but this member's own probe of it
	// failed (direct and indirect) and no direct ack has come since.
	StateSuspect
	// StateDead: memberlist declared the peer dead.
	StateDead
	// StateLeft: the peer announced a graceful leave. Not a death.
	StateLeft
)

func (s MemberState) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MarshalText renders the state by name, e.g. in JSON status documents.
func (s MemberState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// safety holds the parameters of the decision rules.
type safety struct {
	maxHealthScore int
	quorumMinPeers int
	holdDown       time.Duration
	maxHoldDown    time.Duration
	flapWindow     time.Duration
}

func (c *Config) safety() safety {
	return safety{
		maxHealthScore: c.MaxHealthScore,
		quorumMinPeers: c.QuorumMinPeers,
		holdDown:       c.HoldDown,
		maxHoldDown:    c.MaxHoldDown,
		flapWindow:     c.FlapWindow,
	}
}

// peer is what the tracker knows of one member other than itself.
type peer struct {
	name  string
	ref   loadbalancer.NodeRef
	state MemberState
	// since is when the peer entered state.
	since time.Time
	// lastAlive is the last positive evidence of life: a direct ack to one
	// of our probes, or a join or update event.
	lastAlive time.Time
	// healthy is the decision: what the sink is told.
	healthy bool
	// held is set while the peer is dead but the safety rules forbid acting.
	held bool
	// deaths are the times the peer was marked unhealthy, within flapWindow.
	deaths []time.Time
	// restoreAt is when an alive-again unhealthy peer may be restored; zero
	// while not scheduled.
	restoreAt time.Time
}

// tracker decides, from observed member states and this member's health
// score, which peers are healthy. It is pure logic driven by an explicit
// clock; the Pool owns it and calls it from its loop only.
type tracker struct {
	cfg   safety
	peers map[string]*peer
}

func newTracker(cfg safety) *tracker {
	return &tracker{cfg: cfg, peers: make(map[string]*peer)}
}

// observe records the state of a peer seen now. A peer first seen in a
// non-alive state is ignored: nodes never seen alive are never marked.
func (t *tracker) observe(name string, ref loadbalancer.NodeRef, st MemberState, now time.Time) {
	p, ok := t.peers[name]
	if !ok {
		if st != StateAlive && st != StateSuspect {
			return
		}
		p = &peer{name: name, ref: ref, state: st, since: now, lastAlive: now, healthy: true}
		t.peers[name] = p
		return
	}
	if ref.ClusterID != 0 {
		p.ref = ref
	}
	if st == p.state {
		return
	}
	// Suspect and alive are both "up"; only a change between up and
	// dead/left restarts the hold-down clock, and coming up counts as
	// evidence of life (a rejoin).
	if isUp(st) != isUp(p.state) {
		p.since = now
		p.restoreAt = time.Time{}
		if isUp(st) {
			p.lastAlive = now
		}
	}
	p.state = st
}

// acked records a direct ack of a peer to one of our probes.
func (t *tracker) acked(name string, now time.Time) {
	if p, ok := t.peers[name]; ok {
		p.lastAlive = now
		if p.state == StateSuspect {
			p.state = StateAlive
		}
	}
}

// forget drops a peer, returning it and whether it had been marked unhealthy.
func (t *tracker) forget(name string) (loadbalancer.NodeRef, bool) {
	p, ok := t.peers[name]
	if !ok {
		return loadbalancer.NodeRef{}, false
	}
	delete(t.peers, name)
	return p.ref, !p.healthy
}

func isUp(s MemberState) bool { return s == StateAlive || s == StateSuspect }

// isolation is the outcome of the self-check of the safety rules.
type isolation struct {
	isolated bool
	reason   string
	// pool is the number of peers that count (not left); failing those
	// dead or suspect.
	pool, failing int
}

func (t *tracker) isolation(healthScore int) isolation {
	var iso isolation
	for _, p := range t.peers {
		if p.state == StateLeft {
			continue
		}
		iso.pool++
		if p.state == StateDead || p.state == StateSuspect {
			iso.failing++
		}
	}
	switch {
	case healthScore > t.cfg.maxHealthScore:
		iso.isolated = true
		iso.reason = fmt.Sprintf("own health score %d above %d", healthScore, t.cfg.maxHealthScore)
	case iso.pool >= t.cfg.quorumMinPeers && 2*iso.failing > iso.pool:
		iso.isolated = true
		iso.reason = fmt.Sprintf("%d of %d peers failing at once", iso.failing, iso.pool)
	}
	return iso
}

// change is one decision to pass to the sink.
type change struct {
	name    string
	ref     loadbalancer.NodeRef
	healthy bool
	// detection is, for a death, the time since the last evidence of life.
	detection time.Duration
	// holdDown is, for a restore, the hold-down that was applied.
	holdDown time.Duration
}

// evaluate applies the rules at now and returns the decisions that changed,
// sorted by peer name.
func (t *tracker) evaluate(now time.Time, healthScore int) ([]change, isolation) {
	iso := t.isolation(healthScore)
	var out []change
	for _, p := range t.peers {
		switch {
		case p.state == StateDead && p.healthy:
			if iso.isolated {
				p.held = true
				continue
			}
			p.held = false
			p.healthy = false
			p.restoreAt = time.Time{}
			p.deaths = append(recent(p.deaths, now, t.cfg.flapWindow), now)
			out = append(out, change{name: p.name, ref: p.ref, healthy: false, detection: now.Sub(p.lastAlive)})
		case p.state == StateDead:
			p.held = false
		case !p.healthy:
			// Alive, suspect or left again after a death we acted on.
			p.held = false
			if p.state == StateSuspect {
				// Not restored while our own probes fail; the clock
				// keeps running from when it came back.
				continue
			}
			hold := t.holdDown(p, now)
			if p.restoreAt.IsZero() {
				p.restoreAt = p.since.Add(hold)
			}
			if now.Before(p.restoreAt) {
				continue
			}
			p.healthy = true
			p.restoreAt = time.Time{}
			out = append(out, change{name: p.name, ref: p.ref, healthy: true, holdDown: hold})
		default:
			p.held = false
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, iso
}

// holdDown is HoldDown doubled for every further death within FlapWindow,
// capped at MaxHoldDown.
func (t *tracker) holdDown(p *peer, now time.Time) time.Duration {
	p.deaths = recent(p.deaths, now, t.cfg.flapWindow)
	hold := t.cfg.holdDown
	for i := 1; i < len(p.deaths) && hold < t.cfg.maxHoldDown; i++ {
		hold *= 2
	}
	return min(hold, t.cfg.maxHoldDown)
}

// recent drops the times older than window before now.
func recent(ts []time.Time, now time.Time, window time.Duration) []time.Time {
	i := 0
	for i < len(ts) && now.Sub(ts[i]) > window {
		i++
	}
	return ts[i:]
}
