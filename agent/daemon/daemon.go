// Package daemon wires the clustermesh-agent process together: the
// datapath, the agent (package agent), its status endpoint, and the
// optional subsystems that follow the agent's nodes through its observer
// seam: static routes (package route), the BGP speaker (package bgp) and
// node health gossip (package health). cmd/clustermesh-agent only parses
// flags into a Config and calls Run.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/enforce"
	"github.com/clustermesh/clustermesh/agent/flows"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/route"
)

// The eBPF datapath keeps its frontends across restarts (pinned maps); the
// agent prunes the adopted ones nobody wants through this seam.
var _ agent.FrontendLister = (*bpf.Datapath)(nil)

// DefaultStatusAddr is where the agent serves /status and /metrics.
const DefaultStatusAddr = "127.0.0.1:9877"

// Config is the agent process's configuration; its fields are the
// clustermesh-agent flags (docs/agent.md).
type Config struct {
	ClusterName, NodeName, ClustersDir string
	// CachedPeers: see agent.Config.PeersViaLocalStore.
	CachedPeers bool
	// ProtectedCIDRs: see agent.Config.
	ProtectedCIDRs []netip.Prefix
	PeerLimits     remote.Limits
	// StatusAddr serves /status, /metrics, /healthz and /readyz; empty:
	// none. Keep it on loopback.
	StatusAddr string
	// MetricsAddr serves /metrics, /healthz and /readyz only, for scrapers
	// and the kubelet's probes; empty: none.
	MetricsAddr string
	// Datapath is "bpf" (configured by BPF) or "none".
	Datapath string
	BPF      bpf.Config
	// Routes is "bgp" (the node's BGP speaker, as BGP), "none",
	// "static" (remote clusters' nodes) or "static-all" (also the own
	// cluster's other nodes); static modes exclude BGP.
	Routes string
	// RouteDrain is how long a drained (disconnected) cluster's routes
	// stay: its static routes (agent.StaticRoutes.Drain) or, with BGP, its
	// import rule (importHold).
	RouteDrain time.Duration
	// BGP runs the node's speaker, configured by BGPConfig.
	BGP       bool
	BGPConfig bgp.Config
	// Health runs the gossip pool, configured by HealthConfig.
	Health       bool
	HealthConfig health.Config
	// Policy enforces the cluster's network policies in the eBPF datapath
	// (needs Datapath "bpf"); PolicyAllClusters makes selectors that name
	// no cluster select every cluster; PolicyNetnsDir is where pods'
	// network namespaces are bind-mounted.
	Policy            bool
	PolicyAllClusters bool
	PolicyNetnsDir    string
	// Flows reads the datapath's flow events into a ring served at
	// /flows (needs Datapath "bpf"); FlowRates are the events per second
	// and CPU by kind; FlowRing is the ring's size.
	Flows     bool
	FlowRates map[bpf.EventKind]uint32
	FlowRing  int
	// ObserveAddr serves the flows to observers off the node (clustermesh
	// observe) over mutual TLS, with the server certificate of
	// ObserveTLSDir and the allowed observers' CAs of ObserveClientsDir
	// (see observe.ServerAccess); empty: not served off the node.
	ObserveAddr, ObserveTLSDir, ObserveClientsDir string
	// DirPoll and InitialSyncTimeout: see agent.Config.
	DirPoll, InitialSyncTimeout time.Duration
	// Logger; nil discards logs.
	Logger *slog.Logger
}

// Run runs the agent process until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := logging.OrDiscard(cfg.Logger)
	if cfg.BGP && strings.HasPrefix(cfg.Routes, "static") {
		return errors.New("--bgp and --routes=static both route pod CIDRs: choose one")
	}
	if cfg.Routes == "bgp" {
		cfg.BGP = true
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var (
		dp  loadbalancer.Datapath
		bdp *bpf.Datapath
	)
	switch cfg.Datapath {
	case "none":
		dp = agent.NoopDatapath{}
	case "bpf":
		if cfg.BPF.CgroupPath == "" {
			return errors.New("--datapath=bpf needs --bpf-cgroup (the cgroup v2 directory whose sockets are balanced); use --datapath=none for control plane only")
		}
		cfg.BPF.Logger, cfg.BPF.Registerer = log, reg
		d, err := bpf.Open(ctx, cfg.BPF)
		if err != nil {
			return fmt.Errorf("open eBPF datapath: %w", err)
		}
		// Close keeps the pins: connections stay balanced while the agent
		// is away, and the next run adopts them.
		defer d.Close()
		dp, bdp = d, d
	default:
		return fmt.Errorf("--datapath %q: must be bpf or none", cfg.Datapath)
	}

	var (
		eng       *enforce.Engine
		observers []agent.ObjectObserver
	)
	if cfg.Policy && bdp != nil {
		var err error
		eng, err = enforce.New(enforce.Config{
			Cluster: cfg.ClusterName, Node: cfg.NodeName, AllClusters: cfg.PolicyAllClusters,
			NetnsDir: cfg.PolicyNetnsDir, HostAddrs: hostAddrs(log), Datapath: bdp,
			Registerer: reg, Logger: log,
		})
		if err != nil {
			return err
		}
		observers = append(observers, eng)
	}
	a, err := agent.New(agent.Config{
		ClusterName: cfg.ClusterName, NodeName: cfg.NodeName, ClustersDir: cfg.ClustersDir, PeersViaLocalStore: cfg.CachedPeers,
		ProtectedCIDRs: cfg.ProtectedCIDRs, PeerLimits: cfg.PeerLimits,
		Datapath: dp, DatapathName: cfg.Datapath, ObjectObservers: observers,
		Registerer: reg, Logger: log,
		DirPollInterval: cfg.DirPoll, InitialSyncTimeout: cfg.InitialSyncTimeout,
	})
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	mux := http.NewServeMux()
	mux.Handle("/", a.Handler(reg))
	if eng != nil {
		mux.Handle("GET /policy", eng.Handler())
		wg.Add(1)
		go func() { defer wg.Done(); eng.Run(ctx) }()
	}
	if cfg.Flows && bdp != nil {
		if err := bdp.SetEventRates(cfg.FlowRates); err != nil {
			return err
		}
		obs, err := flows.New(flows.Config{Cluster: cfg.ClusterName, Node: cfg.NodeName, Source: bdp,
			Resolver: resolver{a: a, e: eng}, Capacity: cfg.FlowRing, Registerer: reg, Logger: log})
		if err != nil {
			return err
		}
		mux.Handle("GET /flows", obs.Handler())
		if cfg.ObserveAddr != "" {
			access, err := observe.NewServerAccess(cfg.ObserveTLSDir, cfg.ObserveClientsDir)
			if err != nil {
				return fmt.Errorf("--observe-addr: %w", err)
			}
			if p := access.Problems(); p != "" {
				log.Warn("observe: client CA files skipped", "dir", cfg.ObserveClientsDir, "problems", p)
			}
			if err := serve(ctx, &wg, "observe endpoint", cfg.ObserveAddr, obs.RemoteHandler(access, 0, log), access.TLSConfig(), log); err != nil {
				return err
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := obs.Run(ctx); err != nil && ctx.Err() == nil {
				log.Error("flow events stopped", "error", err)
			}
		}()
	}
	statusHandler := http.Handler(mux)
	if cfg.StatusAddr != "" {
		if err := serve(ctx, &wg, "status endpoint", cfg.StatusAddr, statusHandler, nil, log); err != nil {
			return err
		}
	}
	if cfg.MetricsAddr != "" {
		if err := serve(ctx, &wg, "metrics endpoint", cfg.MetricsAddr, a.MetricsHandler(reg), nil, log); err != nil {
			return err
		}
	}

	if err := flushOtherOwner(cfg, log); err != nil {
		log.Warn("routes of the routing mode not in use left in place", "error", err)
	}
	switch cfg.Routes {
	case "none", "bgp":
	case "static", "static-all":
		w, err := route.New(route.Config{Protocol: route.ProtocolStatic, Owner: "static", Registerer: reg, Logger: log})
		if err != nil {
			return fmt.Errorf("--routes=%s: %w", cfg.Routes, err)
		}
		defer w.Close()
		sr := agent.NewStaticRoutes(cfg.ClusterName, w, log)
		if cfg.Routes == "static-all" {
			sr.OwnCluster(cfg.NodeName)
		}
		sr.Drain(cfg.RouteDrain)
		sr.AdoptAfter(a.InitialSync())
		a.AddNodeObserver(sr)
		a.AddStatusReporter(func(st *status.Agent) { countRoutes(st, sr.RoutesByCluster()) })
		wg.Add(1)
		go func() { defer wg.Done(); sr.Run(ctx) }()
	default:
		return fmt.Errorf("--routes %q: must be bgp, none, static or static-all", cfg.Routes)
	}

	// The gossip pool's verdicts reach the datapath through the agent and
	// the BGP speaker through verdicts (routes via a node whose host is
	// gone leave the kernel at once, whatever BGP's graceful restart still
	// holds).
	verdicts := newHealthVerdicts(a, cfg.HealthConfig.GossipPort())
	if cfg.BGP && cfg.Health {
		wg.Add(1)
		go func() { defer wg.Done(); verdicts.run(ctx) }()
	}
	if cfg.BGP {
		sec := &bgpSection{}
		a.AddStatusReporter(sec.report)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runBGP(ctx, a, cfg, reg, log, sec, verdicts); err != nil && ctx.Err() == nil {
				sec.set(nil, err)
				log.Error("bgp speaker stopped", "error", err)
			}
		}()
	}

	if cfg.Health {
		sec := &healthSection{}
		a.AddStatusReporter(sec.report)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runHealth(ctx, a, cfg, reg, log, sec, verdicts); err != nil && ctx.Err() == nil {
				sec.set(nil, err)
				log.Error("node health gossip stopped", "error", err)
			}
		}()
	}

	log.Info("clustermesh-agent starting", "cluster", cfg.ClusterName, "node", cfg.NodeName, "clusters_dir", cfg.ClustersDir, "datapath", cfg.Datapath)
	return a.Run(ctx)
}

// resolver names flow events with the agent's services and clusters and
// the policy engine's identities and pods (when policy is on).
type resolver struct {
	a *agent.Agent
	e *enforce.Engine
}

func (r resolver) ServiceOf(fe loadbalancer.Frontend) (string, bool) { return r.a.ServiceOf(fe) }
func (r resolver) ClusterName(id uint32) string                      { return r.a.ClusterName(id) }

func (r resolver) PodOf(ip netip.Addr) (*api.IPCacheEntry, bool) {
	if r.e == nil {
		return nil, false
	}
	return r.e.PodOf(ip)
}

func (r resolver) PodOfNetns(cookie uint64) (*api.IPCacheEntry, bool) {
	if r.e == nil {
		return nil, false
	}
	return r.e.PodOfNetns(cookie)
}

func (r resolver) Identity(id uint32) (*api.Identity, bool) {
	if r.e == nil {
		return nil, false
	}
	return r.e.Identity(id)
}

// hostAddrs are the node's own global unicast addresses (the agent runs in
// the node's network namespace): traffic from them is IdentityHost.
func hostAddrs(log *slog.Logger) []netip.Addr {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		log.Warn("policy: cannot list the node's addresses; they count as world", "error", err)
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// serve serves h on addr (over TLS when tlsCfg is set) until ctx ends.
func serve(ctx context.Context, wg *sync.WaitGroup, name, addr string, h http.Handler, tlsCfg *tls.Config, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		// Failed handshakes (an observer whose cluster is not allowed) are
		// logged at debug level with the listener's name.
		ErrorLog: slog.NewLogLogger(log.With("endpoint", name).Handler(), slog.LevelDebug)}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(name+" failed", "addr", addr, "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
		defer c()
		_ = srv.Shutdown(sctx)
	}()
	log.Info(name+" listening", "addr", ln.Addr().String(), "tls", tlsCfg != nil)
	return nil
}

// runHealth starts the memberlist pool once the local cluster's ID is known
// (it is gossiped with every member) and feeds it the nodes of every
// cluster; its verdicts go to the agent, which passes them to the datapath
// and recomputes affinity thresholds.
func runHealth(ctx context.Context, a *agent.Agent, cfg Config, reg prometheus.Registerer, log *slog.Logger, sec *healthSection, sink health.HealthSink) error {
	local, err := a.LocalCluster(ctx)
	if err != nil {
		return err
	}
	hc := cfg.HealthConfig
	hc.Cluster, hc.NodeName, hc.ClusterID = cfg.ClusterName, cfg.NodeName, local.ID
	// Members are named with the cluster IDs the agent accepted, never
	// with the IDs they gossip.
	hc.Nodes = a
	hc.Logger = log
	pool, err := health.New(hc, sink, reg)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	a.AddNodeObserver(pool)
	sec.set(pool, nil)
	return pool.Run(ctx)
}

// flushOtherOwner removes the routes the other of the agent's two routing
// owners (BGP, static) left on this node from an earlier run in the other
// mode: route ownership never lets one owner replace the other's route for
// the same prefix, so a node moved from static to BGP routing (or back)
// would otherwise keep the old mode's routes and refuse the new ones.
func flushOtherOwner(cfg Config, log *slog.Logger) error {
	var other netlink.RouteProtocol
	switch {
	case cfg.BGP:
		other = route.ProtocolStatic
	case strings.HasPrefix(cfg.Routes, "static"):
		other = route.ProtocolBGP
	default:
		return nil
	}
	removed, err := route.FlushOwned(nil, other)
	for _, r := range removed {
		log.Info("removed a route of the routing mode not in use", "route", route.Describe(r), "mode", cfg.Routes)
	}
	return err
}
