// Package kindenv runs the drills (package drills) on real kind clusters:
// the clusters hack/kind creates (`make kind-up`), the images `make images`
// builds, and the real clustermesh CLI. It implements drills.Mesh with
// client-go for Kubernetes objects, the CLI for everything the mesh does,
// and Docker for what only the host can do (killing a node).
//
// Traffic comes from probe pods (kind-tests/cmd/probe) pinned to a node; the
// probe's log is streamed and parsed into the same attempt log the emulator
// fills (package attempts), so figures mean the same on both environments.
package kindenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kind-tests/attempts"
	"github.com/clustermesh/clustermesh/kind-tests/drills"
	"github.com/clustermesh/clustermesh/observe"
)

// Namespace of the mesh's workloads (what `clustermesh enable` installs).
const meshNamespace = "clustermesh-system"

// echoPort is the port the echo pods listen on (TCP and UDP).
const echoPort = 8080

// Options configure a Mesh.
type Options struct {
	// Clusters are the kind cluster names, in order (e.g. cm-c1, cm-c2);
	// each one's kubeconfig is Kubeconfigs[i], whose context is
	// "kind-<name>".
	Clusters    []string
	Kubeconfigs []string
	// CLI is the clustermesh binary, built with the same version as the
	// images (make build): enable installs the images of its own version.
	CLI string
	// EchoImage and ProbeImage are the drills' programs' images, loaded
	// into every cluster.
	EchoImage, ProbeImage string
	// Routes is enable's --routes; default bgp (the product's default:
	// kind has no kindnet, so BGP routes between a cluster's own nodes
	// too); static-all routes from the stores instead.
	Routes string
	Log    *slog.Logger
}

// Mesh is a set of kind clusters driven as a drills.Mesh.
type Mesh struct {
	opts    Options
	kube    map[string]*kubernetes.Clientset
	nodes   map[string][]string
	cluster map[string]string // node → cluster
	log     *slog.Logger
}

var _ drills.PodTrafficMesh = (*Mesh)(nil)

// New connects to the clusters and lists their nodes (control plane
// first: kind names sort that way).
func New(ctx context.Context, opts Options) (*Mesh, error) {
	if len(opts.Clusters) < 2 || len(opts.Kubeconfigs) != len(opts.Clusters) {
		return nil, fmt.Errorf("kindenv: want at least two clusters, each with a kubeconfig (got %d clusters, %d kubeconfigs)", len(opts.Clusters), len(opts.Kubeconfigs))
	}
	if opts.Routes == "" {
		opts.Routes = deploy.RoutesBGP
	}
	m := &Mesh{opts: opts, kube: map[string]*kubernetes.Clientset{}, nodes: map[string][]string{}, cluster: map[string]string{}, log: logging.OrDiscard(opts.Log)}
	for i, c := range opts.Clusters {
		rc, err := clientcmd.BuildConfigFromFlags("", opts.Kubeconfigs[i])
		if err != nil {
			return nil, fmt.Errorf("kindenv: cluster %s: kubeconfig %s: %w", c, opts.Kubeconfigs[i], err)
		}
		kc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("kindenv: cluster %s: %w", c, err)
		}
		nodes, err := kc.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("kindenv: cluster %s: list nodes: %w", c, err)
		}
		for _, n := range nodes.Items {
			m.nodes[c] = append(m.nodes[c], n.Name)
			m.cluster[n.Name] = c
		}
		slices.Sort(m.nodes[c])
		if len(m.nodes[c]) == 0 {
			return nil, fmt.Errorf("kindenv: cluster %s has no node", c)
		}
		m.kube[c] = kc
	}
	return m, nil
}

// Environment implements drills.Mesh.
func (m *Mesh) Environment() string { return "kind" }

// Clusters implements drills.Mesh.
func (m *Mesh) Clusters() []string { return slices.Clone(m.opts.Clusters) }

// Nodes implements drills.Mesh.
func (m *Mesh) Nodes(cluster string) []string { return slices.Clone(m.nodes[cluster]) }

// Kubeconfig implements drills.Mesh.
func (m *Mesh) Kubeconfig(cluster string) string {
	if i := slices.Index(m.opts.Clusters, cluster); i >= 0 {
		return m.opts.Kubeconfigs[i]
	}
	return ""
}

// Kube returns the client of a cluster.
func (m *Mesh) Kube(cluster string) *kubernetes.Clientset { return m.kube[cluster] }

func kubeContext(cluster string) string { return "kind-" + cluster }

// CLI runs the clustermesh CLI with every cluster's kubeconfig and returns
// its combined output.
func (m *Mesh) CLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, m.opts.CLI, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+strings.Join(m.opts.Kubeconfigs, ":"))
	out, err := cmd.CombinedOutput()
	m.log.Info("clustermesh", "args", strings.Join(args, " "), "error", err)
	if err != nil {
		return string(out), fmt.Errorf("clustermesh %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Enable implements drills.Mesh: `clustermesh enable` on every cluster (the
// first creates the CA, the others inherit it, as on the emulator), then
// waits until every cluster's apiserver is ready and every node runs a
// ready agent.
func (m *Mesh) Enable(ctx context.Context) error {
	for i, c := range m.opts.Clusters {
		args := []string{"enable", "--context", kubeContext(c), "--cluster-name", c, "--cluster-id", strconv.Itoa(i + 1), "--routes", m.opts.Routes}
		if i > 0 {
			args = append(args, "--inherit-ca-from", kubeContext(m.opts.Clusters[0]))
		}
		if _, err := m.CLI(ctx, args...); err != nil {
			return err
		}
	}
	for _, c := range m.opts.Clusters {
		if err := m.waitAgents(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// waitAgents waits until the agent DaemonSet of a cluster is ready on
// every node.
func (m *Mesh) waitAgents(ctx context.Context, cluster string) error {
	return poll.Until(ctx, func(ctx context.Context) error {
		ds, err := m.kube[cluster].AppsV1().DaemonSets(meshNamespace).Get(ctx, "clustermesh-agent", metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("cluster %s: %w", cluster, err)
		}
		if ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
			return fmt.Errorf("cluster %s: %d of %d agents ready", cluster, ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
		}
		return nil
	})
}

// Connect implements drills.Mesh: `clustermesh connect` for every pair,
// then `status --wait` on every cluster, as docs/getting-started.md says:
// agents follow a connection once the kubelet has refreshed their Secret
// mount (up to a minute and more), and the drills measure failovers, not
// that refresh.
func (m *Mesh) Connect(ctx context.Context) error {
	for i, a := range m.opts.Clusters {
		for _, b := range m.opts.Clusters[i+1:] {
			if _, err := m.CLI(ctx, "connect", "--context", kubeContext(a), "--destination-context", kubeContext(b)); err != nil {
				return err
			}
		}
	}
	for _, c := range m.opts.Clusters {
		if _, err := m.CLI(ctx, "status", "--context", kubeContext(c), "--wait", "--wait-duration", "5m"); err != nil {
			return err
		}
	}
	return nil
}

// Disconnect implements drills.Mesh.
func (m *Mesh) Disconnect(ctx context.Context, a, b string) error {
	_, err := m.CLI(ctx, "disconnect", "--context", kubeContext(a), "--destination-context", kubeContext(b))
	return err
}

// MarkGlobal implements drills.Mesh.
func (m *Mesh) MarkGlobal(ctx context.Context, service, affinity string) error {
	for _, c := range m.opts.Clusters {
		args := []string{"service", "global", "default/" + service, "--context", kubeContext(c)}
		if affinity != "" {
			args = append(args, "--affinity", affinity)
		}
		if _, err := m.CLI(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// echoName is a cluster's echo Deployment; its pods' names start with it.
func echoName(service, cluster string) string { return service + "-" + cluster }

// tolerateAll lets drill pods run on control-plane nodes too: each kind
// cluster has two nodes, and the drills need pods on both.
var tolerateAll = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}

// DeployEcho implements drills.Mesh: a Service (TCP and UDP port 80) and a
// Deployment of echo pods spread over the cluster's nodes.
func (m *Mesh) DeployEcho(ctx context.Context, cluster, service string, replicas int) error {
	kc := m.kube[cluster]
	labels := map[string]string{"app": service}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: service, Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(echoPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: 80, TargetPort: intstr.FromInt32(echoPort), Protocol: corev1.ProtocolUDP},
		}},
	}
	if _, err := kc.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster %s: service %s: %w", cluster, service, err)
	}
	n := int32(replicas)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: echoName(service, cluster), Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			// A rolling update never lowers the ready count (RollingUpdate
			// drill).
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr(intstr.FromInt32(0)), MaxSurge: ptr(intstr.FromInt32(1)),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Tolerations: tolerateAll,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					TerminationGracePeriodSeconds: ptr(int64(drills.EchoDrainSeconds + 3)),
					Containers: []corev1.Container{{
						Name:            "echo",
						Image:           m.opts.EchoImage,
						ImagePullPolicy: corev1.PullNever,
						Args:            []string{"-listen", fmt.Sprintf(":%d", echoPort)},
						Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"},
						}}},
						Ports: []corev1.ContainerPort{{ContainerPort: echoPort, Protocol: corev1.ProtocolTCP}, {ContainerPort: echoPort, Protocol: corev1.ProtocolUDP}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(echoPort)}},
							PeriodSeconds: 1,
						},
						// A terminating pod keeps serving while the mesh
						// moves new connections away (it is serving but
						// terminating: used only when no ready backend is
						// left anywhere).
						Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: drills.EchoDrainSeconds}}},
					}},
				},
			},
		},
	}
	if _, err := kc.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster %s: deployment %s: %w", cluster, dep.Name, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// ScaleEcho implements drills.Mesh. The read and write of the scale are
// tried again when the Deployment changed in between (its controller
// writes its status while pods come and go).
func (m *Mesh) ScaleEcho(ctx context.Context, cluster, service string, replicas int) error {
	name := echoName(service, cluster)
	deps := m.kube[cluster].AppsV1().Deployments("default")
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s, err := deps.GetScale(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s.Spec.Replicas = int32(replicas)
		_, err = deps.UpdateScale(ctx, name, s, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster %s: scale %s to %d: %w", cluster, name, replicas, err)
	}
	return nil
}

// EchoReady implements drills.Mesh.
func (m *Mesh) EchoReady(ctx context.Context, cluster, service string) (int, int, error) {
	dep, err := m.kube[cluster].AppsV1().Deployments("default").Get(ctx, echoName(service, cluster), metav1.GetOptions{})
	if err != nil {
		return 0, 0, err
	}
	return int(dep.Status.ReadyReplicas), int(dep.Status.Replicas), nil
}

// echoPods lists a cluster's live echo pods, optionally on one node.
func (m *Mesh) echoPods(ctx context.Context, cluster, service, node string) ([]corev1.Pod, error) {
	opts := metav1.ListOptions{LabelSelector: "app=" + service}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := m.kube[cluster].CoreV1().Pods("default").List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: list %s pods: %w", cluster, service, err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			out = append(out, p)
		}
	}
	return out, nil
}

// NewestEchoPod implements drills.Mesh.
func (m *Mesh) NewestEchoPod(ctx context.Context, cluster, service string) (string, error) {
	pods, err := m.echoPods(ctx, cluster, service, "")
	if err != nil {
		return "", err
	}
	var name string
	var at time.Time
	for _, p := range pods {
		if !p.CreationTimestamp.Time.Before(at) {
			name, at = p.Name, p.CreationTimestamp.Time
		}
	}
	if name == "" {
		return "", fmt.Errorf("cluster %s: no %s pod", cluster, service)
	}
	return name, nil
}

// EchoPodsOn implements drills.Mesh.
func (m *Mesh) EchoPodsOn(ctx context.Context, node, service string) ([]string, error) {
	pods, err := m.echoPods(ctx, m.cluster[node], service, node)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out, nil
}

// ClusterOf implements drills.Mesh.
func (m *Mesh) ClusterOf(service, reply string) string {
	for _, c := range m.opts.Clusters {
		if strings.HasPrefix(reply, echoName(service, c)+"-") {
			return c
		}
	}
	return ""
}

// traffic is a probe pod and its streamed log.
type traffic struct {
	*attempts.Log
	node    string
	cluster string
	pod     string
	kube    *kubernetes.Clientset
	cancel  context.CancelFunc
}

func (t *traffic) From() string { return t.node }

// Stop deletes the probe pod and waits until its log is read.
func (t *traffic) Stop(ctx context.Context) error {
	err := t.kube.CoreV1().Pods("default").Delete(ctx, t.pod, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	select {
	case <-t.Done():
	case <-ctx.Done():
	}
	t.cancel()
	if apierrors.IsNotFound(err) {
		err = nil
	}
	return err
}

// StartTraffic implements drills.Mesh: a probe pod on node (pod network,
// so the node's socket load balancer and its routes apply to it) aimed at
// the service's ClusterIP, whose log is followed.
func (m *Mesh) StartTraffic(ctx context.Context, node, service, proto string) (drills.Traffic, error) {
	name := fmt.Sprintf("probe-%s-%d", proto, time.Now().UnixNano()%1000000)
	target, err := m.clusterIP(ctx, node, service)
	if err != nil {
		return nil, err
	}
	return m.startProbe(ctx, node, name, map[string]string{"app.kubernetes.io/name": "drill-probe"}, target, service, proto, probeTimeout)
}

var _ drills.NameTrafficMesh = (*Mesh)(nil)

// StartNameTraffic implements drills.NameTrafficMesh: a probe pod on node
// (default dnsPolicy: the cluster's CoreDNS) dialing host:80, resolved at
// every attempt.
func (m *Mesh) StartNameTraffic(ctx context.Context, node, host, service, proto string) (drills.Traffic, error) {
	name := fmt.Sprintf("probe-dns-%s-%d", proto, time.Now().UnixNano()%1000000)
	return m.startProbe(ctx, node, name, map[string]string{"app.kubernetes.io/name": "drill-probe"}, net.JoinHostPort(host, "80"), service, proto, 500*time.Millisecond)
}

// clusterIP is service's ClusterIP:80 in node's cluster.
func (m *Mesh) clusterIP(ctx context.Context, node, service string) (string, error) {
	cluster := m.cluster[node]
	svc, err := m.kube[cluster].CoreV1().Services("default").Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("cluster %s: service %s: %w", cluster, service, err)
	}
	return net.JoinHostPort(svc.Spec.ClusterIP, "80"), nil
}

// probeTimeout bounds each attempt of a probe pod, unless a drill asks for
// another (the Policy drill's resolution).
const probeTimeout = 500 * time.Millisecond

// StartPodTraffic implements drills.PodTrafficMesh: the probe is itself
// pod default/name, with the given labels, on the cluster's first node.
func (m *Mesh) StartPodTraffic(ctx context.Context, cluster, name string, labels map[string]string, service, proto string, timeout time.Duration) (drills.Traffic, error) {
	nodes := m.nodes[cluster]
	if len(nodes) == 0 {
		return nil, fmt.Errorf("cluster %s: no nodes", cluster)
	}
	target, err := m.clusterIP(ctx, nodes[0], service)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = probeTimeout
	}
	return m.startProbe(ctx, nodes[0], name, labels, target, service, proto, timeout)
}

// startProbe runs a probe pod on node aimed at target (host:port) of
// service.
func (m *Mesh) startProbe(ctx context.Context, node, name string, labels map[string]string, target, service, proto string, timeout time.Duration) (drills.Traffic, error) {
	cluster := m.cluster[node]
	kc := m.kube[cluster]
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			Tolerations:                   tolerateAll,
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr(int64(0)),
			Containers: []corev1.Container{{
				Name:            "probe",
				Image:           m.opts.ProbeImage,
				ImagePullPolicy: corev1.PullNever,
				Args:            []string{"-target", target, "-proto", proto, "-interval", "10ms", "-timeout", timeout.String()},
			}},
		},
	}
	if _, err := kc.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("cluster %s: probe pod on %s: %w", cluster, node, err)
	}
	err := poll.Until(ctx, func(ctx context.Context) error {
		p, err := kc.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("probe pod %s on %s: %s %s", name, node, p.Status.Phase, waitingReason(p))
		}
		return nil
	})
	if err != nil {
		_ = kc.CoreV1().Pods("default").Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
		return nil, err
	}
	// The log stream outlives ctx (the drill's call); Stop ends it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := kc.CoreV1().Pods("default").GetLogs(name, &corev1.PodLogOptions{Follow: true}).Stream(sctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("cluster %s: probe pod %s: log: %w", cluster, name, err)
	}
	t := &traffic{Log: attempts.NewLog(fmt.Sprintf("on %s to %s/%s", node, cluster, service)), node: node, cluster: cluster, pod: name, kube: kc, cancel: cancel}
	go func() {
		defer stream.Close()
		t.Read(stream, nil)
	}()
	return t, nil
}

func waitingReason(p *corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			return w.Reason + ": " + w.Message
		}
	}
	return ""
}

// agentPod returns the agent pod on a node.
func (m *Mesh) agentPod(ctx context.Context, node string) (*corev1.Pod, error) {
	cluster := m.cluster[node]
	pods, err := m.kube[cluster].CoreV1().Pods(meshNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=clustermesh-agent", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: agent pod on %s: %w", cluster, node, err)
	}
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			return &pods.Items[i], nil
		}
	}
	return nil, fmt.Errorf("cluster %s: no agent pod on %s", cluster, node)
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// RestartAgent implements drills.Mesh: SIGKILL of the agent process in the
// node (as an OOM kill or a crash would), then the kubelet restarts the
// container; it returns once the new container runs.
func (m *Mesh) RestartAgent(ctx context.Context, node string) error {
	p, err := m.agentPod(ctx, node)
	if err != nil {
		return err
	}
	before := restarts(p)
	// The kernel truncates a command name to 15 characters.
	script := `for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = clustermesh-age ] && kill -9 ${d#/proc/}; done; true`
	if out, err := exec.CommandContext(ctx, "docker", "exec", node, "sh", "-c", script).CombinedOutput(); err != nil {
		return fmt.Errorf("node %s: kill the agent: %w: %s", node, err, out)
	}
	return poll.Until(ctx, func(ctx context.Context) error {
		p, err := m.agentPod(ctx, node)
		if err != nil {
			return err
		}
		if restarts(p) <= before {
			return fmt.Errorf("node %s: agent not restarted yet", node)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running == nil {
				return fmt.Errorf("node %s: agent container not running", node)
			}
		}
		return nil
	})
}

// Flows implements drills.Mesh: the agent's own binary (through its
// process's root) run in the node, whose loopback the agent's status
// endpoint listens on (host network).
func (m *Mesh) Flows(ctx context.Context, node string, args ...string) ([]observe.Flow, error) {
	quoted := make([]string, 0, len(args))
	for _, a := range args {
		quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	script := `for d in /proc/[0-9]*; do if [ "$(cat $d/comm 2>/dev/null)" = clustermesh-age ]; then exec $d/root/usr/local/bin/clustermesh-agent observe -o json ` +
		strings.Join(quoted, " ") + `; fi; done; echo "no agent process" >&2; exit 1`
	out, err := exec.CommandContext(ctx, "docker", "exec", node, "sh", "-c", script).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("node %s: observe: %w: %s", node, err, ee.Stderr)
		}
		return nil, fmt.Errorf("node %s: observe: %w", node, err)
	}
	return drills.ParseFlows(out)
}

// AllowObservers implements drills.Mesh.
func (m *Mesh) AllowObservers(ctx context.Context) error {
	for _, a := range m.opts.Clusters {
		for _, b := range m.opts.Clusters {
			if a == b {
				continue
			}
			if _, err := m.CLI(ctx, "observe", "allow", "--context", kubeContext(b), "--from-context", kubeContext(a)); err != nil {
				return err
			}
		}
	}
	return nil
}

// Observe implements drills.Mesh: the CLI on this machine, which reaches
// the kind nodes' agents on the Docker network.
func (m *Mesh) Observe(ctx context.Context, cluster string, args ...string) ([]observe.Flow, string, error) {
	cmd := exec.CommandContext(ctx, m.opts.CLI, append([]string{"observe", "--context", kubeContext(cluster), "-o", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+strings.Join(m.opts.Kubeconfigs, ":"))
	return drills.RunObserve(cmd)
}

// scaleAPIServer scales the clustermesh-apiserver, a StatefulSet or (from
// older manifests) a Deployment, again on a conflicting write.
func (m *Mesh) scaleAPIServer(ctx context.Context, cluster string, n int32) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error { return m.scaleAPIServerOnce(ctx, cluster, n) })
}

func (m *Mesh) scaleAPIServerOnce(ctx context.Context, cluster string, n int32) error {
	apps := m.kube[cluster].AppsV1()
	if s, err := apps.StatefulSets(meshNamespace).GetScale(ctx, "clustermesh-apiserver", metav1.GetOptions{}); err == nil {
		s.Spec.Replicas = n
		_, err = apps.StatefulSets(meshNamespace).UpdateScale(ctx, "clustermesh-apiserver", s, metav1.UpdateOptions{})
		return err
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	s, err := apps.Deployments(meshNamespace).GetScale(ctx, "clustermesh-apiserver", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("cluster %s: clustermesh-apiserver: %w", cluster, err)
	}
	s.Spec.Replicas = n
	_, err = apps.Deployments(meshNamespace).UpdateScale(ctx, "clustermesh-apiserver", s, metav1.UpdateOptions{})
	return err
}

// apiserverPods lists the live apiserver pods and how many are ready.
func (m *Mesh) apiserverPods(ctx context.Context, cluster string) (live, ready int, err error) {
	pods, err := m.kube[cluster].CoreV1().Pods(meshNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=clustermesh-apiserver"})
	if err != nil {
		return 0, 0, err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
			continue
		}
		live++
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready++
			}
		}
	}
	return live, ready, nil
}

// StopStore implements drills.Mesh: the apiserver scaled to zero, and gone.
func (m *Mesh) StopStore(ctx context.Context, cluster string) error {
	if err := m.scaleAPIServer(ctx, cluster, 0); err != nil {
		return err
	}
	return poll.Until(ctx, func(ctx context.Context) error {
		live, _, err := m.apiserverPods(ctx, cluster)
		if err == nil && live > 0 {
			err = fmt.Errorf("cluster %s: %d apiserver pods still run", cluster, live)
		}
		return err
	})
}

// StartStore implements drills.Mesh: the apiserver scaled to one, ready.
func (m *Mesh) StartStore(ctx context.Context, cluster string) error {
	if err := m.scaleAPIServer(ctx, cluster, 1); err != nil {
		return err
	}
	return poll.Until(ctx, func(ctx context.Context) error {
		_, ready, err := m.apiserverPods(ctx, cluster)
		if err == nil && ready == 0 {
			err = fmt.Errorf("cluster %s: apiserver not ready", cluster)
		}
		return err
	})
}

// KillNode implements drills.Mesh: `docker kill` of the node's container.
// Its kubelet falls silent; Kubernetes keeps its pods ready until the node
// controller notices (40 s and more).
func (m *Mesh) KillNode(ctx context.Context, node string) error {
	if out, err := exec.CommandContext(ctx, "docker", "kill", node).CombinedOutput(); err != nil {
		return fmt.Errorf("docker kill %s: %w: %s", node, err, out)
	}
	return nil
}

// Logs writes the last lines of every mesh pod's log in every cluster to
// w, for a failed run.
func (m *Mesh) Logs(ctx context.Context, w io.Writer) {
	for _, c := range m.opts.Clusters {
		pods, err := m.kube[c].CoreV1().Pods(meshNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			fmt.Fprintf(w, "cluster %s: %v\n", c, err)
			continue
		}
		for _, p := range pods.Items {
			fmt.Fprintf(w, "---- cluster %s pod %s (node %s, %s %s) ----\n", c, p.Name, p.Spec.NodeName, p.Status.Phase, waitingReason(&p))
			b, err := m.kube[c].CoreV1().Pods(meshNamespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: ptr(int64(40))}).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(w, "(log: %v)\n", err)
				continue
			}
			w.Write(b)
		}
	}
}

var _ drills.RouteMesh = (*Mesh)(nil)

// RoutingBGP implements drills.RouteMesh.
func (m *Mesh) RoutingBGP() bool { return m.opts.Routes == deploy.RoutesBGP }

// MeshRoutes implements drills.RouteMesh: `ip` inside the node's container.
func (m *Mesh) MeshRoutes(ctx context.Context, node string) (map[netip.Prefix]netip.Addr, error) {
	routes := map[netip.Prefix]netip.Addr{}
	for _, args := range drills.MeshRouteCommands() {
		out, err := exec.CommandContext(ctx, "docker", append([]string{"exec", node, "ip"}, args...)...).Output()
		if err != nil {
			return nil, fmt.Errorf("node %s: ip %v: %w", node, args, err)
		}
		if err := drills.ParseMeshRoutes(out, routes); err != nil {
			return nil, fmt.Errorf("node %s: %w", node, err)
		}
	}
	return routes, nil
}

// NodeIP implements drills.RouteMesh: the Node's first InternalIP.
func (m *Mesh) NodeIP(ctx context.Context, node string) (netip.Addr, error) {
	n, err := m.kube[m.cluster[node]].CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("node %s: %w", node, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return netip.ParseAddr(a.Address)
		}
	}
	return netip.Addr{}, fmt.Errorf("node %s: no InternalIP", node)
}
