// Package observe is what an observer of flows and the agents that record
// them share: the flow record and its filter, the HTTP protocol of the
// agents' flow endpoint (GET /flows, JSON lines, replay then follow), the
// mutual TLS that guards it when it is served off the node, and the
// time-ordered merge of many agents' streams that `clustermesh observe`
// prints.
//
// It holds no datapath code: the CLI imports it without the eBPF objects.
package observe

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// Flow is one enriched flow event.
type Flow struct {
	Time time.Time `json:"time"`
	// Cluster and Node are where the decision was taken (the agent's).
	Cluster string `json:"cluster"`
	Node    string `json:"node"`
	// Kind is "translate", "no-backend" or "policy-deny"; Verdict is
	// "forwarded" or "dropped".
	Kind    string `json:"kind"`
	Verdict string `json:"verdict"`
	Proto   string `json:"proto"`
	// Service ("namespace/name") for translations and refusals; Tier is
	// how the backend was chosen: "preferred", "fallback" or "affinity".
	Service string `json:"service,omitempty"`
	Tier    string `json:"tier,omitempty"`
	// Direction of a policy denial: "ingress" or "egress".
	Direction   string   `json:"direction,omitempty"`
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
}

// Endpoint is one side of a flow, named as far as the mesh knows it.
type Endpoint struct {
	IP        netip.Addr `json:"ip,omitzero"`
	Port      uint16     `json:"port,omitempty"`
	Cluster   string     `json:"cluster,omitempty"`
	Node      string     `json:"node,omitempty"`
	Namespace string     `json:"namespace,omitempty"`
	Pod       string     `json:"pod,omitempty"`
	Identity  uint32     `json:"identity,omitempty"`
}

// Filter selects flows; empty fields match everything.
type Filter struct {
	Kind, Verdict, Service string
	// FromCluster and ToCluster match the source's and the destination's
	// cluster; Namespace and Pod match either side.
	FromCluster, ToCluster string
	Namespace, Pod         string
	Since                  time.Time
}

// ParseFilter reads a filter from query parameters: kind, verdict,
// service, from-cluster, to-cluster, namespace, pod, since (a duration
// ago, or an RFC 3339 time).
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Kind: q.Get("kind"), Verdict: q.Get("verdict"), Service: q.Get("service"),
		FromCluster: q.Get("from-cluster"), ToCluster: q.Get("to-cluster"), Namespace: q.Get("namespace"), Pod: q.Get("pod")}
	if s := q.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			f.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			f.Since = t
		} else {
			return f, fmt.Errorf("since %q: want a duration (5m) or an RFC 3339 time", s)
		}
	}
	return f, nil
}

// Query renders the filter as query parameters (the inverse of
// ParseFilter, Since as an RFC 3339 time).
func (f Filter) Query() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"kind": f.Kind, "verdict": f.Verdict, "service": f.Service,
		"from-cluster": f.FromCluster, "to-cluster": f.ToCluster, "namespace": f.Namespace, "pod": f.Pod} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.Format(time.RFC3339Nano))
	}
	return q
}

// Match tells whether fl passes the filter.
func (f Filter) Match(fl *Flow) bool {
	either := func(want string, a, b string) bool { return want == "" || a == want || b == want }
	return (f.Kind == "" || fl.Kind == f.Kind) &&
		(f.Verdict == "" || fl.Verdict == f.Verdict) &&
		(f.Service == "" || fl.Service == f.Service) &&
		(f.FromCluster == "" || fl.Source.Cluster == f.FromCluster) &&
		(f.ToCluster == "" || fl.Destination.Cluster == f.ToCluster) &&
		either(f.Namespace, fl.Source.Namespace, fl.Destination.Namespace) &&
		either(f.Pod, fl.Source.Pod, fl.Destination.Pod) &&
		(f.Since.IsZero() || !fl.Time.Before(f.Since))
}

// Text renders a flow on one line for people:
//
//	15:04:05.000 c1/node1 translate  forwarded TCP shop/web-1 (c1) → svc shop/api → shop/api-7 10.2.0.7:8080 (c2/node3) fallback
func (f *Flow) Text() string {
	side := func(e Endpoint) string {
		var parts []string
		if e.Pod != "" {
			parts = append(parts, e.Namespace+"/"+e.Pod)
		}
		switch {
		case e.IP.IsValid() && e.Port != 0:
			parts = append(parts, netip.AddrPortFrom(e.IP, e.Port).String())
		case e.IP.IsValid():
			parts = append(parts, e.IP.String())
		}
		loc := e.Cluster
		if e.Node != "" {
			loc += "/" + e.Node
		}
		if loc != "" {
			parts = append(parts, "("+loc+")")
		}
		if e.Identity != 0 {
			parts = append(parts, fmt.Sprintf("id %d", e.Identity))
		}
		if len(parts) == 0 {
			return "?"
		}
		return strings.Join(parts, " ")
	}
	mid := " → "
	if f.Service != "" {
		mid = " → svc " + f.Service + " → "
	}
	extra := f.Tier
	if f.Direction != "" {
		extra = f.Direction
	}
	return fmt.Sprintf("%s %s/%s %-11s %-9s %-4s %s%s%s %s", f.Time.Format("15:04:05.000"), f.Cluster, f.Node,
		f.Kind, f.Verdict, f.Proto, side(f.Source), mid, side(f.Destination), extra)
}
