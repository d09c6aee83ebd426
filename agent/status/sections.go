package status

import (
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"
)

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

// BGP is the node's BGP speaker (clustermesh-agent --bgp): its sessions and
// what it received and installed per peer.
type BGP struct {
	State SectionState `json:"state"`
	// Error is the latest error starting or reading the speaker.
	Error     string         `json:"error,omitempty"`
	ASN       uint32         `json:"asn,omitempty"`
	RouterID  netip.Addr     `json:"routerID,omitzero"`
	Announced []netip.Prefix `json:"announced,omitempty"`
	Sessions  []BGPSession   `json:"sessions,omitempty"`
	// Installed is the number of learned routes in the kernel; Failed the
	// accepted routes the kernel refused (retried).
	Installed int `json:"installed"`
	Failed    int `json:"failed,omitempty"`
	// Refused are learned routes not installed (overlaps), with the reason.
	Refused []BGPRefusal `json:"refused,omitempty"`
	// PendingRemoval counts routes of lost sessions kept for the grace;
	// StaleRoutes routes of a previous run not yet re-learned.
	PendingRemoval int    `json:"pendingRemoval,omitempty"`
	StaleRoutes    int    `json:"staleRoutes,omitempty"`
	InstallErrors  uint64 `json:"installErrors,omitempty"`
}

// BGPSession is one neighbor of the speaker.
type BGPSession struct {
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

// BGPRefusal is a learned route the speaker did not install.
type BGPRefusal struct {
	Prefix   netip.Prefix `json:"prefix"`
	NextHop  netip.Addr   `json:"nextHop,omitzero"`
	Peer     string       `json:"peer"`
	Reason   string       `json:"reason"`
	Conflict netip.Prefix `json:"conflict,omitzero"`
}

// Health is the node health gossip pool (clustermesh-agent --health).
type Health struct {
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
	// MemberList lists every peer. The status published into the store
	// leaves it out (see Compact).
	MemberList []HealthMember `json:"memberList,omitempty"`
	// Refused are the gossip messages refused because they disagree with
	// the node registry (see docs/health.md, "Members are bound to the
	// registry").
	Refused []HealthRefusal `json:"refused,omitempty"`
}

// HealthRefusal is one kind of gossip message the pool refused: what it
// claimed (cluster, node, address), the field that disagreed with the
// registry and why, and how often.
type HealthRefusal struct {
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

// HealthMember is one peer of the gossip pool.
type HealthMember struct {
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Healthy bool      `json:"healthy"`
	Held    bool      `json:"held,omitempty"`
	Since   time.Time `json:"since,omitzero"`
}

// Compact returns the status without its per-member and per-route lists,
// the form published into the store by every agent (its size does not grow
// with the mesh).
func (a Agent) Compact() Agent {
	if a.Health != nil {
		h := *a.Health
		h.MemberList = nil
		if len(h.Refused) > maxPublishedRefusals {
			h.Refused = h.Refused[:maxPublishedRefusals]
		}
		a.Health = &h
	}
	if a.BGP != nil {
		b := *a.BGP
		if len(b.Refused) > maxPublishedRefusals {
			b.Refused = b.Refused[:maxPublishedRefusals]
		}
		a.BGP = &b
	}
	return a
}

// maxPublishedRefusals bounds the refusals in the published status.
const maxPublishedRefusals = 16

// maxPrintedMembers is how many health members the text output lists in
// full; beyond it only the ones not alive or not healthy are listed.
const maxPrintedMembers = 32

func printBGP(w io.Writer, b *BGP) error {
	fmt.Fprintf(w, "\nBGP  state=%s  asn=%d  router-id=%s  announced=%s  installed=%d", b.State, b.ASN, addrOrDash(b.RouterID), prefixes(b.Announced), b.Installed)
	if b.Failed > 0 {
		fmt.Fprintf(w, "  failed=%d", b.Failed)
	}
	if b.PendingRemoval > 0 {
		fmt.Fprintf(w, "  pending-removal=%d", b.PendingRemoval)
	}
	if b.StaleRoutes > 0 {
		fmt.Fprintf(w, "  stale=%d", b.StaleRoutes)
	}
	fmt.Fprintln(w)
	if b.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", b.Error)
	}
	if len(b.Sessions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  PEER\tADDRESS\tASN\tSTATE\tSINCE\tRECEIVED\tINSTALLED\tREFUSED\tADVERTISED\tCUT OFF")
		for _, s := range b.Sessions {
			since := "-"
			if !s.Since.IsZero() {
				since = s.Since.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n",
				dash(s.Peer), addrOrDash(s.Address), s.ASN, s.State, since, s.Received, s.Installed, s.Refused, s.Advertised, dash(s.CutOff))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	} else if b.State == SectionRunning {
		fmt.Fprintln(w, "  no BGP peer yet")
	}
	for _, r := range b.Refused {
		fmt.Fprintf(w, "  refused %s from %s: %s", r.Prefix, r.Peer, r.Reason)
		if r.Conflict.IsValid() {
			fmt.Fprintf(w, " (%s)", r.Conflict)
		}
		fmt.Fprintln(w)
	}
	return nil
}

func printHealth(w io.Writer, h *Health) error {
	fmt.Fprintf(w, "\nHealth  state=%s  self=%s  members=%d  alive=%d  suspect=%d  dead=%d  unhealthy=%d  isolated=%t  last-detection=%s  max-detection=%s\n",
		h.State, dash(h.Self), h.Members, h.Alive, h.Suspect, h.Dead, h.Unhealthy, h.Isolated,
		seconds(h.LastDetectionSeconds), seconds(h.MaxDetectionSeconds))
	if h.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", h.Error)
	}
	if h.Isolated && h.IsolationReason != "" {
		fmt.Fprintf(w, "  isolated: %s (deaths are not acted on)\n", h.IsolationReason)
	}
	for _, r := range h.Refused {
		fmt.Fprintf(w, "  refused %s/%s at %s: %s %s", r.Cluster, r.Node, r.Address, r.Field, r.Reason)
		if r.Owner != "" {
			fmt.Fprintf(w, " (address of %s)", r.Owner)
		}
		fmt.Fprintf(w, " x%d\n", r.Count)
	}
	list := h.MemberList
	if len(list) > maxPrintedMembers {
		list = nil
		for _, m := range h.MemberList {
			if m.State != "alive" || !m.Healthy || m.Held {
				list = append(list, m)
			}
		}
		fmt.Fprintf(w, "  %d members alive and healthy not listed (-o json lists every member)\n", len(h.MemberList)-len(list))
	}
	if len(list) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MEMBER\tSTATE\tHEALTHY\tHELD\tSINCE")
	for _, m := range list {
		since := "-"
		if !m.Since.IsZero() {
			since = m.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%t\t%t\t%s\n", m.Name, m.State, m.Healthy, m.Held, since)
	}
	return tw.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "-"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}
