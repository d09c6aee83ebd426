package bpf

import "github.com/prometheus/client_golang/prometheus"

// metrics are optional: with no Registerer every method is a no-op.
type metrics struct {
	reg      prometheus.Registerer
	services prometheus.Gauge
	backends prometheus.Gauge
	nodes    prometheus.Gauge
	slots    prometheus.Gauge
	full     *prometheus.CounterVec
	capacity *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: "clustermesh_bpf_" + name, Help: help})
	}
	m := &metrics{
		reg:      reg,
		services: g("services", "Frontends programmed in the eBPF service map."),
		backends: g("backends", "Distinct backends programmed in the eBPF backend map."),
		nodes:    g("nodes", "Nodes known to the eBPF node map (with backends or marked down)."),
		slots:    g("slots", "Backend slots in use over all services."),
		full: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_bpf_map_full_total",
			Help: "Updates refused because an eBPF map had no room left.",
		}, []string{"map"}),
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "clustermesh_bpf_map_capacity",
			Help: "Size of each eBPF map (entries), fixed when the maps were first created (--bpf-max-* flags).",
		}, []string{"map"}),
	}
	var done []prometheus.Collector
	for _, c := range []prometheus.Collector{m.services, m.backends, m.nodes, m.slots, m.full, m.capacity} {
		if err := reg.Register(c); err != nil {
			for _, d := range done {
				reg.Unregister(d)
			}
			return nil, err
		}
		done = append(done, c)
	}
	return m, nil
}

func (m *metrics) set(services, backends, nodes, slots int) {
	if m == nil {
		return
	}
	m.services.Set(float64(services))
	m.backends.Set(float64(backends))
	m.nodes.Set(float64(nodes))
	m.slots.Set(float64(slots))
}

func (m *metrics) mapFull(name string) {
	if m == nil {
		return
	}
	m.full.WithLabelValues(name).Inc()
}

func (m *metrics) unregister() {
	if m == nil {
		return
	}
	for _, c := range []prometheus.Collector{m.services, m.backends, m.nodes, m.slots, m.full, m.capacity} {
		m.reg.Unregister(c)
	}
}

// setCapacity reports the size of each map.
func (m *metrics) setCapacity(sizes map[string]int) {
	if m == nil {
		return
	}
	for name, n := range sizes {
		m.capacity.WithLabelValues(name).Set(float64(n))
	}
}
