package enforce

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/policy"
)

// Status is the engine's last reconcile, served as JSON by Handler and
// printed by `clustermesh-agent policy`.
type Status struct {
	// Synced is false until the local store's policies were listed; the
	// adopted policies stay in force until then.
	Synced     bool             `json:"synced"`
	Endpoints  []EndpointStatus `json:"endpoints"`
	Identities []IdentityStatus `json:"identities"`
	// Refused maps policies the agent could not parse to the reason; their
	// previous version (if any) stays in force.
	Refused map[string]string `json:"refused,omitempty"`
	Errors  []string          `json:"errors,omitempty"`
}

// EndpointStatus is one pod of this node.
type EndpointStatus struct {
	IP        netip.Addr `json:"ip"`
	Namespace string     `json:"namespace"`
	Pod       string     `json:"pod"`
	Identity  uint32     `json:"identity"`
	// NetnsCookie is 0 while the pod's namespace is not found: its egress
	// is then not checked.
	NetnsCookie uint64 `json:"netnsCookie"`
	// Ifindex is the host interface with the ingress check, 0 if none.
	Ifindex int `json:"ifindex"`
}

// IdentityStatus is the resolved policy of one local identity.
type IdentityStatus struct {
	Identity        uint32            `json:"identity"`
	Namespace       string            `json:"namespace"`
	Labels          map[string]string `json:"labels"`
	IngressEnforced bool              `json:"ingressEnforced"`
	EgressEnforced  bool              `json:"egressEnforced"`
	Ingress         []RuleStatus      `json:"ingress,omitempty"`
	Egress          []RuleStatus      `json:"egress,omitempty"`
	Entries         int               `json:"entries"`
	Warnings        []string          `json:"warnings,omitempty"`
}

// RuleStatus is one resolved entry: a peer (with its cluster and labels),
// a port and what the rule says.
type RuleStatus struct {
	Verdict  string            `json:"verdict"`
	Peer     string            `json:"peer"`
	Identity uint32            `json:"identity,omitempty"`
	Cluster  string            `json:"cluster,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Port     string            `json:"port"`
	Rule     string            `json:"rule"`
}

func describe(dp policy.DirectionPolicy, byID map[uint32]*api.Identity) []RuleStatus {
	var out []RuleStatus
	for _, group := range []struct {
		verdict string
		entries []policy.Entry
	}{{"allow", dp.Allow}, {"deny", dp.Deny}} {
		for _, en := range group.entries {
			r := RuleStatus{Verdict: group.verdict, Identity: en.Identity, Port: en.Port.String(), Rule: en.Rule}
			switch {
			case en.CIDR.IsValid():
				r.Peer = en.CIDR.String()
				r.Identity = 0
			case en.Identity == policy.IdentityAny:
				r.Peer = "any"
			case en.Identity == bpf.IdentityHost:
				r.Peer = "host"
			case en.Identity == bpf.IdentityWorld:
				r.Peer = "world"
			default:
				r.Peer = fmt.Sprint(en.Identity)
				if id, ok := byID[en.Identity]; ok {
					r.Cluster, r.Labels = id.Cluster, id.Labels
					r.Peer = id.Cluster + "/" + id.Namespace
				}
			}
			out = append(out, r)
		}
	}
	return out
}

// Status returns the last reconcile's result.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status
}

// Handler serves GET /policy: the Status JSON.
func (e *Engine) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(e.Status())
	})
}

// WriteText prints a status for people: per local endpoint, its identity,
// what is enforced and the resolved rules.
func (s *Status) WriteText(w io.Writer) error {
	var b strings.Builder
	if !s.Synced {
		b.WriteString("policies not synced yet: the policy programmed before the agent started stays in force\n")
	}
	ids := map[uint32]*IdentityStatus{}
	for i := range s.Identities {
		ids[s.Identities[i].Identity] = &s.Identities[i]
	}
	for _, ep := range s.Endpoints {
		fmt.Fprintf(&b, "%s/%s %s identity %d", ep.Namespace, ep.Pod, ep.IP, ep.Identity)
		if ep.NetnsCookie == 0 {
			b.WriteString(" (netns not found: egress not checked)")
		}
		if ep.Ifindex == 0 {
			b.WriteString(" (no ingress check)")
		}
		b.WriteString("\n")
		is := ids[ep.Identity]
		if is == nil {
			b.WriteString("  no policy computed\n")
			continue
		}
		keys := make([]string, 0, len(is.Labels))
		for k, v := range is.Labels {
			keys = append(keys, k+"="+v)
		}
		slices.Sort(keys)
		fmt.Fprintf(&b, "  labels: %s\n", strings.Join(keys, ","))
		for _, d := range []struct {
			name     string
			enforced bool
			rules    []RuleStatus
		}{{"ingress", is.IngressEnforced, is.Ingress}, {"egress", is.EgressEnforced, is.Egress}} {
			if !d.enforced {
				fmt.Fprintf(&b, "  %s: allow all (no policy selects it)\n", d.name)
				continue
			}
			fmt.Fprintf(&b, "  %s: default deny, %d rules\n", d.name, len(d.rules))
			for _, r := range d.rules {
				fmt.Fprintf(&b, "    %-5s %-30s %-10s %s\n", r.Verdict, r.Peer, r.Port, r.Rule)
			}
		}
		for _, wn := range is.Warnings {
			fmt.Fprintf(&b, "  warning: %s\n", wn)
		}
	}
	names := make([]string, 0, len(s.Refused))
	for n := range s.Refused {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "refused: %s: %s\n", n, s.Refused[n])
	}
	for _, er := range s.Errors {
		fmt.Fprintf(&b, "error: %s\n", er)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// metrics of the engine; nil when no Registerer was given.
type metrics struct {
	endpoints  prometheus.Gauge
	identities *prometheus.GaugeVec
	entries    prometheus.Gauge
	refused    prometheus.Gauge
	errors     prometheus.Gauge
	duration   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, dp Datapath) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_policy_endpoints",
			Help: "Pods of this node known to the policy engine."}),
		identities: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "clustermesh_policy_identities",
			Help: "Local identities by enforced direction (ingress, egress, none)."}, []string{"direction"}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_policy_entries",
			Help: "Policy entries programmed over every local identity."}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_policy_refused",
			Help: "Local policies the agent refused (their previous version stays in force)."}),
		errors: prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_policy_errors",
			Help: "Errors of the last policy reconcile (retried on the next change)."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "clustermesh_policy_reconcile_seconds",
			Help: "Time to compute and program the node's policy once.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	verdicts := prometheus.NewDesc("clustermesh_policy_verdicts_total",
		"Connections and datagrams checked by the eBPF policy, by direction and verdict (kernel counters).",
		[]string{"direction", "verdict"}, nil)
	for _, c := range []prometheus.Collector{m.endpoints, m.identities, m.entries, m.refused, m.errors, m.duration,
		&statsCollector{desc: verdicts, dp: dp}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("enforce: metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(s *Status, d time.Duration) {
	if m == nil {
		return
	}
	m.endpoints.Set(float64(len(s.Endpoints)))
	var in, eg, none, entries float64
	for _, is := range s.Identities {
		if is.IngressEnforced {
			in++
		}
		if is.EgressEnforced {
			eg++
		}
		if !is.IngressEnforced && !is.EgressEnforced {
			none++
		}
		entries += float64(is.Entries)
	}
	m.identities.WithLabelValues("ingress").Set(in)
	m.identities.WithLabelValues("egress").Set(eg)
	m.identities.WithLabelValues("none").Set(none)
	m.entries.Set(entries)
	m.refused.Set(float64(len(s.Refused)))
	m.errors.Set(float64(len(s.Errors)))
	m.duration.Observe(d.Seconds())
}

// statsCollector exports the kernel's policy counters at scrape time.
type statsCollector struct {
	desc *prometheus.Desc
	dp   Datapath
}

func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := c.dp.PolicyStats()
	if err != nil {
		return
	}
	for name, labels := range map[string][2]string{
		"policy_egress_denied":   {"egress", "denied"},
		"policy_egress_allowed":  {"egress", "allowed"},
		"policy_ingress_dropped": {"ingress", "denied"},
		"policy_ingress_allowed": {"ingress", "allowed"},
	} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(stats[name]), labels[0], labels[1])
	}
}
