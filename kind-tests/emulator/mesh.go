package emulator

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// meshArgs are the flags the harness adds to a mesh pod's own (from its
// manifest) so that several nodes share one machine: per-node pin directory
// and cgroup, the control plane's kubeconfig, data directories. They play
// the part of what differs between real hosts. A flag the manifest already
// sets is left alone.
func (r *Run) meshArgs(role string, cp *ControlPlane, n *Node, podDir string, mounts map[string]string, have []string) []string {
	var out []string
	add := func(flag, value string) {
		for _, a := range have {
			if a == flag || strings.HasPrefix(a, flag+"=") {
				return
			}
		}
		out = append(out, flag+"="+value)
	}
	switch role {
	case RoleAgent:
		if n == nil {
			return nil
		}
		for _, f := range r.agentFlags(n) {
			add(f[0], f[1])
		}
		if r.routingMode() == RoutingBGP {
			// Timers for clusters on one machine; the manifests'
			// settings (routes bgp) turn BGP on.
			add("--bgp-short-timers", "true")
		}
		r.mu.Lock()
		out = append(out, r.AgentArgs...)
		r.mu.Unlock()
	case RoleCleanup:
		// Where this node's agent attached and pinned (agentFlags).
		if n == nil {
			return nil
		}
		add("--bpf-cgroup", n.Cgroup)
		add("--bpf-pin-dir", n.BPFDir)
	case RoleAPIServer:
		if r.routingMode() == RoutingBGP {
			// The reflector's address and ASN come from the manifest.
			add("--bgp-short-timers", "true")
		}
		add("--kubeconfig", cp.Kubeconfig)
		add("--etcd-data-dir", filepath.Join(podDir, "etcd-data"))
		add("--etcd-unsafe-no-fsync", "true")
		if admin, ok := mounts["/var/lib/clustermesh/admin"]; ok {
			add("--etcd-admin-cert", filepath.Join(admin, "tls.crt"))
			add("--etcd-admin-key", filepath.Join(admin, "tls.key"))
		}
	}
	return out
}

// HealthPort is the memberlist port of every agent (on its node's address).
const HealthPort = 7946

// agentFlags are the per-node flags of an agent, as (flag, value) pairs:
// where its eBPF programs attach (the node's cgroup) and pin, and its
// memberlist address and the mesh gossip key (a file of the run; the
// manifests have no Secret for it yet).
func (r *Run) agentFlags(n *Node) [][2]string {
	gossip := netip.AddrPortFrom(n.FabricIP, HealthPort).String()
	return [][2]string{
		{"--node-name", n.Name},
		{"--bpf-cgroup", n.Cgroup},
		{"--bpf-pin-dir", n.BPFDir},
		{"--health", "true"},
		{"--health-bind", gossip},
		{"--health-advertise", gossip},
		{"--health-key-file", r.gossipKeyFile()},
	}
}

// gossipKeyFile returns the run's mesh gossip key file, creating it (32
// random bytes, base64) on first use.
func (r *Run) gossipKeyFile() string {
	path := filepath.Join(r.Dir, "gossip.key")
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := os.Stat(path); err != nil {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		_ = os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)), 0o600)
	}
	return path
}

func (n *Node) isDead() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dead
}

// Kill is a hard node death: the node leaves the fabric, every process of
// the node (its agent, clients) gets SIGKILL, its pods stop answering, and
// its kubelet goes silent (no status updates, no restarts), so Kubernetes
// keeps believing its pods are ready, as it does for tens of seconds after a
// real power loss.
func (n *Node) Kill(ctx context.Context) error {
	n.mu.Lock()
	n.dead = true
	n.mu.Unlock()
	if err := n.Cut(ctx); err != nil {
		return err
	}
	for _, p := range n.Pods() {
		p.StopEcho()
	}
	// Kill again until empty: a process started just before the node was
	// marked dead (a kubelet restart in flight) must not survive.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := poll.Until(ctx, func(context.Context) error {
		if err := os.WriteFile(filepath.Join(n.Cgroup, "cgroup.kill"), []byte("1"), 0); err != nil {
			return poll.Final(fmt.Errorf("kill processes: %w", err))
		}
		if netlab.CgroupPopulated(n.Cgroup) {
			return fmt.Errorf("processes %v survive kill", netlab.CgroupPids(n.Cgroup))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// Agent returns the running agent process of node n, or ErrNoProcess.
func (cp *ControlPlane) Agent(n *Node) (*Process, error) {
	for _, p := range cp.kubelet.processes(RoleAgent) {
		if p.Spec.Netns == n.Netns && !p.Exited() {
			return p, nil
		}
	}
	return nil, fmt.Errorf("node %s: agent: %w", n.Name, ErrNoProcess)
}

// Agents returns every running agent process of the cluster.
func (cp *ControlPlane) Agents() []*Process { return cp.kubelet.processes(RoleAgent) }

// Store returns the running clustermesh-apiserver process, or ErrNoProcess.
func (cp *ControlPlane) Store() (*Process, error) {
	for _, p := range cp.kubelet.processes(RoleAPIServer) {
		if !p.Exited() {
			return p, nil
		}
	}
	return nil, fmt.Errorf("cluster %s: clustermesh-apiserver: %w", cp.Cluster.Name, ErrNoProcess)
}

// StopStore takes the cluster's mesh control plane down: the
// clustermesh-apiserver (and the etcd it embeds) is stopped and not restarted
// until StartStore. Peers lose the cluster's store; its nodes and pods live on.
// Its pod is deleted too, so that the store comes back in a new pod, as after
// a reschedule, with only what its volume kept. The process is stopped as
// the kubelet stops a deleted pod's container: SIGTERM, then SIGKILL after
// a grace period, so that what it does on a graceful stop (the route
// reflector's sessions) is what the drill sees.
func (cp *ControlPlane) StopStore(ctx context.Context) error {
	cp.kubelet.mu.Lock()
	cp.kubelet.storeDown = true
	cp.kubelet.mu.Unlock()
	for _, p := range cp.kubelet.processes(RoleAPIServer) {
		if err := p.Stop(ctx); err != nil {
			return err
		}
	}
	pods := cp.Client.CoreV1().Pods(deploy.Namespace)
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: roleLabel + "=" + RoleAPIServer})
	if err != nil {
		return fmt.Errorf("cluster %s: list apiserver pods: %w", cp.Cluster.Name, err)
	}
	for _, p := range list.Items {
		if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("cluster %s: delete pod %s: %w", cp.Cluster.Name, p.Name, err)
		}
	}
	return nil
}

// StartStore undoes StopStore; the kubelet restarts the clustermesh-apiserver
// within a second.
func (cp *ControlPlane) StartStore() {
	cp.kubelet.mu.Lock()
	cp.kubelet.storeDown = false
	cp.kubelet.mu.Unlock()
	cp.kubelet.wake()
}

// WaitStore waits until the clustermesh-apiserver process runs.
func (cp *ControlPlane) WaitStore(ctx context.Context) (*Process, error) {
	var p *Process
	err := poll.Until(ctx, func(context.Context) (err error) {
		p, err = cp.Store()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: clustermesh-apiserver not running: %w", cp.Cluster.Name, err)
	}
	return p, nil
}

func (r *Run) routingMode() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.routing
}
