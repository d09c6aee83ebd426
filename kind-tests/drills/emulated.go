package drills

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/emulator"
	"github.com/clustermesh/clustermesh/observe"
)

// Emulated runs drills on the emulator: clusters of network namespaces whose
// kubelet is the harness (package emulator).
type Emulated struct {
	M *emulator.Mesh
}

var _ PodTrafficMesh = Emulated{}

// Environment implements Mesh.
func (Emulated) Environment() string { return "emulator" }

// Clusters implements Mesh.
func (e Emulated) Clusters() []string {
	out := make([]string, len(e.M.Clusters))
	for i, c := range e.M.Clusters {
		out[i] = c.Name
	}
	return out
}

// Nodes implements Mesh.
func (e Emulated) Nodes(cluster string) []string {
	c := e.M.Cluster(cluster)
	if c == nil {
		return nil
	}
	var out []string
	for _, n := range c.Nodes() {
		out = append(out, n.Name)
	}
	return out
}

// Kubeconfig implements Mesh.
func (e Emulated) Kubeconfig(cluster string) string {
	if c := e.M.Cluster(cluster); c != nil && c.ControlPlane() != nil {
		return c.ControlPlane().Kubeconfig
	}
	return ""
}

func (e Emulated) cluster(name string) (*emulator.Cluster, error) {
	if c := e.M.Cluster(name); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("no cluster %s", name)
}

func (e Emulated) node(name string) (*emulator.Node, error) {
	for _, c := range e.M.Clusters {
		for _, n := range c.Nodes() {
			if n.Name == name {
				return n, nil
			}
		}
	}
	return nil, fmt.Errorf("no node %s", name)
}

// Enable implements Mesh.
func (e Emulated) Enable(ctx context.Context) error { return e.M.Enable(ctx) }

// Connect implements Mesh.
func (e Emulated) Connect(ctx context.Context) error { return e.M.Connect(ctx) }

// Disconnect implements Mesh.
func (e Emulated) Disconnect(ctx context.Context, a, b string) error {
	ca, err := e.cluster(a)
	if err != nil {
		return err
	}
	cb, err := e.cluster(b)
	if err != nil {
		return err
	}
	return e.M.Disconnect(ctx, ca, cb)
}

// MarkGlobal implements Mesh.
func (e Emulated) MarkGlobal(ctx context.Context, service, affinity string) error {
	return e.M.MarkGlobal(ctx, service, affinity)
}

// DeployEcho implements Mesh.
func (e Emulated) DeployEcho(ctx context.Context, cluster, service string, replicas int) error {
	c, err := e.cluster(cluster)
	if err != nil {
		return err
	}
	return e.M.DeployEcho(ctx, c, service, replicas)
}

// ScaleEcho implements Mesh.
func (e Emulated) ScaleEcho(ctx context.Context, cluster, service string, replicas int) error {
	c, err := e.cluster(cluster)
	if err != nil {
		return err
	}
	return e.M.ScaleEcho(ctx, c, service, replicas)
}

// EchoReady implements Mesh.
func (e Emulated) EchoReady(ctx context.Context, cluster, service string) (int, int, error) {
	c, err := e.cluster(cluster)
	if err != nil {
		return 0, 0, err
	}
	dep, err := c.ControlPlane().Client.AppsV1().Deployments("default").Get(ctx, emulator.EchoDeploymentName(service, c), metav1.GetOptions{})
	if err != nil {
		return 0, 0, err
	}
	return int(dep.Status.ReadyReplicas), int(dep.Status.Replicas), nil
}

// NewestEchoPod implements Mesh.
func (e Emulated) NewestEchoPod(ctx context.Context, cluster, service string) (string, error) {
	c, err := e.cluster(cluster)
	if err != nil {
		return "", err
	}
	pods, err := c.ControlPlane().Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + service})
	if err != nil {
		return "", err
	}
	var name string
	var at time.Time
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && !p.CreationTimestamp.Time.Before(at) {
			name, at = p.Name, p.CreationTimestamp.Time
		}
	}
	if name == "" {
		return "", fmt.Errorf("cluster %s: no %s pod", cluster, service)
	}
	return name, nil
}

// EchoPodsOn implements Mesh.
func (e Emulated) EchoPodsOn(_ context.Context, node, service string) ([]string, error) {
	n, err := e.node(node)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range n.Pods() {
		if e.M.ClusterOf(service, p.Name) != "" {
			out = append(out, p.Name)
		}
	}
	return out, nil
}

// ClusterOf implements Mesh.
func (e Emulated) ClusterOf(service, reply string) string { return e.M.ClusterOf(service, reply) }

// StartTraffic implements Mesh: a probe process in the node's namespace and
// cgroup, so the node's socket load balancer applies to it.
func (e Emulated) StartTraffic(ctx context.Context, node, service, proto string) (Traffic, error) {
	n, err := e.node(node)
	if err != nil {
		return nil, err
	}
	vip, err := e.M.ServiceIP(ctx, n.Cluster, service)
	if err != nil {
		return nil, err
	}
	return n.StartTraffic(e.M.Bins, fmt.Sprintf("probe-%s-%d", proto, time.Now().UnixNano()%100000), netip.AddrPortFrom(vip, 80), &emulator.TrafficOptions{Proto: proto})
}

// StartPodTraffic implements PodTrafficMesh: the pod is created (when
// absent) and run by the emulated kubelet; the probe is a process inside
// its network namespace, in its node's cgroup.
func (e Emulated) StartPodTraffic(ctx context.Context, cluster, name string, labels map[string]string, service, proto string, timeout time.Duration) (Traffic, error) {
	c, err := e.cluster(cluster)
	if err != nil {
		return nil, err
	}
	vip, err := e.M.ServiceIP(ctx, c, service)
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "client", Image: "probe"}}},
	}
	if _, err := c.ControlPlane().Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("cluster %s: create pod %s: %w", cluster, name, err)
	}
	var found *emulator.Pod
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = poll.Until(wctx, func(context.Context) error {
		for _, n := range c.Nodes() {
			for _, p := range n.Pods() {
				if p.Namespace == "default" && p.Name == name {
					found = p
					return nil
				}
			}
		}
		return fmt.Errorf("cluster %s: pod default/%s not running", cluster, name)
	})
	if err != nil {
		return nil, err
	}
	return found.StartTraffic(e.M.Bins, fmt.Sprintf("probe-%s-%s-%d", name, proto, time.Now().UnixNano()%100000), netip.AddrPortFrom(vip, 80), &emulator.TrafficOptions{Proto: proto, Timeout: timeout})
}

// Flows implements Mesh: the agent's CLI in the node's network namespace,
// where the agent's status endpoint listens on loopback.
func (e Emulated) Flows(ctx context.Context, node string, args ...string) ([]observe.Flow, error) {
	n, err := e.node(node)
	if err != nil {
		return nil, err
	}
	argv := append([]string{"--net=" + netlab.NetnsPath(n.Netns), "--", e.M.Bins.Path(emulator.PartAgent), "observe", "-o", "json"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", argv...).Output()
	if err != nil {
		return nil, fmt.Errorf("node %s: observe: %w", node, err)
	}
	return ParseFlows(out)
}

// AllowObservers implements Mesh.
func (e Emulated) AllowObservers(ctx context.Context) error {
	for _, a := range e.M.Clusters {
		for _, b := range e.M.Clusters {
			if a == b {
				continue
			}
			if _, err := e.M.CLI(ctx, "observe", "allow", "--context", b.Name, "--from-context", a.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

// Observe implements Mesh: the CLI in the root namespace, which reaches
// every node's agent over the fabric.
func (e Emulated) Observe(ctx context.Context, cluster string, args ...string) ([]observe.Flow, string, error) {
	argv := append([]string{"--kubeconfig", e.M.Run.Kubeconfig(), "observe", "--context", cluster, "-o", "json"}, args...)
	return RunObserve(exec.CommandContext(ctx, e.M.Bins.Path(emulator.PartCLI), argv...))
}

// RestartAgent implements Mesh: the harness's kubelet restarts the agent.
func (e Emulated) RestartAgent(ctx context.Context, node string) error {
	n, err := e.node(node)
	if err != nil {
		return err
	}
	cp := n.Cluster.ControlPlane()
	old, err := cp.Agent(n)
	if err != nil {
		return err
	}
	if err := old.Kill(); err != nil {
		return err
	}
	for {
		if p, err := cp.Agent(n); err == nil && p != old {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: agent of %s not restarted: %w", ErrDrill, node, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// StopStore implements Mesh.
func (e Emulated) StopStore(ctx context.Context, cluster string) error {
	c, err := e.cluster(cluster)
	if err != nil {
		return err
	}
	return c.ControlPlane().StopStore(ctx)
}

// StartStore implements Mesh.
func (e Emulated) StartStore(ctx context.Context, cluster string) error {
	c, err := e.cluster(cluster)
	if err != nil {
		return err
	}
	c.ControlPlane().StartStore()
	_, err = c.ControlPlane().WaitStore(ctx)
	return err
}

// KillNode implements Mesh: the node goes off the fabric, its processes are
// killed and its kubelet falls silent.
func (e Emulated) KillNode(ctx context.Context, node string) error {
	n, err := e.node(node)
	if err != nil {
		return err
	}
	return n.Kill(ctx)
}

var _ RouteMesh = Emulated{}

// RoutingBGP implements RouteMesh.
func (e Emulated) RoutingBGP() bool { return e.M.Routing == emulator.RoutingBGP }

// MeshRoutes implements RouteMesh: `ip` in the node's namespace.
func (e Emulated) MeshRoutes(ctx context.Context, node string) (map[netip.Prefix]netip.Addr, error) {
	n, err := e.node(node)
	if err != nil {
		return nil, err
	}
	routes := map[netip.Prefix]netip.Addr{}
	for _, args := range MeshRouteCommands() {
		out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", n.Netns}, args...)...).Output()
		if err != nil {
			return nil, fmt.Errorf("node %s: ip %v: %w", node, args, err)
		}
		if err := ParseMeshRoutes(out, routes); err != nil {
			return nil, fmt.Errorf("node %s: %w", node, err)
		}
	}
	return routes, nil
}

// NodeIP implements RouteMesh.
func (e Emulated) NodeIP(_ context.Context, node string) (netip.Addr, error) {
	n, err := e.node(node)
	if err != nil {
		return netip.Addr{}, err
	}
	return n.FabricIP, nil
}
