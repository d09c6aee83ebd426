package flows

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/observe"
)

// Handler serves GET /flows: the matching flows of the ring as JSON lines
// (the last N with last=N), then, with follow=true, every new matching flow
// as it comes until the client goes away. Serve it on loopback: flows name
// pods and services.
func (o *Observer) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f, err := observe.ParseFilter(q)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		last := 0
		if s := q.Get("last"); s != "" {
			if last, err = strconv.Atoi(s); err != nil || last < 0 {
				http.Error(w, "last: want a count", http.StatusBadRequest)
				return
			}
		}
		follow := q.Get("follow") == "true"
		var (
			ch   <-chan observe.Flow
			stop func()
		)
		if follow {
			// Subscribe before the replay, so nothing falls between.
			ch, stop = o.Follow(1024)
			defer stop()
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		recent := o.Recent(f.Match)
		if last > 0 && len(recent) > last {
			recent = recent[len(recent)-last:]
		}
		for i := range recent {
			if err := enc.Encode(&recent[i]); err != nil {
				return
			}
		}
		fl, _ := w.(http.Flusher)
		if fl != nil {
			fl.Flush()
		}
		if !follow {
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case flow, ok := <-ch:
				if !ok {
					return
				}
				if !f.Match(&flow) {
					continue
				}
				if err := enc.Encode(&flow); err != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
		}
	})
}

type metrics struct {
	flows        *prometheus.CounterVec
	translations *prometheus.CounterVec
	noBackend    *prometheus.CounterVec
	policyDrops  *prometheus.CounterVec
	subDrops     prometheus.Counter
	remoteReqs   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, src Source) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_flows_total",
			Help: "Flows observed (a sample: see clustermesh_flow_events_total), by kind and verdict."}, []string{"kind", "verdict"}),
		translations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_flow_translations_total",
			Help: "Observed service translations by service, source and destination cluster, and tier (preferred, fallback, affinity)."},
			[]string{"service", "from_cluster", "to_cluster", "tier"}),
		noBackend: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_flow_no_backend_total",
			Help: "Observed connects refused for lack of a usable backend, by service."}, []string{"service"}),
		policyDrops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_flow_policy_drops_total",
			Help: "Observed policy denials by direction and source and destination cluster."}, []string{"direction", "from_cluster", "to_cluster"}),
		subDrops: prometheus.NewCounter(prometheus.CounterOpts{Name: "clustermesh_flow_follower_drops_total",
			Help: "Flows a slow follower (observe --follow) did not receive."}),
		remoteReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "clustermesh_flow_observer_requests_total",
			Help: "Requests for flows from observers off the node (clustermesh observe), by the observer's cluster and result: served, refused (not an allowed observer), busy (too many at once)."},
			[]string{"client_cluster", "result"}),
	}
	events := &eventCollector{src: src, desc: prometheus.NewDesc("clustermesh_flow_events_total",
		"Flow events of the kernel by kind and outcome: sent to the agent, rate_limited (over the kind's per-CPU rate), lost (ring buffer full). Exact.",
		[]string{"kind", "outcome"}, nil)}
	for _, c := range []prometheus.Collector{m.flows, m.translations, m.noBackend, m.policyDrops, m.subDrops, m.remoteReqs, events} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("flows: metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) flow(f *observe.Flow) {
	if m == nil {
		return
	}
	m.flows.WithLabelValues(f.Kind, f.Verdict).Inc()
	switch f.Kind {
	case "translate":
		m.translations.WithLabelValues(f.Service, f.Source.Cluster, f.Destination.Cluster, f.Tier).Inc()
	case "no-backend":
		m.noBackend.WithLabelValues(f.Service).Inc()
	case "policy-deny":
		m.policyDrops.WithLabelValues(f.Direction, f.Source.Cluster, f.Destination.Cluster).Inc()
	}
}

func (m *metrics) remote(cluster, result string) {
	if m != nil {
		m.remoteReqs.WithLabelValues(cluster, result).Inc()
	}
}

func (m *metrics) subscriberDrop() {
	if m != nil {
		m.subDrops.Inc()
	}
}

type eventCollector struct {
	src  Source
	desc *prometheus.Desc
}

func (c *eventCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *eventCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.src.EventCounts()
	if err != nil {
		return
	}
	for _, k := range bpf.EventKinds {
		n := counts[k]
		for outcome, v := range map[string]uint64{"sent": n.Sent, "rate_limited": n.RateLimited, "lost": n.Lost} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k.String(), outcome)
		}
	}
}
