package api

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// AgentStatus is the status one agent publishes into its own cluster's
// store at AgentStatusKey, so the CLI can tell, per peer, how many agents of
// the cluster are connected and synced. The agent keeps it attached to a
// lease: a dead agent's status disappears within the lease TTL.
//
// The same type is the agent's local status document (JSON, on its loopback
// status endpoint); the published form is Compact, which drops per-member
// lists and cuts texts to the bounds Validate enforces.
type AgentStatus struct {
	// SchemaVersion is the schema the status was written with; Unmarshal
	// sets it from the value, and Validate requires this build's.
	SchemaVersion int    `json:"schemaVersion"`
	Cluster       string `json:"cluster"`
	Node          string `json:"node"`
	// Datapath names the datapath in use ("bpf" or "none").
	Datapath string `json:"datapath"`
	// Frontends is the number of service frontends programmed.
	Frontends int            `json:"frontends"`
	Updated   time.Time      `json:"updated"`
	Clusters  []AgentCluster `json:"clusters"`
	// BGP is the node's BGP speaker; absent when the agent runs without
	// --bgp.
	BGP *AgentBGP `json:"bgp,omitempty"`
	// Health is the node health gossip pool; absent without --health.
	Health *AgentHealth `json:"health,omitempty"`
}

// AgentState is the state of an agent's connection to one cluster.
type AgentState string

const (
	// AgentStateConnecting: no answer from the cluster's store yet.
	AgentStateConnecting AgentState = "connecting"
	// AgentStateConnected: the cluster config was validated and its kinds
	// are followed (see AgentCluster.Synced for the initial sync).
	AgentStateConnected AgentState = "connected"
	// AgentStateUnreachable: the store stopped answering; the last known
	// state of the cluster is kept and used.
	AgentStateUnreachable AgentState = "unreachable"
	// AgentStateRefused: the cluster config failed validation (name
	// mismatch, colliding ID, overlapping pod CIDRs); nothing of it is used.
	AgentStateRefused AgentState = "refused"
	// AgentStateInvalidConfig: the connection file could not be loaded.
	AgentStateInvalidConfig AgentState = "invalid-config"
)

// AgentCluster is the status of an agent's connection to one cluster (its
// own included).
type AgentCluster struct {
	Name  string     `json:"name"`
	ID    uint32     `json:"id,omitempty"`
	Local bool       `json:"local,omitempty"`
	State AgentState `json:"state"`
	// Connected is true while the cluster's store answers and its config
	// is accepted.
	Connected bool `json:"connected"`
	// Synced is true once every followed kind has been fully listed and its
	// synced canary seen; it stays true across later disconnections.
	Synced bool `json:"synced"`
	// SyncedKinds lists the kinds whose initial sync is complete.
	SyncedKinds []string `json:"syncedKinds,omitempty"`
	// LastError is the latest error of this connection: refusal reason,
	// connection failure, or a malformed object that was skipped.
	LastError     string     `json:"lastError,omitempty"`
	LastErrorTime *time.Time `json:"lastErrorTime,omitempty"`
	// Objects counts the objects currently held, by kind.
	Objects map[string]int `json:"objects,omitempty"`
	// InvalidObjects counts values skipped because they failed to decode or
	// validate.
	InvalidObjects uint64 `json:"invalidObjects,omitempty"`
	// RefusedObjects counts objects and fields of a peer refused because
	// they reach outside what the peer owns, or exceed its quota.
	RefusedObjects uint64 `json:"refusedObjects,omitempty"`
	// LastRefusal names the latest refusal: cluster, key, field, reason.
	LastRefusal string `json:"lastRefusal,omitempty"`
	// Events counts store events applied.
	Events uint64 `json:"events"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
	// Routes counts the routes to this cluster's pods the node has in its
	// kernel (learned by BGP or computed by static routing): routes whose
	// next hop is one of the cluster's nodes. 0 with --routes=none.
	Routes int `json:"routes,omitempty"`
}

// SectionState says whether an optional subsystem of the agent (BGP,
// health) is running.
type SectionState string

const (
	// SectionStarting: enabled, waiting for what it needs (the local
	// cluster's config, this node in the store).
	SectionStarting SectionState = "starting"
	// SectionRunning: the subsystem runs; its figures are current.
	SectionRunning SectionState = "running"
	// SectionFailed: the subsystem stopped on an error (Error says which).
	SectionFailed SectionState = "failed"
)

// AgentBGP is the node's BGP speaker (clustermesh-agent --bgp): its
// sessions and what it received and installed per peer.
type AgentBGP struct {
	State SectionState `json:"state"`
	// Error is the latest error starting or reading the speaker.
	Error     string            `json:"error,omitempty"`
	ASN       uint32            `json:"asn,omitempty"`
	RouterID  netip.Addr        `json:"routerID,omitzero"`
	Announced []netip.Prefix    `json:"announced,omitempty"`
	Sessions  []AgentBGPSession `json:"sessions,omitempty"`
	// Installed is the number of learned routes in the kernel; Failed the
	// accepted routes the kernel refused (retried).
	Installed int `json:"installed"`
	Failed    int `json:"failed,omitempty"`
	// Refused are learned routes not installed (overlaps), with the reason.
	Refused []AgentBGPRefusal `json:"refused,omitempty"`
	// PendingRemoval counts routes of lost sessions kept for the grace;
	// StaleRoutes routes of a previous run not yet re-learned.
	PendingRemoval int    `json:"pendingRemoval,omitempty"`
	StaleRoutes    int    `json:"staleRoutes,omitempty"`
	InstallErrors  uint64 `json:"installErrors,omitempty"`
}

// AgentBGPSession is one neighbor of the speaker.
type AgentBGPSession struct {
	Peer        string     `json:"peer,omitempty"`
	Address     netip.Addr `json:"address"`
	ASN         uint32     `json:"asn"`
	State       string     `json:"state"`
	Established bool       `json:"established"`
	Since       time.Time  `json:"since,omitzero"`
	// CutOff says why the session was shut (too many prefixes).
	CutOff     string `json:"cutOff,omitempty"`
	Received   int    `json:"received"`
	Accepted   int    `json:"accepted"`
	Installed  int    `json:"installed"`
	Refused    int    `json:"refused"`
	Advertised int    `json:"advertised"`
}

// AgentBGPRefusal is a learned route the speaker did not install.
type AgentBGPRefusal struct {
	Prefix   netip.Prefix `json:"prefix"`
	NextHop  netip.Addr   `json:"nextHop,omitzero"`
	Peer     string       `json:"peer"`
	Reason   string       `json:"reason"`
	Conflict netip.Prefix `json:"conflict,omitzero"`
}

// AgentHealth is the node health gossip pool (clustermesh-agent --health).
type AgentHealth struct {
	State SectionState `json:"state"`
	Error string       `json:"error,omitempty"`
	// Self is this member's name ("<cluster>/<node>").
	Self string `json:"self,omitempty"`
	// Members counts the peers tracked; Alive, Suspect, Dead and Left split
	// it by state.
	Members int `json:"members"`
	Alive   int `json:"alive"`
	Suspect int `json:"suspect"`
	Dead    int `json:"dead"`
	Left    int `json:"left,omitempty"`
	// Unhealthy counts peers whose backends are out of load balancing;
	// Held dead peers the safety rules keep in.
	Unhealthy int `json:"unhealthy"`
	Held      int `json:"held,omitempty"`
	// HealthScore is this member's Lifeguard score (0 is healthy).
	HealthScore int `json:"healthScore"`
	// Isolated is set while this member believes it is the one cut off and
	// acts on no death.
	Isolated        bool   `json:"isolated"`
	IsolationReason string `json:"isolationReason,omitempty"`
	// LastDetectionSeconds is the detection latency of the latest death
	// (upper bound, see docs/health.md), MaxDetectionSeconds the largest;
	// 0 before any.
	LastDetectionSeconds float64 `json:"lastDetectionSeconds"`
	MaxDetectionSeconds  float64 `json:"maxDetectionSeconds"`
	// MemberList lists every peer. The published status leaves it out
	// (see Compact).
	MemberList []AgentHealthMember `json:"memberList,omitempty"`
	// Refused are the gossip messages refused because they disagree with
	// the node registry (see docs/health.md, "Members are bound to the
	// registry").
	Refused []AgentHealthRefusal `json:"refused,omitempty"`
}

// AgentHealthRefusal is one kind of gossip message the pool refused: what
// it claimed (cluster, node, address), the field that disagreed with the
// registry and why, and how often.
type AgentHealthRefusal struct {
	Cluster string         `json:"cluster"`
	Node    string         `json:"node"`
	Address netip.AddrPort `json:"address,omitzero"`
	// Owner is the registry node that has the address, if any.
	Owner  string    `json:"owner,omitempty"`
	Field  string    `json:"field"`
	Reason string    `json:"reason"`
	Count  uint64    `json:"count"`
	Last   time.Time `json:"last,omitzero"`
}

// AgentHealthMember is one peer of the gossip pool.
type AgentHealthMember struct {
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Healthy bool      `json:"healthy"`
	Held    bool      `json:"held,omitempty"`
	Since   time.Time `json:"since,omitzero"`
}

// Bounds of an agent status. Every agent of every cluster publishes one and
// the CLI reads them all, so a value stays within a few hundred KiB even at
// the mesh's largest: MaxAgentClusters clusters, each with a bounded error.
const (
	// MaxAgentClusters is the number of clusters one agent can follow: every
	// cluster ID of an extended mesh, plus a connection file or so being
	// replaced.
	MaxAgentClusters = ExtendedMaxClusterID + 1
	// MaxAgentText bounds names, states and reasons.
	MaxAgentText = 253
	// MaxAgentError bounds error texts; Compact cuts longer ones.
	MaxAgentError = 512
	// MaxAgentKinds bounds the kinds listed per cluster (synced, counted).
	MaxAgentKinds = 16
	// MaxAgentBGPSessions bounds the BGP sessions of one speaker.
	MaxAgentBGPSessions = 256
	// MaxAgentBGPRefusals bounds the refused routes listed, and
	// MaxAgentHealthRefusals the refused gossip messages; Compact keeps the
	// first ones.
	MaxAgentBGPRefusals    = 16
	MaxAgentHealthRefusals = 16
	// MaxAgentHealthMembers bounds the health members listed. The published
	// status lists none (Compact drops them); the bound caps what a reader
	// allocates for a value written by someone else.
	MaxAgentHealthMembers = 256
)

// AgentStatusKey is the key of the status of the agent of node in cluster.
func AgentStatusKey(cluster, node string) string { return ClusterPrefix(KindAgents, cluster) + node }

// AgentStatusRef names an agent status key (AgentStatusKey).
type AgentStatusRef struct{ Cluster, Node string }

// Key returns the key r names.
func (r AgentStatusRef) Key() string { return AgentStatusKey(r.Cluster, r.Node) }

// ParseAgentStatusKey inverts AgentStatusKey.
func ParseAgentStatusKey(key string) (AgentStatusRef, error) {
	s, err := splitKey(key, KindAgents, "cluster", "agent node name")
	if err != nil {
		return AgentStatusRef{}, err
	}
	return AgentStatusRef{Cluster: s[0], Node: s[1]}, nil
}

// Key returns the store key of the status.
func (a *AgentStatus) Key() string { return AgentStatusKey(a.Cluster, a.Node) }

// ClusterByName returns the status of one cluster, if present.
func (a AgentStatus) ClusterByName(name string) (AgentCluster, bool) {
	for _, c := range a.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return AgentCluster{}, false
}

// Compact returns the status in the form published into the store: without
// its per-member list, with at most MaxAgentBGPRefusals refusals and
// MaxAgentBGPSessions sessions, and with every text made valid UTF-8 and
// cut to its bound, so that it passes Validate and its size does not grow
// with the mesh. The receiver is not changed.
func (a AgentStatus) Compact() AgentStatus {
	a.Clusters = slices.Clone(a.Clusters)
	for i := range a.Clusters {
		c := &a.Clusters[i]
		c.LastError = cutText(c.LastError, MaxAgentError)
		c.LastRefusal = cutText(c.LastRefusal, MaxAgentError)
	}
	if a.Health != nil {
		h := *a.Health
		h.MemberList = nil
		h.Error = cutText(h.Error, MaxAgentError)
		h.IsolationReason = cutText(h.IsolationReason, MaxAgentError)
		if len(h.Refused) > MaxAgentHealthRefusals {
			h.Refused = h.Refused[:MaxAgentHealthRefusals]
		}
		h.Refused = slices.Clone(h.Refused)
		for i := range h.Refused {
			r := &h.Refused[i]
			r.Cluster, r.Node, r.Owner = cutText(r.Cluster, MaxAgentText), cutText(r.Node, MaxAgentText), cutText(r.Owner, MaxAgentText)
			r.Field, r.Reason = cutText(r.Field, MaxAgentText), cutText(r.Reason, MaxAgentText)
		}
		a.Health = &h
	}
	if a.BGP != nil {
		b := *a.BGP
		b.Error = cutText(b.Error, MaxAgentError)
		if len(b.Refused) > MaxAgentBGPRefusals {
			b.Refused = b.Refused[:MaxAgentBGPRefusals]
		}
		if len(b.Sessions) > MaxAgentBGPSessions {
			b.Sessions = b.Sessions[:MaxAgentBGPSessions]
		}
		b.Refused = slices.Clone(b.Refused)
		for i := range b.Refused {
			b.Refused[i].Reason = cutText(b.Refused[i].Reason, MaxAgentText)
		}
		a.BGP = &b
	}
	return a
}

// cutText makes s valid UTF-8 of at most n bytes, marking a cut with "...".
func cutText(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[:n-3]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// Validate checks the agent status and its bounds.
func (a *AgentStatus) Validate() error {
	if a.SchemaVersion != SchemaVersion {
		return invalidf("agent status: schema version %d, want %d", a.SchemaVersion, SchemaVersion)
	}
	if err := ValidateClusterName(a.Cluster); err != nil {
		return fmt.Errorf("agent status: %w", err)
	}
	if err := validateName("agent node name", a.Node); err != nil {
		return fmt.Errorf("agent status in cluster %s: %w", a.Cluster, err)
	}
	what := fmt.Sprintf("agent status %s/%s", a.Cluster, a.Node)
	v := agentValidator{what: what}
	v.text("datapath", a.Datapath, MaxAgentText)
	v.count("frontends", a.Frontends)
	v.time("updated", a.Updated)
	v.bound("clusters", len(a.Clusters), MaxAgentClusters)
	for i := range a.Clusters {
		if v.err != nil {
			break
		}
		v.cluster(i, &a.Clusters[i])
	}
	if b := a.BGP; b != nil && v.err == nil {
		v.bgp(b)
	}
	if h := a.Health; h != nil && v.err == nil {
		v.health(h)
	}
	return v.err
}

// agentValidator keeps the first error of a walk over an agent status.
type agentValidator struct {
	what string
	err  error
}

func (v *agentValidator) fail(format string, args ...any) {
	if v.err == nil {
		v.err = invalidf("%s: %s", v.what, fmt.Sprintf(format, args...))
	}
}

func (v *agentValidator) text(field, s string, n int) {
	if len(s) > n {
		v.fail("%s: %d bytes, at most %d", field, len(s), n)
	}
}

func (v *agentValidator) count(field string, n int) {
	if n < 0 {
		v.fail("%s: negative count %d", field, n)
	}
}

func (v *agentValidator) bound(field string, n, max int) {
	if n > max {
		v.fail("%s: %d, at most %d", field, n, max)
	}
}

// time refuses times the wire cannot carry (nanoseconds since the epoch in
// an int64: years 1678 to 2262).
func (v *agentValidator) time(field string, t time.Time) {
	if !t.IsZero() && !time.Unix(0, t.UnixNano()).Equal(t) {
		v.fail("%s: %s out of range", field, t)
	}
}

func (v *agentValidator) seconds(field string, s float64) {
	if math.IsNaN(s) || math.IsInf(s, 0) || s < 0 {
		v.fail("%s: %v is not a duration", field, s)
	}
}

func (v *agentValidator) cluster(i int, c *AgentCluster) {
	f := func(name string) string { return fmt.Sprintf("cluster #%d (%.40q): %s", i, c.Name, name) }
	if c.Name == "" {
		v.fail("%s", f("name is empty"))
	}
	v.text(f("name"), c.Name, MaxAgentText)
	v.text(f("state"), string(c.State), MaxAgentText)
	v.bound(f("synced kinds"), len(c.SyncedKinds), MaxAgentKinds)
	for _, k := range c.SyncedKinds {
		v.text(f("synced kind"), k, MaxAgentText)
	}
	v.text(f("last error"), c.LastError, MaxAgentError)
	if c.LastErrorTime != nil {
		v.time(f("last error time"), *c.LastErrorTime)
	}
	v.bound(f("object kinds"), len(c.Objects), MaxAgentKinds)
	for k, n := range c.Objects {
		v.text(f("object kind"), k, MaxAgentText)
		v.count(f("objects of "+k), n)
	}
	v.text(f("last refusal"), c.LastRefusal, MaxAgentError)
	v.time(f("since"), c.Since)
	v.count(f("routes"), c.Routes)
}

func (v *agentValidator) bgp(b *AgentBGP) {
	v.text("bgp: state", string(b.State), MaxAgentText)
	v.text("bgp: error", b.Error, MaxAgentError)
	v.bound("bgp: announced", len(b.Announced), MaxPodCIDRs)
	for i, p := range b.Announced {
		if err := validatePrefix(p, func() string { return fmt.Sprintf("%s: bgp: announced #%d", v.what, i) }); err != nil && v.err == nil {
			v.err = err
		}
	}
	v.bound("bgp: sessions", len(b.Sessions), MaxAgentBGPSessions)
	for i, s := range b.Sessions {
		f := func(name string) string { return fmt.Sprintf("bgp: session #%d: %s", i, name) }
		v.text(f("peer"), s.Peer, MaxAgentText)
		v.text(f("state"), s.State, MaxAgentText)
		v.time(f("since"), s.Since)
		v.text(f("cut off"), s.CutOff, MaxAgentText)
		for _, n := range []int{s.Received, s.Accepted, s.Installed, s.Refused, s.Advertised} {
			v.count(f("counts"), n)
		}
	}
	for _, n := range []int{b.Installed, b.Failed, b.PendingRemoval, b.StaleRoutes} {
		v.count("bgp: route counts", n)
	}
	v.bound("bgp: refused", len(b.Refused), MaxAgentBGPRefusals)
	for i, r := range b.Refused {
		v.text(fmt.Sprintf("bgp: refused #%d: peer", i), r.Peer, MaxAgentText)
		v.text(fmt.Sprintf("bgp: refused #%d: reason", i), r.Reason, MaxAgentText)
	}
}

func (v *agentValidator) health(h *AgentHealth) {
	v.text("health: state", string(h.State), MaxAgentText)
	v.text("health: error", h.Error, MaxAgentError)
	v.text("health: self", h.Self, MaxAgentText)
	for _, n := range []int{h.Members, h.Alive, h.Suspect, h.Dead, h.Left, h.Unhealthy, h.Held, h.HealthScore} {
		v.count("health: counts", n)
	}
	v.text("health: isolation reason", h.IsolationReason, MaxAgentError)
	v.seconds("health: last detection", h.LastDetectionSeconds)
	v.seconds("health: max detection", h.MaxDetectionSeconds)
	v.bound("health: members", len(h.MemberList), MaxAgentHealthMembers)
	for i, m := range h.MemberList {
		v.text(fmt.Sprintf("health: member #%d: name", i), m.Name, MaxAgentText)
		v.text(fmt.Sprintf("health: member #%d: state", i), m.State, MaxAgentText)
		v.time(fmt.Sprintf("health: member #%d: since", i), m.Since)
	}
	v.bound("health: refused", len(h.Refused), MaxAgentHealthRefusals)
	for i, r := range h.Refused {
		f := func(name string) string { return fmt.Sprintf("health: refused #%d: %s", i, name) }
		v.text(f("cluster"), r.Cluster, MaxAgentText)
		v.text(f("node"), r.Node, MaxAgentText)
		v.text(f("owner"), r.Owner, MaxAgentText)
		v.text(f("field"), r.Field, MaxAgentText)
		v.text(f("reason"), r.Reason, MaxAgentText)
		v.time(f("last"), r.Last)
	}
}

// Marshal validates and encodes the agent status.
func (a *AgentStatus) Marshal() ([]byte, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	e := newEncoder(256 + 128*len(a.Clusters))
	e.string(2, a.Cluster)
	e.string(3, a.Node)
	e.string(4, a.Datapath)
	e.uint(5, uint64(a.Frontends))
	e.time(6, a.Updated)
	for i := range a.Clusters {
		c := &a.Clusters[i]
		e.message(7, func(e *encoder) {
			e.string(1, c.Name)
			e.uint(2, uint64(c.ID))
			e.bool(3, c.Local)
			e.string(4, string(c.State))
			e.bool(5, c.Connected)
			e.bool(6, c.Synced)
			for _, k := range c.SyncedKinds {
				e.stringElem(7, k)
			}
			e.string(8, c.LastError)
			if c.LastErrorTime != nil {
				e.time(9, *c.LastErrorTime)
			}
			e.countMap(10, c.Objects)
			e.uint(11, c.InvalidObjects)
			e.uint(12, c.RefusedObjects)
			e.string(13, c.LastRefusal)
			e.uint(14, c.Events)
			e.time(15, c.Since)
			e.uint(16, uint64(c.Routes))
		})
	}
	if b := a.BGP; b != nil {
		e.message(8, func(e *encoder) {
			e.string(1, string(b.State))
			e.string(2, b.Error)
			e.uint(3, uint64(b.ASN))
			e.addr(4, b.RouterID)
			for _, p := range b.Announced {
				e.prefix(5, p)
			}
			for i := range b.Sessions {
				s := &b.Sessions[i]
				e.message(6, func(e *encoder) {
					e.string(1, s.Peer)
					e.addr(2, s.Address)
					e.uint(3, uint64(s.ASN))
					e.string(4, s.State)
					e.bool(5, s.Established)
					e.time(6, s.Since)
					e.string(7, s.CutOff)
					e.uint(8, uint64(s.Received))
					e.uint(9, uint64(s.Accepted))
					e.uint(10, uint64(s.Installed))
					e.uint(11, uint64(s.Refused))
					e.uint(12, uint64(s.Advertised))
				})
			}
			e.uint(7, uint64(b.Installed))
			e.uint(8, uint64(b.Failed))
			for i := range b.Refused {
				r := &b.Refused[i]
				e.message(9, func(e *encoder) {
					if r.Prefix.IsValid() {
						e.prefix(1, r.Prefix)
					}
					e.addr(2, r.NextHop)
					e.string(3, r.Peer)
					e.string(4, r.Reason)
					if r.Conflict.IsValid() {
						e.prefix(5, r.Conflict)
					}
				})
			}
			e.uint(10, uint64(b.PendingRemoval))
			e.uint(11, uint64(b.StaleRoutes))
			e.uint(12, b.InstallErrors)
		})
	}
	if h := a.Health; h != nil {
		e.message(9, func(e *encoder) {
			e.string(1, string(h.State))
			e.string(2, h.Error)
			e.string(3, h.Self)
			e.uint(4, uint64(h.Members))
			e.uint(5, uint64(h.Alive))
			e.uint(6, uint64(h.Suspect))
			e.uint(7, uint64(h.Dead))
			e.uint(8, uint64(h.Left))
			e.uint(9, uint64(h.Unhealthy))
			e.uint(10, uint64(h.Held))
			e.uint(11, uint64(h.HealthScore))
			e.bool(12, h.Isolated)
			e.string(13, h.IsolationReason)
			e.double(14, h.LastDetectionSeconds)
			e.double(15, h.MaxDetectionSeconds)
			for i := range h.MemberList {
				m := &h.MemberList[i]
				e.message(16, func(e *encoder) {
					e.string(1, m.Name)
					e.string(2, m.State)
					e.bool(3, m.Healthy)
					e.bool(4, m.Held)
					e.time(5, m.Since)
				})
			}
			for i := range h.Refused {
				r := &h.Refused[i]
				e.message(17, func(e *encoder) {
					e.string(1, r.Cluster)
					e.string(2, r.Node)
					e.addrPort(3, r.Address)
					e.string(4, r.Owner)
					e.string(5, r.Field)
					e.string(6, r.Reason)
					e.uint(7, r.Count)
					e.time(8, r.Last)
				})
			}
		})
	}
	return e.finish()
}

// Unmarshal decodes an agent status; it does not validate (Decode does).
func (a *AgentStatus) Unmarshal(b []byte) error {
	*a = AgentStatus{}
	version, err := topVersion(b, func(f field) (err error) {
		switch f.num {
		case 2:
			a.Cluster, err = f.string()
		case 3:
			a.Node, err = f.string()
		case 4:
			a.Datapath, err = f.string()
		case 5:
			a.Frontends, err = f.int()
		case 6:
			a.Updated, err = f.time()
		case 7:
			var c AgentCluster
			err = f.message("cluster", func(f field) error { return c.decodeField(f) })
			a.Clusters = append(a.Clusters, c)
		case 8:
			a.BGP = new(AgentBGP)
			err = f.message("bgp", func(f field) error { return a.BGP.decodeField(f) })
		case 9:
			a.Health = new(AgentHealth)
			err = f.message("health", func(f field) error { return a.Health.decodeField(f) })
		}
		return err
	})
	a.SchemaVersion = int(version)
	return err
}

func (c *AgentCluster) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		c.Name, err = f.string()
	case 2:
		c.ID, err = f.uint32()
	case 3:
		c.Local, err = f.bool()
	case 4:
		var s string
		s, err = f.string()
		c.State = AgentState(s)
	case 5:
		c.Connected, err = f.bool()
	case 6:
		c.Synced, err = f.bool()
	case 7:
		var s string
		if s, err = f.string(); err == nil {
			c.SyncedKinds = append(c.SyncedKinds, s)
		}
	case 8:
		c.LastError, err = f.string()
	case 9:
		var t time.Time
		if t, err = f.time(); err == nil && !t.IsZero() {
			c.LastErrorTime = &t
		}
	case 10:
		err = f.countMap(&c.Objects)
	case 11:
		c.InvalidObjects, err = f.uint()
	case 12:
		c.RefusedObjects, err = f.uint()
	case 13:
		c.LastRefusal, err = f.string()
	case 14:
		c.Events, err = f.uint()
	case 15:
		c.Since, err = f.time()
	case 16:
		c.Routes, err = f.int()
	}
	return err
}

func (b *AgentBGP) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		var s string
		s, err = f.string()
		b.State = SectionState(s)
	case 2:
		b.Error, err = f.string()
	case 3:
		b.ASN, err = f.uint32()
	case 4:
		b.RouterID, err = f.addr()
	case 5:
		var p netip.Prefix
		if p, err = f.prefix(); err == nil {
			b.Announced = append(b.Announced, p)
		}
	case 6:
		var s AgentBGPSession
		err = f.message("bgp session", func(f field) error { return s.decodeField(f) })
		b.Sessions = append(b.Sessions, s)
	case 7:
		b.Installed, err = f.int()
	case 8:
		b.Failed, err = f.int()
	case 9:
		var r AgentBGPRefusal
		err = f.message("bgp refusal", func(f field) error { return r.decodeField(f) })
		b.Refused = append(b.Refused, r)
	case 10:
		b.PendingRemoval, err = f.int()
	case 11:
		b.StaleRoutes, err = f.int()
	case 12:
		b.InstallErrors, err = f.uint()
	}
	return err
}

func (s *AgentBGPSession) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		s.Peer, err = f.string()
	case 2:
		s.Address, err = f.addr()
	case 3:
		s.ASN, err = f.uint32()
	case 4:
		s.State, err = f.string()
	case 5:
		s.Established, err = f.bool()
	case 6:
		s.Since, err = f.time()
	case 7:
		s.CutOff, err = f.string()
	case 8:
		s.Received, err = f.int()
	case 9:
		s.Accepted, err = f.int()
	case 10:
		s.Installed, err = f.int()
	case 11:
		s.Refused, err = f.int()
	case 12:
		s.Advertised, err = f.int()
	}
	return err
}

func (r *AgentBGPRefusal) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		r.Prefix, err = f.prefix()
	case 2:
		r.NextHop, err = f.addr()
	case 3:
		r.Peer, err = f.string()
	case 4:
		r.Reason, err = f.string()
	case 5:
		r.Conflict, err = f.prefix()
	}
	return err
}

func (h *AgentHealth) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		var s string
		s, err = f.string()
		h.State = SectionState(s)
	case 2:
		h.Error, err = f.string()
	case 3:
		h.Self, err = f.string()
	case 4:
		h.Members, err = f.int()
	case 5:
		h.Alive, err = f.int()
	case 6:
		h.Suspect, err = f.int()
	case 7:
		h.Dead, err = f.int()
	case 8:
		h.Left, err = f.int()
	case 9:
		h.Unhealthy, err = f.int()
	case 10:
		h.Held, err = f.int()
	case 11:
		h.HealthScore, err = f.int()
	case 12:
		h.Isolated, err = f.bool()
	case 13:
		h.IsolationReason, err = f.string()
	case 14:
		h.LastDetectionSeconds, err = f.double()
	case 15:
		h.MaxDetectionSeconds, err = f.double()
	case 16:
		var m AgentHealthMember
		err = f.message("health member", func(f field) error { return m.decodeField(f) })
		h.MemberList = append(h.MemberList, m)
	case 17:
		var r AgentHealthRefusal
		err = f.message("health refusal", func(f field) error { return r.decodeField(f) })
		h.Refused = append(h.Refused, r)
	}
	return err
}

func (r *AgentHealthRefusal) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		r.Cluster, err = f.string()
	case 2:
		r.Node, err = f.string()
	case 3:
		r.Address, err = f.addrPort()
	case 4:
		r.Owner, err = f.string()
	case 5:
		r.Field, err = f.string()
	case 6:
		r.Reason, err = f.string()
	case 7:
		r.Count, err = f.uint()
	case 8:
		r.Last, err = f.time()
	}
	return err
}

func (m *AgentHealthMember) decodeField(f field) (err error) {
	switch f.num {
	case 1:
		m.Name, err = f.string()
	case 2:
		m.State, err = f.string()
	case 3:
		m.Healthy, err = f.bool()
	case 4:
		m.Held, err = f.bool()
	case 5:
		m.Since, err = f.time()
	}
	return err
}
