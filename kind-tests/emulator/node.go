package emulator

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// Cluster is one emulated Kubernetes cluster: its nodes and, when the parts
// exist, its control plane (see ControlPlane).
type Cluster struct {
	Run *Run
	// Name is the cluster's name in the mesh ("c1", "c2" …).
	Name string
	// Index is 1-based; it is the cluster ID and picks the CIDRs.
	Index int
	// PodCIDR is 10.<Index>.0.0/16; node k gets 10.<Index>.<k>.0/24.
	PodCIDR     netip.Prefix
	ServiceCIDR netip.Prefix
	// Cgroup is the cluster's cgroup directory; node cgroups are below it.
	Cgroup string
	// VolumeLag delays, in this cluster, the refresh of a changed Secret
	// or ConfigMap in running pods' volumes (MeshOptions.VolumeLag). Set
	// before StartControlPlane.
	VolumeLag time.Duration

	mu    sync.Mutex
	nodes []*Node
	cp    *ControlPlane
}

// AddCluster adds an empty cluster named name. Clusters are numbered in the
// order they are added, from 1.
func (r *Run) AddCluster(ctx context.Context, name string) (*Cluster, error) {
	r.mu.Lock()
	for _, c := range r.clusters {
		if c.Name == name {
			r.mu.Unlock()
			return nil, fmt.Errorf("cluster %s: already exists", name)
		}
	}
	idx := len(r.clusters) + 1
	c := &Cluster{
		Run:         r,
		Name:        name,
		Index:       idx,
		PodCIDR:     podCIDRFor(idx),
		ServiceCIDR: serviceCIDRFor(idx),
		Cgroup:      filepath.Join(r.cgroup, name),
	}
	r.clusters = append(r.clusters, c)
	r.mu.Unlock()
	if err := os.MkdirAll(c.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("cluster %s: cgroup: %w", name, err)
	}
	return c, nil
}

// Nodes returns the cluster's nodes in creation order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Node is one emulated node: a network namespace on the fabric, a cgroup and
// a bpffs directory. Processes it runs (the agent, traffic clients) start in
// both its namespace and (a child of) its cgroup.
type Node struct {
	Cluster *Cluster
	// Name is "<cluster>-node<k>", unique in the run.
	Name  string
	Index int
	// Netns is the node's named network namespace (/run/netns/<Netns>).
	Netns    string
	FabricIP netip.Addr
	PodCIDR  netip.Prefix
	// Cgroup is the node's cgroup directory: the one the agent attaches its
	// socket programs to; every process of the node runs below it.
	Cgroup string
	// BPFDir is the node's bpffs pin directory.
	BPFDir string
	// Link is the node's veth port on the fabric bridge (in the fabric's
	// namespace).
	Link string

	mu     sync.Mutex
	pods   []*Pod
	nextIP netip.Addr
	dead   bool
}

// AddNode adds a node to the cluster: namespace, fabric port, forwarding,
// cgroup and bpffs directory.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) {
	r := c.Run
	c.mu.Lock()
	k := len(c.nodes) + 1
	c.mu.Unlock()
	if k > 250 {
		return nil, fmt.Errorf("cluster %s: too many nodes", c.Name)
	}
	name := fmt.Sprintf("%s-node%d", c.Name, k)
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(c.Index), byte(k), 0}), 24)
	n := &Node{
		Cluster: c,
		Name:    name,
		Index:   k,
		Netns:   r.Prefix + "-" + name,
		PodCIDR: cidr,
		Cgroup:  filepath.Join(c.Cgroup, name),
		BPFDir:  filepath.Join(r.bpf, c.Name, name),
		Link:    fmt.Sprintf("%s-%d-%d", r.Prefix, c.Index, k),
		nextIP:  cidr.Addr().Next().Next().Next().Next().Next().Next().Next().Next().Next().Next(), // .10
	}
	if len(n.Link) > 15 {
		return nil, fmt.Errorf("node %s: link name %q longer than 15", name, n.Link)
	}
	if err := createNetns(ctx, r, n.Netns); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	addr, err := r.Fabric.attach(ctx, n.Netns, n.Link)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n.FabricIP = addr
	if err := netlab.Sysctl(ctx, n.Netns,
		"net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.rp_filter=0",
		"net.ipv4.conf.default.rp_filter=0",
	); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	// The node's own pod CIDR is local: unknown addresses in it are dropped
	// here, not sent back to the fabric.
	if err := netlab.IP(ctx, n.Netns, "route", "add", "unreachable", cidr.String()); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	if err := os.MkdirAll(n.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: cgroup: %w", name, err)
	}
	if err := os.MkdirAll(n.BPFDir, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: bpffs dir: %w", name, err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	cp := c.cp
	c.mu.Unlock()
	if cp != nil {
		if err := cp.registerNode(ctx, n); err != nil {
			return nil, err
		}
	}
	r.Log.Info("node added", "cluster", c.Name, "node", name, "ip", addr, "pod_cidr", cidr)
	return n, nil
}

// StartProcess starts a process in the node's namespace (or spec.Netns, a
// pod's) and in a child cgroup of the node named after the process (so
// programs attached to the node's cgroup apply to it).
func (n *Node) StartProcess(spec ProcessSpec) (*Process, error) {
	if spec.Netns == "" {
		spec.Netns = n.Netns
	}
	if spec.Cgroup == "" {
		spec.Cgroup = filepath.Join(n.Cgroup, spec.Name)
	}
	if err := os.MkdirAll(spec.Cgroup, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: process %s: cgroup: %w", n.Name, spec.Name, err)
	}
	return n.Cluster.Run.Start(spec)
}

// Pods returns the node's pods that have not been removed.
func (n *Node) Pods() []*Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Pod(nil), n.pods...)
}

// Cut takes the node off the fabric (its bridge port goes down): to the rest
// of the mesh it is gone, as after a power loss, while its processes live on.
func (n *Node) Cut(ctx context.Context) error {
	if err := n.Cluster.Run.Fabric.setPort(ctx, n.Link, false); err != nil {
		return fmt.Errorf("node %s: cut: %w", n.Name, err)
	}
	return nil
}

// Reconnect undoes Cut.
func (n *Node) Reconnect(ctx context.Context) error {
	if err := n.Cluster.Run.Fabric.setPort(ctx, n.Link, true); err != nil {
		return fmt.Errorf("node %s: reconnect: %w", n.Name, err)
	}
	return nil
}

func (n *Node) allocateIP() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a := n.nextIP
	if !n.PodCIDR.Contains(a.Next()) {
		return netip.Addr{}, fmt.Errorf("node %s: pod CIDR %s exhausted", n.Name, n.PodCIDR)
	}
	n.nextIP = a.Next()
	return a, nil
}

// createNetns adds a named network namespace with loopback up and registers
// its deletion on the run.
func createNetns(ctx context.Context, r *Run, name string) error {
	err := netlab.AddNetns(ctx, name)
	// Registered even on error: a namespace added before a later step
	// failed must go too, and one never added is no error to delete.
	r.onClose("netns "+name, func(ctx context.Context) error { return netlab.DelNetns(ctx, name) })
	return err
}
