package health

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// HealthSink receives the pool's decisions. The agent passes its datapath
// (loadbalancer.Datapath satisfies it) or a wrapper that also records
// status. Calls come from one goroutine, never concurrently; an error makes
// the pool retry the same call on its next evaluation.
type HealthSink interface {
	SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error
}

var _ HealthSink = loadbalancer.Datapath(nil)

// Pool is this agent's member of the mesh-wide gossip pool. Create it with
// New, feed it the node registry, and Run it.
type Pool struct {
	cfg     Config
	name    string
	sink    HealthSink
	log     *slog.Logger
	metrics *metrics
	running atomic.Bool
	leaving atomic.Bool
	// pings are the death confirmations in flight.
	pings sync.WaitGroup

	// wake and joinWake carry "something changed" to the decision loop and
	// the joiner; both are 1-buffered and never closed.
	wake     chan struct{}
	joinWake chan struct{}

	mu sync.Mutex
	ml *memberlist.Memberlist
	// self is the address this member advertises, once Run knows it.
	self netip.AddrPort
	// registry is the node registry by member name; regSet tells whether
	// the agent has fed it yet (until then no member is admitted).
	registry map[string]api.Node
	regSet   bool
	// admitted are the members NotifyAlive let in, with the NodeRef and
	// address the registry gave them; refused the refusals for Status.
	admitted map[string]admission
	refused  map[refusalKey]*Refusal
	// deaths are the members memberlist declared dead whose death this
	// member has not confirmed with its own ping yet.
	deaths map[string]*deathCheck
	// forgotten are names removed from the registry since the last step.
	forgotten []string
	// events is the latest memberlist event per member name.
	events map[string]event
	// acks and suspects are when our own probes last got a direct ack from,
	// or last failed against, each member.
	acks     map[string]time.Time
	suspects map[string]time.Time
	status   Status
}

type event struct {
	state MemberState
	at    time.Time
}

// New validates cfg and prepares a pool reporting to sink and registering
// its metrics on reg (nil: no metrics). It opens no socket; Run does.
func New(cfg Config, sink HealthSink, reg prometheus.Registerer) (*Pool, error) {
	if sink == nil {
		return nil, fmt.Errorf("%w: member %s: nil health sink", ErrInvalidConfig, cfg.Name())
	}
	if cfg.Key == nil && cfg.KeyFile != "" {
		key, err := LoadKey(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("member %s: %w", cfg.Name(), err)
		}
		cfg.Key = key
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := logging.OrDiscard(cfg.Logger)
	name := cfg.Name()
	logger = logger.With("member", name)
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", name, err)
	}
	return &Pool{
		cfg:      cfg,
		name:     name,
		sink:     sink,
		log:      logger,
		metrics:  m,
		wake:     make(chan struct{}, 1),
		joinWake: make(chan struct{}, 1),
		registry: make(map[string]api.Node),
		events:   make(map[string]event),
		admitted: make(map[string]admission),
		refused:  make(map[refusalKey]*Refusal),
		deaths:   make(map[string]*deathCheck),
		acks:     make(map[string]time.Time),
		suspects: make(map[string]time.Time),
		status:   Status{Self: name},
	}, nil
}

// LocalName is this member's name, "<cluster>/<node>".
func (p *Pool) LocalName() string { return p.name }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// SetNodes replaces the node registry with nodes (of every connected
// cluster, this node included). Nodes that are no longer listed are
// forgotten, new ones joined. A node with an unusable gossip address is
// left out and reported in the returned error; the others are applied.
func (p *Pool) SetNodes(nodes []api.Node) error {
	next := make(map[string]api.Node, len(nodes))
	var errs []error
	for _, n := range nodes {
		if err := checkNode(n); err != nil {
			errs = append(errs, err)
			continue
		}
		next[MemberName(n.Cluster, n.Name)] = n
	}
	p.mu.Lock()
	for name := range p.registry {
		if _, ok := next[name]; !ok && name != p.name {
			p.forgotten = append(p.forgotten, name)
		}
	}
	p.registry = next
	p.regSet = true
	p.mu.Unlock()
	signal(p.wake)
	signal(p.joinWake)
	return errors.Join(errs...)
}

// NodeUpserted adds or updates one registry node; the pool joins it if it is
// not a live member yet. It never blocks. A node with an unusable gossip
// address is logged and ignored. With NodeDeleted it implements the agent's
// NodeObserver, so the pool can follow the agent's registry directly.
func (p *Pool) NodeUpserted(n *api.Node) {
	if n == nil {
		return
	}
	if err := checkNode(*n); err != nil {
		p.log.Warn("Ignoring registry node", "error", err)
		return
	}
	p.mu.Lock()
	p.registry[MemberName(n.Cluster, n.Name)] = *n
	p.regSet = true
	p.mu.Unlock()
	signal(p.joinWake)
}

// NodeDeleted removes a node from the registry. The pool forgets it: it no
// longer admits or acts on it, and if it had marked it unhealthy it tells
// the sink healthy again so the name starts clean. Memberlist itself keeps
// probing a live removed member until it leaves or dies; only the member can
// leave the pool.
func (p *Pool) NodeDeleted(cluster, node string) {
	name := MemberName(cluster, node)
	p.mu.Lock()
	if _, ok := p.registry[name]; ok && name != p.name {
		delete(p.registry, name)
		p.forgotten = append(p.forgotten, name)
	}
	p.mu.Unlock()
	signal(p.wake)
}

// gossipAddr is where node n's agent listens (GossipAddr on this member's
// own gossip port).
func (p *Pool) gossipAddr(n api.Node) netip.AddrPort {
	return GossipAddr(n, p.cfg.GossipPort())
}

// GossipAddr is where node n's agent listens: its GossipAddress, or else its
// first address on port, the asking member's own gossip port (every agent
// of a mesh normally uses the same port). Invalid when neither is known.
func GossipAddr(n api.Node, port uint16) netip.AddrPort {
	if n.GossipAddress.IsValid() {
		return n.GossipAddress
	}
	if len(n.Addresses) > 0 && n.Addresses[0].IsValid() && !n.Addresses[0].IsUnspecified() {
		return netip.AddrPortFrom(n.Addresses[0], port)
	}
	return netip.AddrPort{}
}

func checkNode(n api.Node) error {
	if n.Cluster == "" || n.Name == "" {
		return fmt.Errorf("%w: node %q of cluster %q: cluster and name are required", ErrInvalidNode, n.Name, n.Cluster)
	}
	ga := n.GossipAddress
	if ga.IsValid() && (ga.Port() == 0 || ga.Addr().IsUnspecified()) {
		return fmt.Errorf("%w: node %s: gossip address %s needs a specific IP and port", ErrInvalidNode, MemberName(n.Cluster, n.Name), ga)
	}
	return nil
}

// Run joins the pool and acts on its verdicts until ctx is cancelled, then
// leaves gracefully (Config.LeaveTimeout) and shuts memberlist down. It
// returns an error only when memberlist cannot start; it may be called once.
func (p *Pool) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return fmt.Errorf("member %s: %w", p.name, ErrAlreadyRunning)
	}
	adv, err := p.resolveAdvertise(ctx)
	if err != nil {
		return nil // cancelled before we knew our own address
	}
	if p.cfg.Key == nil {
		p.log.Warn("Gossip is not encrypted: any host that reaches the gossip port can join and report deaths; set --health-key-file")
	}
	p.mu.Lock()
	p.self = unmapPort(adv)
	p.mu.Unlock()
	ml, err := memberlist.Create(p.memberlistConfig(adv))
	if err != nil {
		return fmt.Errorf("member %s: start memberlist on %s: %w", p.name, p.cfg.BindAddr, err)
	}
	p.mu.Lock()
	p.ml = ml
	p.mu.Unlock()
	p.log.Info("Joined gossip pool", "bind", p.cfg.BindAddr, "advertise", adv,
		"probeInterval", p.cfg.ProbeInterval, "encrypted", p.cfg.Key != nil)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.joinLoop(ctx, ml)
	}()
	p.decisionLoop(ctx, ml)
	p.pings.Wait()

	if p.cfg.LeaveTimeout > 0 {
		// Peers that see the leaving flag before the leave treat it as a
		// departure, not a death (rule 5 in docs/health.md).
		p.leaving.Store(true)
		if err := ml.UpdateNode(p.cfg.LeaveTimeout); err != nil {
			p.log.Warn("Could not announce leaving", "error", err)
		}
		if err := ml.Leave(p.cfg.LeaveTimeout); err != nil {
			p.log.Warn("Could not leave gossip pool", "error", err)
		}
	}
	if err := ml.Shutdown(); err != nil {
		p.log.Warn("Could not shut memberlist down", "error", err)
	}
	wg.Wait()
	return nil
}

// resolveAdvertise returns the address peers reach us at; see
// Config.AdvertiseAddr.
func (p *Pool) resolveAdvertise(ctx context.Context) (netip.AddrPort, error) {
	if p.cfg.AdvertiseAddr.IsValid() {
		return p.cfg.AdvertiseAddr, nil
	}
	if !p.cfg.BindAddr.Addr().IsUnspecified() {
		return p.cfg.BindAddr, nil
	}
	p.log.Info("Waiting for this node's registry entry to learn the address to advertise", "bind", p.cfg.BindAddr)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		self, ok := p.registry[p.name]
		p.mu.Unlock()
		if addr := p.gossipAddr(self); ok && addr.IsValid() {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return netip.AddrPort{}, ctx.Err()
		case <-tick.C:
		}
	}
}

func (p *Pool) memberlistConfig(adv netip.AddrPort) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = p.name
	c.BindAddr = p.cfg.BindAddr.Addr().String()
	c.BindPort = int(p.cfg.BindAddr.Port())
	c.AdvertiseAddr = adv.Addr().String()
	c.AdvertisePort = int(adv.Port())
	c.SecretKey = p.cfg.Key
	c.Label = p.cfg.Label
	c.ProbeInterval = p.cfg.ProbeInterval
	c.ProbeTimeout = p.cfg.ProbeTimeout
	c.IndirectChecks = p.cfg.IndirectChecks
	c.SuspicionMult = p.cfg.SuspicionMult
	c.SuspicionMaxTimeoutMult = p.cfg.SuspicionMaxTimeoutMult
	c.AwarenessMaxMultiplier = p.cfg.AwarenessMaxMultiplier
	c.GossipInterval = p.cfg.GossipInterval
	c.GossipNodes = p.cfg.GossipNodes
	c.RetransmitMult = p.cfg.RetransmitMult
	c.PushPullInterval = p.cfg.PushPullInterval
	c.TCPTimeout = p.cfg.TCPTimeout
	c.GossipToTheDeadTime = p.cfg.GossipToTheDeadTime
	c.DeadNodeReclaimTime = p.cfg.DeadNodeReclaimTime
	d := &delegate{p: p}
	c.Delegate = d
	c.Events = d
	c.Alive = d
	c.Ping = d
	c.Logger = log.New(&logBridge{p: p}, "", 0)
	return c
}

// membership is what the decision loop uses of memberlist
// (*memberlist.Memberlist); tests fake it to hold a live node dead.
type membership interface {
	Members() []*memberlist.Node
	GetHealthScore() int
	Ping(node string, addr net.Addr) (time.Duration, error)
}

// idleEvaluations is how many EvaluateIntervals the decision loop sleeps
// when nothing is pending; memberlist events wake it at once regardless.
const idleEvaluations = 10

// decisionLoop runs step on every wake-up and tick until ctx is cancelled.
// It ticks every EvaluateInterval while something is pending (a held death,
// a hold-down running, a suspicion, a degraded health score, a failed sink
// call) and idleEvaluations times slower otherwise.
func (p *Pool) decisionLoop(ctx context.Context, ml membership) {
	tr := newTracker(p.cfg.safety())
	reported := make(map[loadbalancer.NodeRef]bool)
	timer := time.NewTimer(p.cfg.EvaluateInterval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.wake:
			if !timer.Stop() {
				<-timer.C
			}
		}
		next := p.cfg.EvaluateInterval
		if !p.step(ctx, ml, tr, reported, time.Now()) {
			next *= idleEvaluations
		}
		timer.Reset(next)
	}
}

// step feeds what happened since the last step to the tracker, applies its
// decisions to the sink and publishes status. reported holds what the sink
// was last successfully told per node (true: healthy). It returns whether
// anything is pending that needs the next evaluation soon.
func (p *Pool) step(ctx context.Context, ml membership, tr *tracker, reported map[loadbalancer.NodeRef]bool, now time.Time) bool {
	p.mu.Lock()
	events := p.events
	p.events = make(map[string]event)
	forgotten := p.forgotten
	p.forgotten = nil
	for _, name := range forgotten {
		delete(p.acks, name)
		delete(p.suspects, name)
		delete(p.deaths, name)
	}
	admitted := p.admittedLocked()
	deaths, toPing := p.deathChecksLocked(admitted, now)
	acks := make(map[string]time.Time, len(p.acks))
	for n, t := range p.acks {
		acks[n] = t
	}
	suspects := make(map[string]time.Time, len(p.suspects))
	for n, t := range p.suspects {
		suspects[n] = t
	}
	p.mu.Unlock()
	// Members is read after the events were taken, so it is at least as
	// new: a member listed here is up whatever an older event said.
	members := ml.Members()
	health := ml.GetHealthScore()

	for _, name := range forgotten {
		if ref, wasDown := tr.forget(name); wasDown {
			p.log.Info("Forgot node removed from the registry; its backends are no longer held down", "node", name, "ref", ref)
		}
	}
	names := make([]string, 0, len(events))
	for name := range events {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ref, ok := admitted[name]
		if ev := events[name]; ok && ev.state != StateDead {
			// Deaths are acted on only once confirmed, below.
			tr.observe(name, ref, ev.state, ev.at)
		}
	}
	for _, d := range deaths {
		tr.observe(d.name, d.ref, StateDead, d.at)
	}
	for _, t := range toPing {
		p.pings.Add(1)
		go func() {
			defer p.pings.Done()
			p.confirmDeath(ml, t.name, t.addr)
		}()
	}
	for _, m := range members {
		ref, ok := admitted[m.Name]
		if m.Name == p.name || !ok {
			continue
		}
		st := StateAlive
		if s, ok := suspects[m.Name]; ok && s.After(acks[m.Name]) {
			st = StateSuspect
		}
		tr.observe(m.Name, ref, st, now)
	}
	for name, t := range acks {
		if s, ok := suspects[name]; !ok || t.After(s) {
			tr.acked(name, t)
		}
	}

	changes, iso := tr.evaluate(now, health)
	for _, c := range changes {
		if c.healthy {
			p.log.Info("Node alive again past its hold-down; restoring its backends", "node", c.name, "ref", c.ref, "hold_down", c.holdDown)
		} else {
			p.log.Warn("Node declared dead; clearing its backends", "node", c.name, "ref", c.ref, "since_last_ack", c.detection)
			p.metrics.detection.Observe(c.detection.Seconds())
		}
		p.metrics.transitions.WithLabelValues(fmt.Sprint(c.healthy)).Inc()
	}

	// Level-based reconcile. Every tracked peer's health is told to the sink
	// at least once, healthy ones included: the datapath may hold a verdict
	// of an earlier agent process (its maps outlive it), and a peer seen
	// alive now must not stay down because of it. Untracked (forgotten)
	// nodes still reported unhealthy are reset to healthy.
	want := make(map[loadbalancer.NodeRef]bool, len(tr.peers))
	for _, pe := range tr.peers {
		if pe.ref.ClusterID == 0 {
			continue // no metadata yet: cannot name its backends
		}
		want[pe.ref] = pe.healthy
	}
	for ref, healthy := range want {
		if got, ok := reported[ref]; (!ok || got != healthy) && p.callSink(ctx, ref, healthy) {
			reported[ref] = healthy
		}
	}
	for ref, healthy := range reported {
		if _, ok := want[ref]; ok {
			continue
		}
		if healthy || p.callSink(ctx, ref, true) {
			delete(reported, ref)
		}
	}
	p.publish(tr, iso, health, changes, now)

	pending := health > 0 || iso.isolated || p.unconfirmedDeaths() > 0
	for _, pe := range tr.peers {
		if pe.held || pe.state == StateSuspect || (!pe.healthy && pe.state != StateDead) {
			pending = true
		}
		if got, ok := reported[pe.ref]; pe.ref.ClusterID != 0 && (!ok || got != pe.healthy) {
			pending = true // a sink call to retry
		}
	}
	return pending || len(reported) > len(want)
}

func (p *Pool) callSink(ctx context.Context, ref loadbalancer.NodeRef, healthy bool) bool {
	if ctx.Err() != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.SinkTimeout)
	defer cancel()
	if err := p.sink.SetNodeHealth(cctx, ref, healthy); err != nil {
		p.metrics.sinkErrors.Inc()
		p.log.Error("Health sink failed; will retry", "ref", ref, "healthy", healthy, "error", err)
		return false
	}
	return true
}

// admittedLocked returns the members admitted by NotifyAlive that the
// registry still lists at the address they were admitted at, with the
// NodeRef the registry gives them now. p.mu must be held.
func (p *Pool) admittedLocked() map[string]loadbalancer.NodeRef {
	out := make(map[string]loadbalancer.NodeRef, len(p.admitted))
	for name, a := range p.admitted {
		n, ok := p.registry[name]
		if !ok || unmapPort(p.gossipAddr(n)) != a.addr {
			continue
		}
		if ref, ok := p.expectedRef(n.Cluster, n.Name, a.ref.ClusterID); ok && ref == a.ref {
			out[name] = ref
		}
	}
	return out
}

// joinLoop joins registry nodes that are not live members, with a backoff
// per node, until ctx is cancelled.
func (p *Pool) joinLoop(ctx context.Context, ml *memberlist.Memberlist) {
	type attempt struct {
		addr    netip.AddrPort
		next    time.Time
		backoff *backoff.Backoff
	}
	attempts := make(map[string]*attempt)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-p.joinWake:
		}
		live := make(map[string]bool)
		for _, m := range ml.Members() {
			live[m.Name] = true
		}
		p.mu.Lock()
		targets := make(map[string]netip.AddrPort)
		for name, n := range p.registry {
			if addr := p.gossipAddr(n); name != p.name && addr.IsValid() {
				targets[name] = addr
			}
		}
		p.mu.Unlock()
		names := make([]string, 0, len(targets))
		for name := range targets {
			names = append(names, name)
		}
		sort.Strings(names)
		for name := range attempts {
			if _, ok := targets[name]; !ok || live[name] {
				delete(attempts, name)
			}
		}
		wait := p.cfg.JoinRetryMax
		for _, name := range names {
			if live[name] {
				continue
			}
			a := attempts[name]
			if a == nil || a.addr != targets[name] {
				a = &attempt{addr: targets[name], backoff: backoff.New(p.cfg.JoinRetryMin, p.cfg.JoinRetryMax)}
				attempts[name] = a
			}
			now := time.Now()
			if now.Before(a.next) {
				wait = min(wait, a.next.Sub(now))
				continue
			}
			_, err := ml.Join([]string{a.addr.String()})
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				p.metrics.joins.WithLabelValues("error").Inc()
				delay := a.backoff.Next()
				p.log.Debug("Could not join node", "node", name, "addr", a.addr, "retry_in", delay, "error", err)
				a.next = time.Now().Add(delay)
				wait = min(wait, delay)
				continue
			}
			p.metrics.joins.WithLabelValues("ok").Inc()
			delete(attempts, name)
		}
		timer.Reset(max(wait, p.cfg.JoinRetryMin))
	}
}

// Member metadata: version byte, cluster ID (big endian), flags.
const (
	metaVersion      = 1
	metaLen          = 6
	metaFlagLeaving  = 1
	metaFlagsOffset  = 5
	metaClusterStart = 1
)

func (p *Pool) meta() []byte {
	b := make([]byte, metaLen)
	b[0] = metaVersion
	binary.BigEndian.PutUint32(b[metaClusterStart:], p.cfg.ClusterID)
	if p.leaving.Load() {
		b[metaFlagsOffset] |= metaFlagLeaving
	}
	return b
}

// parseMeta decodes a member's metadata into its NodeRef and leaving flag.
func parseMeta(name string, meta []byte) (loadbalancer.NodeRef, bool) {
	if len(meta) < metaLen || meta[0] != metaVersion {
		return loadbalancer.NodeRef{}, false
	}
	ref := loadbalancer.NodeRef{ClusterID: binary.BigEndian.Uint32(meta[metaClusterStart:])}
	if i := indexSlash(name); i >= 0 {
		ref.Name = name[i+1:]
	}
	return ref, meta[metaFlagsOffset]&metaFlagLeaving != 0
}

func indexSlash(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

// delegate adapts the pool to memberlist's hooks. Memberlist calls them from
// its own goroutines, sometimes under its node lock: they only record and
// signal, never block.
type delegate struct{ p *Pool }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.PingDelegate  = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte                  { return d.p.meta() }
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyAlive admits a member only if it is the registry node it claims to
// be: its name is listed at the address it speaks from, and its metadata
// carries the ID its cluster was accepted with. Memberlist calls it for
// every alive message, gossiped or merged, before it changes any state, so
// a refused member never becomes one; the refusal is counted and recorded.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	addr := memberAddr(n.Addr, n.Port)
	d.p.mu.Lock()
	defer d.p.mu.Unlock()
	if n.Name == d.p.name {
		if addr == d.p.self {
			return nil
		}
		// Another member using our name: refused here too, so that our
		// memberlist does not even refute it.
		cluster, node := splitName(n.Name)
		r := &Refusal{Cluster: cluster, Node: node, Addr: addr, Field: "address", Reason: ReasonAddressMismatch}
		d.p.refuseLocked(r, time.Now())
		return fmt.Errorf("member %s at %s: %s (%s)", n.Name, addr, r.Reason, r.Field)
	}
	ref, r := d.p.admitLocked(n.Name, addr, n.Meta)
	if r != nil {
		d.p.refuseLocked(r, time.Now())
		return fmt.Errorf("member %s at %s: %s (%s)", n.Name, addr, r.Reason, r.Field)
	}
	d.p.admitted[n.Name] = admission{ref: ref, addr: addr}
	return nil
}

func (d *delegate) record(n *memberlist.Node, st MemberState) {
	if n.Name == d.p.name {
		return
	}
	_, leaving := parseMeta(n.Name, n.Meta)
	if st == StateDead && leaving {
		st = StateLeft
	}
	now := time.Now()
	d.p.mu.Lock()
	d.p.events[n.Name] = event{state: st, at: now}
	switch st {
	case StateAlive:
		delete(d.p.suspects, n.Name)
		delete(d.p.deaths, n.Name)
		d.p.acks[n.Name] = now
	case StateDead:
		if d.p.deaths[n.Name] == nil {
			d.p.deaths[n.Name] = &deathCheck{at: now}
		}
	default:
		delete(d.p.deaths, n.Name)
	}
	d.p.mu.Unlock()
	signal(d.p.wake)
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.record(n, StateAlive) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.record(n, StateAlive) }

// NotifyLeave is called for deaths and graceful leaves alike; the leaving
// flag in the member's last metadata tells them apart.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.record(n, StateDead) }

func (d *delegate) AckPayload() []byte { return nil }

func (d *delegate) NotifyPingComplete(n *memberlist.Node, rtt time.Duration, payload []byte) {
	d.p.mu.Lock()
	d.p.acks[n.Name] = time.Now()
	d.p.mu.Unlock()
}

// suspected records that our own probe of name failed.
func (p *Pool) suspected(name string) {
	p.mu.Lock()
	p.suspects[name] = time.Now()
	p.mu.Unlock()
	signal(p.wake)
}
