package kvstore

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Prometheus metrics of writers and readers. Create one per
// process with NewMetrics and pass it in WriterOptions and ReaderOptions; a
// nil *Metrics records nothing.
type Metrics struct {
	writes         *prometheus.CounterVec
	leaseRecovered *prometheus.CounterVec
	events         *prometheus.CounterVec
	relists        *prometheus.CounterVec
	spaceAlarms    *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_kvstore_writes_total",
			Help: "Writes by a writer to its cluster's store, by operation (upsert, delete, unchanged: an upsert skipped because the value was already written).",
		}, []string{"cluster", "op"}),
		leaseRecovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_kvstore_lease_recoveries_total",
			Help: "Leases a writer found lost and re-created, rewriting the keys they held.",
		}, []string{"cluster"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_kvstore_events_total",
			Help: "Events a reader sent to its consumer, by kind and type (upsert, delete, synced, error).",
		}, []string{"cluster", "kind", "type"}),
		relists: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_kvstore_relists_total",
			Help: "Full re-listings of a cluster's store by a reader after its first listing (compaction, reconnection, a writer's canary appearing).",
		}, []string{"cluster", "kind"}),
		spaceAlarms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_kvstore_space_alarms_total",
			Help: "Space (NOSPACE) alarms of the embedded store found and cleared by compaction, defragmentation and disarming.",
		}, []string{"cluster"}),
	}
	for _, c := range []prometheus.Collector{m.writes, m.leaseRecovered, m.events, m.relists, m.spaceAlarms} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) write(cluster, op string) {
	if m != nil {
		m.writes.WithLabelValues(cluster, op).Inc()
	}
}

func (m *Metrics) leaseRecovery(cluster string) {
	if m != nil {
		m.leaseRecovered.WithLabelValues(cluster).Inc()
	}
}

func (m *Metrics) event(cluster, kind string, t EventType) {
	if m != nil {
		m.events.WithLabelValues(cluster, kind, t.String()).Inc()
	}
}

func (m *Metrics) relist(cluster, kind string) {
	if m != nil {
		m.relists.WithLabelValues(cluster, kind).Inc()
	}
}

// Forget drops every series of cluster, for a consumer that stopped
// following it: a disconnected cluster must not linger in /metrics.
func (m *Metrics) Forget(cluster string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"cluster": cluster}
	for _, v := range []*prometheus.CounterVec{m.writes, m.leaseRecovered, m.events, m.relists} {
		v.DeletePartialMatch(l)
	}
}

func (m *Metrics) spaceAlarm(cluster string) {
	if m != nil {
		m.spaceAlarms.WithLabelValues(cluster).Inc()
	}
}
