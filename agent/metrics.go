package agent

import (
	"time"

	"github.com/clustermesh/clustermesh/agent/merger"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	propagation *prometheus.HistogramVec
	syncSeconds prometheus.Histogram
	ops         *prometheus.CounterVec
	errors      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, a *Agent) (*metrics, error) {
	m := &metrics{
		propagation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "clustermesh_agent_propagation_seconds",
			Help:    "Time from the first store event not yet applied to the end of the datapath sync that applied it.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}, nil),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clustermesh_agent_datapath_sync_seconds",
			Help:    "Duration of one merge-and-push to the datapath.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_agent_datapath_operations_total",
			Help: "Service upserts and deletes pushed to the datapath.",
		}, []string{"op"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_agent_datapath_errors_total",
			Help: "Failed datapath syncs (retried).",
		}),
	}
	frontends := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "clustermesh_agent_frontends",
		Help: "Service frontends programmed in the datapath.",
	}, func() float64 { return float64(a.merger.Frontends()) })
	for _, c := range []prometheus.Collector{m.propagation, m.syncSeconds, m.ops, m.errors, frontends} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observeSync(start, pendingSince time.Time, res merger.SyncResult, err error) {
	if m == nil {
		return
	}
	now := time.Now()
	m.syncSeconds.Observe(now.Sub(start).Seconds())
	if !pendingSince.IsZero() && err == nil {
		m.propagation.WithLabelValues().Observe(now.Sub(pendingSince).Seconds())
	}
	m.ops.WithLabelValues("upsert").Add(float64(res.Upserts))
	m.ops.WithLabelValues("delete").Add(float64(res.Deletes))
	if err != nil {
		m.errors.Inc()
	}
}
