package health

import (
	"sort"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Status is a snapshot of the pool as this member sees it.
type Status struct {
	// Self is this member's name.
	Self string
	// Members are the peers the pool tracks (seen alive at least once and
	// still in the registry), sorted by name.
	Members []MemberStatus
	// Counts of Members by state.
	Alive, Suspect, Dead, Left int
	// Unhealthy is the number of peers marked unhealthy; Held the number of
	// dead peers the safety rules keep from being marked.
	Unhealthy, Held int
	// HealthScore is this member's Lifeguard health score (0 is healthy).
	HealthScore int
	// Isolated is set while this member believes it is the one cut off and
	// acts on no death; IsolationReason says which rule fired.
	Isolated        bool
	IsolationReason string
	// LastDetection is the time from the last direct ack of the most
	// recently marked node to its marking, an upper bound of the detection
	// latency (see docs/health.md); MaxDetection the largest seen.
	LastDetection, MaxDetection time.Duration
	// Refused are the kinds of gossip messages refused because they
	// disagree with the node registry (at most 64 kinds are kept; the
	// clustermesh_gossip_refused_total counter counts them all), as of the
	// Status call.
	Refused []Refusal
	// Updated is when the snapshot was taken.
	Updated time.Time
}

// MemberStatus is one peer in a Status.
type MemberStatus struct {
	Name  string
	Ref   loadbalancer.NodeRef
	State MemberState
	// Since is when the peer entered its current up/down state.
	Since time.Time
	// Healthy is what the sink was last told (or will be told).
	Healthy bool
	// Held is set when the peer is dead but the safety rules hold the
	// verdict back.
	Held bool
}

// Status returns the latest snapshot, taken at the end of the last
// evaluation: on every memberlist event, and while Run runs at least every
// 10 × Config.EvaluateInterval (every EvaluateInterval while a decision is
// pending).
func (p *Pool) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.status
	s.Members = append([]MemberStatus(nil), s.Members...)
	// Refusals happen in memberlist's callbacks, between evaluations: they
	// are read live.
	s.Refused = p.refusalsLocked()
	return s
}

// publish stores a new snapshot and updates the gauges.
func (p *Pool) publish(tr *tracker, iso isolation, health int, changes []change, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := p.status
	s := Status{
		Self:            p.name,
		HealthScore:     health,
		Isolated:        iso.isolated,
		IsolationReason: iso.reason,
		LastDetection:   prev.LastDetection,
		MaxDetection:    prev.MaxDetection,
		Updated:         now,
	}
	for _, c := range changes {
		if !c.healthy {
			s.LastDetection = c.detection
			s.MaxDetection = max(s.MaxDetection, c.detection)
		}
	}
	for _, pe := range tr.peers {
		s.Members = append(s.Members, MemberStatus{
			Name: pe.name, Ref: pe.ref, State: pe.state, Since: pe.since,
			Healthy: pe.healthy, Held: pe.held,
		})
		switch pe.state {
		case StateAlive:
			s.Alive++
		case StateSuspect:
			s.Suspect++
		case StateDead:
			s.Dead++
		case StateLeft:
			s.Left++
		}
		if !pe.healthy {
			s.Unhealthy++
		}
		if pe.held {
			s.Held++
		}
	}
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].Name < s.Members[j].Name })
	p.status = s
	if prev.Isolated != s.Isolated {
		if s.Isolated {
			p.log.Warn("This member looks cut off; holding back deaths", "reason", s.IsolationReason)
		} else {
			p.log.Info("This member is no longer isolated; acting on deaths again")
		}
	}
	p.metrics.set(s)
}

// logBridge turns memberlist's "[LEVEL] memberlist: msg" lines into slog
// records, and picks out the failures of this member's own probes.
type logBridge struct{ p *Pool }

const suspectPrefix = "Suspect "

func (b *logBridge) Write(line []byte) (int, error) {
	s := strings.TrimSpace(string(line))
	level, msg := "INFO", s
	if strings.HasPrefix(s, "[") {
		if i := strings.Index(s, "]"); i > 0 {
			level, msg = s[1:i], strings.TrimSpace(s[i+1:])
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	// Own probe failed, direct and indirect: "Suspect <name> has failed, no
	// acks received".
	if rest, ok := strings.CutPrefix(msg, suspectPrefix); ok {
		if name, _, ok := strings.Cut(rest, " has failed"); ok {
			b.p.suspected(name)
		}
	}
	log := b.p.log
	if strings.Contains(msg, "ignoring alive message") {
		// Our own admission filter refusing unregistered members; repeated
		// on every gossip round, so kept out of the warnings.
		level = "DEBUG"
	}
	switch level {
	case "DEBUG":
		log.Debug(msg, "component", "memberlist")
	case "WARN":
		log.Warn(msg, "component", "memberlist")
	case "ERR", "ERROR":
		log.Error(msg, "component", "memberlist")
	default:
		log.Info(msg, "component", "memberlist")
	}
	return len(line), nil
}
