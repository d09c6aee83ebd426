package bgp

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are registered on the caller's Registerer. Per-peer gauges are
// read from GoBGP at scrape time, so they are never stale.
type metrics struct {
	refused      *prometheus.CounterVec
	installErrs  prometheus.Counter
	limitCutOffs *prometheus.CounterVec
	installs     prometheus.Counter
	removals     prometheus.Counter

	status      func(context.Context) (Status, error)
	established *prometheus.Desc
	received    *prometheus.Desc
	installed   *prometheus.Desc
	routes      *prometheus.Desc
}

func newMetrics(role string, reg prometheus.Registerer, status func(context.Context) (Status, error)) (*metrics, error) {
	cl := prometheus.Labels{"role": role}
	m := &metrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_bgp_routes_refused_total", ConstLabels: cl,
			Help: "Learned routes refused because they overlap a local pod CIDR, the node subnet or another learned route.",
		}, []string{"reason"}),
		installErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_bgp_route_install_errors_total", ConstLabels: cl,
			Help: "Kernel route programming failures.",
		}),
		limitCutOffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_bgp_prefix_limit_cutoffs_total", ConstLabels: cl,
			Help: "Sessions cut off because the peer exceeded its prefix limit.",
		}, []string{"peer"}),
		installs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_bgp_route_installs_total", ConstLabels: cl,
			Help: "Learned routes written to the kernel.",
		}),
		removals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "clustermesh_bgp_route_removals_total", ConstLabels: cl,
			Help: "Learned routes removed from the kernel.",
		}),
		status:      status,
		established: prometheus.NewDesc("clustermesh_bgp_session_established", "1 when the BGP session with the peer is established.", []string{"peer", "peer_name"}, cl),
		received:    prometheus.NewDesc("clustermesh_bgp_prefixes_received", "Prefixes received from the peer.", []string{"peer", "peer_name"}, cl),
		installed:   prometheus.NewDesc("clustermesh_bgp_prefixes_installed", "Prefixes from the peer installed in the kernel.", []string{"peer", "peer_name"}, cl),
		routes:      prometheus.NewDesc("clustermesh_bgp_routes_installed", "Learned routes currently installed in the kernel.", nil, cl),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.refused, m.installErrs, m.limitCutOffs, m.installs, m.removals, m} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.established
	ch <- m.received
	ch <- m.installed
	ch <- m.routes
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := m.status(ctx)
	if err != nil {
		return
	}
	for _, p := range st.Peers {
		up := 0.0
		if p.Established {
			up = 1
		}
		a := p.Address.String()
		ch <- prometheus.MustNewConstMetric(m.established, prometheus.GaugeValue, up, a, p.Name)
		ch <- prometheus.MustNewConstMetric(m.received, prometheus.GaugeValue, float64(p.PrefixesReceived), a, p.Name)
		ch <- prometheus.MustNewConstMetric(m.installed, prometheus.GaugeValue, float64(p.PrefixesInstalled), a, p.Name)
	}
	ch <- prometheus.MustNewConstMetric(m.routes, prometheus.GaugeValue, float64(len(st.Installed)))
}
