package health

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	members     *prometheus.GaugeVec
	unhealthy   prometheus.Gauge
	held        prometheus.Gauge
	isolated    prometheus.Gauge
	score       prometheus.Gauge
	detection   prometheus.Histogram
	transitions *prometheus.CounterVec
	sinkErrors  prometheus.Counter
	joins       *prometheus.CounterVec
	refused     *prometheus.CounterVec
}

// newMetrics creates the clustermesh_health_* metrics and registers them on
// reg; with a nil reg they are kept but not exported.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "clustermesh_health_members",
			Help: "Peers of the gossip pool tracked by this member, by state (alive, suspect, dead, left).",
		}, []string{"state"}),
		unhealthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_health_unhealthy_nodes",
			Help: "Nodes whose backends this member has marked unhealthy.",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_health_held_deaths",
			Help: "Dead peers not marked unhealthy because this member looks isolated.",
		}),
		isolated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_health_isolated",
			Help: "1 while this member believes it is cut off and acts on no death.",
		}),
		score: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "clustermesh_health_score",
			Help: "This member's Lifeguard health score (0 is healthy).",
		}),
		detection: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "clustermesh_health_detection_seconds",
			Help:    "Time from a node's last direct ack to this member marking it unhealthy (upper bound of detection latency).",
			Buckets: []float64{.1, .2, .3, .4, .5, .75, 1, 1.5, 2, 3, 5, 10, 30},
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_health_transitions_total",
			Help: "Node health decisions, by new health (true: restored, false: marked unhealthy).",
		}, []string{"healthy"}),
		sinkErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_health_sink_errors_total",
			Help: "Failed calls to the health sink (the datapath); each is retried.",
		}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_health_join_attempts_total",
			Help: "Attempts to join registry nodes that were not live members, by result.",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_gossip_refused_total",
			Help: "Gossip messages refused because they disagree with the node registry, by the registry cluster they concern (unknown when none) and reason.",
		}, []string{"cluster", "reason"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.members, m.unhealthy, m.held, m.isolated, m.score, m.detection, m.transitions, m.sinkErrors, m.joins, m.refused} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register health metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) set(s Status) {
	m.members.WithLabelValues("alive").Set(float64(s.Alive))
	m.members.WithLabelValues("suspect").Set(float64(s.Suspect))
	m.members.WithLabelValues("dead").Set(float64(s.Dead))
	m.members.WithLabelValues("left").Set(float64(s.Left))
	m.unhealthy.Set(float64(s.Unhealthy))
	m.held.Set(float64(s.Held))
	m.score.Set(float64(s.HealthScore))
	if s.Isolated {
		m.isolated.Set(1)
	} else {
		m.isolated.Set(0)
	}
}
