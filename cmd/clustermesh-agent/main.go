// Command clustermesh-agent runs on every node of a mesh: it follows its own
// cluster's store and every connected cluster's, merges global services into
// the eBPF datapath, gossips node health, and serves its status on loopback.
//
//	clustermesh-agent --cluster-name c1 --node-name n1 --clusters-dir /etc/clustermesh/clusters
//	clustermesh-agent status [-o json]
//	clustermesh-agent bpf services
//
// See docs/agent.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
	"github.com/clustermesh/clustermesh/route"
)

// The eBPF datapath keeps its frontends across restarts (pinned maps); the
// agent prunes the adopted ones nobody wants through this seam.
var _ agent.FrontendLister = (*bpf.Datapath)(nil)

// shortTimers returns bgp.DefaultKindConfig with the --bgp-* flags the user
// gave on fs applied over it, so --bgp-short-timers changes only the
// defaults.
func shortTimers(fs *pflag.FlagSet) bgp.Config {
	c := bgp.DefaultKindConfig()
	kind := pflag.NewFlagSet("bgp", pflag.ContinueOnError)
	c.Flags(kind)
	kind.IntVar(&c.Table, "bgp-table", c.Table, "")
	fs.Visit(func(f *pflag.Flag) {
		if kind.Lookup(f.Name) != nil {
			// The value parsed once already on fs.
			_ = kind.Set(f.Name, f.Value.String())
		}
	})
	return c
}

// DefaultStatusAddr is where the agent serves /status and /metrics.
const DefaultStatusAddr = "127.0.0.1:9877"

func main() {
	if err := newRootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

type options struct {
	clusterName, nodeName, clustersDir string
	protected                          []net.IPNet
	peerMaxBackendSlices               int
	peerMaxBytes                       int64
	statusAddr                         string
	datapath                           string
	log                                logging.Flags
	bpf                                bpf.Config
	health                             bool
	routes                             string
	bgp                                bool
	bgpShortTimers                     bool
	bgpCfg                             bgp.Config
	healthCfg                          health.Config
	dirPoll                            time.Duration
	initialSyncTimeout                 time.Duration
}

func newRootCommand() *cobra.Command {
	o := options{bpf: bpf.DefaultConfig(), healthCfg: health.DefaultConfig(), bgpCfg: bgp.DefaultConfig()}
	cmd := &cobra.Command{
		Use:           "clustermesh-agent",
		Short:         "Follow every cluster's store and program global services into the datapath",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if o.bgpShortTimers {
				o.bgpCfg = shortTimers(cmd.Flags())
			}
			return run(ctx, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.clusterName, "cluster-name", "", "name of this node's cluster (its connection file must be in --clusters-dir)")
	fs.IPNetSliceVar(&o.protected, "protected-cidrs", nil, "local ranges no peer cluster may claim an address or prefix in (comma-separated: the service range, the node network); the cluster's own pod CIDRs are always protected. Peer objects reaching into them are refused and reported")
	fs.IntVar(&o.peerMaxBackendSlices, "peer-max-endpoint-slices", 0, "most endpoint slices held per peer cluster (0: the default, 200000); beyond it new slices of that peer are refused and reported in status")
	fs.Int64Var(&o.peerMaxBytes, "peer-max-bytes", 0, "most bytes of store values held per peer cluster (0: the default, 256 MiB); beyond it new values of that peer are refused and reported in status")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&o.clustersDir, "clusters-dir", "/etc/clustermesh/clusters", "directory with one connection file per cluster, named for the cluster; names containing '.' are certificates and keys")
	fs.StringVar(&o.statusAddr, "status-addr", DefaultStatusAddr, "loopback address of the status endpoint (/status, /metrics, /healthz); empty disables it")
	fs.StringVar(&o.datapath, "datapath", "bpf", "datapath: bpf (cgroup socket load balancing) or none (control plane only)")
	o.log.Register(fs)
	fs.DurationVar(&o.dirPoll, "clusters-dir-poll", time.Second, "how often --clusters-dir is scanned for added, changed and removed files")
	fs.DurationVar(&o.initialSyncTimeout, "initial-sync-timeout", 30*time.Second, "longest wait for every cluster's initial sync before the datapath is first programmed")
	fs.StringVar(&o.routes, "routes", "none", "none (BGP or the CNI routes pod CIDRs) or static (install a kernel route to every remote node's pod CIDRs via its first address)")
	fs.BoolVar(&o.bgp, "bgp", false, "run the node's BGP speaker: announce this node's pod CIDRs to the cluster's route reflector (from the store) and install learned routes")
	fs.BoolVar(&o.bgpShortTimers, "bgp-short-timers", false, "start from short BGP timers and grace periods (test clusters on one machine); --bgp-* flags given explicitly still apply")
	// The speaker's own tunables (--bgp-listen-port, --bgp-route-table,
	// timers, graces, prefix limit) are the bgp package's flags.
	o.bgpCfg.Flags(fs)
	// --bgp-table was this command's name for --bgp-route-table.
	fs.IntVar(&o.bgpCfg.Table, "bgp-table", o.bgpCfg.Table, "kernel routing table for learned routes")
	_ = fs.MarkDeprecated("bgp-table", "use --bgp-route-table")
	fs.BoolVar(&o.health, "health", false, "gossip node health with the agents of every connected cluster (memberlist) and fail over in the kernel when a node dies")
	o.bpf.Flags(fs)
	o.healthCfg.Flags(fs)
	_ = cmd.MarkFlagRequired("cluster-name")

	cmd.AddCommand(newStatusCommand(), bpf.NewDebugCommand())
	return cmd
}

func run(ctx context.Context, o options) error {
	log, err := o.log.Logger(os.Stderr)
	if err != nil {
		return err
	}
	if o.bgp && o.routes == "static" {
		return errors.New("--bgp and --routes=static both route pod CIDRs: choose one")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var dp loadbalancer.Datapath
	switch o.datapath {
	case "none":
		dp = agent.NoopDatapath{}
	case "bpf":
		if o.bpf.CgroupPath == "" {
			return errors.New("--datapath=bpf needs --bpf-cgroup (the cgroup v2 directory whose sockets are balanced); use --datapath=none for control plane only")
		}
		o.bpf.Logger, o.bpf.Registerer = log, reg
		d, err := bpf.Open(ctx, o.bpf)
		if err != nil {
			return fmt.Errorf("open eBPF datapath: %w", err)
		}
		// Close keeps the pins: connections stay balanced while the agent
		// is away, and the next run adopts them.
		defer d.Close()
		dp = d
	default:
		return fmt.Errorf("--datapath %q: must be bpf or none", o.datapath)
	}

	a, err := agent.New(agent.Config{
		ClusterName: o.clusterName, NodeName: o.nodeName, ClustersDir: o.clustersDir,
		ProtectedCIDRs: prefixes(o.protected),
		PeerLimits:     remote.Limits{Objects: map[api.Kind]int{api.KindEndpoints: o.peerMaxBackendSlices}, Bytes: o.peerMaxBytes},
		Datapath:       dp, DatapathName: o.datapath,
		Registerer: reg, Logger: log,
		DirPollInterval: o.dirPoll, InitialSyncTimeout: o.initialSyncTimeout,
	})
	if err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if o.statusAddr != "" {
		ln, err := net.Listen("tcp", o.statusAddr)
		if err != nil {
			return fmt.Errorf("status endpoint: %w", err)
		}
		srv := &http.Server{Handler: a.Handler(reg), ReadHeaderTimeout: 5 * time.Second}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("status endpoint failed", "addr", o.statusAddr, "error", err)
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = srv.Shutdown(sctx)
		}()
		log.Info("status endpoint listening", "addr", ln.Addr().String())
	}

	switch o.routes {
	case "none":
	case "static":
		w, err := route.New(route.Config{Protocol: route.ProtocolStatic, Owner: "static", Registerer: reg, Logger: log})
		if err != nil {
			return fmt.Errorf("--routes=static: %w", err)
		}
		defer w.Close()
		sr := agent.NewStaticRoutes(o.clusterName, w, log)
		sr.AdoptAfter(a.InitialSync())
		a.AddNodeObserver(sr)
		wg.Add(1)
		go func() { defer wg.Done(); sr.Run(ctx) }()
	default:
		return fmt.Errorf("--routes %q: must be none or static", o.routes)
	}

	if o.bgp {
		sec := &bgpSection{}
		a.AddStatusReporter(sec.report)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runBGP(ctx, a, o, reg, log, sec); err != nil && ctx.Err() == nil {
				sec.set(nil, err)
				log.Error("bgp speaker stopped", "error", err)
			}
		}()
	}

	if o.health {
		sec := &healthSection{}
		a.AddStatusReporter(sec.report)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runHealth(ctx, a, o, reg, log, sec); err != nil && ctx.Err() == nil {
				sec.set(nil, err)
				log.Error("node health gossip stopped", "error", err)
			}
		}()
	}

	log.Info("clustermesh-agent starting", "cluster", o.clusterName, "node", o.nodeName, "clusters_dir", o.clustersDir, "datapath", o.datapath)
	return a.Run(ctx)
}

// runHealth starts the memberlist pool once the local cluster's ID is known
// (it is gossiped with every member) and feeds it the nodes of every
// cluster; its verdicts go to the agent, which passes them to the datapath
// and recomputes affinity thresholds.
func runHealth(ctx context.Context, a *agent.Agent, o options, reg prometheus.Registerer, log *slog.Logger, sec *healthSection) error {
	local, err := a.LocalCluster(ctx)
	if err != nil {
		return err
	}
	cfg := o.healthCfg
	cfg.Cluster, cfg.NodeName, cfg.ClusterID = o.clusterName, o.nodeName, local.ID
	// Members are named with the cluster IDs the agent accepted, never
	// with the IDs they gossip.
	cfg.Nodes = a
	cfg.Logger = log
	pool, err := health.New(cfg, a, reg)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	a.AddNodeObserver(pool)
	sec.set(pool, nil)
	return pool.Run(ctx)
}

func newStatusCommand() *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the status of the agent on this node: per cluster connected, synced, last error, object counts; BGP sessions and health members when on",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := status.Fetch(ctx, addr)
			if err != nil {
				return fmt.Errorf("%w (is the agent running with --status-addr %s?)", err, addr)
			}
			switch strings.ToLower(output) {
			case "json":
				b, err := st.Marshal()
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			case "", "text":
				return status.Print(cmd.OutOrStdout(), st)
			}
			return fmt.Errorf("-o %q: must be text or json", output)
		},
	}
	cmd.Flags().StringVar(&addr, "status-addr", DefaultStatusAddr, "the agent's status endpoint")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// prefixes converts --protected-cidrs to prefixes (pflag parses and
// validates them as networks).
func prefixes(nets []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(nets))
	for _, n := range nets {
		a, _ := netip.AddrFromSlice(n.IP)
		bits, _ := n.Mask.Size()
		if a.Is4In6() && bits <= 32 {
			a = a.Unmap()
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), bits).Masked())
	}
	return out
}
