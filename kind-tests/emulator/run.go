package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/proc"
)

// Options configures New. The zero value is usable.
type Options struct {
	// Prefix names everything of the run; empty for a fresh NewPrefix().
	Prefix string
	// Dir holds logs, certificates and data dirs; empty for
	// os.TempDir()/<prefix>. It is kept after Close when KeepDir is set or
	// when the run failed (see Run.Fail).
	Dir     string
	KeepDir bool
	// Log receives the harness's progress; nil for slog.Default().
	Log *slog.Logger
}

// Run is one emulation: a fabric and the clusters on it. See the package
// documentation for what it creates and how it is torn down.
type Run struct {
	Prefix string
	// Dir is the run's state directory; Dir/logs holds every process log.
	Dir    string
	Fabric *Fabric
	Log    *slog.Logger
	// AgentArgs are added to every agent's command line (after the
	// manifest's and the per-node flags); set before agents start.
	AgentArgs []string

	cgroup string // netlab.CgroupRoot()/<prefix>
	bpf    string // netlab.BPFRoot/<prefix>

	mu       sync.Mutex
	teardown []step
	// first are teardown steps run before the stack: stopping the kubelets,
	// so they do not restart processes the stack is stopping.
	first    []step
	closed   bool
	failed   bool
	keepDir  bool
	clusters []*Cluster
	nextPod  int
	routing  string // set by NewMesh
}

type step struct {
	what string
	fn   func(ctx context.Context) error
}

// New creates a run: its state dir, its cgroup and bpffs directories and the
// fabric bridge. The caller must Close it.
func New(ctx context.Context, opts Options) (_ *Run, err error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	prefix := opts.Prefix
	if prefix == "" {
		prefix = NewPrefix()
	}
	if err := CheckPrefix(prefix); err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	cgRoot, err := netlab.CgroupRoot()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", prefix, err)
	}
	dir := opts.Dir
	if dir == "" {
		dir = filepath.Join(os.TempDir(), prefix)
	}
	r := &Run{
		Prefix:  prefix,
		Dir:     dir,
		Log:     log.With("run", prefix),
		cgroup:  filepath.Join(cgRoot, prefix),
		bpf:     filepath.Join(netlab.BPFRoot, prefix),
		keepDir: opts.KeepDir,
	}
	defer func() {
		if err != nil {
			r.Fail()
			r.Close()
		}
	}()
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("run %s: state dir: %w", prefix, err)
	}
	r.onClose("state dir "+dir, func(context.Context) error {
		r.mu.Lock()
		keep := r.keepDir || r.failed
		r.mu.Unlock()
		if keep {
			r.Log.Info("keeping run directory (logs)", "dir", dir)
			return nil
		}
		return os.RemoveAll(dir)
	})
	if err := os.MkdirAll(filepath.Join(r.cgroup, "misc"), 0o755); err != nil {
		return nil, fmt.Errorf("run %s: cgroup: %w", prefix, err)
	}
	r.onClose("cgroup "+r.cgroup, func(ctx context.Context) error { return netlab.RemoveCgroupTree(ctx, r.cgroup) })
	if err := netlab.EnsureBPFFS(netlab.BPFRoot); err != nil {
		return nil, fmt.Errorf("run %s: %w", prefix, err)
	}
	if err := os.MkdirAll(r.bpf, 0o755); err != nil {
		return nil, fmt.Errorf("run %s: bpffs dir %s: %w", prefix, r.bpf, err)
	}
	r.onClose("bpffs "+r.bpf, func(context.Context) error { return os.RemoveAll(r.bpf) })

	f, err := newFabric(ctx, r)
	if err != nil {
		return nil, err
	}
	r.Fabric = f
	r.Log.Info("run created", "dir", dir, "fabric", f.Subnet)
	return r, nil
}

// onClose pushes a teardown step; Close runs them last-in first-out.
func (r *Run) onClose(what string, fn func(ctx context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.teardown = append(r.teardown, step{what, fn})
}

// onCloseFirst registers a step Close runs before every onClose step.
func (r *Run) onCloseFirst(what string, fn func(ctx context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.first = append(r.first, step{what, fn})
}

// Fail marks the run as failed: Close keeps its directory (logs) for
// inspection.
func (r *Run) Fail() {
	r.mu.Lock()
	r.failed = true
	r.mu.Unlock()
}

// Close tears down everything the run created, in reverse order, and returns
// every error met on the way. It never stops early: a step that fails does
// not keep later steps from running. Close is idempotent.
func (r *Run) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	steps := r.teardown
	r.teardown = nil
	// The first steps run in registration order, before the stack.
	for i := len(r.first) - 1; i >= 0; i-- {
		steps = append(steps, r.first[i])
	}
	r.first = nil
	r.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("teardown %s: %w", steps[i].what, err))
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		r.Log.Error("teardown incomplete; run the cleanup command", "error", err)
	}
	return err
}

// Start starts a process owned by the run: it is stopped by Close (SIGTERM,
// then SIGKILL) if still running.
func (r *Run) Start(spec ProcessSpec) (*Process, error) {
	spec.LogDir = filepath.Join(r.Dir, "logs")
	if spec.Cgroup == "" {
		// Every process is in a cgroup of the run, so Clean finds it.
		spec.Cgroup = filepath.Join(r.cgroup, "misc")
	}
	p, err := proc.Start(spec)
	if err != nil {
		return nil, err
	}
	r.onClose("process "+spec.Name, func(ctx context.Context) error { return p.Stop(ctx) })
	r.Log.Debug("process started", "name", spec.Name, "pid", p.Pid(), "netns", spec.Netns)
	return p, nil
}

// Clusters returns the run's clusters in creation order.
func (r *Run) Clusters() []*Cluster {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Cluster(nil), r.clusters...)
}

// Nodes returns every node of every cluster.
func (r *Run) Nodes() []*Node {
	var out []*Node
	for _, c := range r.Clusters() {
		out = append(out, c.Nodes()...)
	}
	return out
}

// InstallStaticRoutes makes every node route every other node's pod CIDR
// through that node's fabric address: what BGP does in the full mesh, for
// tests of the harness itself and for runs without the routing part.
func (r *Run) InstallStaticRoutes(ctx context.Context) error {
	return r.installRoutes(ctx, false)
}

// InstallClusterRoutes routes pod CIDRs between the nodes of each cluster
// only: the part a cluster's CNI plays, leaving routes between clusters to
// the mesh.
func (r *Run) InstallClusterRoutes(ctx context.Context) error {
	return r.installRoutes(ctx, true)
}

func (r *Run) installRoutes(ctx context.Context, sameCluster bool) error {
	nodes := r.Nodes()
	for _, n := range nodes {
		for _, o := range nodes {
			if o == n || (sameCluster && o.Cluster != n.Cluster) {
				continue
			}
			if err := netlab.IP(ctx, n.Netns, "route", "replace", o.PodCIDR.String(), "via", o.FabricIP.String()); err != nil {
				return fmt.Errorf("node %s: route to %s: %w", n.Name, o.Name, err)
			}
		}
	}
	return nil
}

func (r *Run) nextPodIndex() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextPod++
	return r.nextPod
}

// podCIDRFor returns the pod CIDR of cluster index ci (1-based): 10.<ci>.0.0/16.
func podCIDRFor(ci int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(ci), 0, 0}), 16)
}

// serviceCIDRFor returns the service CIDR of cluster index ci: 10.<95+ci>.0.0/16
// (10.96.0.0/16 for the first cluster, as kubeadm's default).
func serviceCIDRFor(ci int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(95 + ci), 0, 0}), 16)
}
