package bgp

import (
	"net/netip"
	"time"
)

// Status is a point-in-time view of a Speaker or Reflector, shaped for the
// agent's status output (JSON).
type Status struct {
	Role      string         `json:"role"`
	Name      string         `json:"name"`
	ASN       uint32         `json:"asn"`
	RouterID  netip.Addr     `json:"routerID"`
	Announced []netip.Prefix `json:"announced,omitempty"`
	Peers     []PeerStatus   `json:"peers"`
	// Installed are the learned routes in the kernel (speaker only).
	Installed []InstalledRoute `json:"installed,omitempty"`
	// Failed are accepted routes the kernel refused (say, a next hop not
	// reachable yet); they are retried every second.
	Failed []InstalledRoute `json:"failed,omitempty"`
	// Withheld are accepted routes kept out of the kernel because their
	// next hop is a node the health view reports dead
	// (Speaker.SetDeadNextHops); they go back in when it is alive again.
	Withheld []InstalledRoute `json:"withheld,omitempty"`
	// Refused are learned routes not installed, with the reason.
	Refused []Refusal `json:"refused,omitempty"`
	// PendingRemoval counts routes of lost sessions kept for the grace.
	PendingRemoval int `json:"pendingRemoval,omitempty"`
	// StaleRoutes counts routes of a previous run not yet re-learned.
	StaleRoutes   int    `json:"staleRoutes,omitempty"`
	InstallErrors uint64 `json:"installErrors,omitempty"`
}

// PeerStatus is one neighbor's session and prefix counters.
type PeerStatus struct {
	Name        string     `json:"name,omitempty"`
	Address     netip.Addr `json:"address"`
	ASN         uint32     `json:"asn"`
	State       string     `json:"state"`
	Established bool       `json:"established"`
	Since       time.Time  `json:"since,omitzero"`
	// CutOff is set when the session was shut for exceeding MaxPrefixes.
	CutOff             string `json:"cutOff,omitempty"`
	PrefixesReceived   int    `json:"prefixesReceived"`
	PrefixesAccepted   int    `json:"prefixesAccepted"`
	PrefixesAdvertised int    `json:"prefixesAdvertised"`
	PrefixesInstalled  int    `json:"prefixesInstalled"`
	// UpdatesSent and UpdatesReceived count the neighbor's UPDATE messages
	// (GoBGP's counters, since the neighbor was configured). The changes
	// of one batch (an Announce, an UPDATE relayed, a peer's routes
	// dropped) leave packed, many prefixes per UPDATE (third_party/gobgp).
	UpdatesSent     uint64 `json:"updatesSent"`
	UpdatesReceived uint64 `json:"updatesReceived"`
}

// InstalledRoute is one learned route programmed in the kernel.
type InstalledRoute struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"nextHop"`
	Peer    string       `json:"peer"`
}
