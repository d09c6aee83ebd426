// Command clustermesh-agent runs on every node of a mesh: it follows its own
// cluster's store and every connected cluster's, merges global services into
// the eBPF datapath, gossips node health, and serves its status on loopback.
//
//	clustermesh-agent --cluster-name c1 --node-name n1 --clusters-dir /etc/clustermesh/clusters
//	clustermesh-agent status [-o json]
//	clustermesh-agent bpf services
//	clustermesh-agent cleanup [--check] [--hold]
//
// See docs/agent.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/agent/daemon"
	"github.com/clustermesh/clustermesh/agent/enforce"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/internal/flagdir"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/internal/version"
	"github.com/clustermesh/clustermesh/observe"
)

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

func main() {
	if err := newRootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

// options are the flags that do not map one to one onto daemon.Config.
type options struct {
	protected            []net.IPNet
	flowRates            [3]uint32
	peerMaxBackendSlices int
	peerMaxBytes         int64
	log                  logging.Flags
	bgpShortTimers       bool
	configDir            string
}

func newRootCommand() *cobra.Command {
	var o options
	c := daemon.Config{BPF: bpf.DefaultConfig(), HealthConfig: health.DefaultConfig(), BGPConfig: bgp.DefaultConfig()}
	cmd := &cobra.Command{
		Use:           "clustermesh-agent",
		Short:         "Follow every cluster's store and program global services into the datapath",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			settings, err := flagdir.Apply(cmd.Flags(), o.configDir)
			if err != nil {
				return err
			}
			if o.bgpShortTimers {
				c.BGPConfig = shortTimers(cmd.Flags())
			}
			log, err := o.log.Logger(os.Stderr)
			if err != nil {
				return err
			}
			c.Logger = log
			if len(settings) > 0 {
				log.Info("flags set from the config dir", "config_dir", o.configDir, "flags", settings)
			}
			c.ProtectedCIDRs = prefixes(o.protected)
			c.FlowRates = map[bpf.EventKind]uint32{bpf.EventTranslate: o.flowRates[0], bpf.EventNoBackend: o.flowRates[1], bpf.EventPolicyDeny: o.flowRates[2]}
			c.PeerLimits = remote.Limits{Objects: map[api.Kind]int{api.KindEndpoints: o.peerMaxBackendSlices}, Bytes: o.peerMaxBytes}
			return daemon.Run(ctx, c)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.configDir, "config-dir", "", "directory with one file per flag, named for the flag and holding its value (the clustermesh-agent-config ConfigMap that enable owns: routes, health, bgp...); flags given on the command line win")
	fs.StringVar(&c.ClusterName, "cluster-name", "", "name of this node's cluster (its connection file must be in --clusters-dir)")
	fs.IPNetSliceVar(&o.protected, "protected-cidrs", nil, "local ranges no peer cluster may claim an address or prefix in (comma-separated: the service range, the node network); the cluster's own pod CIDRs are always protected. Peer objects reaching into them are refused and reported")
	fs.IntVar(&o.peerMaxBackendSlices, "peer-max-endpoint-slices", 0, "most endpoint slices held per peer cluster (0: the default, 200000); beyond it new slices of that peer are refused and reported in status")
	fs.Int64Var(&o.peerMaxBytes, "peer-max-bytes", 0, "most bytes of store values held per peer cluster (0: the default, 256 MiB); beyond it new values of that peer are refused and reported in status")
	fs.StringVar(&c.NodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	fs.StringVar(&c.ClustersDir, "clusters-dir", "/etc/clustermesh/clusters", "directory with one connection file per cluster, named for the cluster; names containing '.' are certificates and keys")
	fs.StringVar(&c.StatusAddr, "status-addr", daemon.DefaultStatusAddr, "loopback address of the status endpoint (/status, /metrics, /healthz, /readyz); empty disables it")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "address serving only /metrics, /healthz and /readyz (ready once the initial sync is done), for Prometheus and the kubelet's probes, e.g. :9878; empty disables it")
	fs.StringVar(&c.Datapath, "datapath", "bpf", "datapath: bpf (cgroup socket load balancing) or none (control plane only)")
	o.log.Register(fs)
	fs.DurationVar(&c.DirPoll, "clusters-dir-poll", time.Second, "how often --clusters-dir is scanned for added, changed and removed files")
	fs.DurationVar(&c.InitialSyncTimeout, "initial-sync-timeout", 30*time.Second, "longest wait for every cluster's initial sync before the datapath is first programmed")
	fs.StringVar(&c.Routes, "routes", "none", "bgp (run the node's BGP speaker, as --bgp: announce this node's pod CIDRs, install every node's learned through the cluster's route reflectors), none (--bgp, the CNI or the fabric routes pod CIDRs), static (install a kernel route to every remote node's pod CIDRs via its first address) or static-all (static, and the own cluster's other nodes too, for a CNI that does not route between nodes)")
	fs.DurationVar(&c.RouteDrain, "route-drain", agent.DefaultRouteDrain, "how long a disconnected cluster's routes stay after its services stopped being balanced to (static routes: the kernel routes; BGP: the import policy keeps accepting its pod CIDRs as it was last accepted): the other side may still be sending traffic whose replies need them until its own agents see the disconnect; 0 removes them at once")
	fs.BoolVar(&c.BGP, "bgp", false, "run the node's BGP speaker: announce this node's pod CIDRs to the cluster's route reflector (from the store) and install learned routes")
	fs.BoolVar(&o.bgpShortTimers, "bgp-short-timers", false, "start from short BGP timers and grace periods (test clusters on one machine); --bgp-* flags given explicitly still apply")
	// The speaker's own tunables (--bgp-listen-port, --bgp-route-table,
	// timers, graces, prefix limit) are the bgp package's flags.
	c.BGPConfig.Flags(fs)
	// --bgp-table was this command's name for --bgp-route-table.
	fs.IntVar(&c.BGPConfig.Table, "bgp-table", c.BGPConfig.Table, "kernel routing table for learned routes")
	_ = fs.MarkDeprecated("bgp-table", "use --bgp-route-table")
	fs.BoolVar(&c.Policy, "policy", true, "enforce the cluster's network policies (NetworkPolicy, CiliumNetworkPolicy L3/L4) in the eBPF datapath, with every connected cluster's identities (needs --datapath=bpf)")
	fs.BoolVar(&c.PolicyAllClusters, "policy-all-clusters", false, "make policy selectors that name no cluster (io.cilium.k8s.policy.cluster) select pods of every connected cluster, not only the local one (Cilium before 1.19)")
	fs.StringVar(&c.PolicyNetnsDir, "policy-netns-dir", "/var/run/netns", "where pods' network namespaces are bind-mounted (CNI plugins put them there); a pod whose namespace is not found has its ingress checked but not its egress")
	fs.BoolVar(&c.Flows, "flows", true, "read the datapath's flow events (translations, refusals, policy denials) into a ring served at the status endpoint's /flows (clustermesh-agent observe) and counted in clustermesh_flow_* metrics (needs --datapath=bpf)")
	fs.Uint32Var(&o.flowRates[0], "flow-rate-translate", 1000, "service translation events per second and CPU the kernel sends (a sample; 0 turns them off)")
	fs.Uint32Var(&o.flowRates[1], "flow-rate-no-backend", 1000, "no-backend refusal events per second and CPU (0: off)")
	fs.Uint32Var(&o.flowRates[2], "flow-rate-policy", 1000, "policy denial events per second and CPU (0: off)")
	fs.IntVar(&c.FlowRing, "flow-ring", 16384, "flows kept in memory for replay (about 300 bytes each)")
	fs.BoolVar(&c.CachedPeers, "cached-peers", false, "follow every peer cluster through the local cluster's store, where its mesh cache (clustermesh-apiserver --mesh-cache) keeps a checked copy of each peer: peers' stores then serve one client per cluster, not one per node")
	fs.StringVar(&c.ObserveAddr, "observe-addr", "", "serve the flows to observers off the node (clustermesh observe) on this address, over mutual TLS; empty: loopback status endpoint only")
	fs.StringVar(&c.ObserveTLSDir, "observe-tls-dir", "/var/lib/clustermesh/observe/server", "the observe endpoint's server certificate: tls.crt and tls.key (the clustermesh-observe-server Secret)")
	fs.StringVar(&c.ObserveClientsDir, "observe-clients-dir", "/var/lib/clustermesh/observe/clients", "client-ca.<cluster>.crt for each cluster whose observers are allowed (the clustermesh-observe-clients Secret); reread within a second of a change")
	fs.BoolVar(&c.Health, "health", false, "gossip node health with the agents of every connected cluster (memberlist) and fail over in the kernel when a node dies")
	c.BPF.Flags(fs)
	c.HealthConfig.Flags(fs)
	_ = cmd.MarkFlagRequired("cluster-name")

	cmd.AddCommand(newStatusCommand(), newPolicyCommand(), newObserveCommand(), newCleanupCommand(), bpf.NewDebugCommand())
	version.AddTo(cmd)
	return cmd
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
				b, err := status.Encode(st)
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
	cmd.Flags().StringVar(&addr, "status-addr", daemon.DefaultStatusAddr, "the agent's status endpoint")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newPolicyCommand() *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Print the network policy enforced on this node: per local pod, its identity and labels, and the resolved rules with peer identities, clusters and ports",
		Long: `policy asks the agent on this node (its --status-addr) for what it enforces:
for every pod of the node, its identity, whether ingress and egress are
default-deny, and each resolved rule: allow or deny, the peer (cluster and
namespace of an identity, or any, host, world, a CIDR), the port and the
policy rule it comes from. Policies the agent refused and errors of the last
reconcile are listed last. A pod whose network namespace was not found has
its egress unchecked; it says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/policy", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("%w (is the agent running with --status-addr %s?)", err, addr)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("agent at %s: %s (is policy enforcement on? --policy)", addr, resp.Status)
			}
			var st enforce.Status
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				return fmt.Errorf("agent at %s: policy: %w", addr, err)
			}
			switch strings.ToLower(output) {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			case "", "text":
				return st.WriteText(cmd.OutOrStdout())
			}
			return fmt.Errorf("-o %q: must be text or json", output)
		},
	}
	cmd.Flags().StringVar(&addr, "status-addr", daemon.DefaultStatusAddr, "the agent's status endpoint")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newObserveCommand() *cobra.Command {
	var (
		addr, output, since string
		last                int
		follow              bool
		f                   observe.Filter
	)
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Print the flows this node's agent observed: service translations (to which backend, cluster and node), refusals for lack of a backend, policy denials",
		Long: `observe asks the agent on this node (its --status-addr) for the flows in its
ring, filtered, and with --follow keeps printing new ones as they happen.
Flows are a sample of the datapath's decisions (per-CPU rates set by the
agent's --flow-rate-* flags); clustermesh_flow_events_total counts every
event, including those over the rate.`,
		Example: `  clustermesh-agent observe --last 20
  clustermesh-agent observe --follow --service default/echo
  clustermesh-agent observe --verdict dropped --since 5m -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if since != "" {
				d, err := time.ParseDuration(since)
				if err != nil {
					return fmt.Errorf("--since %q: want a duration such as 5m", since)
				}
				f.Since = time.Now().Add(-d)
			}
			req := observe.Request{Filter: f, Last: last, Follow: follow}
			w := cmd.OutOrStdout()
			err := observe.Stream(ctx, http.DefaultClient, "http://"+addr, req, func(fl observe.Flow) error {
				if strings.ToLower(output) == "json" {
					b, _ := json.Marshal(&fl)
					fmt.Fprintln(w, string(b))
				} else {
					fmt.Fprintln(w, fl.Text())
				}
				return nil
			})
			switch {
			case err == nil || ctx.Err() != nil:
				return nil
			case errors.Is(err, observe.ErrStatus):
				return fmt.Errorf("agent at %s: %w (are flows on? --flows)", addr, err)
			default:
				return fmt.Errorf("agent at %s: %w (is the agent running with --status-addr %s?)", addr, err, addr)
			}
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&addr, "status-addr", daemon.DefaultStatusAddr, "the agent's status endpoint")
	fl.StringVarP(&output, "output", "o", "text", "text (one aligned line per flow) or json (one object per line)")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new flows until interrupted")
	fl.IntVar(&last, "last", 0, "only the last N flows of the ring (0: all)")
	fl.StringVar(&since, "since", "", "only flows newer than this duration ago (5m)")
	fl.StringVar(&f.Kind, "kind", "", "translate, no-backend or policy-deny")
	fl.StringVar(&f.Verdict, "verdict", "", "forwarded or dropped")
	fl.StringVar(&f.Service, "service", "", "namespace/name of a service")
	fl.StringVar(&f.FromCluster, "from-cluster", "", "the source's cluster")
	fl.StringVar(&f.ToCluster, "to-cluster", "", "the destination's cluster")
	fl.StringVar(&f.Namespace, "namespace", "", "a namespace of either side")
	fl.StringVar(&f.Pod, "pod", "", "a pod name of either side")
	return cmd
}

func newCleanupCommand() *cobra.Command {
	var (
		cfg         daemon.CleanupConfig
		check, hold bool
	)
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove everything the agent leaves on this node: eBPF programs, pinned links and maps, routes",
		Long: `cleanup removes what the agent leaves on a node once it has stopped: it
detaches the agent's eBPF programs from the cgroup (through the links pinned
under --bpf-pin-dir, and any program of the agent still attached to the cgroup
by a link or directly), removes the pinned links and maps and the emptied pin
directory, and deletes every route of the agent's protocols (196 for
--routes=static, 195 for BGP) from every routing table. Other programs, pins
and routes are left alone. It prints a line per object removed, then checks
the node and exits 0 only when nothing of the agent is left. Running it again
removes nothing.

Run it only where no agent runs any more: a running agent re-attaches and
re-routes. clustermesh disable runs it on every node (DaemonSet
clustermesh-cleanup, with --hold) after deleting the agents.`,
		Example: `  clustermesh-agent cleanup
  clustermesh-agent cleanup --check   # exit 1 and list what is left, remove nothing`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if !check {
				removed, err := daemon.Cleanup(cfg)
				for _, line := range removed {
					fmt.Fprintln(w, line)
				}
				if err != nil {
					return err
				}
			}
			left, err := daemon.Remaining(cfg)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				for _, line := range left {
					fmt.Fprintln(w, "left: "+line)
				}
				return fmt.Errorf("%d object(s) of clustermesh left on this node", len(left))
			}
			fmt.Fprintf(w, "clean: no clustermesh program attached to %s, no pin in %s, no clustermesh route\n", cfg.CgroupPath, cfg.PinDir)
			if hold {
				// A DaemonSet pod must keep running: it stays until deleted.
				ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				<-ctx.Done()
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.CgroupPath, "bpf-cgroup", "/sys/fs/cgroup", "the agent's --bpf-cgroup: the cgroup v2 directory its programs are attached to")
	f.StringVar(&cfg.PinDir, "bpf-pin-dir", bpf.DefaultConfig().PinDir, "the agent's --bpf-pin-dir: where its links and maps are pinned")
	f.StringVar(&cfg.StoreDir, "store-dir", "", "also remove this node-local store directory (enable --store-storage node-local) with its contents; its apiserver must be gone")
	f.BoolVar(&check, "check", false, "remove nothing: list what is left and exit 1 if anything is (a readiness probe)")
	f.BoolVar(&hold, "hold", false, "once the node is clean, keep running until SIGTERM (a DaemonSet's pod); a failure still exits 1, so the kubelet retries")
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
