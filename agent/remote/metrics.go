package remote

import (
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the per-cluster metrics of cluster connections. A nil
// *Metrics records nothing.
type Metrics struct {
	events    *prometheus.CounterVec
	invalids  *prometheus.CounterVec
	refused   *prometheus.CounterVec
	objectsG  *prometheus.GaugeVec
	synced    *prometheus.GaugeVec
	connected *prometheus.GaugeVec
	state     *prometheus.GaugeVec
	// store counts the readers' own activity (events, re-lists) under
	// clustermesh_kvstore_*.
	store *kvstore.Metrics
}

var allStates = []status.State{status.StateConnecting, status.StateConnected, status.StateUnreachable, status.StateRefused, status.StateInvalidConfig}

// NewMetrics creates the agent's metrics (clustermesh_agent_*) and the
// readers' store metrics, and registers them on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	store, err := kvstore.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	return NewMetricsFor(reg, PrefixAgent, store)
}

// Name prefixes of the followers' metrics: the agent's, and the mesh
// cache's (package meshcache), which follows peers the same way.
const (
	PrefixAgent     = "clustermesh_agent_"
	PrefixMeshCache = "clustermesh_meshcache_"
)

// NewMetricsFor creates the same metrics named with prefix (PrefixAgent,
// PrefixMeshCache), recording the readers' activity into store (nil: not
// recorded), and registers them on reg.
func NewMetricsFor(reg prometheus.Registerer, prefix string, store *kvstore.Metrics) (*Metrics, error) {
	pre := prefix
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: pre + "events_total",
			Help: "Store events processed, by cluster, kind and event type.",
		}, []string{"cluster", "kind", "type"}),
		invalids: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: pre + "invalid_objects_total",
			Help: "Values skipped because they failed to decode or validate, by cluster and kind.",
		}, []string{"cluster", "kind"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: pre + "peer_refused_total",
			Help: "Objects or fields of a peer cluster refused because they reach outside what the peer owns or exceed its quota, by cluster, kind and reason (see docs/security.md).",
		}, []string{"cluster", "kind", "reason"}),
		objectsG: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: pre + "objects",
			Help: "Objects currently held, by cluster and kind.",
		}, []string{"cluster", "kind"}),
		synced: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: pre + "cluster_synced",
			Help: "1 once every kind of the cluster has completed its initial sync.",
		}, []string{"cluster"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: pre + "cluster_connected",
			Help: "1 while the cluster's store answers and its config is accepted.",
		}, []string{"cluster"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: pre + "cluster_state",
			Help: "1 for the current state of each cluster connection.",
		}, []string{"cluster", "state"}),
	}
	for _, c := range []prometheus.Collector{m.events, m.invalids, m.refused, m.objectsG, m.synced, m.connected, m.state} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.store = store
	return m, nil
}

// storeMetrics is the readers' metrics; nil (recording nothing) when m is.
func (m *Metrics) storeMetrics() *kvstore.Metrics {
	if m == nil {
		return nil
	}
	return m.store
}

func eventType(t kvstore.EventType) string {
	return t.String()
}

func (m *Metrics) event(cluster string, kind api.Kind, t kvstore.EventType) {
	if m != nil {
		m.events.WithLabelValues(cluster, string(kind), eventType(t)).Inc()
	}
}

func (m *Metrics) invalid(cluster string, kind api.Kind) {
	if m != nil {
		m.invalids.WithLabelValues(cluster, string(kind)).Inc()
	}
}

func (m *Metrics) refusal(cluster string, kind api.Kind, reason string) {
	if m != nil {
		m.refused.WithLabelValues(cluster, string(kind), reason).Inc()
	}
}

func (m *Metrics) objects(cluster string, kind api.Kind, n int) {
	if m != nil {
		m.objectsG.WithLabelValues(cluster, string(kind)).Set(float64(n))
	}
}

func (m *Metrics) setSynced(cluster string, synced bool) {
	if m == nil {
		return
	}
	v := 0.0
	if synced {
		v = 1
	}
	m.synced.WithLabelValues(cluster).Set(v)
}

func (m *Metrics) setState(cluster string, st status.State) {
	if m == nil {
		return
	}
	for _, s := range allStates {
		v := 0.0
		if s == st {
			v = 1
		}
		m.state.WithLabelValues(cluster, string(s)).Set(v)
	}
	v := 0.0
	if st == status.StateConnected {
		v = 1
	}
	m.connected.WithLabelValues(cluster).Set(v)
}

// forget removes every series of a cluster that is no longer followed.
func (m *Metrics) forget(cluster string) {
	if m == nil {
		return
	}
	l := prometheus.Labels{"cluster": cluster}
	m.events.DeletePartialMatch(l)
	m.invalids.DeletePartialMatch(l)
	m.refused.DeletePartialMatch(l)
	m.objectsG.DeletePartialMatch(l)
	m.synced.DeletePartialMatch(l)
	m.connected.DeletePartialMatch(l)
	m.state.DeletePartialMatch(l)
	m.store.Forget(cluster)
}
