package drills

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"time"

	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
	"github.com/clustermesh/clustermesh/observe"
)

// Mesh is what drills run against: a few clusters joined (or to be joined)
// by the clustermesh CLI, each with nodes, an echo Deployment and Service
// per cluster, and the failures drills inject. The emulator (Emulated) and
// real kind clusters (package kindenv) implement it, so that each drill is
// written once and measures the same figure on both.
//
// Clusters and nodes are named; the first node of a cluster is where its
// traffic comes from. Echo pods' names start with the echo Deployment's
// name, which differs per cluster: ClusterOf tells from a reply which
// cluster answered.
type Mesh interface {
	// Environment names the environment in the figures ("emulator",
	// "kind").
	Environment() string
	// Clusters returns the cluster names, in order.
	Clusters() []string
	// Nodes returns the node names of a cluster, in order.
	Nodes(cluster string) []string
	// Kubeconfig returns an admin kubeconfig of a cluster whose current
	// context is that cluster: drills read its store as the CLI does.
	Kubeconfig(cluster string) string

	// Enable runs `clustermesh enable` on every cluster and returns when
	// the mesh's processes run; Connect connects every pair.
	Enable(ctx context.Context) error
	Connect(ctx context.Context) error
	// Disconnect runs `clustermesh disconnect` between clusters a and b.
	Disconnect(ctx context.Context, a, b string) error
	// MarkGlobal runs `clustermesh service global` for the echo service
	// in every cluster (affinity "none", "local" or "remote").
	MarkGlobal(ctx context.Context, service, affinity string) error

	// DeployEcho creates the echo Service and Deployment in a cluster;
	// ScaleEcho scales the Deployment.
	DeployEcho(ctx context.Context, cluster, service string, replicas int) error
	ScaleEcho(ctx context.Context, cluster, service string, replicas int) error
	// EchoReady returns how many echo pods of a cluster are ready, and how
	// many the Deployment has.
	EchoReady(ctx context.Context, cluster, service string) (ready, total int, err error)
	// NewestEchoPod names the echo pod of a cluster created last.
	NewestEchoPod(ctx context.Context, cluster, service string) (string, error)
	// EchoPodsOn names the echo pods running on a node.
	EchoPodsOn(ctx context.Context, node, service string) ([]string, error)
	// ClusterOf names the cluster whose echo pod sent reply ("" if none).
	ClusterOf(service, reply string) string

	// StartTraffic starts a probe on node, connecting to the service's
	// ClusterIP in the node's cluster over and over with proto ("tcp",
	// "udp"). The caller stops it.
	StartTraffic(ctx context.Context, node, service, proto string) (Traffic, error)

	// RestartAgent kills the agent of a node hard (SIGKILL) and returns
	// once its replacement runs.
	RestartAgent(ctx context.Context, node string) error
	// StopStore stops a cluster's clustermesh-apiserver and its store;
	// StartStore starts it again and returns once the store serves.
	StopStore(ctx context.Context, cluster string) error
	StartStore(ctx context.Context, cluster string) error
	// KillNode kills a node hard: its processes and pods die at once and
	// its kubelet falls silent, so Kubernetes keeps its pods ready.
	KillNode(ctx context.Context, node string) error
	// Flows runs `clustermesh-agent observe -o json args...` against the
	// agent of node and returns the flows it printed.
	Flows(ctx context.Context, node string, args ...string) ([]observe.Flow, error)
	// AllowObservers runs `clustermesh observe allow` for every ordered
	// pair of clusters, so that each cluster's observers see every
	// cluster's flows.
	AllowObservers(ctx context.Context) error
	// Observe runs `clustermesh observe --context <cluster> -o json
	// args...` from the operator's machine (the mesh-wide view) and returns
	// the flows and what it said on stderr (missing agents, the summary).
	Observe(ctx context.Context, cluster string, args ...string) ([]observe.Flow, string, error)
}

// observeSummary matches the summary line `clustermesh observe` prints on
// stderr.
var observeSummary = regexp.MustCompile(`(\d+) flows from (\d+) of (\d+) agents`)

// ObserveAnswered reads how many agents answered of how many were asked
// from `clustermesh observe`'s stderr.
func ObserveAnswered(stderr string) (answered, asked int, ok bool) {
	m := observeSummary.FindStringSubmatch(stderr)
	if m == nil {
		return 0, 0, false
	}
	answered, _ = strconv.Atoi(m[2])
	asked, _ = strconv.Atoi(m[3])
	return answered, asked, true
}

// ParseFlows reads the JSON lines of `clustermesh-agent observe -o json`.
func ParseFlows(out []byte) ([]observe.Flow, error) {
	var fs []observe.Flow
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var f observe.Flow
		if err := dec.Decode(&f); err != nil {
			return fs, fmt.Errorf("observe output: %w", err)
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// RunObserve runs a prepared `clustermesh observe -o json` command and
// returns its flows and stderr.
func RunObserve(cmd *exec.Cmd) ([]observe.Flow, string, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, stderr.String(), fmt.Errorf("clustermesh observe: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	fs, err := ParseFlows(out)
	return fs, stderr.String(), err
}

// Traffic is a running probe.
type Traffic interface {
	// From names the node the probe runs on.
	From() string
	// Attempts returns the attempts made at or after since.
	Attempts(since time.Time) []attempts.Attempt
	// WaitFor waits until the last n attempts since since satisfy ok and
	// returns the first of them.
	WaitFor(ctx context.Context, since time.Time, n int, ok func(attempts.Attempt) bool) (attempts.Attempt, error)
	// Stop ends the probe.
	Stop(ctx context.Context) error
}

// EchoDrainSeconds is the echo Deployments' preStop sleep in every
// environment: a deleted echo pod keeps serving that long while the mesh
// moves new connections to ready backends.
const EchoDrainSeconds = emulator.EchoDrainSeconds

// RouteMesh is a Mesh whose nodes' pod routes the drills can read. With BGP
// routing, NodeDeath checks that the dead node's pod CIDR leaves the other
// clusters' nodes as soon as health gossip declares it dead, not after a
// BGP hold time or graceful-restart timer.
type RouteMesh interface {
	// RoutingBGP tells whether the mesh routes pod CIDRs over BGP (a
	// dead node's routes are withdrawn; static routes stay with the
	// node's store entry).
	RoutingBGP() bool
	// MeshRoutes lists the routes the mesh installed on node (protocols
	// 195 and 196): destination → next hop.
	MeshRoutes(ctx context.Context, node string) (map[netip.Prefix]netip.Addr, error)
	// NodeIP is the node's address, the next hop of its pod CIDRs.
	NodeIP(ctx context.Context, node string) (netip.Addr, error)
}

// ParseMeshRoutes reads the JSON of `ip -j route show proto N` (IPv4 or
// IPv6): destination → gateway. Routes without a gateway are skipped.
func ParseMeshRoutes(out []byte, into map[netip.Prefix]netip.Addr) error {
	var routes []struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
	}
	if len(bytes.TrimSpace(out)) == 0 {
		return nil
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return fmt.Errorf("routes %q: %w", out, err)
	}
	for _, r := range routes {
		if r.Gateway == "" {
			continue
		}
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			// ip prints a host route without its length.
			a, aerr := netip.ParseAddr(r.Dst)
			if aerr != nil {
				return fmt.Errorf("route to %q: %w", r.Dst, err)
			}
			dst = netip.PrefixFrom(a, a.BitLen())
		}
		gw, err := netip.ParseAddr(r.Gateway)
		if err != nil {
			return fmt.Errorf("route to %s: gateway %q: %w", r.Dst, r.Gateway, err)
		}
		into[dst] = gw
	}
	return nil
}

// MeshRouteCommands are the `ip` argument lists that show the mesh's routes
// (BGP's protocol 195 and static's 196, both families), for ParseMeshRoutes.
func MeshRouteCommands() [][]string {
	var out [][]string
	for _, fam := range []string{"-4", "-6"} {
		for _, proto := range []string{"195", "196"} {
			out = append(out, []string{"-j", fam, "route", "show", "table", "all", "proto", proto})
		}
	}
	return out
}

// NameTrafficMesh is a Mesh whose probes can dial a DNS name, resolved by
// the cluster's own DNS at every attempt (kind's CoreDNS, which `enable`
// gave the multicluster plugin); the emulation has no cluster DNS.
type NameTrafficMesh interface {
	// StartNameTraffic starts a probe on node that connects to host:80
	// with proto over and over, host resolved by the cluster's DNS each
	// time; service names the replies' service for ClusterOf.
	StartNameTraffic(ctx context.Context, node, host, service, proto string) (Traffic, error)
}

// ClustersetName is the KEP-1645 DNS name of an imported service:
// <service>.<namespace>.svc.clusterset.local, absolute (no search domains).
func ClustersetName(namespace, service string) string {
	return service + "." + namespace + ".svc.clusterset.local."
}
