package emulator

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// kcmControllers are the controllers the emulated clusters run: workloads
// (so `kubectl scale` and the CLI's StatefulSet and DaemonSet work), volume
// binding and the claim and volume protection finalizers (the store's
// claim), EndpointSlices, namespaces and garbage collection. There is no
// scheduler: the harness's kubelet binds pods itself.
const kcmControllers = "deployment-controller,replicaset-controller,daemonset-controller,statefulset-controller," +
	"persistentvolume-binder-controller,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller," +
	"endpointslice-controller,endpointslice-mirroring-controller,namespace-controller,garbage-collector-controller"

// ControlPlane is a cluster's Kubernetes control plane: etcd and
// kube-apiserver (started by internal/kubetest, listening on the fabric
// gateway address so the CLI, the harness and the cluster's control-plane
// namespace reach it), kube-controller-manager, and the harness's kubelet.
type ControlPlane struct {
	Cluster *Cluster
	Kube    *kubetest.Cluster
	Client  kubernetes.Interface
	// Kubeconfig is an admin kubeconfig of the cluster.
	Kubeconfig string
	// Netns is the control-plane "node": where the clustermesh-apiserver
	// pod runs, with address IP on the fabric.
	Netns string
	IP    netip.Addr
	// NodeName is the name pods bound to the control plane carry.
	NodeName string

	kcm     *Process
	kubelet *kubelet
}

// StartControlPlane starts the cluster's Kubernetes control plane and its
// kubelet, and registers the cluster's nodes. It needs the tools from
// hack/bin (kube-apiserver, kube-controller-manager, etcd).
func (c *Cluster) StartControlPlane(ctx context.Context, bins *Binaries) (*ControlPlane, error) {
	if err := bins.Require(PartKubeAPIServer, PartKCM, PartEtcd); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	r := c.Run
	cp := &ControlPlane{Cluster: c, Netns: r.Prefix + "-" + c.Name + "-cp", NodeName: c.Name + "-control-plane"}
	if err := createNetns(ctx, r, cp.Netns); err != nil {
		return nil, fmt.Errorf("cluster %s: control plane: %w", c.Name, err)
	}
	link := fmt.Sprintf("%s-%d-cp", r.Prefix, c.Index)
	addr, err := r.Fabric.attach(ctx, cp.Netns, link)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: control plane: %w", c.Name, err)
	}
	cp.IP = addr

	// kubetest looks its binaries up there; the run only ever points it
	// at bins' wrapped tools.
	if err := os.Setenv(kubetest.EnvToolsBin, bins.ToolsDir); err != nil {
		return nil, err
	}
	dir := filepath.Join(r.Dir, c.Name, "kube")
	r.Log.Info("starting kube-apiserver and etcd", "cluster", c.Name)
	kc, err := kubetest.StartProcess(ctx, dir, &kubetest.Options{
		BindAddress: r.Fabric.Gateway.String(),
		ServiceCIDR: c.ServiceCIDR.String(),
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	r.onClose("kube control plane "+c.Name, func(context.Context) error { kc.Stop(); return nil })
	// kubetest's processes join the cluster's cgroup, so Clean finds them
	// even if this process is killed before Close.
	cg := filepath.Join(c.Cgroup, "kube")
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return nil, fmt.Errorf("cluster %s: cgroup: %w", c.Name, err)
	}
	adoptProcesses(dir, cg)

	cp.Kube, cp.Client, cp.Kubeconfig = kc, kc.Client, kc.Kubeconfig
	cp.kcm, err = r.Start(ProcessSpec{
		Name:   c.Name + "-kube-controller-manager",
		Path:   bins.Path(PartKCM),
		Cgroup: cg,
		Args: []string{
			"--kubeconfig=" + kc.Kubeconfig,
			"--authentication-kubeconfig=" + kc.Kubeconfig,
			"--authorization-kubeconfig=" + kc.Kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			"--controllers=" + kcmControllers,
			"--concurrent-service-endpoint-syncs=10",
			"--concurrent-deployment-syncs=10",
			"--concurrent-replicaset-syncs=10",
			"--v=0",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	c.mu.Lock()
	c.cp = cp
	c.mu.Unlock()
	for _, n := range c.Nodes() {
		if err := cp.registerNode(ctx, n); err != nil {
			return nil, err
		}
	}
	if err := r.writeKubeconfig(); err != nil {
		return nil, err
	}
	cp.kubelet = newKubelet(cp, bins)
	cp.kubelet.volumeLag = c.VolumeLag
	kctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cp.kubelet.run(kctx)
	}()
	r.onCloseFirst("kubelet "+c.Name, func(ctx context.Context) error {
		cancel()
		<-done
		return cp.kubelet.stopAll(ctx)
	})
	r.Log.Info("control plane ready", "cluster", c.Name, "url", kc.URL, "kubeconfig", kc.Kubeconfig)
	return cp, nil
}

// ControlPlane returns the cluster's control plane, or nil before
// StartControlPlane.
func (c *Cluster) ControlPlane() *ControlPlane {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cp
}

// registerNode creates the Node object of n as a kubelet would: pod CIDR,
// internal address, Ready.
func (cp *ControlPlane) registerNode(ctx context.Context, n *Node) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":        n.Name,
				"kubernetes.io/os":              "linux",
				"topology.kubernetes.io/zone":   n.Name + "-zone", // one zone per node: PreferClose has a zone to prefer
				"clustermesh.io/emulated-by":    "kind-tests",
				"clustermesh.io/fabric-address": strings.ReplaceAll(n.FabricIP.String(), ".", "-"),
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	created, err := cp.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = cp.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("cluster %s: register node %s: %w", n.Cluster.Name, n.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.FabricIP.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "emulated by kind-tests", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
	}
	if _, err := cp.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("cluster %s: node %s status: %w", n.Cluster.Name, n.Name, err)
	}
	return nil
}

// Kubectl runs the hack-built kubectl against the cluster.
func (cp *ControlPlane) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return cp.Kube.Kubectl(ctx, args...)
}

// adoptProcesses moves every process whose command line mentions dir (the
// kubetest cluster's directory) into cgroup cg.
func adoptProcesses(dir, cg string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(b), dir+"/") {
			continue
		}
		_ = os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
	}
}
