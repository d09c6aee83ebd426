package apiserver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the apiserver's Prometheus metrics, all prefixed
// clustermesh_apiserver_.
type metrics struct {
	exportLatency   *prometheus.HistogramVec
	syncErrors      *prometheus.CounterVec
	badAnnotations  prometheus.Counter
	badServices     prometheus.Gauge
	synced          *prometheus.GaugeVec
	initialDuration prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, exported func() map[string]int) (*metrics, error) {
	m := &metrics{
		exportLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "clustermesh_apiserver_export_latency_seconds",
			Help: "Time from a Kubernetes change being observed to its export to the store completing, by kind.",
			// 1 ms .. ~16 s
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}, []string{"kind"}),
		syncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_apiserver_sync_errors_total",
			Help: "Failed exports by kind and reason (store: retried; invalid: the object cannot be exported).",
		}, []string{"kind", "reason"}),
		badAnnotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_apiserver_bad_service_annotations_total",
			Help: "Times a service was found with a bad mesh annotation value (each distinct bad value counts once).",
		}),
		badServices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_apiserver_services_with_bad_annotations",
			Help: "Services currently exported as non-global because of a bad mesh annotation.",
		}),
		synced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "clustermesh_apiserver_synced",
			Help: "1 once the initial export of the kind is complete and its synced canary written.",
		}, []string{"kind"}),
		initialDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_apiserver_initial_export_seconds",
			Help: "Time from start to the last synced canary of the initial export.",
		}),
	}
	objects := &exportedCollector{
		desc: prometheus.NewDesc("clustermesh_apiserver_exported_objects",
			"Objects this apiserver currently exports to the store, by kind.", []string{"kind"}, nil),
		count: exported,
	}
	for _, c := range []prometheus.Collector{m.exportLatency, m.syncErrors, m.badAnnotations, m.badServices, m.synced, m.initialDuration, objects} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// exportedCollector reports the controller's export counts at scrape time.
type exportedCollector struct {
	desc  *prometheus.Desc
	count func() map[string]int
}

func (c *exportedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *exportedCollector) Collect(ch chan<- prometheus.Metric) {
	for kind, n := range c.count() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), kind)
	}
}
