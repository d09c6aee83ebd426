package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/meshcache"
)

// Options are the dependencies of a Server that are not flags.
type Options struct {
	// Logger receives the logs; nil discards them.
	Logger *slog.Logger
	// Registerer and Gatherer hold the metrics; nil means a fresh registry
	// served on /metrics.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// RESTConfig overrides Config.Kubeconfig.
	RESTConfig *rest.Config
}

// Server is one clustermesh-apiserver. Create it with New, run it with Run.
type Server struct {
	cfg Config
	log *slog.Logger
	// bgpLog is the caller's logger: the bgp package names the cluster
	// itself.
	bgpLog *slog.Logger
	reg    prometheus.Registerer
	gath   prometheus.Gatherer
	rest   *rest.Config

	mu         sync.Mutex
	role       role
	ctrl       *controller
	reflector  *reflectorHost
	healthAddr string
	storeURL   string
	// cacheStore is the client the mesh cache writes its copies with, once
	// it runs.
	cacheStore *kvstore.Client
}

// New checks cfg and prepares a server; nothing starts before Run.
func New(cfg Config, opts *Options) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	o.Logger = logging.OrDiscard(o.Logger)
	if o.Registerer == nil {
		r := prometheus.NewRegistry()
		o.Registerer, o.Gatherer = r, r
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	rc := o.RESTConfig
	if rc == nil {
		var err error
		if cfg.Kubeconfig != "" {
			rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		} else {
			rc, err = rest.InClusterConfig()
		}
		if err != nil {
			return nil, fmt.Errorf("%w: --kubeconfig %q: %w", ErrConfig, cfg.Kubeconfig, err)
		}
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "clustermesh-apiserver/" + cfg.ClusterName
	return &Server{
		cfg: cfg, log: o.Logger.With("cluster", cfg.ClusterName), bgpLog: o.Logger,
		reg: o.Registerer, gath: o.Gatherer, rest: rc,
	}, nil
}

// Run serves health and metrics, starts (or connects to) the store, writes
// the cluster config and exports the cluster until ctx is done. It returns
// nil when ctx ends, or the error that stopped it. A Server runs once.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	hl, err := net.Listen("tcp", s.cfg.HealthAddr)
	if err != nil {
		return fmt.Errorf("cluster %s: --health-addr: %w", s.cfg.ClusterName, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", s.serveReadyz)
	mux.Handle("/metrics", promhttp.HandlerFor(s.gath, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status/bgp", s.serveBGPStatus)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("health server", "error", err)
		}
	}()
	defer hs.Close()
	s.mu.Lock()
	s.healthAddr = hl.Addr().String()
	s.mu.Unlock()

	storeMetrics, err := kvstore.NewMetrics(s.reg)
	if err != nil {
		return fmt.Errorf("cluster %s: store metrics: %w", s.cfg.ClusterName, err)
	}
	client, cacheStore, closeStore, err := s.openStore(ctx, storeMetrics)
	if err != nil {
		return err
	}
	defer closeStore()

	if s.cfg.KVStoreConfig != "" && s.cfg.LeaderElect {
		lctx, resign, err := s.campaign(ctx, client)
		if err != nil {
			return err
		}
		if lctx == nil {
			return nil // ctx ended while standing by
		}
		defer resign()
		ctx = lctx
	}

	writer, err := kvstore.NewWriter(client, s.cfg.ClusterName, &kvstore.WriterOptions{LeaseTTL: s.cfg.LeaseTTL, Logger: s.log, Metrics: storeMetrics})
	if err != nil {
		return fmt.Errorf("cluster %s: %w", s.cfg.ClusterName, err)
	}
	defer writer.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = writer.Run(ctx)
	}()

	kube, err := kubernetes.NewForConfig(s.rest)
	if err != nil {
		return fmt.Errorf("cluster %s: kubernetes client: %w", s.cfg.ClusterName, err)
	}
	bc := record.NewBroadcaster(record.WithContext(ctx))
	defer bc.Shutdown()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	rec := bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "clustermesh-apiserver"})

	alloc := newAllocator(client, writer, s.cfg.ClusterName, s.cfg.ClusterID, s.cfg.MaxClusterID)
	if err := alloc.load(ctx); err != nil {
		return err
	}
	podCIDRs, _ := s.cfg.podCIDRs() // validated by New
	var ctrl *controller
	m, err := newMetrics(s.reg, func() map[string]int { return ctrl.exported() })
	if err != nil {
		return fmt.Errorf("cluster %s: metrics: %w", s.cfg.ClusterName, err)
	}
	ctrl = newController(kube, writer, alloc, m, rec, s.log, &s.cfg, podCIDRs)

	dyn, err := dynamic.NewForConfig(s.rest)
	if err != nil {
		return fmt.Errorf("cluster %s: kubernetes dynamic client: %w", s.cfg.ClusterName, err)
	}
	pc, err := newPolicyChecker(kube, dyn, rec, s.reg, s.log)
	if err != nil {
		return fmt.Errorf("cluster %s: metrics: %w", s.cfg.ClusterName, err)
	}
	pc.exportTo(s.cfg.ClusterName, writer, client)
	pcctx, pccancel := context.WithCancel(ctx)
	defer pccancel()
	wg.Add(1)
	go func() { defer wg.Done(); pc.run(pcctx) }()
	ctrl.exports = newServiceExports(dyn, kube.Discovery(), s.log, func(nn types.NamespacedName) {
		ctrl.enqueue(qkey{kind: kindService, nn: nn})
	})
	wg.Add(1)
	go func() { defer wg.Done(); ctrl.exports.run(pcctx) }()
	// Peers' exports are read from the mesh cache's copies in the local
	// store: without the cache only the cluster's own exports are imported.
	peersDir := ""
	if s.cfg.MeshCache {
		peersDir = s.cfg.ClustersDir
	}
	im := newImporter(ctrl, client, peersDir, s.cfg.ClustersDirPoll, kube, dyn, rec, s.log)
	wg.Add(1)
	go func() { defer wg.Done(); im.run(pcctx) }()

	// The cluster config goes first: peers validate it before trusting
	// anything else the cluster exports.
	if err := writer.Upsert(ctx, ctrl.clusterConfig()); err != nil {
		return fmt.Errorf("cluster %s: write cluster config: %w", s.cfg.ClusterName, err)
	}
	s.mu.Lock()
	s.ctrl = ctrl
	s.mu.Unlock()
	if s.cfg.BGPReflectorAddress != "" {
		rh, err := newReflectorHost(&s.cfg, s.log, s.bgpLog, s.reg, func() api.Cluster { return *ctrl.clusterConfig() }, ctrl.localNodes)
		if err != nil {
			return err
		}
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rh.run(rctx); err != nil {
				s.log.Error("bgp route reflector stopped", "error", err)
			}
		}()
		s.mu.Lock()
		s.reflector = rh
		s.mu.Unlock()
	}
	if s.cfg.ClustersDir != "" {
		pg := &peerGrants{dir: s.cfg.ClustersDir, cluster: s.cfg.ClusterName, client: client, every: s.cfg.ClustersDirPoll, log: s.log}
		pctx, pcancel := context.WithCancel(ctx)
		defer pcancel()
		wg.Add(1)
		go func() { defer wg.Done(); pg.run(pctx) }()
	}
	if s.cfg.MeshCache {
		mc, err := meshcache.New(meshcache.Config{Cluster: s.cfg.ClusterName, Local: cacheStore, ClustersDir: s.cfg.ClustersDir,
			DirPoll: s.cfg.ClustersDirPoll, DrainGrace: s.cfg.MeshCacheDrainGrace, LeaseTTL: s.cfg.LeaseTTL,
			Registerer: s.reg, StoreMetrics: storeMetrics, Logger: s.log})
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.cacheStore = cacheStore
		s.mu.Unlock()
		mctx, mcancel := context.WithCancel(ctx)
		defer mcancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := mc.Run(mctx); err != nil && mctx.Err() == nil {
				s.log.Error("mesh cache stopped", "error", err)
			}
		}()
	}
	s.log.Info("exporting", "cluster-id", s.cfg.ClusterID, "store", client.Config().Endpoints, "health", s.HealthAddr())
	if err := ctrl.run(ctx); err != nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrLostLeadership) {
		return fmt.Errorf("cluster %s: %w", s.cfg.ClusterName, cause)
	}
	return nil
}

// LeaderPrefix is the etcd election prefix of the replicas of a cluster
// sharing an external store (outside api.KeyPrefix: peers do not see it).
const LeaderPrefix = "clustermesh-private/v1/leader/"

// leaderTTL is the TTL of a leader's session: how long a replica
// that died without resigning blocks its standbys.
const leaderTTL = 15 * time.Second

// ErrLostLeadership is returned by Run when the replica's leader session
// expired (it could not reach the store for a TTL): another replica may be
// exporting, so this one stops and must be restarted.
var ErrLostLeadership = errors.New("lost leadership of the export")

// campaign waits until this replica leads the export. It returns a context
// cancelled when leadership is lost, and a function that resigns; a nil
// context means ctx ended first.
func (s *Server) campaign(ctx context.Context, client *kvstore.Client) (context.Context, func(), error) {
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s/%d", host, os.Getpid())
	s.setRole(roleStandby)
	s.log.Info("standing by for leadership of the export", "replica", id)
	lead, err := client.Campaign(ctx, LeaderPrefix+s.cfg.ClusterName, id, leaderTTL)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("cluster %s: leader election: %w", s.cfg.ClusterName, err)
	}
	s.setRole(roleLeader)
	s.log.Info("leading the export", "replica", id)
	lctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lead.Done():
			if ctx.Err() != nil {
				return // the session ends because Run is stopping
			}
			s.log.Error("leader session lost; stopping the export", "replica", id)
			cancel(ErrLostLeadership)
		case <-lctx.Done():
		}
	}()
	return lctx, func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		_ = lead.Resign(rctx)
		cancel(nil)
	}, nil
}

type role int

const (
	roleSolo role = iota
	roleStandby
	roleLeader
)

func (s *Server) setRole(r role) {
	s.mu.Lock()
	s.role = r
	s.mu.Unlock()
}

// Standby reports whether the server is waiting for another replica's
// leadership to end.
func (s *Server) Standby() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.role == roleStandby
}

// openStore starts the embedded etcd or connects to the external one. It
// returns the client the apiserver writes its exports with and the one
// the mesh cache writes its copies with: the same client for an external
// store; for the embedded one, the owner's client over TLS (what peers'
// and agents' requests also go through, with the trust checks of the
// listener) and the store's in-process client (Server.InProcessClient),
// which spares every copy a client's and a server's gRPC, TLS and
// sockets: the copies are most of the writes the store takes in a mesh
// and sit on the path of every change between clusters.
func (s *Server) openStore(ctx context.Context, m *kvstore.Metrics) (client, cacheStore *kvstore.Client, closeStore func(), err error) {
	if s.cfg.KVStoreConfig != "" {
		kc, err := kvstore.LoadConfig(s.cfg.KVStoreConfig)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("cluster %s: --kvstore-config: %w", s.cfg.ClusterName, err)
		}
		client, err := kvstore.New(ctx, kc)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("cluster %s: %w", s.cfg.ClusterName, err)
		}
		s.setStoreURL(strings.Join(kc.Endpoints, ","))
		return client, client, func() { client.Close() }, nil
	}
	srv, err := kvstore.StartServer(ctx, kvstore.ServerConfig{
		Cluster:         s.cfg.ClusterName,
		DataDir:         s.cfg.EtcdDataDir,
		ListenClientURL: s.cfg.EtcdListenClientURL,
		CAFile:          s.cfg.EtcdCA,
		CertFile:        s.cfg.EtcdCert,
		KeyFile:         s.cfg.EtcdKey,
		UnsafeNoFsync:   s.cfg.UnsafeNoFsync,
		QuotaBytes:      s.cfg.EtcdQuotaBytes,
		Logger:          s.log,
		Metrics:         m,
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("cluster %s: embedded etcd: %w", s.cfg.ClusterName, err)
	}
	s.setStoreURL(srv.Endpoint())
	// The apiserver writes its store with an in-memory credential that a
	// rotation of the cluster's CA cannot revoke under it.
	client, err = srv.OwnerClient(ctx)
	if err != nil {
		srv.Close()
		return nil, nil, nil, fmt.Errorf("cluster %s: connect to embedded etcd: %w", s.cfg.ClusterName, err)
	}
	cacheStore = srv.InProcessClient()
	return client, cacheStore, func() {
		cacheStore.Close()
		client.Close()
		srv.Close()
	}, nil
}

func (s *Server) setStoreURL(u string) {
	s.mu.Lock()
	s.storeURL = u
	s.mu.Unlock()
}

// StoreURL is the URL of the store the server writes (the embedded etcd's
// served URL, with the port actually bound), once Run has opened it.
func (s *Server) StoreURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.storeURL
}

// HealthAddr is the address /healthz, /readyz and /metrics are served on,
// once Run has started listening.
func (s *Server) HealthAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthAddr
}

// Ready reports whether the initial export of every kind is complete.
func (s *Server) Ready() bool {
	s.mu.Lock()
	ctrl := s.ctrl
	s.mu.Unlock()
	if ctrl == nil {
		return false
	}
	ok, _ := ctrl.ready()
	return ok
}

// ReflectorStatus reports the sessions and prefix counters of the BGP route
// reflector this server hosts (--bgp-reflector-address), or
// ErrReflectorNotRunning.
func (s *Server) ReflectorStatus(ctx context.Context) (bgp.Status, error) {
	s.mu.Lock()
	rh := s.reflector
	s.mu.Unlock()
	if rh == nil {
		return bgp.Status{}, ErrReflectorNotRunning
	}
	st, err := rh.status(ctx)
	if errors.Is(err, bgp.ErrNotStarted) {
		return st, fmt.Errorf("%w: %w", ErrReflectorNotRunning, err)
	}
	return st, err
}

// serveBGPStatus serves ReflectorStatus as JSON (404 when BGP is off).
func (s *Server) serveBGPStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.ReflectorStatus(r.Context())
	switch {
	case s.cfg.BGPReflectorAddress == "":
		http.Error(w, "bgp off: no --bgp-reflector-address", http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}

func (s *Server) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	ctrl := s.ctrl
	s.mu.Unlock()
	if s.Standby() {
		// A standby is healthy and must not block a rolling update.
		fmt.Fprintln(w, "ok: standby, another replica exports")
		return
	}
	if ctrl == nil {
		http.Error(w, "store not open yet", http.StatusServiceUnavailable)
		return
	}
	if ok, missing := ctrl.ready(); !ok {
		http.Error(w, fmt.Sprintf("initial export not complete: %v", missing), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
