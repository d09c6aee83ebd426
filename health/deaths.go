package health

import (
	"net"
	"net/netip"
	"time"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// A death memberlist reports is acted on only once this member's own ping
// of the node, at its registry address, goes unanswered. Memberlist accepts
// "dead" messages gossiped by any member and cannot tell who first sent one,
// so without this check one peer could get another cluster's live nodes
// marked dead by gossiping their deaths. A real death costs one more
// ProbeTimeout; a false report is refused, counted and reported, and the
// node is pinged again every ProbeInterval while memberlist holds it dead,
// so a node that does die meanwhile is still marked.

// deathCheck is one death memberlist reported, being confirmed.
type deathCheck struct {
	// at is when memberlist reported it.
	at       time.Time
	pinging  bool
	lastPing time.Time
	// confirmed is set once a ping went unanswered.
	confirmed bool
	// refused is set once a ping was answered (counted once per report).
	refused bool
}

type confirmedDeath struct {
	name string
	ref  loadbalancer.NodeRef
	at   time.Time
}

type pingTarget struct {
	name string
	addr netip.AddrPort
}

// deathChecksLocked returns the confirmed deaths of admitted members and
// the members to ping now, marking those as being pinged. p.mu must be
// held.
func (p *Pool) deathChecksLocked(admitted map[string]loadbalancer.NodeRef, now time.Time) ([]confirmedDeath, []pingTarget) {
	var deaths []confirmedDeath
	var pings []pingTarget
	for name, dc := range p.deaths {
		ref, ok := admitted[name]
		if !ok {
			delete(p.deaths, name)
			continue
		}
		switch {
		case dc.confirmed:
			deaths = append(deaths, confirmedDeath{name: name, ref: ref, at: dc.at})
		case !dc.pinging && now.Sub(dc.lastPing) >= p.cfg.ProbeInterval:
			dc.pinging = true
			pings = append(pings, pingTarget{name: name, addr: p.admitted[name].addr})
		}
	}
	return deaths, pings
}

// unconfirmedDeaths counts the reported deaths still being checked.
func (p *Pool) unconfirmedDeaths() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, dc := range p.deaths {
		if !dc.confirmed {
			n++
		}
	}
	return n
}

// confirmDeath pings name at addr (bounded by ProbeTimeout) and records the
// outcome.
func (p *Pool) confirmDeath(ml membership, name string, addr netip.AddrPort) {
	_, err := ml.Ping(name, net.UDPAddrFromAddrPort(addr))
	now := time.Now()
	p.mu.Lock()
	if dc := p.deaths[name]; dc != nil {
		dc.pinging, dc.lastPing = false, now
		switch {
		case err != nil:
			dc.confirmed = true
		case !dc.refused:
			dc.refused = true
			cluster, node := splitName(name)
			p.refuseLocked(&Refusal{Cluster: cluster, Node: node, Addr: addr, Field: "state", Reason: ReasonDeathNotConfirmed}, now)
		}
	}
	p.mu.Unlock()
	signal(p.wake)
}
