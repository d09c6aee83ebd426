package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// nextHopUnchangedPolicy is the export policy assigned to eBGP peers with
// Peer.NextHopUnchanged.
const nextHopUnchangedPolicy = "clustermesh-next-hop-unchanged"

var (
	familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyV6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// event is what the GoBGP watcher and logger hand to the owner's loop.
type event struct {
	kind    eventKind
	prefix  netip.Prefix
	nextHop netip.Addr
	peer    netip.Addr // zero for locally originated paths
	up      bool       // peer events: session established
}

type eventKind int

const (
	evPath eventKind = iota
	evWithdraw
	evPeer
	evPrefixLimit
)

// eventQueue is an unbounded FIFO: GoBGP's callbacks must never block on
// the consumer.
type eventQueue struct {
	mu     sync.Mutex
	items  []event
	signal chan struct{}
}

func newEventQueue() *eventQueue { return &eventQueue{signal: make(chan struct{}, 1)} }

func (q *eventQueue) push(evs ...event) {
	q.mu.Lock()
	q.items = append(q.items, evs...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *eventQueue) drain() []event {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}

// core owns one GoBGP server: its lifecycle, peers and announcements.
type core struct {
	cfg    Config
	log    *slog.Logger
	srv    *server.BgpServer
	events *eventQueue
	cancel context.CancelFunc
	// watchPaths asks GoBGP for best-path events (speakers only).
	watchPaths bool
	// restarting makes every session start as a graceful restart of this
	// side (speakers only; see addPeer).
	restarting bool
	// holdRemote keeps the peers that are not route-reflector clients
	// (other clusters' reflectors) out of GoBGP until the clients are
	// back (reflectors with graceful restart; see Reflector.Run).
	holdRemote bool

	mu        sync.Mutex
	peers     map[netip.Addr]Peer // configured in GoBGP
	dynamic   []Peer              // last SetPeers input
	cutOff    map[netip.Addr]time.Time
	up        map[netip.Addr]bool // last session state seen per neighbor
	announced map[netip.Prefix]bool
	// imports are the import rules (policy.go); importSet tells whether a
	// policy is enforced at all (static setups without a registry have
	// none). importGen numbers the GoBGP policy generations, importObjs
	// holds the current one's objects.
	imports    []ImportRule
	importSet  bool
	importGen  int
	importObjs []importObjects
}

func newCore(cfg Config, speaker bool) *core {
	return &core{
		cfg:        cfg,
		watchPaths: speaker,
		restarting: speaker,
		holdRemote: !speaker && cfg.gracefulRestart(),
		log:        cfg.Logger,
		events:     newEventQueue(),
		peers:      map[netip.Addr]Peer{},
		cutOff:     map[netip.Addr]time.Time{},
		up:         map[netip.Addr]bool{},
		announced:  map[netip.Prefix]bool{},
	}
}

// start runs GoBGP and announces prefixes before any neighbor exists: a
// peer that kept this speaker's routes through a graceful restart drops
// those missing from the first update and End-of-RIB it receives.
func (c *core) start(ctx context.Context, prefixes []netip.Prefix) error {
	srv := server.NewBgpServer(server.LoggerOption(&logAdapter{log: c.log, events: c.events}))
	// GoBGP's Serve loop has no way to stop; after StopBgp it idles until the
	// process exits. Everything else it starts is stopped by StopBgp.
	go srv.Serve()
	c.mu.Lock()
	c.srv = srv
	c.mu.Unlock()
	g := &api.Global{
		Asn:        c.cfg.ASN,
		RouterId:   c.cfg.RouterID.String(),
		ListenPort: c.cfg.ListenPort,
	}
	for _, a := range c.cfg.ListenAddresses {
		g.ListenAddresses = append(g.ListenAddresses, a.String())
	}
	if err := c.srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		return fmt.Errorf("%s: start bgp (as %d, router id %s): %w", c.cfg.Name, c.cfg.ASN, c.cfg.RouterID, err)
	}
	if err := c.addNextHopPolicy(ctx); err != nil {
		c.srv.Stop()
		return fmt.Errorf("%s: add next-hop-unchanged policy: %w", c.cfg.Name, err)
	}
	// The import policy goes in before any neighbor, so no route is
	// accepted unchecked.
	c.mu.Lock()
	var perr error
	if c.importSet {
		perr = c.applyImportPolicyLocked(ctx)
	}
	c.mu.Unlock()
	if perr != nil {
		c.srv.Stop()
		return perr
	}
	wctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	// Only a speaker needs best paths. WatchRoutes (a patch of ours) is
	// GoBGP's WatchEvent without converting every path to protobuf and
	// back, which was half a receiving speaker's CPU.
	err := c.srv.WatchRoutes(wctx, c.watchPaths, c.onWatch)
	if err != nil {
		cancel()
		c.srv.Stop()
		return fmt.Errorf("%s: watch bgp events: %w", c.cfg.Name, err)
	}
	if err := c.announce(ctx, prefixes); err != nil {
		c.stop()
		return err
	}
	return c.applyPeers(ctx)
}

func (c *core) stop() {
	c.stopWatch()
	if c.srv != nil {
		c.srv.Stop()
	}
}

// stopWatch ends the event watch and leaves GoBGP's sessions alone.
func (c *core) stopWatch() {
	if c.cancel != nil {
		c.cancel()
	}
}

func (c *core) onWatch(r server.RouteEvent) {
	if r.Paths == nil {
		c.events.push(event{kind: evPeer, peer: r.Peer, up: r.Established})
		return
	}
	evs := make([]event, 0, len(r.Paths))
	for _, p := range r.Paths {
		ev := event{kind: evPath, prefix: p.Prefix, nextHop: p.NextHop, peer: p.Neighbor}
		if p.Withdraw {
			ev.kind = evWithdraw
		}
		evs = append(evs, ev)
	}
	c.events.push(evs...)
}

// decodePath reads a path of GoBGP's API (ListPath).
func decodePath(p *api.Path) (event, bool) {
	if p.GetNlri() == nil {
		return event{}, false
	}
	var nlri api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&nlri); err != nil {
		return event{}, false
	}
	a, err := netip.ParseAddr(nlri.Prefix)
	if err != nil {
		return event{}, false
	}
	prefix, err := a.Prefix(int(nlri.PrefixLen))
	if err != nil {
		return event{}, false
	}
	ev := event{kind: evPath, prefix: prefix}
	if p.IsWithdraw {
		ev.kind = evWithdraw
	}
	// Locally originated paths carry no neighbor ("<nil>").
	ev.peer, _ = netip.ParseAddr(p.NeighborIp)
	for _, attr := range p.Pattrs {
		var nh api.NextHopAttribute
		var mp api.MpReachNLRIAttribute
		switch {
		case attr.MessageIs(&nh):
			if attr.UnmarshalTo(&nh) == nil {
				ev.nextHop, _ = netip.ParseAddr(nh.NextHop)
			}
		case attr.MessageIs(&mp):
			if attr.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
				ev.nextHop, _ = netip.ParseAddr(mp.NextHops[0])
			}
		}
	}
	return ev, true
}

// setPeers records the dynamic peers and reconciles GoBGP with them.
func (c *core) setPeers(ctx context.Context, peers []Peer) error {
	for _, p := range peers {
		if err := p.validate(); err != nil {
			return fmt.Errorf("%s: set peers: %w", c.cfg.Name, err)
		}
	}
	c.mu.Lock()
	c.dynamic = append([]Peer(nil), peers...)
	started := c.srv != nil
	c.mu.Unlock()
	if !started {
		return nil // start applies them
	}
	return c.applyPeers(ctx)
}

// applyPeers adds, replaces and deletes GoBGP neighbors so they match the
// static plus dynamic peers. Static peers win over a dynamic peer with the
// same address. Unchanged peers are left alone (no session reset).
func (c *core) applyPeers(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[netip.Addr]Peer{}
	for _, p := range c.dynamic {
		want[p.Address] = p
	}
	for _, p := range c.cfg.StaticPeers {
		want[p.Address] = p
	}
	if c.holdRemote {
		for a, p := range want {
			if !p.RouteReflectorClient {
				delete(want, a)
			}
		}
	}
	var errs []string
	for addr, old := range c.peers {
		if p, ok := want[addr]; ok && p == old {
			continue
		}
		if err := c.deletePeer(ctx, old); err != nil {
			errs = append(errs, fmt.Sprintf("delete peer %s: %v", old, err))
			continue
		}
		delete(c.peers, addr)
		delete(c.cutOff, addr)
		c.log.Info("bgp peer removed", "node", c.cfg.Name, "peer", old.String())
	}
	for addr, p := range want {
		if _, ok := c.peers[addr]; ok {
			continue
		}
		if err := c.addPeer(ctx, p); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		c.peers[addr] = p
		c.log.Info("bgp peer added", "node", c.cfg.Name, "peer", p.String(), "asn", p.ASN, "passive", p.Passive)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s: apply peers: %s", c.cfg.Name, strings.Join(errs, "; "))
	}
	return nil
}

func (c *core) addPeer(ctx context.Context, p Peer) error {
	maxPrefixes := p.MaxPrefixes
	if maxPrefixes == 0 {
		maxPrefixes = c.cfg.MaxPrefixes
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			Description:     p.Name,
			AllowOwnAsn:     uint32(p.AllowOwnAS),
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      uint64(max(c.cfg.ConnectRetry/time.Second, 1)),
			HoldTime:          uint64(max(c.cfg.HoldTime/time.Second, 3)),
			KeepaliveInterval: uint64(max(c.cfg.KeepaliveInterval/time.Second, 1)),
		}},
		Transport: &api.Transport{PassiveMode: p.Passive, RemotePort: uint32(p.port())},
	}
	if p.RouteReflectorClient {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: c.cfg.RouterID.String()}
	}
	if p.Multihop {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: 255}
	}
	if c.cfg.gracefulRestart() {
		// Notification (RFC 8538): a NOTIFICATION other than a Hard Reset,
		// a hold timer expiry included, keeps the routes too. GoBGP sends a
		// Hard Reset for an administrative shutdown, a deconfigured peer or
		// a prefix limit, so those still withdraw at once.
		ap.GracefulRestart = &api.GracefulRestart{
			Enabled:             true,
			RestartTime:         uint32(c.cfg.GracefulRestartTime / time.Second),
			NotificationEnabled: true,
			LonglivedEnabled:    c.cfg.llgr(),
			// A node speaker opens every session as the restarting side
			// (Restart State and Forwarding State bits set): its kernel
			// routes outlive the process (Stop leaves them, Start adopts
			// them). Without the Forwarding State bit a peer may flush the
			// routes it kept for the node as soon as the session is back,
			// before the node re-sends them (bird does). GoBGP then sends
			// its routes once the peers' End-of-RIB is in, or after the
			// deferral time. A reflector does not: being restarted, it
			// would wait for End-of-RIB from peers it counts as done
			// before they connect.
			LocalRestarting: c.restarting,
			DeferralTime:    uint32(max(c.cfg.GracefulRestartTime/time.Second, 1)),
		}
	}
	for _, f := range []*api.Family{familyV4, familyV6} {
		as := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}}
		if maxPrefixes > 0 {
			as.PrefixLimits = &api.PrefixLimit{Family: f, MaxPrefixes: maxPrefixes}
		}
		if c.cfg.gracefulRestart() {
			as.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		if c.cfg.llgr() {
			as.LongLivedGracefulRestart = &api.LongLivedGracefulRestart{Config: &api.LongLivedGracefulRestartConfig{
				Enabled: true, RestartTime: uint32(c.cfg.LLGRStaleTime / time.Second),
			}}
		}
		ap.AfiSafis = append(ap.AfiSafis, as)
	}
	if err := c.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: ap}); err != nil {
		return fmt.Errorf("add peer %s: %w", p, err)
	}
	if p.NextHopUnchanged && p.ASN != c.cfg.ASN {
		err := c.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: nextHopUnchangedPolicy, List: []string{hostPrefix(p.Address)},
		}})
		if err != nil {
			return fmt.Errorf("peer %s: add to next-hop-unchanged set: %w", p, err)
		}
	}
	return nil
}

func (c *core) deletePeer(ctx context.Context, p Peer) error {
	if err := c.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()}); err != nil {
		return err
	}
	if p.NextHopUnchanged {
		return c.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: nextHopUnchangedPolicy, List: []string{hostPrefix(p.Address)},
		}})
	}
	return nil
}

func hostPrefix(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// addNextHopPolicy installs a global export policy keeping the next hop
// towards the neighbors in a set. GoBGP allows per-peer policies only for
// route-server clients, so the set selects the peers. It starts with an
// address that matches nothing: GoBGP refuses empty sets.
func (c *core) addNextHopPolicy(ctx context.Context) error {
	err := c.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
		DefinedType: api.DefinedType_NEIGHBOR, Name: nextHopUnchangedPolicy, List: []string{"255.255.255.255/32"},
	}})
	if err != nil {
		return err
	}
	err = c.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: &api.Policy{
		Name: nextHopUnchangedPolicy,
		Statements: []*api.Statement{{
			Name:       nextHopUnchangedPolicy + "-stmt",
			Conditions: &api.Conditions{NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: nextHopUnchangedPolicy}},
			Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT, Nexthop: &api.NexthopAction{Unchanged: true}},
		}},
	}})
	if err != nil {
		return err
	}
	return c.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name:          "global",
		Direction:     api.PolicyDirection_EXPORT,
		Policies:      []*api.Policy{{Name: nextHopUnchangedPolicy}},
		DefaultAction: api.RouteAction_ACCEPT,
	}})
}

// peerState tracks session state and re-creates a neighbor whose
// established session just dropped, unless graceful restart keeps its
// routes. GoBGP holds a dropped neighbor idle for
// 5 s, refusing its connections, before it dials or accepts again; a new
// neighbor has no idle hold, so a restarted peer is back within one connect
// retry instead of the 7–9 s GoBGP needs on its own. Connect-retry still
// paces a peer that keeps flapping.
func (c *core) peerState(ctx context.Context, addr netip.Addr, up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	was := c.up[addr]
	c.up[addr] = up
	if up || !was {
		return
	}
	p, ok := c.peers[addr]
	if !ok || !c.cutOff[addr].IsZero() {
		return
	}
	if gr, err := c.graceful(ctx, addr); err != nil || gr {
		// Deleting the neighbor would drop the routes GoBGP keeps for it
		// as stale: a graceful restart waits out the idle hold (5 s).
		return
	}
	if err := c.deletePeer(ctx, p); err != nil {
		c.log.Warn("bgp: re-create peer after session loss: delete", "node", c.cfg.Name, "peer", p.String(), "error", err)
		return
	}
	if err := c.addPeer(ctx, p); err != nil {
		c.log.Error("bgp: re-create peer after session loss: add", "node", c.cfg.Name, "peer", p.String(), "error", err)
		delete(c.peers, addr)
	}
}

// cutOffPeer shuts a peer that exceeded its prefix limit down until its
// config changes; GoBGP alone would reconnect and trip again every few s.
// It reports whether the peer was cut off by this call.
func (c *core) cutOffPeer(ctx context.Context, addr netip.Addr) bool {
	c.mu.Lock()
	p, ok := c.peers[addr]
	if !ok || !c.cutOff[addr].IsZero() {
		c.mu.Unlock()
		return false
	}
	c.cutOff[addr] = time.Now()
	c.mu.Unlock()
	limit := p.MaxPrefixes
	if limit == 0 {
		limit = c.cfg.MaxPrefixes
	}
	c.log.Error("bgp peer announced more prefixes than allowed; session cut off until its config changes",
		"node", c.cfg.Name, "peer", p.String(), "maxPrefixes", limit)
	if err := c.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: addr.String(), Communication: "clustermesh: max prefixes exceeded"}); err != nil {
		c.log.Error("bgp: disable peer after prefix limit", "node", c.cfg.Name, "peer", p.String(), "error", err)
	}
	return true
}

// announce makes the set of locally originated prefixes equal to prefixes.
// The additions, then the withdrawals, each go to GoBGP in one call
// (AddPrefixes, a patch of ours: third_party/gobgp/PATCHES.md), which
// builds GoBGP's paths without the API's protobuf form, processes them as
// one batch and sends them to each peer packed, about a thousand IPv4
// prefixes per UPDATE, where one call per path costs a round trip through
// GoBGP's management loop and one UPDATE per prefix. A batch is taken
// whole or not at all.
func (c *core) announce(ctx context.Context, prefixes []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if !p.IsValid() {
			return fmt.Errorf("%s: announce: invalid prefix", c.cfg.Name)
		}
		p = p.Masked()
		if !c.cfg.nextHopFor(p).IsValid() {
			return fmt.Errorf("%s: announce %s: %w: no node IP of its family", c.cfg.Name, p, ErrInvalidConfig)
		}
		want[p] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var add, del []netip.Prefix
	for p := range want {
		if !c.announced[p] {
			add = append(add, p)
		}
	}
	for p := range c.announced {
		if !want[p] {
			del = append(del, p)
		}
	}
	// Sorted, so peers receive them in address order (and tests and
	// captures are repeatable).
	slices.SortFunc(add, netip.Prefix.Compare)
	slices.SortFunc(del, netip.Prefix.Compare)
	nh4 := c.cfg.nextHopFor(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
	nh6 := c.cfg.nextHopFor(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
	if len(add) > 0 {
		if err := c.srv.AddPrefixes(ctx, add, nh4, nh6, false); err != nil {
			return fmt.Errorf("%s: announce %d prefixes (%s...): %w", c.cfg.Name, len(add), add[0], err)
		}
		for _, p := range add {
			c.announced[p] = true
		}
	}
	if len(del) > 0 {
		if err := c.srv.AddPrefixes(ctx, del, nh4, nh6, true); err != nil {
			return fmt.Errorf("%s: withdraw %d prefixes (%s...): %w", c.cfg.Name, len(del), del[0], err)
		}
		for _, p := range del {
			delete(c.announced, p)
		}
	}
	return nil
}

// peerStatus lists GoBGP's view of every configured peer.
func (c *core) peerStatus(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	c.mu.Lock()
	peers := make(map[netip.Addr]Peer, len(c.peers))
	for a, p := range c.peers {
		peers[a] = p
	}
	cut := make(map[netip.Addr]time.Time, len(c.cutOff))
	for a, t := range c.cutOff {
		cut[a] = t
	}
	c.mu.Unlock()
	err := c.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		cfg := peers[addr]
		ps := PeerStatus{
			Name:    cfg.Name,
			Address: addr,
			ASN:     p.GetConf().GetPeerAsn(),
			State:   sessionState(p.GetState().GetSessionState()),
		}
		ps.Established = p.GetState().GetSessionState() == api.PeerState_ESTABLISHED
		ps.UpdatesSent = p.GetState().GetMessages().GetSent().GetUpdate()
		ps.UpdatesReceived = p.GetState().GetMessages().GetReceived().GetUpdate()
		if t := cut[addr]; !t.IsZero() {
			ps.CutOff = "max prefixes exceeded at " + t.UTC().Format(time.RFC3339)
		}
		if up := p.GetTimers().GetState().GetUptime(); up != nil && ps.Established {
			ps.Since = up.AsTime()
		}
		// GoBGP counts the End-of-RIB marker it would send a graceful
		// restart peer among the advertised paths, one per family.
		eor := 0
		if peerGraceful(p) {
			eor = 1
		}
		for _, as := range p.AfiSafis {
			ps.PrefixesReceived += int(as.GetState().GetReceived())
			ps.PrefixesAccepted += int(as.GetState().GetAccepted())
			ps.PrefixesAdvertised += max(int(as.GetState().GetAdvertised())-eor, 0)
		}
		out = append(out, ps)
	})
	if err != nil {
		return nil, fmt.Errorf("%s: list peers: %w", c.cfg.Name, err)
	}
	return out, nil
}

// sessions returns the neighbors whose session is up, and those whose last
// session negotiated graceful restart.
func (c *core) sessions(ctx context.Context) (up, graceful map[netip.Addr]bool, err error) {
	up, graceful = map[netip.Addr]bool{}, map[netip.Addr]bool{}
	err = c.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		up[a] = p.GetState().GetSessionState() == api.PeerState_ESTABLISHED
		graceful[a] = peerGraceful(p)
	})
	return up, graceful, err
}

// clientsSynced reports whether every route-reflector client peer is in
// session and has sent End-of-RIB for each family it negotiated graceful
// restart for (established is enough for one without), and there is at
// least one client.
func (c *core) clientsSynced(ctx context.Context) (bool, error) {
	c.mu.Lock()
	clients := map[string]bool{}
	for a, p := range c.peers {
		if p.RouteReflectorClient {
			clients[a.String()] = false
		}
	}
	c.mu.Unlock()
	if len(clients) == 0 {
		return false, nil
	}
	err := c.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a := p.GetConf().GetNeighborAddress()
		if _, ok := clients[a]; !ok || p.GetState().GetSessionState() != api.PeerState_ESTABLISHED {
			return
		}
		for _, as := range p.GetAfiSafis() {
			if st := as.GetMpGracefulRestart().GetState(); st.GetReceived() && !st.GetEndOfRibReceived() {
				return
			}
		}
		clients[a] = true
	})
	if err != nil {
		return false, err
	}
	for _, done := range clients {
		if !done {
			return false, nil
		}
	}
	return true, nil
}

// releaseRemote adds the peers holdRemote kept out.
func (c *core) releaseRemote(ctx context.Context) error {
	c.mu.Lock()
	c.holdRemote = false
	c.mu.Unlock()
	return c.applyPeers(ctx)
}

// graceful reports whether the last session with addr negotiated graceful
// restart for some address family: then GoBGP keeps the peer's routes as
// stale while it is down and applies the restart and LLGR timers itself.
// c.mu may be held (GoBGP's management loop does not call back into us).
func (c *core) graceful(ctx context.Context, addr netip.Addr) (bool, error) {
	gr := false
	err := c.srv.ListPeer(ctx, &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		gr = gr || peerGraceful(p)
	})
	return gr, err
}

func peerGraceful(p *api.Peer) bool {
	for _, as := range p.GetAfiSafis() {
		if as.GetMpGracefulRestart().GetState().GetReceived() {
			return true
		}
	}
	return false
}

func sessionState(s api.PeerState_SessionState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SESSION_STATE_"))
}

// logAdapter sends GoBGP's logs to slog and turns the prefix-limit warning
// into an event, since GoBGP reports it nowhere else.
type logAdapter struct {
	log    *slog.Logger
	events *eventQueue
	mu     sync.Mutex
	level  gobgplog.LogLevel
}

var _ gobgplog.Logger = (*logAdapter)(nil)

func (l *logAdapter) emit(level slog.Level, msg string, f gobgplog.Fields) {
	if msg == "prefix limit reached" {
		if _, warnOnly := f["Pct"]; !warnOnly {
			if a, err := netip.ParseAddr(fmt.Sprint(f["Key"])); err == nil {
				l.events.push(event{kind: evPrefixLimit, peer: a})
			}
		}
	}
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]any, 0, 2*len(f)+2)
	attrs = append(attrs, "component", "gobgp")
	for k, v := range f {
		attrs = append(attrs, strings.ToLower(k), v)
	}
	l.log.Log(context.Background(), level, msg, attrs...)
}

func (l *logAdapter) Panic(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logAdapter) Fatal(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logAdapter) Error(msg string, f gobgplog.Fields) { l.emit(slog.LevelError, msg, f) }
func (l *logAdapter) Warn(msg string, f gobgplog.Fields)  { l.emit(slog.LevelWarn, msg, f) }
func (l *logAdapter) Info(msg string, f gobgplog.Fields)  { l.emit(slog.LevelInfo, msg, f) }
func (l *logAdapter) Debug(msg string, f gobgplog.Fields) { l.emit(slog.LevelDebug, msg, f) }
func (l *logAdapter) SetLevel(level gobgplog.LogLevel) {
	l.mu.Lock()
	l.level = level
	l.mu.Unlock()
}
func (l *logAdapter) GetLevel() gobgplog.LogLevel {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
