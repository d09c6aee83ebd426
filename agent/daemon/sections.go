package daemon

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/health"
)

// bgpSection reports the BGP speaker in the agent's status. The section is
// "starting" until runBGP hands it the speaker, and says why the speaker
// stopped if it did.
type bgpSection struct {
	mu      sync.Mutex
	speaker *bgp.Speaker
	err     error
	// rules is the import policy in force: its next hops tell which
	// cluster an installed route leads to (status Cluster.Routes).
	rules []bgp.ImportRule
}

// setRules records the import policy in force.
func (s *bgpSection) setRules(rules []bgp.ImportRule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rules = rules
}

func (s *bgpSection) set(sp *bgp.Speaker, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.speaker, s.err = sp, err
}

func (s *bgpSection) report(st *status.Agent) {
	s.mu.Lock()
	sp, err, rules := s.speaker, s.err, s.rules
	s.mu.Unlock()
	sec := &status.BGP{State: status.SectionStarting}
	st.BGP = sec
	if err != nil {
		sec.State, sec.Error = status.SectionFailed, err.Error()
		return
	}
	if sp == nil {
		return
	}
	// The speaker's status asks GoBGP for its peers: bounded, so a wedged
	// speaker does not hang the status endpoint.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	bs, err := sp.Status(ctx)
	if err != nil {
		sec.Error = err.Error()
		return
	}
	*sec = bgpStatus(bs)
	countRoutes(st, routesByCluster(bs.Installed, rules))
}

// routesByCluster counts installed routes by the cluster whose import rule
// lists their next hop.
func routesByCluster(installed []bgp.InstalledRoute, rules []bgp.ImportRule) map[string]int {
	cluster := map[netip.Addr]string{}
	for _, r := range rules {
		for _, h := range r.NextHops {
			cluster[h] = r.Cluster
		}
	}
	out := map[string]int{}
	for _, r := range installed {
		if c, ok := cluster[r.NextHop.Unmap()]; ok {
			out[c]++
		}
	}
	return out
}

// countRoutes sets each cluster's Routes in st from n (by cluster name).
func countRoutes(st *status.Agent, n map[string]int) {
	for i := range st.Clusters {
		st.Clusters[i].Routes = n[st.Clusters[i].Name]
	}
}

// bgpStatus converts the speaker's status into the agent's section.
func bgpStatus(bs bgp.Status) status.BGP {
	sec := status.BGP{
		State: status.SectionRunning, ASN: bs.ASN, RouterID: bs.RouterID, Announced: bs.Announced,
		Installed: len(bs.Installed), Failed: len(bs.Failed),
		PendingRemoval: bs.PendingRemoval, StaleRoutes: bs.StaleRoutes, InstallErrors: bs.InstallErrors,
	}
	refusedBy := map[string]int{}
	for _, r := range bs.Refused {
		refusedBy[r.Peer]++
		sec.Refused = append(sec.Refused, status.BGPRefusal{
			Prefix: r.Prefix, NextHop: r.NextHop, Peer: r.Peer, Reason: string(r.Reason), Conflict: r.Conflict,
		})
	}
	for _, p := range bs.Peers {
		sec.Sessions = append(sec.Sessions, status.BGPSession{
			Peer: p.Name, Address: p.Address, ASN: p.ASN, State: p.State, Established: p.Established,
			Since: p.Since, CutOff: p.CutOff,
			Received: p.PrefixesReceived, Accepted: p.PrefixesAccepted, Installed: p.PrefixesInstalled,
			Refused: refusedBy[p.Address.String()], Advertised: p.PrefixesAdvertised,
		})
	}
	return sec
}

// healthSection reports the gossip pool in the agent's status.
type healthSection struct {
	mu   sync.Mutex
	pool *health.Pool
	err  error
}

func (s *healthSection) set(p *health.Pool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pool, s.err = p, err
}

func (s *healthSection) report(st *status.Agent) {
	s.mu.Lock()
	p, err := s.pool, s.err
	s.mu.Unlock()
	sec := &status.Health{State: status.SectionStarting}
	st.Health = sec
	switch {
	case err != nil:
		sec.State, sec.Error = status.SectionFailed, err.Error()
	case p != nil:
		*sec = healthStatus(p.Status())
	}
}

// healthStatus converts the pool's snapshot into the agent's section.
func healthStatus(hs health.Status) status.Health {
	sec := status.Health{
		State: status.SectionRunning, Self: hs.Self,
		Members: len(hs.Members), Alive: hs.Alive, Suspect: hs.Suspect, Dead: hs.Dead, Left: hs.Left,
		Unhealthy: hs.Unhealthy, Held: hs.Held, HealthScore: hs.HealthScore,
		Isolated: hs.Isolated, IsolationReason: hs.IsolationReason,
		LastDetectionSeconds: hs.LastDetection.Seconds(), MaxDetectionSeconds: hs.MaxDetection.Seconds(),
	}
	for _, r := range hs.Refused {
		sec.Refused = append(sec.Refused, status.HealthRefusal{
			Cluster: r.Cluster, Node: r.Node, Address: r.Addr, Owner: r.Owner,
			Field: r.Field, Reason: r.Reason, Count: r.Count, Last: r.Last,
		})
	}
	for _, m := range hs.Members {
		sec.MemberList = append(sec.MemberList, status.HealthMember{
			Name: m.Name, State: m.State.String(), Healthy: m.Healthy, Held: m.Held, Since: m.Since,
		})
	}
	return sec
}
