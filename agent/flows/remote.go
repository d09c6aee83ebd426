package flows

import (
	"log/slog"
	"net/http"

	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/observe"
)

// DefaultMaxStreams bounds the observers served at once off the node.
const DefaultMaxStreams = 16

// RemoteHandler serves GET /flows to observers off the node, over the
// mutual TLS of access (see observe.ServerAccess): only a client whose
// certificate is an observer's, signed by the observe CA of a cluster the
// operator allowed, is served, and only flows: the listener offers nothing
// else. At most maxStreams requests run at once (0: DefaultMaxStreams);
// beyond that the answer is 429, so that no observer can hold the agent's
// memory or its followers' buffers.
func (o *Observer) RemoteHandler(access *observe.ServerAccess, maxStreams int, log *slog.Logger) http.Handler {
	if maxStreams <= 0 {
		maxStreams = DefaultMaxStreams
	}
	log = logging.OrDiscard(log)
	slots := make(chan struct{}, maxStreams)
	inner := o.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/flows" {
			http.Error(w, "only GET /flows is served here", http.StatusNotFound)
			return
		}
		cluster, err := access.ClientCluster(r.TLS)
		if err != nil {
			o.metrics.remote("", "refused")
			log.Warn("observer refused", "remote", r.RemoteAddr, "error", err)
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			o.metrics.remote(cluster, "busy")
			http.Error(w, "too many observers at once; retry later", http.StatusTooManyRequests)
			return
		}
		o.metrics.remote(cluster, "served")
		log.Debug("observer served", "client_cluster", cluster, "remote", r.RemoteAddr, "query", r.URL.RawQuery)
		inner.ServeHTTP(w, r)
	})
}
