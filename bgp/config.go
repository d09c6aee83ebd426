package bgp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/route"
)

// RouteProtocol is the rtnetlink protocol number of every route the speaker
// installs (0xc3; unassigned in /etc/iproute2/rt_protos). Routes of any other
// protocol are never touched: a prefix another owner routes is refused (see
// package route).
const RouteProtocol = route.ProtocolBGP

// DefaultPort is the BGP port.
const DefaultPort = 179

var (
	// ErrInvalidConfig reports a Config or Peer that cannot be used.
	ErrInvalidConfig = errors.New("invalid bgp config")
	// ErrNotStarted is returned by calls that need a running speaker.
	ErrNotStarted = errors.New("bgp speaker not started")
	// ErrAlreadyStarted is returned by a second Start or Run.
	ErrAlreadyStarted = errors.New("bgp speaker already started")
)

// Peer is one BGP neighbor.
type Peer struct {
	// Name is a human label (node or cluster name) used in logs and status.
	Name    string
	Address netip.Addr
	// Port is the neighbor's BGP port; 0 means DefaultPort.
	Port uint16
	ASN  uint32
	// Passive waits for the neighbor to connect. Exactly one side of every
	// session should be passive: when both dial, GoBGP takes 13–32 s to
	// re-establish a session after a restart instead of 7–9 s.
	Passive bool
	// RouteReflectorClient marks an iBGP neighbor as a client of this
	// speaker acting as route reflector.
	RouteReflectorClient bool
	// NextHopUnchanged keeps the next hop of routes sent over eBGP, so a
	// reflector passes node next hops on to another cluster.
	NextHopUnchanged bool
	// Multihop allows an eBGP neighbor that is not directly connected.
	Multihop bool
	// AllowOwnAS accepts routes carrying our own ASN this many times, for
	// nodes sharing one ASN behind an eBGP top-of-rack router.
	AllowOwnAS uint8
	// MaxPrefixes cuts the session off when the neighbor announces more
	// prefixes than this (per address family); 0 uses Config.MaxPrefixes.
	MaxPrefixes uint32
}

func (p Peer) port() uint16 {
	if p.Port == 0 {
		return DefaultPort
	}
	return p.Port
}

func (p Peer) String() string {
	if p.Name != "" {
		return fmt.Sprintf("%s(%s)", p.Name, p.Address)
	}
	return p.Address.String()
}

func (p Peer) validate() error {
	if !p.Address.IsValid() {
		return fmt.Errorf("%w: peer %q: no address", ErrInvalidConfig, p.Name)
	}
	if p.ASN == 0 {
		return fmt.Errorf("%w: peer %s: ASN is 0", ErrInvalidConfig, p)
	}
	return nil
}

// Config configures a Speaker. Fields tagged json:"-" are not part of the
// serialized form.
type Config struct {
	// Name names the node (or reflector) in logs.
	Name string
	// ASN is the local autonomous system number (the cluster's ASN).
	ASN uint32
	// RouterID is the BGP identifier; defaults to the first IPv4 NodeIP.
	RouterID netip.Addr
	// NodeIPs are the node's addresses; the first of each family is the
	// next hop announced for pod CIDRs of that family.
	NodeIPs []netip.Addr
	// ListenAddresses and ListenPort say where to accept sessions. A
	// negative port disables the listener (the speaker only dials).
	ListenAddresses []netip.Addr
	ListenPort      int32
	// PodCIDRs are the node's own pod CIDRs; learned routes overlapping them
	// are refused. Announce sets what is announced.
	PodCIDRs []netip.Prefix
	// NodeSubnets are subnets learned routes must not overlap. When empty,
	// the subnets of the interfaces holding NodeIPs are used.
	NodeSubnets []netip.Prefix
	// StaticPeers are operator-given neighbors (a top-of-rack router), used
	// in addition to what SetPeers gives.
	StaticPeers []Peer
	// MaxPrefixes is the default per-peer prefix limit; 0 means none.
	MaxPrefixes uint32
	// Table is the kernel routing table learned routes go into; 0 = main.
	Table int
	// GracefulRestartTime is the RFC 4724 restart time advertised on every
	// session, for IPv4 and IPv6 unicast: when this speaker's session drops
	// (its process died, its host is unreachable, a hold timer expired), its
	// peers keep the routes it sent them as stale for this long, waiting for
	// it to come back and refresh them (End-of-RIB ends the wait; routes not
	// refreshed by then go). The same holds the other way for every peer
	// that advertises graceful restart. At most 4095 s (a 12-bit field);
	// 0 turns graceful restart, and with it LLGR, off.
	GracefulRestartTime time.Duration
	// LLGRStaleTime is the RFC 9494 long-lived stale time advertised for
	// IPv4 and IPv6 unicast: once GracefulRestartTime has run out, peers
	// keep this speaker's routes for this much longer, marked LLGR_STALE
	// (least preferred, still used when there is no other path). It is what
	// keeps pod routes installed through a long control-plane outage (the
	// route reflector lives in clustermesh-apiserver); only a node the
	// health view reports dead (Speaker.SetDeadNextHops) or the registry
	// removes (SetImportPolicy) loses its routes before it expires. At most
	// 2^24-1 s; 0 turns LLGR off.
	LLGRStaleTime time.Duration
	// SessionLossGrace is the fallback for a peer that does not negotiate
	// graceful restart: routes learned from it are kept this long after its
	// session drops (0 removes them at once). With graceful restart GoBGP
	// keeps them itself (GracefulRestartTime, LLGRStaleTime). It also
	// covers the end of a graceful restart: a restarted route reflector
	// sends End-of-RIB once it has re-learned from the peers connected so
	// far, so a route GoBGP drops as stale at that moment (its origin had
	// not yet reconnected to the reflector) stays in the kernel this long,
	// kept without a flap when it is re-learned meanwhile. A starting
	// Reflector waits at most half of it for its nodes before it peers
	// with other clusters' reflectors; speakers and reflectors should run
	// the same value.
	SessionLossGrace time.Duration
	// StaleRouteGrace is how long after the first session is established
	// routes of RouteProtocol left by a previous run are kept waiting to be
	// re-learned. StaleRouteTimeout removes them even if no session ever
	// comes up.
	StaleRouteGrace   time.Duration
	StaleRouteTimeout time.Duration
	// HoldTime, KeepaliveInterval and ConnectRetry are the session timers.
	HoldTime          time.Duration
	KeepaliveInterval time.Duration
	ConnectRetry      time.Duration
	// InstallRoutes programs the kernel; the Reflector turns it off.
	InstallRoutes bool

	Logger     *slog.Logger          `json:"-"`
	Registerer prometheus.Registerer `json:"-"`
}

// DefaultConfig returns production timers: graceful restart with a 120 s
// restart time and 6 h of long-lived stale time (a control-plane outage
// shorter than that withdraws no route), a 30 s session-loss grace for
// peers without graceful restart, 90 s hold time.
func DefaultConfig() Config {
	return Config{
		ListenPort:          DefaultPort,
		GracefulRestartTime: 120 * time.Second,
		LLGRStaleTime:       6 * time.Hour,
		SessionLossGrace:    30 * time.Second,
		StaleRouteGrace:     10 * time.Second,
		StaleRouteTimeout:   5 * time.Minute,
		HoldTime:            90 * time.Second,
		KeepaliveInterval:   30 * time.Second,
		ConnectRetry:        5 * time.Second,
		MaxPrefixes:         10000,
		InstallRoutes:       true,
	}
}

// DefaultKindConfig returns short timers for test clusters on one machine.
// The long-lived stale time stays long (10 min): the drills take the control
// plane down for 10–30 s and routes must survive that. SessionLossGrace
// stays 30 s: it carries the other clusters' routes while a restarted
// reflector waits for its nodes and re-peers (see Reflector).
func DefaultKindConfig() Config {
	c := DefaultConfig()
	c.GracefulRestartTime = 15 * time.Second
	c.LLGRStaleTime = 10 * time.Minute
	c.StaleRouteGrace = 2 * time.Second
	c.StaleRouteTimeout = 30 * time.Second
	c.HoldTime = 9 * time.Second
	c.KeepaliveInterval = 3 * time.Second
	c.ConnectRetry = 1 * time.Second
	return c
}

func (c *Config) validate() error {
	if c.ASN == 0 {
		return fmt.Errorf("%w: %s: ASN is 0", ErrInvalidConfig, c.Name)
	}
	if !c.RouterID.IsValid() {
		for _, a := range c.NodeIPs {
			if a.Is4() {
				c.RouterID = a
				break
			}
		}
	}
	if !c.RouterID.IsValid() || !c.RouterID.Is4() {
		return fmt.Errorf("%w: %s: no IPv4 router ID (set RouterID or an IPv4 NodeIP)", ErrInvalidConfig, c.Name)
	}
	for _, p := range c.PodCIDRs {
		if !p.IsValid() {
			return fmt.Errorf("%w: %s: invalid pod CIDR", ErrInvalidConfig, c.Name)
		}
		if !c.nextHopFor(p).IsValid() {
			return fmt.Errorf("%w: %s: pod CIDR %s: no node IP of its family", ErrInvalidConfig, c.Name, p)
		}
	}
	for _, p := range c.StaticPeers {
		if err := p.validate(); err != nil {
			return fmt.Errorf("%s: static peers: %w", c.Name, err)
		}
	}
	if c.GracefulRestartTime < 0 || c.GracefulRestartTime > maxGracefulRestartTime {
		return fmt.Errorf("%w: %s: graceful restart time %s out of range [0, %s]", ErrInvalidConfig, c.Name, c.GracefulRestartTime, maxGracefulRestartTime)
	}
	if c.LLGRStaleTime < 0 || c.LLGRStaleTime > maxLLGRStaleTime {
		return fmt.Errorf("%w: %s: LLGR stale time %s out of range [0, %s]", ErrInvalidConfig, c.Name, c.LLGRStaleTime, maxLLGRStaleTime)
	}
	c.Logger = logging.OrDiscard(c.Logger)
	if c.HoldTime == 0 {
		c.HoldTime = 90 * time.Second
	}
	if c.KeepaliveInterval == 0 {
		c.KeepaliveInterval = c.HoldTime / 3
	}
	if c.ConnectRetry == 0 {
		c.ConnectRetry = 5 * time.Second
	}
	return nil
}

// The widths of the restart time fields: 12 bits in the graceful restart
// capability (RFC 4724), 24 bits in the long-lived one (RFC 9494).
const (
	maxGracefulRestartTime = 4095 * time.Second
	maxLLGRStaleTime       = (1<<24 - 1) * time.Second
)

// gracefulRestart reports whether sessions negotiate graceful restart.
func (c *Config) gracefulRestart() bool { return c.GracefulRestartTime >= time.Second }

// llgr reports whether sessions negotiate long-lived graceful restart.
func (c *Config) llgr() bool { return c.gracefulRestart() && c.LLGRStaleTime >= time.Second }

func (c *Config) nextHopFor(p netip.Prefix) netip.Addr {
	for _, a := range c.NodeIPs {
		if a.Is4() == p.Addr().Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// Flags registers the operator-tunable fields on fs with prefix "bgp-",
// using the values in c as defaults. Store-derived fields (ASN, addresses,
// pod CIDRs, peers) are not flags.
func (c *Config) Flags(fs *pflag.FlagSet) {
	fs.Int32Var(&c.ListenPort, "bgp-listen-port", c.ListenPort, "port the BGP speaker accepts sessions on; negative: dial only")
	fs.Uint32Var(&c.MaxPrefixes, "bgp-max-prefixes", c.MaxPrefixes, "cut a BGP session off when the peer announces more prefixes than this per address family (0: no limit)")
	fs.IntVar(&c.Table, "bgp-route-table", c.Table, "kernel routing table for learned routes (0: main)")
	fs.DurationVar(&c.GracefulRestartTime, "bgp-graceful-restart-time", c.GracefulRestartTime, "BGP graceful restart time (RFC 4724) advertised to peers: how long they keep this speaker's routes after its session drops, waiting for it to return (0: graceful restart and LLGR off; at most 4095s)")
	fs.DurationVar(&c.LLGRStaleTime, "bgp-llgr-stale-time", c.LLGRStaleTime, "BGP long-lived graceful restart stale time (RFC 9494): how much longer, after the restart time, peers keep this speaker's routes marked stale (0: LLGR off)")
	fs.DurationVar(&c.SessionLossGrace, "bgp-session-loss-grace", c.SessionLossGrace, "keep routes of a peer without graceful restart this long after its BGP session dropped, and routes dropped as stale at the end of a graceful restart this long in case they are re-learned")
	fs.DurationVar(&c.StaleRouteGrace, "bgp-stale-route-grace", c.StaleRouteGrace, "after the first BGP session is up, remove routes of a previous run not re-learned within this time")
	fs.DurationVar(&c.StaleRouteTimeout, "bgp-stale-route-timeout", c.StaleRouteTimeout, "remove routes of a previous run after this time even if no BGP session comes up")
	fs.DurationVar(&c.HoldTime, "bgp-hold-time", c.HoldTime, "BGP hold time")
	fs.DurationVar(&c.KeepaliveInterval, "bgp-keepalive-interval", c.KeepaliveInterval, "BGP keepalive interval")
	fs.DurationVar(&c.ConnectRetry, "bgp-connect-retry", c.ConnectRetry, "BGP connect retry interval")
}
