package agent

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the agent's status endpoint: GET /status (the
// status.Agent JSON document) and what MetricsHandler serves. Serve it on
// loopback only: it is unauthenticated and /status names every cluster,
// node and endpoint the agent holds.
func (a *Agent) Handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := a.Status()
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
	a.probes(mux, g)
	return mux
}

// MetricsHandler serves what may be reachable from other pods (a
// Prometheus scraper, the kubelet's probes): /metrics (from g, if not nil),
// /healthz (the process answers) and /readyz (200 once the initial sync of
// every cluster known at start is done, 503 before).
func (a *Agent) MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	a.probes(mux, g)
	return mux
}

func (a *Agent) probes(mux *http.ServeMux, g prometheus.Gatherer) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-a.InitialSync():
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.Error(w, "initial sync not done", http.StatusServiceUnavailable)
		}
	})
	if g != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
}
