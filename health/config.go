package health

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/pflag"
)

// Sentinel errors of the package. Returned errors wrap them with the name of
// the offending object.
var (
	// ErrInvalidConfig reports a Config that New refuses.
	ErrInvalidConfig = errors.New("invalid health config")
	// ErrInvalidKey reports a mesh key that is not 16, 24 or 32 bytes.
	ErrInvalidKey = errors.New("invalid mesh key")
	// ErrInvalidNode reports a registry node the pool cannot use.
	ErrInvalidNode = errors.New("invalid node")
	// ErrAlreadyRunning reports a second call of Run.
	ErrAlreadyRunning = errors.New("health pool already running")
)

// Config configures a Pool. Start from DefaultConfig (production LAN timings)
// or DefaultTestConfig, then set the identity, addresses and key.
type Config struct {
	// Cluster and NodeName name this member ("<Cluster>/<NodeName>"); they
	// must match the node's registry entry.
	Cluster  string
	NodeName string
	// ClusterID is this member's numeric cluster ID, gossiped in its
	// metadata; every peer checks it against the ID it accepted this
	// cluster with.
	ClusterID uint32
	// Nodes names the nodes of connected clusters with the cluster IDs they
	// were accepted with (the agent implements it). A member whose metadata
	// claims another ID is refused. Nil trusts the ID a peer member claims,
	// except that only members of this cluster may claim ClusterID: meant
	// for tests.
	Nodes NodeResolver

	// BindAddr is where memberlist listens (UDP and TCP). Port 0 is refused:
	// peers find us at the registry's GossipAddress, so the port is fixed.
	BindAddr netip.AddrPort
	// AdvertiseAddr is the address peers use to reach us. Zero means
	// BindAddr or, when that is unspecified (0.0.0.0), this node's own
	// registry entry (its GossipAddress, else its first address on the bind
	// port): Run waits for it.
	AdvertiseAddr netip.AddrPort

	// Key is the mesh gossip key (AES-128/192/256: 16, 24 or 32 bytes). When
	// nil and KeyFile is set, New loads it with LoadKey. When both are empty
	// gossip is not encrypted, which is only meant for tests.
	Key     []byte
	KeyFile string
	// Label separates pools sharing addresses; every member must agree.
	Label string

	// Memberlist failure-detector timings; see docs/health.md for how they
	// add up to the detection time. ProbeTimeout must leave room for an
	// indirect probe's nack inside ProbeInterval (ProbeTimeout <=
	// ProbeInterval/2), or healthy members penalise their own health score.
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	IndirectChecks          int
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
	// AwarenessMaxMultiplier bounds Lifeguard's slow-down of a member that
	// misses its own deadlines; the health score ranges 0..multiplier-1.
	AwarenessMaxMultiplier int
	GossipInterval         time.Duration
	GossipNodes            int
	RetransmitMult         int
	PushPullInterval       time.Duration
	TCPTimeout             time.Duration
	GossipToTheDeadTime    time.Duration
	DeadNodeReclaimTime    time.Duration

	// Safety rules (docs/health.md, "Safety rules").
	//
	// MaxHealthScore: while this member's Lifeguard health score is above
	// it, the member assumes it is the one in trouble and acts on no death.
	MaxHealthScore int
	// QuorumMinPeers: with at least this many peers in the pool, deaths are
	// acted on only while no more than half of the peers are failing (dead
	// or suspected by this member's own probes).
	QuorumMinPeers int
	// HoldDown is how long a node that was marked unhealthy must stay alive
	// before it is restored; it doubles with every death within FlapWindow,
	// up to MaxHoldDown.
	HoldDown    time.Duration
	MaxHoldDown time.Duration
	FlapWindow  time.Duration

	// EvaluateInterval is the period of the decision loop, on top of the
	// wake-ups memberlist events cause.
	EvaluateInterval time.Duration
	// SinkTimeout bounds one HealthSink call.
	SinkTimeout time.Duration
	// LeaveTimeout bounds the graceful leave when Run stops; 0 skips it and
	// peers then see this member die.
	LeaveTimeout time.Duration
	// JoinRetryMin and JoinRetryMax bound the backoff between attempts to
	// join a registry node that is not a live member.
	JoinRetryMin time.Duration
	JoinRetryMax time.Duration

	// Logger receives the pool's logs and memberlist's own; nil discards
	// them.
	Logger *slog.Logger
}

// DefaultConfig returns timings tuned for sub-second detection on a LAN:
// each member probes one peer every 100 ms (round robin), a direct probe
// fails after 40 ms and the indirect ones by the end of the interval, and a
// suspicion confirmed by one other member times out after 3 × 100 ms;
// unconfirmed it takes 4 times longer. docs/health.md has the measured
// detection times.
func DefaultConfig() Config {
	return Config{
		BindAddr:                netip.AddrPortFrom(netip.IPv4Unspecified(), 7946),
		ProbeInterval:           100 * time.Millisecond,
		ProbeTimeout:            40 * time.Millisecond,
		IndirectChecks:          3,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 4,
		AwarenessMaxMultiplier:  8,
		GossipInterval:          50 * time.Millisecond,
		GossipNodes:             3,
		RetransmitMult:          4,
		PushPullInterval:        15 * time.Second,
		TCPTimeout:              2 * time.Second,
		GossipToTheDeadTime:     30 * time.Second,
		DeadNodeReclaimTime:     10 * time.Second,
		MaxHealthScore:          3,
		QuorumMinPeers:          2,
		HoldDown:                2 * time.Second,
		MaxHoldDown:             2 * time.Minute,
		FlapWindow:              10 * time.Minute,
		EvaluateInterval:        50 * time.Millisecond,
		SinkTimeout:             5 * time.Second,
		LeaveTimeout:            time.Second,
		JoinRetryMin:            500 * time.Millisecond,
		JoinRetryMax:            30 * time.Second,
	}
}

// DefaultTestConfig is DefaultConfig with short hold-downs and quick
// retries, for tests that kill and restart members repeatedly. The failure
// detector timings are the production ones, so tests measure what users get.
func DefaultTestConfig() Config {
	c := DefaultConfig()
	c.HoldDown = 300 * time.Millisecond
	c.MaxHoldDown = 5 * time.Second
	c.FlapWindow = 30 * time.Second
	c.PushPullInterval = 5 * time.Second
	c.TCPTimeout = time.Second
	c.DeadNodeReclaimTime = time.Second
	c.LeaveTimeout = 500 * time.Millisecond
	c.JoinRetryMin = 200 * time.Millisecond
	c.JoinRetryMax = 2 * time.Second
	return c
}

// Flags registers the operator-facing settings on fs, with c's current
// values as defaults.
func (c *Config) Flags(fs *pflag.FlagSet) {
	fs.TextVar(&c.BindAddr, "health-bind", c.BindAddr, "address:port memberlist listens on (UDP and TCP)")
	fs.TextVar(&c.AdvertiseAddr, "health-advertise", c.AdvertiseAddr, "address:port peers reach this member at (default: --health-bind)")
	fs.StringVar(&c.KeyFile, "health-key-file", c.KeyFile, "file holding the mesh gossip key (16, 24 or 32 bytes, raw or base64)")
	fs.DurationVar(&c.ProbeInterval, "health-probe-interval", c.ProbeInterval, "memberlist probe interval")
	fs.DurationVar(&c.ProbeTimeout, "health-probe-timeout", c.ProbeTimeout, "memberlist direct probe timeout (<= probe interval / 2)")
	fs.IntVar(&c.SuspicionMult, "health-suspicion-mult", c.SuspicionMult, "suspicion timeout in probe intervals (Lifeguard minimum)")
	fs.DurationVar(&c.GossipInterval, "health-gossip-interval", c.GossipInterval, "memberlist gossip interval")
	fs.IntVar(&c.MaxHealthScore, "health-max-health-score", c.MaxHealthScore, "act on no death while this member's health score is above this")
	fs.DurationVar(&c.HoldDown, "health-hold-down", c.HoldDown, "time an alive-again node must stay alive before it is restored (doubles per recent death)")
	fs.DurationVar(&c.MaxHoldDown, "health-max-hold-down", c.MaxHoldDown, "upper bound of the hold-down")
}

// Name returns the member name of this node, "<cluster>/<node>".
func (c *Config) Name() string { return MemberName(c.Cluster, c.NodeName) }

// MemberName is the memberlist name of a node: "<cluster>/<node>".
func MemberName(cluster, node string) string { return cluster + "/" + node }

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: member %s: %s", ErrInvalidConfig, c.Name(), fmt.Sprintf(format, args...))
	}
	switch {
	case c.Cluster == "" || c.NodeName == "":
		return bad("cluster and node name are required")
	case c.ClusterID == 0:
		return bad("cluster ID is required")
	case !c.BindAddr.IsValid() || c.BindAddr.Port() == 0:
		return bad("bind address %s needs an IP and a non-zero port", c.BindAddr)
	case c.AdvertiseAddr.IsValid() && (c.AdvertiseAddr.Addr().IsUnspecified() || c.AdvertiseAddr.Port() == 0):
		return bad("advertise address %s needs a specific IP and port", c.AdvertiseAddr)
	case c.ProbeInterval <= 0 || c.ProbeTimeout <= 0 || c.ProbeTimeout > c.ProbeInterval:
		return bad("probe timeout %s must be positive and at most the probe interval %s", c.ProbeTimeout, c.ProbeInterval)
	case c.SuspicionMult < 1 || c.SuspicionMaxTimeoutMult < 1 || c.AwarenessMaxMultiplier < 1:
		return bad("suspicion and awareness multipliers must be at least 1")
	case c.GossipInterval <= 0 || c.GossipNodes < 1:
		return bad("gossip interval and gossip nodes must be positive")
	case c.MaxHealthScore < 0 || c.QuorumMinPeers < 1:
		return bad("max health score %d must be at least 0 and quorum min peers %d at least 1", c.MaxHealthScore, c.QuorumMinPeers)
	case c.HoldDown < 0 || c.MaxHoldDown < c.HoldDown:
		return bad("hold-down %s must be between 0 and max hold-down %s", c.HoldDown, c.MaxHoldDown)
	case c.EvaluateInterval <= 0 || c.SinkTimeout <= 0:
		return bad("evaluate interval and sink timeout must be positive")
	case c.JoinRetryMin <= 0 || c.JoinRetryMax < c.JoinRetryMin:
		return bad("join retry bounds %s..%s are invalid", c.JoinRetryMin, c.JoinRetryMax)
	}
	if c.Key != nil {
		if err := checkKey(c.Key); err != nil {
			return fmt.Errorf("member %s: %w", c.Name(), err)
		}
	}
	return nil
}

// GossipPort is the port this member advertises, which the agents of a mesh
// normally share.
func (c *Config) GossipPort() uint16 { return c.advertise().Port() }

func (c *Config) advertise() netip.AddrPort {
	if c.AdvertiseAddr.IsValid() {
		return c.AdvertiseAddr
	}
	return c.BindAddr
}

func checkKey(k []byte) error {
	switch len(k) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("%w: %d bytes, want 16, 24 or 32", ErrInvalidKey, len(k))
}

// LoadKey reads the mesh gossip key from path. The file holds either the raw
// key (16, 24 or 32 bytes) or its standard base64 encoding, optionally
// followed by a newline.
func LoadKey(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh key %s: %w", path, err)
	}
	if checkKey(raw) == nil {
		return raw, nil
	}
	text := bytes.TrimSpace(raw)
	key := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
	n, decErr := base64.StdEncoding.Decode(key, text)
	if decErr == nil && checkKey(key[:n]) == nil {
		return key[:n], nil
	}
	if decErr != nil {
		return nil, fmt.Errorf("mesh key %s: neither a raw key (%d bytes) nor base64 (%v): %w", path, len(raw), decErr, ErrInvalidKey)
	}
	return nil, fmt.Errorf("mesh key %s: base64 decodes to %d bytes, want 16, 24 or 32: %w", path, n, ErrInvalidKey)
}
