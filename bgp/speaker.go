package bgp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/route"
)

// failedRetryInterval paces retries of routes the kernel refused.
const failedRetryInterval = time.Second

// Speaker is the node's BGP speaker: it announces the node's pod CIDRs and
// installs what it learns into the kernel.
//
// Stop leaves installed routes in place on purpose: a restarted agent adopts
// them (see Config.StaleRouteGrace), so traffic does not blink.
type Speaker struct {
	cfg     Config
	core    *core
	metrics *metrics

	lifeMu  sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}

	// mu guards the route state below; the loop goroutine is its only
	// writer.
	mu           sync.Mutex
	table        *routeTable
	installed    map[netip.Prefix]netip.Addr // kernel state, ours
	pending      map[netip.Prefix]time.Time  // removal deadline after a lost session
	stale        map[netip.Prefix]bool       // adopted from a previous run
	staleAt      time.Time                   // when stale routes are swept
	installErrs  uint64
	failed       map[netip.Prefix]candidate // accepted, kernel refused; retried
	lastRetry    time.Time
	firstSession bool
	// dead are next hops of nodes the health view reports dead: routes via
	// them are withheld from the kernel (SetDeadNextHops).
	dead map[netip.Addr]bool
	// refreshing holds, per peer whose session came back after a graceful
	// restart, the prefixes it had not re-announced yet and until when a
	// withdrawal of one of them (GoBGP dropping it as stale at End-of-RIB)
	// waits SessionLossGrace.
	refreshing map[netip.Addr]*refresh
	// routes programs the kernel (one netlink socket for every change);
	// nil unless Config.InstallRoutes.
	routes *route.Writer

	// importRefused are the import-policy refusals already counted.
	importMu      sync.Mutex
	importRefused map[Refusal]bool
}

// NewSpeaker checks cfg and returns a speaker that is not yet started.
func NewSpeaker(cfg Config) (*Speaker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Table == 0 {
		cfg.Table = unix.RT_TABLE_MAIN
	}
	s := &Speaker{
		cfg:        cfg,
		core:       newCore(cfg, true),
		installed:  map[netip.Prefix]netip.Addr{},
		pending:    map[netip.Prefix]time.Time{},
		stale:      map[netip.Prefix]bool{},
		failed:     map[netip.Prefix]candidate{},
		dead:       map[netip.Addr]bool{},
		refreshing: map[netip.Addr]*refresh{},
	}
	m, err := newMetrics("speaker", cfg.Registerer, s.Status)
	if err != nil {
		return nil, fmt.Errorf("%s: register metrics: %w", cfg.Name, err)
	}
	s.metrics = m
	return s, nil
}

// Start adopts routes left by a previous run, starts BGP, dials the static
// and already set peers, and announces Config.PodCIDRs.
func (s *Speaker) Start(ctx context.Context) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.started {
		return ErrAlreadyStarted
	}
	subnets := s.cfg.NodeSubnets
	if len(subnets) == 0 && s.cfg.InstallRoutes {
		var err error
		if subnets, err = nodeSubnets(s.cfg.NodeIPs); err != nil {
			return fmt.Errorf("%s: find node subnets: %w", s.cfg.Name, err)
		}
	}
	s.table = newRouteTable(s.cfg.PodCIDRs, subnets, s.cfg.NodeIPs)
	if s.cfg.InstallRoutes {
		w, err := route.New(route.Config{Protocol: RouteProtocol, Table: s.cfg.Table, Owner: "bgp", Registerer: s.cfg.Registerer, Logger: s.cfg.Logger})
		if err != nil {
			return fmt.Errorf("%s: %w", s.cfg.Name, err)
		}
		s.routes = w
		if err := s.adopt(ctx); err != nil {
			w.Close()
			return err
		}
	}
	s.staleAt = time.Now().Add(s.cfg.StaleRouteTimeout)
	if err := s.core.start(ctx, s.cfg.PodCIDRs); err != nil {
		s.closeNetlink()
		return err
	}
	lctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.done = make(chan struct{})
	s.started = true
	go s.loop(lctx)
	s.cfg.Logger.Info("bgp speaker started", "node", s.cfg.Name, "asn", s.cfg.ASN, "router_id", s.cfg.RouterID,
		"podCIDRs", s.cfg.PodCIDRs, "adoptedRoutes", len(s.stale), "subnets", subnets)
	return nil
}

// Stop closes every session and stops the loop. Installed routes stay.
func (s *Speaker) Stop(ctx context.Context) error { return s.stop(ctx, true) }

// StopForRestart is Stop for a process about to exit and start again (an
// agent restart or upgrade): it stops the speaker's own work but leaves
// GoBGP's sessions to end with the process, so peers see the connections
// close without a NOTIFICATION and keep the node's routes through graceful
// restart, as after a crash. Stop ends every session with a Cease (a Hard
// Reset), after which peers withdraw the node's routes at once; GoBGP has
// no way to stop otherwise. Until the process exits, the sessions stay up
// and the node's routes stay announced.
func (s *Speaker) StopForRestart(ctx context.Context) error { return s.stop(ctx, false) }

func (s *Speaker) stop(ctx context.Context, closeSessions bool) error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if !s.started || s.stopped {
		return nil
	}
	s.stopped = true
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("%s: stop: %w", s.cfg.Name, ctx.Err())
	}
	if closeSessions {
		s.core.stop()
	} else {
		s.core.stopWatch()
	}
	s.closeNetlink()
	return nil
}

func (s *Speaker) closeNetlink() {
	if s.routes != nil {
		s.routes.Close()
	}
}

// SetPeers replaces the dynamic peer set (from the store); Config.StaticPeers
// are kept. Peers whose settings did not change keep their session.
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	return s.core.setPeers(ctx, peers)
}

// SetDeadNextHops names the next hops (node addresses) of the nodes the
// health view reports dead; it replaces the previous set. A learned route
// via one of them leaves the kernel at once, whatever BGP says: with
// graceful restart a node that died keeps its routes on its peers until
// its restart and LLGR timers run out, and a route reflector that is down
// cannot withdraw anything. BGP still holds such routes; once their next
// hop is no longer named here they go back into the kernel if BGP still
// has them. Routes are listed in Status.Withheld meanwhile. It may be
// called before Start.
func (s *Speaker) SetDeadNextHops(ctx context.Context, nextHops []netip.Addr) error {
	dead := make(map[netip.Addr]bool, len(nextHops))
	for _, a := range nextHops {
		if !a.IsValid() {
			return fmt.Errorf("%s: set dead next hops: %w: invalid address", s.cfg.Name, ErrInvalidConfig)
		}
		dead[a.Unmap()] = true
	}
	running := s.isRunning()
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.dead
	s.dead = dead
	if s.table == nil || !running {
		return nil // Start applies them; after Stop nothing is programmed
	}
	plan := kernelPlan{}
	for p, c := range s.table.accepted {
		if dead[c.nextHop] != was[c.nextHop] {
			plan[p] = c // program withholds or restores it
		}
	}
	// Routes kept through a grace or adopted from a previous run are not
	// in the table: their kernel next hop decides.
	for p, gw := range s.installed {
		if _, ok := s.table.accepted[p]; !ok && dead[gw] {
			s.remove(plan, p)
		}
	}
	for a := range dead {
		if !was[a] {
			s.cfg.Logger.Info("bgp routes via a dead node withheld", "node", s.cfg.Name, "next_hop", a)
		}
	}
	for a := range was {
		if !dead[a] {
			s.cfg.Logger.Info("bgp routes via a node alive again restored", "node", s.cfg.Name, "next_hop", a)
		}
	}
	if len(plan) > 0 {
		s.program(ctx, plan)
	}
	return nil
}

// SetImportPolicy makes the speaker accept only the routes rules allow (see
// ImportRule and ImportRules) and refuse, count and report the others; the
// routes already received are judged again at once. Call it again whenever
// the registry changes; before Start it takes effect when the speaker
// starts. Without a call every route is accepted (static setups).
func (s *Speaker) SetImportPolicy(ctx context.Context, rules []ImportRule) error {
	return s.core.setImportPolicy(ctx, rules)
}

// Announce makes the announced prefixes exactly prefixes, each with the
// node IP of its family as next hop.
func (s *Speaker) Announce(ctx context.Context, prefixes []netip.Prefix) error {
	if !s.isRunning() {
		return ErrNotStarted
	}
	return s.core.announce(ctx, prefixes)
}

func (s *Speaker) isRunning() bool {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	return s.started && !s.stopped
}

// Status reports sessions, per-peer prefix counts, installed and refused
// routes.
func (s *Speaker) Status(ctx context.Context) (Status, error) {
	if !s.isRunning() {
		return Status{}, ErrNotStarted
	}
	peers, err := s.core.peerStatus(ctx)
	if err != nil {
		return Status{}, err
	}
	imports, err := s.core.importRefusals(ctx)
	if err != nil {
		return Status{}, err
	}
	s.noteImportRefusals(imports)
	st := Status{Role: "speaker", Name: s.cfg.Name, ASN: s.cfg.ASN, RouterID: s.cfg.RouterID, Peers: peers}
	s.core.mu.Lock()
	for p := range s.core.announced {
		st.Announced = append(st.Announced, p)
	}
	s.core.mu.Unlock()
	sort.Slice(st.Announced, func(i, j int) bool { return st.Announced[i].String() < st.Announced[j].String() })

	s.mu.Lock()
	perPeer := map[string]int{}
	for p, c := range s.table.accepted {
		r := InstalledRoute{Prefix: p, NextHop: c.nextHop, Peer: c.peer}
		if s.dead[c.nextHop] {
			st.Withheld = append(st.Withheld, r)
			continue
		}
		if gw, ok := s.installed[p]; s.cfg.InstallRoutes && (!ok || gw != c.nextHop) {
			st.Failed = append(st.Failed, r)
			continue
		}
		st.Installed = append(st.Installed, r)
		perPeer[c.peer]++
	}
	st.Refused = append(s.table.refusals(), imports...)
	st.PendingRemoval = len(s.pending)
	st.StaleRoutes = len(s.stale)
	st.InstallErrors = s.installErrs
	s.mu.Unlock()
	sort.Slice(st.Installed, func(i, j int) bool { return st.Installed[i].Prefix.String() < st.Installed[j].Prefix.String() })
	sort.Slice(st.Failed, func(i, j int) bool { return st.Failed[i].Prefix.String() < st.Failed[j].Prefix.String() })
	sort.Slice(st.Withheld, func(i, j int) bool { return st.Withheld[i].Prefix.String() < st.Withheld[j].Prefix.String() })
	for i := range st.Peers {
		st.Peers[i].PrefixesInstalled = perPeer[st.Peers[i].Address.String()]
	}
	return st, nil
}

// adopt reads the routes of RouteProtocol a previous run left behind.
func (s *Speaker) adopt(ctx context.Context) error {
	routes, err := s.routes.List(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", s.cfg.Name, err)
	}
	for _, r := range routes {
		s.installed[r.Prefix] = r.NextHop
		s.stale[r.Prefix] = true
	}
	return nil
}

func (s *Speaker) loop(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	audit := time.NewTicker(importAuditInterval)
	defer audit.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.core.events.signal:
			s.process(ctx, s.core.events.drain())
		case now := <-tick.C:
			s.sweep(ctx, now)
		case <-audit.C:
			if refs, err := s.core.importRefusals(ctx); err == nil {
				s.noteImportRefusals(refs)
			} else {
				s.cfg.Logger.Warn("bgp: list routes refused by the import policy", "node", s.cfg.Name, "error", err)
			}
		}
	}
}

// importAuditInterval is how often the speaker looks for received routes
// its import policy refuses, to log and count them (GoBGP reports policy
// rejections nowhere).
const importAuditInterval = 2 * time.Second

// noteImportRefusals logs and counts the import-policy refusals not seen in
// the previous look, and forgets those gone (withdrawn, or now accepted).
func (s *Speaker) noteImportRefusals(refs []Refusal) {
	s.importMu.Lock()
	defer s.importMu.Unlock()
	next := make(map[Refusal]bool, len(refs))
	for _, r := range refs {
		next[r] = true
		if s.importRefused[r] {
			continue
		}
		s.metrics.refused.WithLabelValues(string(r.Reason)).Inc()
		s.cfg.Logger.Warn("bgp route refused by the import policy", "node", s.cfg.Name, "prefix", r.Prefix,
			"next_hop", r.NextHop, "peer", r.Peer, "reason", r.Reason)
	}
	s.importRefused = next
}

// refresh is a peer's graceful-restart refresh in progress.
type refresh struct {
	until    time.Time
	prefixes map[netip.Prefix]bool
}

func (s *Speaker) process(ctx context.Context, evs []event) {
	var up, graceful map[netip.Addr]bool
	for _, ev := range evs {
		if s.cfg.SessionLossGrace > 0 && ev.kind == evWithdraw && ev.peer.IsValid() {
			// GoBGP withdraws a lost session's paths before it reports
			// the peer down, but its session state is already updated.
			var err error
			if up, graceful, err = s.core.sessions(ctx); err != nil {
				up, graceful = map[netip.Addr]bool{}, map[netip.Addr]bool{}
			}
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The kernel is programmed once per batch of events, in as few netlink
	// messages as it takes, instead of once per route.
	plan := make(kernelPlan, len(evs))
	defer s.program(ctx, plan)
	now := time.Now()
	for _, ev := range evs {
		switch ev.kind {
		case evPeer:
			s.cfg.Logger.Info("bgp session state", "node", s.cfg.Name, "peer", ev.peer, "established", ev.up)
			s.core.peerState(ctx, ev.peer, ev.up)
			s.noteRefresh(ev.peer, ev.up, now)
			if ev.up && !s.firstSession {
				s.firstSession = true
				if at := now.Add(s.cfg.StaleRouteGrace); at.Before(s.staleAt) {
					s.staleAt = at
				}
			}
		case evPrefixLimit:
			if s.core.cutOffPeer(ctx, ev.peer) {
				s.metrics.limitCutOffs.WithLabelValues(ev.peer.String()).Inc()
			}
		case evPath:
			if !ev.peer.IsValid() || !ev.nextHop.IsValid() {
				continue // our own announcement
			}
			if r := s.refreshing[ev.peer]; r != nil {
				delete(r.prefixes, ev.prefix)
			}
			s.apply(plan, s.table.upsert(ev.prefix, ev.nextHop, ev.peer.String()), false)
		case evWithdraw:
			if !ev.peer.IsValid() {
				continue
			}
			s.apply(plan, s.table.withdraw(ev.prefix), s.deferWithdrawal(ev, up, graceful, now))
		}
	}
}

// noteRefresh starts, on a session coming up, the refresh of the prefixes
// still held from the peer's previous session (GoBGP kept them as stale:
// with graceful restart nothing was withdrawn), and forgets it on a
// session going down. s.mu is held.
func (s *Speaker) noteRefresh(peer netip.Addr, up bool, now time.Time) {
	delete(s.refreshing, peer)
	if !up || s.cfg.SessionLossGrace <= 0 {
		return
	}
	r := &refresh{until: now.Add(max(s.cfg.GracefulRestartTime, s.cfg.SessionLossGrace)), prefixes: map[netip.Prefix]bool{}}
	name := peer.String()
	for p, c := range s.table.cands {
		if c.peer == name {
			r.prefixes[p] = true
		}
	}
	if len(r.prefixes) > 0 {
		s.refreshing[peer] = r
	}
}

// deferWithdrawal says whether a withdrawal waits SessionLossGrace before
// the kernel route goes: only when it may be undone in a moment. That is a
// session that dropped without graceful restart, or the stale routes GoBGP
// drops at the End-of-RIB of a peer back from a graceful restart (a
// restarted reflector has not necessarily re-learned every route yet).
// Everything else takes effect at once: a withdrawal on a live session, a
// route of a peer cut off for its prefix count or no longer configured, a
// stale route the import policy now refuses, and the end of the restart or
// LLGR timers (GoBGP already waited). s.mu is held.
func (s *Speaker) deferWithdrawal(ev event, up, graceful map[netip.Addr]bool, now time.Time) bool {
	if s.cfg.SessionLossGrace <= 0 {
		return false
	}
	s.core.mu.Lock()
	_, configured := s.core.peers[ev.peer]
	cut := !s.core.cutOff[ev.peer].IsZero()
	s.core.mu.Unlock()
	if !configured || cut {
		return false
	}
	if !up[ev.peer] {
		return !graceful[ev.peer]
	}
	r := s.refreshing[ev.peer]
	if r == nil || !r.prefixes[ev.prefix] {
		return false
	}
	delete(r.prefixes, ev.prefix)
	return now.Before(r.until)
}

// kernelPlan is the kernel state a batch of changes wants, by prefix: the
// route to install, or nil to remove the prefix's route. The last change
// of a prefix wins, so a route withdrawn and learned again within a batch
// never leaves the kernel.
type kernelPlan map[netip.Prefix]*candidate

// apply plans a table change; removals of a lost session wait for the
// grace.
func (s *Speaker) apply(plan kernelPlan, ch tableChange, deferRemoval bool) {
	for _, r := range ch.refused {
		s.metrics.refused.WithLabelValues(string(r.Reason)).Inc()
		s.cfg.Logger.Warn("bgp route refused", "node", s.cfg.Name, "prefix", r.Prefix, "next_hop", r.NextHop,
			"peer", r.Peer, "reason", r.Reason, "conflict", r.Conflict)
	}
	for _, c := range ch.remove {
		if deferRemoval {
			s.pending[c.prefix] = time.Now().Add(s.cfg.SessionLossGrace)
			continue
		}
		s.remove(plan, c.prefix)
	}
	for _, c := range ch.install {
		delete(s.pending, c.prefix)
		delete(s.stale, c.prefix)
		s.install(plan, c)
	}
}

// install plans one accepted route.
func (s *Speaker) install(plan kernelPlan, c candidate) {
	delete(s.failed, c.prefix)
	plan[c.prefix] = &c
}

// remove plans the removal of p's route.
func (s *Speaker) remove(plan kernelPlan, p netip.Prefix) {
	delete(s.pending, p)
	delete(s.stale, p)
	delete(s.failed, p)
	plan[p] = nil
}

// program makes the kernel what plan wants. A failed install (say, a next
// hop not yet reachable, or a prefix another owner routes) is retried by
// sweep. s.mu is held.
func (s *Speaker) program(ctx context.Context, plan kernelPlan) {
	changes := make([]route.Change, 0, len(plan))
	cands := make([]*candidate, 0, len(plan))
	for p, c := range plan {
		gw, ok := s.installed[p]
		if c != nil && s.dead[c.nextHop] {
			c = nil // withheld: its node is dead (SetDeadNextHops)
		}
		if c == nil {
			if !ok {
				continue
			}
			delete(s.installed, p)
			if s.cfg.InstallRoutes {
				changes = append(changes, route.Change{Route: route.Route{Prefix: p}, Delete: true})
				cands = append(cands, nil)
			}
			continue
		}
		if ok && gw == c.nextHop {
			continue // adopted, kept through a grace or unchanged: no flap
		}
		if s.cfg.InstallRoutes {
			changes = append(changes, route.Change{Route: route.Route{Prefix: p, NextHop: c.nextHop}})
			cands = append(cands, c)
		}
	}
	if len(changes) == 0 {
		return
	}
	// Stopping must not leave a batch half applied.
	errs := s.routes.Apply(context.WithoutCancel(ctx), changes)
	for i, ch := range changes {
		var err error
		if errs != nil {
			err = errs[i]
		}
		if ch.Delete {
			if err != nil {
				s.installErrs++
				s.metrics.installErrs.Inc()
				s.cfg.Logger.Error("bgp route removal failed", "node", s.cfg.Name, "prefix", ch.Route.Prefix, "error", err)
				continue
			}
			s.metrics.removals.Inc()
			continue
		}
		c := cands[i]
		if err != nil {
			// A prefix another owner routes is refused by the writer, which
			// reports it; it is retried like any failure, so the route goes
			// in once the other owner's route is gone.
			if _, retry := s.failed[c.prefix]; !retry && !errors.Is(err, route.ErrConflict) {
				s.installErrs++
				s.metrics.installErrs.Inc()
				s.cfg.Logger.Error("bgp route install failed; retrying", "node", s.cfg.Name, "prefix", c.prefix, "next_hop", c.nextHop, "peer", c.peer, "error", err)
			}
			s.failed[c.prefix] = *c
			continue
		}
		delete(s.failed, c.prefix)
		s.metrics.installs.Inc()
		s.installed[c.prefix] = c.nextHop
	}
}

// sweep removes routes whose grace expired without being re-learned.
func (s *Speaker) sweep(ctx context.Context, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	plan := kernelPlan{}
	for p, at := range s.pending {
		if now.Before(at) {
			continue
		}
		if _, ok := s.table.accepted[p]; ok {
			delete(s.pending, p)
			continue
		}
		s.cfg.Logger.Info("bgp route removed after session-loss grace", "node", s.cfg.Name, "prefix", p)
		s.remove(plan, p)
	}
	var retried []candidate
	if len(s.failed) > 0 && now.Sub(s.lastRetry) >= failedRetryInterval {
		s.lastRetry = now
		for p, c := range s.failed {
			if a, ok := s.table.accepted[p]; !ok || a.nextHop != c.nextHop {
				delete(s.failed, p)
				continue
			}
			// Stays in failed until it goes in, so it is not reported
			// again.
			plan[p] = &c
			retried = append(retried, c)
		}
	}
	if len(s.stale) > 0 && !now.Before(s.staleAt) {
		for p := range s.stale {
			if _, ok := s.table.accepted[p]; ok {
				continue
			}
			s.cfg.Logger.Info("bgp stale route of a previous run removed", "node", s.cfg.Name, "prefix", p)
			s.remove(plan, p)
		}
		clear(s.stale)
	}
	if len(plan) == 0 {
		return
	}
	s.program(ctx, plan)
	for _, c := range retried {
		if _, still := s.failed[c.prefix]; !still {
			s.cfg.Logger.Info("bgp route installed after retry", "node", s.cfg.Name, "prefix", c.prefix, "next_hop", c.nextHop)
		}
	}
}

func nodeSubnets(ips []netip.Addr) ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, n := range ips {
			if n == ip {
				ones, _ := a.Mask.Size()
				out = append(out, netip.PrefixFrom(ip, ones).Masked())
			}
		}
	}
	return out, nil
}

// FlushRoutes deletes every route of RouteProtocol from table (0 = main) in
// the calling thread's network namespace, for a node where BGP is turned
// off for good. A running Speaker re-installs what it learns; this is not
// for use next to one. It returns how many routes it removed.
func FlushRoutes(table int) (int, error) {
	w, err := route.New(route.Config{Protocol: RouteProtocol, Table: table, Owner: "bgp"})
	if err != nil {
		return 0, fmt.Errorf("flush routes: %w", err)
	}
	defer w.Close()
	return w.Flush()
}
