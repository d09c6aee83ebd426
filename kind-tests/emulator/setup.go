package emulator

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// MeshOptions shape NewMesh. Zero values take the defaults.
type MeshOptions struct {
	// Clusters is the number of clusters, named c1, c2 …; default 2.
	Clusters int
	// Nodes is the number of nodes per cluster; default 2.
	Nodes int
	// Routing says who routes pod CIDRs between nodes and clusters, as
	// enable's --routes: RoutingBGP (default: every agent's BGP speaker,
	// through its cluster's route reflector in the clustermesh-apiserver),
	// RoutingAgent (the harness routes inside each cluster, as its CNI
	// would, and each agent installs routes to the nodes of every
	// connected cluster, learned from their stores, --routes=static) or
	// RoutingHarness (the harness installs static routes between all
	// nodes before anything runs, --routes=none).
	Routing string
	// VolumeLag: the kubelet of the k-th cluster (from 0) writes a
	// changed Secret or ConfigMap into running pods' volumes k × VolumeLag
	// after the change. Real kubelets refresh mounts on their own periodic
	// sync, so each side of a connect or disconnect sees it tens of seconds
	// apart (docs/drills.md); 0 writes every change at once.
	VolumeLag time.Duration
}

// Routing modes of MeshOptions.
const (
	RoutingAgent   = "agent"
	RoutingHarness = "harness"
	// RoutingBGP: every agent runs its BGP speaker against its cluster's
	// route reflector, hosted by the clustermesh-apiserver on the
	// control-plane address (enable --routes bgp); reflectors of connected
	// clusters peer with each other. No static routes at all.
	RoutingBGP = "bgp"
)

// Mesh is a set of emulated clusters with their control planes, driven
// through the real CLI and kubectl, as an operator would.
type Mesh struct {
	Run      *Run
	Bins     *Binaries
	Clusters []*Cluster
	// Routing is the routing mode in use (see MeshOptions).
	Routing string
	// OnCommand, if set, is called with every CLI and kubectl command line
	// before it runs (the demo prints them).
	OnCommand func(cmdline string)
}

func (m *Mesh) echo(name string, args []string) {
	if m.OnCommand == nil {
		return
	}
	var shown []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--kubeconfig" && i+1 < len(args) {
			i++
			continue
		}
		shown = append(shown, args[i])
	}
	m.OnCommand(name + " " + strings.Join(shown, " "))
}

// NewMesh creates the clusters, their nodes and their Kubernetes control
// planes. The mesh itself is not installed yet: see Enable.
func NewMesh(ctx context.Context, r *Run, bins *Binaries, o MeshOptions) (*Mesh, error) {
	if o.Clusters == 0 {
		o.Clusters = 2
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	m := &Mesh{Run: r, Bins: bins}
	for i := 1; i <= o.Clusters; i++ {
		c, err := r.AddCluster(ctx, fmt.Sprintf("c%d", i))
		if err != nil {
			return nil, err
		}
		for range o.Nodes {
			if _, err := c.AddNode(ctx); err != nil {
				return nil, err
			}
		}
		c.VolumeLag = time.Duration(i-1) * o.VolumeLag
		m.Clusters = append(m.Clusters, c)
	}
	if o.Routing == "" {
		o.Routing = RoutingBGP
	}
	switch o.Routing {
	case RoutingHarness:
		if err := r.InstallStaticRoutes(ctx); err != nil {
			return nil, err
		}
	case RoutingAgent:
		// Inside a cluster its CNI routes pod CIDRs; the harness plays
		// the CNI. Between clusters the agents route.
		if err := r.InstallClusterRoutes(ctx); err != nil {
			return nil, err
		}
	case RoutingBGP:
		// BGP installs every route, inside clusters and between them.
	default:
		return nil, fmt.Errorf("mesh: routing %q: must be %q, %q or %q", o.Routing, RoutingAgent, RoutingHarness, RoutingBGP)
	}
	m.Routing = o.Routing
	r.mu.Lock()
	r.routing = o.Routing
	r.mu.Unlock()
	for _, c := range m.Clusters {
		if _, err := c.StartControlPlane(ctx, bins); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Cluster returns the cluster named name, or nil.
func (m *Mesh) Cluster(name string) *Cluster {
	for _, c := range m.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// CLI runs the clustermesh CLI against the run's kubeconfig and returns its
// output.
func (m *Mesh) CLI(ctx context.Context, args ...string) (string, error) {
	if err := m.Bins.Require(PartCLI); err != nil {
		return "", err
	}
	m.echo("clustermesh", args)
	return run(ctx, m.Bins.Path(PartCLI), append([]string{"--kubeconfig", m.Run.Kubeconfig()}, args...)...)
}

// Kubectl runs the hack-built kubectl in the context of cluster c.
func (m *Mesh) Kubectl(ctx context.Context, c *Cluster, stdin string, args ...string) (string, error) {
	if err := m.Bins.Require(PartKubectl); err != nil {
		return "", err
	}
	full := append([]string{"--kubeconfig", m.Run.Kubeconfig(), "--context", c.Name}, args...)
	m.echo("kubectl", full)
	cmd := exec.CommandContext(ctx, m.Bins.Path(PartKubectl), full...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl --context %s %s: %w: %s", c.Name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func run(ctx context.Context, path string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// StoreEtcdPort is the port the clustermesh-apiserver serves its store on.
const StoreEtcdPort = 2379

// StoreEndpoint is where peers reach cluster c's store: its control-plane
// namespace's fabric address (the emulation's stand-in for a LoadBalancer),
// on the port of a host-network store with BGP routing (the manifests put
// the apiserver on its node's network then).
func (c *Cluster) StoreEndpoint() string {
	cp := c.ControlPlane()
	port := uint16(StoreEtcdPort)
	if c.Run.routingMode() == RoutingBGP {
		port = deploy.HostNetworkEtcdPort
	}
	return "https://" + netip.AddrPortFrom(cp.IP, port).String()
}

// enableRoutes is enable's --routes for the mesh's routing mode.
func enableRoutes(routing string) string {
	switch routing {
	case RoutingBGP:
		return deploy.RoutesBGP
	case RoutingAgent:
		return deploy.RoutesStatic
	default:
		// The harness routes everything.
		return deploy.RoutesNone
	}
}

// Enable runs `clustermesh enable` on every cluster (the first creates the
// mesh CA, the others inherit it), then waits until every cluster's
// clustermesh-apiserver and every node's agent run.
func (m *Mesh) Enable(ctx context.Context) error {
	for i, c := range m.Clusters {
		args := []string{"enable", "--context", c.Name, "--cluster-name", c.Name,
			"--cluster-id", strconv.Itoa(c.Index), "--endpoint", c.StoreEndpoint(), "--routes", enableRoutes(m.Routing)}
		if i > 0 {
			args = append(args, "--inherit-ca-from", m.Clusters[0].Name)
		}
		out, err := m.CLI(ctx, args...)
		if err != nil {
			return err
		}
		m.Run.Log.Info("enabled", "cluster", c.Name, "out", strings.TrimSpace(out))
	}
	return m.WaitMeshProcesses(ctx)
}

// WaitMeshProcesses waits until every cluster runs its clustermesh-apiserver
// and one agent per live node.
func (m *Mesh) WaitMeshProcesses(ctx context.Context) error {
	for _, c := range m.Clusters {
		cp := c.ControlPlane()
		if _, err := cp.WaitStore(ctx); err != nil {
			return err
		}
		for _, n := range c.Nodes() {
			if n.isDead() {
				continue
			}
			err := poll.Until(ctx, func(context.Context) error {
				_, err := cp.Agent(n)
				return err
			})
			if err != nil {
				return fmt.Errorf("node %s: agent not running: %w", n.Name, err)
			}
		}
	}
	return nil
}

// Connect connects every pair of clusters with `clustermesh connect`, then
// waits with `status --wait` on every cluster, as docs/getting-started.md
// says: with BGP that includes every agent's route to each peer's pods.
func (m *Mesh) Connect(ctx context.Context) error {
	for i, a := range m.Clusters {
		for _, b := range m.Clusters[i+1:] {
			if _, err := m.CLI(ctx, "connect", "--context", a.Name, "--destination-context", b.Name); err != nil {
				return err
			}
		}
	}
	for _, c := range m.Clusters {
		if _, err := m.CLI(ctx, "status", "--context", c.Name, "--wait", "--wait-duration", "2m"); err != nil {
			return err
		}
	}
	return nil
}

// Disconnect runs `clustermesh disconnect` between a and b.
func (m *Mesh) Disconnect(ctx context.Context, a, b *Cluster) error {
	_, err := m.CLI(ctx, "disconnect", "--context", a.Name, "--destination-context", b.Name)
	return err
}

// EchoDeploymentName is the name of cluster c's echo Deployment; its pods'
// names start with it, which tells from a reply which cluster answered.
func EchoDeploymentName(service string, c *Cluster) string { return service + "-" + c.Name }

// DeployEcho applies, with kubectl, a Service named service (port 80 to the
// pods' EchoPort) and a Deployment of replicas echo pods behind it in
// cluster c's default namespace.
func (m *Mesh) DeployEcho(ctx context.Context, c *Cluster, service string, replicas int) error {
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: default
spec:
  selector:
    app: %[1]s
  ports:
  - name: tcp
    port: 80
    targetPort: %[4]d
    protocol: TCP
  - name: udp
    port: 80
    targetPort: %[4]d
    protocol: UDP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[2]s
  namespace: default
spec:
  replicas: %[3]d
  selector:
    matchLabels:
      app: %[1]s
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxUnavailable: 0, maxSurge: 1}
  template:
    metadata:
      labels:
        app: %[1]s
    spec:
      terminationGracePeriodSeconds: %[6]d
      containers:
      - name: echo
        image: echo
        ports:
        - containerPort: %[4]d
        lifecycle:
          preStop:
            sleep: {seconds: %[5]d}
`, service, EchoDeploymentName(service, c), replicas, EchoPort, EchoDrainSeconds, EchoDrainSeconds+3)
	_, err := m.Kubectl(ctx, c, manifest, "apply", "-f", "-")
	return err
}

// ScaleEcho scales cluster c's echo Deployment with kubectl.
func (m *Mesh) ScaleEcho(ctx context.Context, c *Cluster, service string, replicas int) error {
	_, err := m.Kubectl(ctx, c, "", "scale", "deployment/"+EchoDeploymentName(service, c), "--replicas="+strconv.Itoa(replicas))
	return err
}

// ServiceIP returns the ClusterIP of service in cluster c.
func (m *Mesh) ServiceIP(ctx context.Context, c *Cluster, service string) (netip.Addr, error) {
	svc, err := c.ControlPlane().Client.CoreV1().Services("default").Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cluster %s: service %s: %w", c.Name, service, err)
	}
	a, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cluster %s: service %s: ClusterIP %q: %w", c.Name, service, svc.Spec.ClusterIP, err)
	}
	return a, nil
}

// ClusterOf tells which cluster's echo pod a reply came from ("" if none).
func (m *Mesh) ClusterOf(service, reply string) string {
	for _, c := range m.Clusters {
		if strings.HasPrefix(reply, EchoDeploymentName(service, c)+"-") {
			return c.Name
		}
	}
	return ""
}

// MarkGlobal runs `clustermesh service global default/<service>` in every
// cluster, with --affinity when affinity is not empty.
func (m *Mesh) MarkGlobal(ctx context.Context, service, affinity string) error {
	for _, c := range m.Clusters {
		args := []string{"service", "global", "default/" + service, "--context", c.Name}
		if affinity != "" {
			args = append(args, "--affinity", affinity)
		}
		if _, err := m.CLI(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// CommandOutput runs a command and returns its combined output.
func CommandOutput(path string, args ...string) (string, error) {
	return run(context.Background(), path, args...)
}
