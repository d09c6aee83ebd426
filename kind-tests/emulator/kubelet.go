package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/proc"
)

// Pod roles the kubelet runs as processes; every other pod is an echo pod.
const (
	RoleAgent     = "clustermesh-agent"
	RoleAPIServer = "clustermesh-apiserver"
	// RoleCleanup is the node cleanup of `clustermesh disable`: the agent
	// binary running `cleanup`, Ready when its exec readiness probe
	// (`cleanup --check`) passes.
	RoleCleanup = "clustermesh-cleanup"
	roleEcho    = ""
	roleLabel   = "app.kubernetes.io/name"
)

// kubelet plays scheduler and kubelet for one cluster: it binds unscheduled
// pods (DaemonSet pods to their node, the clustermesh-apiserver to the
// control plane, others round-robin over live nodes), runs them (mesh pods
// as processes with their Secret volumes copied to disk and kept current,
// every other pod as an echo pod), reports their status, restarts exited
// processes, and finishes deletions. It is level-based: every event or tick
// reconciles all pods from the informer caches.
type kubelet struct {
	cp   *ControlPlane
	bins *Binaries
	log  *slog.Logger

	pods       corelisters.PodLister
	secrets    corelisters.SecretLister
	configMaps corelisters.ConfigMapLister
	poke       chan struct{}

	mu        sync.Mutex
	running   map[types.UID]*podRuntime
	assigned  map[types.UID]string // pod → node it was bound to
	rr        int
	storeDown bool
	// volumeLag: a changed Secret or ConfigMap reaches a volume already
	// written this long after the kubelet first saw the change.
	volumeLag time.Duration
}

// podRuntime is what the kubelet runs for one pod.
type podRuntime struct {
	uid       types.UID
	namespace string
	name      string
	role      string
	node      *Node // nil on the control plane
	dir       string
	echo      *Pod
	proc      *Process
	spec      ProcessSpec
	written   map[string]string // volume name -> resource version written
	// pending: volume name -> a newer version seen and when (volumeLag).
	pending map[string]pendingVolume
	// extraVolumes are Secret volumes the harness adds to the pod's own
	// (the clusters Secret for a reflector-hosting apiserver).
	extraVolumes []corev1.Volume
	exitedAt     time.Time
	restarts     int
	reported     bool
	// probe, if set, is the pod's exec readiness probe as a process of the
	// pod's node; ready is its last verdict, probedAt when it was run.
	probe    *ProcessSpec
	ready    bool
	probedAt time.Time
	// drainUntil is when a deleted pod with a preStop sleep stops: until
	// then it keeps serving (its endpoint is terminating but serving).
	drainUntil time.Time
}

func newKubelet(cp *ControlPlane, bins *Binaries) *kubelet {
	return &kubelet{
		cp:       cp,
		bins:     bins,
		log:      cp.Cluster.Run.Log.With("cluster", cp.Cluster.Name, "component", "kubelet"),
		poke:     make(chan struct{}, 1),
		running:  map[types.UID]*podRuntime{},
		assigned: map[types.UID]string{},
	}
}

func (k *kubelet) wake() {
	select {
	case k.poke <- struct{}{}:
	default:
	}
}

func (k *kubelet) run(ctx context.Context) {
	f := informers.NewSharedInformerFactory(k.cp.Client, 0)
	pods := f.Core().V1().Pods()
	secrets := f.Core().V1().Secrets()
	configMaps := f.Core().V1().ConfigMaps()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.wake() },
		UpdateFunc: func(any, any) { k.wake() },
		DeleteFunc: func(any) { k.wake() },
	}
	_, _ = pods.Informer().AddEventHandler(h)
	_, _ = secrets.Informer().AddEventHandler(h)
	_, _ = configMaps.Informer().AddEventHandler(h)
	k.pods, k.secrets, k.configMaps = pods.Lister(), secrets.Lister(), configMaps.Lister()
	f.Start(ctx.Done())
	defer f.Shutdown()
	f.WaitForCacheSync(ctx.Done())
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.poke:
		case <-tick.C:
		}
		k.syncAll(ctx)
	}
}

func (k *kubelet) syncAll(ctx context.Context) {
	all, err := k.pods.List(labels.Everything())
	if err != nil {
		return
	}
	seen := map[types.UID]bool{}
	for _, p := range all {
		seen[p.UID] = true
		if err := k.syncPod(ctx, p); err != nil && ctx.Err() == nil {
			k.log.Warn("pod sync failed", "pod", p.Namespace+"/"+p.Name, "error", err)
		}
	}
	k.mu.Lock()
	for uid := range k.assigned {
		if !seen[uid] {
			delete(k.assigned, uid)
		}
	}
	var gone []*podRuntime
	for uid, rt := range k.running {
		if !seen[uid] {
			gone = append(gone, rt)
			delete(k.running, uid)
		}
	}
	k.mu.Unlock()
	for _, rt := range gone {
		k.stop(ctx, rt)
	}
}

// preStopSleep is the pod's first container's preStop sleep action, if
// any.
func preStopSleep(p *corev1.Pod) time.Duration {
	if len(p.Spec.Containers) == 0 {
		return 0
	}
	l := p.Spec.Containers[0].Lifecycle
	if l == nil || l.PreStop == nil || l.PreStop.Sleep == nil {
		return 0
	}
	return time.Duration(l.PreStop.Sleep.Seconds) * time.Second
}

func roleOf(p *corev1.Pod) string {
	switch r := p.Labels[roleLabel]; r {
	case RoleAgent, RoleAPIServer, RoleCleanup:
		return r
	}
	return roleEcho
}

func (k *kubelet) syncPod(ctx context.Context, p *corev1.Pod) error {
	c := k.cp.Cluster
	k.mu.Lock()
	rt := k.running[p.UID]
	k.mu.Unlock()

	if p.DeletionTimestamp != nil {
		if rt != nil {
			if rt.node != nil && rt.node.isDead() {
				return nil // a dead node's kubelet finishes nothing
			}
			// The preStop sleep: the pod runs on, its echo answering,
			// before it is stopped (syncAll runs every second).
			if d := preStopSleep(p); d > 0 {
				if rt.drainUntil.IsZero() {
					rt.drainUntil = time.Now().Add(d)
					k.log.Info("pod terminating, draining", "pod", p.Namespace+"/"+p.Name, "for", d)
				}
				if time.Now().Before(rt.drainUntil) {
					return nil
				}
			}
			k.mu.Lock()
			delete(k.running, p.UID)
			k.mu.Unlock()
			k.stop(ctx, rt)
			// A deleted pod's own volumes (emptyDir, Secret copies) go
			// with it, as the kubelet removes its pod directory; claims
			// live elsewhere and stay.
			if err := os.RemoveAll(rt.dir); err != nil {
				k.log.Warn("pod directory", "pod", p.Namespace+"/"+p.Name, "error", err)
			}
		}
		if p.Spec.NodeName != "" && k.nodeFor(p.Spec.NodeName) == nil && p.Spec.NodeName != k.cp.NodeName {
			return nil
		}
		zero := int64(0)
		err := k.cp.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &p.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("finish deletion: %w", err)
		}
		return nil
	}

	if p.Spec.NodeName == "" {
		target := k.schedule(p)
		if target == "" {
			return nil
		}
		err := k.cp.Client.CoreV1().Pods(p.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: target},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("bind to %s: %w", target, err)
		}
		return nil
	}

	var node *Node
	if p.Spec.NodeName != k.cp.NodeName {
		if node = k.nodeFor(p.Spec.NodeName); node == nil || node.isDead() {
			return nil
		}
	}
	role := roleOf(p)
	if rt == nil {
		if role == RoleAPIServer && k.isStoreDown() {
			return nil
		}
		var err error
		rt, err = k.start(ctx, p, role, node)
		if err != nil {
			return err
		}
		k.mu.Lock()
		k.running[p.UID] = rt
		k.mu.Unlock()
	}
	if rt.spec.Path != "" {
		if err := k.writeVolumes(p, rt); err != nil {
			return err
		}
		if rt.proc == nil || rt.proc.Exited() {
			if err := k.restart(rt); err != nil {
				return err
			}
		}
	}
	ready := true
	if rt.probe != nil {
		ready = k.runProbe(ctx, rt)
	}
	if !rt.reported || ready != rt.ready {
		if err := k.report(ctx, p, rt, c, ready); err != nil {
			return err
		}
		rt.reported, rt.ready = true, ready
	}
	return nil
}

// runProbe runs the pod's exec readiness probe when it is due (every second
// until it passes, then every five) and returns its verdict: ready when the
// command exited 0.
func (k *kubelet) runProbe(ctx context.Context, rt *podRuntime) bool {
	every := time.Second
	if rt.ready {
		every = 5 * time.Second
	}
	if time.Since(rt.probedAt) < every || (rt.node != nil && rt.node.isDead()) {
		return rt.ready
	}
	rt.probedAt = time.Now()
	spec := *rt.probe
	spec.LogDir = filepath.Join(k.cp.Cluster.Run.Dir, "logs")
	p, err := proc.Start(spec)
	if err != nil {
		k.log.Warn("readiness probe", "process", spec.Name, "error", err)
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = p.Wait(pctx)
	if err != nil {
		_ = p.Kill()
		<-p.Done()
	}
	return err == nil
}

// schedule picks the node of an unscheduled pod, or "" to wait.
func (k *kubelet) schedule(p *corev1.Pod) string {
	if roleOf(p) == RoleAPIServer {
		return k.cp.NodeName
	}
	if a := p.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, t := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range t.MatchFields {
				if f.Key == "metadata.name" && len(f.Values) == 1 {
					return f.Values[0]
				}
			}
		}
	}
	if h := p.Spec.NodeSelector["kubernetes.io/hostname"]; h != "" {
		return h
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if n, ok := k.assigned[p.UID]; ok {
		return n // bound already; the cache has not seen it yet
	}
	// Least-loaded live node by workload pods (bound or being bound),
	// ties broken round-robin, so replicas spread over nodes.
	load := map[string]int{}
	if all, err := k.pods.List(labels.Everything()); err == nil {
		for _, q := range all {
			if q.Spec.NodeName != "" && roleOf(q) == roleEcho && q.DeletionTimestamp == nil {
				load[q.Spec.NodeName]++
			}
		}
	}
	for uid, n := range k.assigned {
		if q := k.podByUID(uid); q == nil || q.Spec.NodeName == "" {
			load[n]++
		}
	}
	var best string
	nodes := k.cp.Cluster.Nodes()
	k.rr++
	for i := range nodes {
		n := nodes[(i+k.rr)%len(nodes)]
		if n.isDead() {
			continue
		}
		if best == "" || load[n.Name] < load[best] {
			best = n.Name
		}
	}
	if best != "" {
		k.assigned[p.UID] = best
	}
	return best
}

// podByUID finds a pod in the cache by UID, or nil.
func (k *kubelet) podByUID(uid types.UID) *corev1.Pod {
	all, err := k.pods.List(labels.Everything())
	if err != nil {
		return nil
	}
	for _, q := range all {
		if q.UID == uid {
			return q
		}
	}
	return nil
}

func (k *kubelet) nodeFor(name string) *Node { return k.cp.Cluster.Node(name) }

func (k *kubelet) start(ctx context.Context, p *corev1.Pod, role string, node *Node) (*podRuntime, error) {
	c := k.cp.Cluster
	rt := &podRuntime{
		uid: p.UID, namespace: p.Namespace, name: p.Name, role: role, node: node,
		dir:     filepath.Join(c.Run.Dir, c.Name, "pods", p.Namespace+"_"+p.Name),
		written: map[string]string{},
		pending: map[string]pendingVolume{},
	}
	if role == roleEcho {
		if node == nil {
			return nil, fmt.Errorf("echo pod on the control plane")
		}
		pod, err := node.AddPod(ctx, p.Namespace, p.Name)
		if err != nil {
			return nil, err
		}
		rt.echo = pod
		k.log.Info("pod started", "pod", p.Namespace+"/"+p.Name, "node", node.Name, "ip", pod.IP)
		return rt, nil
	}
	part := role
	if role == RoleCleanup {
		part = PartAgent
	}
	if err := k.bins.Require(part); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	if len(p.Spec.Containers) == 0 {
		return nil, fmt.Errorf("pod %s/%s: no container", p.Namespace, p.Name)
	}
	ctr := p.Spec.Containers[0]
	// Volumes: each mount becomes a directory of the pod; Secret volumes
	// are filled by writeVolumes, host paths stay as they are except the
	// bpffs, which maps to the node's pin directory.
	mounts := map[string]string{}
	for _, m := range ctr.VolumeMounts {
		var vol *corev1.Volume
		for i := range p.Spec.Volumes {
			if p.Spec.Volumes[i].Name == m.Name {
				vol = &p.Spec.Volumes[i]
			}
		}
		if vol == nil {
			continue
		}
		switch {
		case vol.HostPath != nil && vol.HostPath.Path == netlab.BPFRoot && node != nil:
			mounts[m.MountPath] = node.BPFDir
		case vol.HostPath != nil && vol.HostPath.Path == "/sys/fs/cgroup" && node != nil:
			// The node's cgroup is its "host" cgroup root: a process
			// attaching there balances every process of the node.
			mounts[m.MountPath] = node.Cgroup
		case vol.HostPath != nil:
			mounts[m.MountPath] = vol.HostPath.Path
		case vol.PersistentVolumeClaim != nil:
			// A claim outlives its pod: its directory is the cluster's,
			// named for the claim, so a replaced pod finds its data.
			local := filepath.Join(c.Run.Dir, c.Name, "volumes", vol.PersistentVolumeClaim.ClaimName)
			if err := os.MkdirAll(local, 0o700); err != nil {
				return nil, fmt.Errorf("pod %s/%s: volume %s: %w", p.Namespace, p.Name, m.Name, err)
			}
			mounts[m.MountPath] = local
		default:
			local := filepath.Join(rt.dir, m.Name)
			if err := os.MkdirAll(local, 0o700); err != nil {
				return nil, fmt.Errorf("pod %s/%s: volume %s: %w", p.Namespace, p.Name, m.Name, err)
			}
			mounts[m.MountPath] = local
		}
	}
	args := append(slices.Clone(ctr.Command[min(1, len(ctr.Command)):]), ctr.Args...)
	for i, a := range args {
		args[i] = remapPath(a, mounts)
	}
	args = append(args, k.cp.Cluster.Run.meshArgs(role, k.cp, node, rt.dir, mounts, args)...)
	podIP := k.cp.IP.String()
	if node != nil {
		podIP = node.FabricIP.String()
	}
	var env []string
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			switch e.ValueFrom.FieldRef.FieldPath {
			case "spec.nodeName":
				v = p.Spec.NodeName
			case "metadata.name":
				v = p.Name
			case "metadata.namespace":
				v = p.Namespace
			case "status.podIP", "status.hostIP":
				v = podIP
			}
		}
		env = append(env, e.Name+"="+remapPath(v, mounts))
	}
	args = expandEnv(args, env)
	env = append(env, "KUBECONFIG="+k.cp.Kubeconfig)
	name := c.Name + "-" + role
	netns, cg := k.cp.Netns, filepath.Join(c.Cgroup, "control-plane", role)
	if node != nil {
		name = node.Name + "-" + role
		netns, cg = node.Netns, filepath.Join(node.Cgroup, role)
	}
	if err := os.MkdirAll(cg, 0o755); err != nil {
		return nil, fmt.Errorf("pod %s/%s: cgroup: %w", p.Namespace, p.Name, err)
	}
	rt.spec = ProcessSpec{Name: name, Path: k.bins.Path(part), Args: args, Env: env, Netns: netns, Cgroup: cg}
	if pr := ctr.ReadinessProbe; pr != nil && pr.Exec != nil && len(pr.Exec.Command) > 0 {
		// The probe's command is the image's binary: the part's, with the
		// pod's paths and the node's flags, as for the container.
		pargs := slices.Clone(pr.Exec.Command[1:])
		for i, a := range pargs {
			pargs[i] = remapPath(a, mounts)
		}
		pargs = append(pargs, k.cp.Cluster.Run.meshArgs(role, k.cp, node, rt.dir, mounts, pargs)...)
		rt.probe = &ProcessSpec{Name: name + "-probe", Path: k.bins.Path(part), Args: pargs, Env: env, Netns: netns, Cgroup: cg}
	}
	return rt, nil
}

// remapPath rewrites a path (or a flag value holding one) under a mount
// point to the directory backing that mount.
// expandEnv replaces $(NAME) in args with the container's environment
// variable NAME, as the kubelet does; $$ stands for a literal $, and a
// reference to an undefined variable is left as it is.
func expandEnv(args, env []string) []string {
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	out := make([]string, len(args))
	for i, a := range args {
		var b strings.Builder
		for j := 0; j < len(a); j++ {
			if a[j] != '$' || j+1 == len(a) {
				b.WriteByte(a[j])
				continue
			}
			switch a[j+1] {
			case '$':
				b.WriteByte('$')
				j++
				continue
			case '(':
				if end := strings.IndexByte(a[j+2:], ')'); end >= 0 {
					name := a[j+2 : j+2+end]
					if v, ok := vars[name]; ok {
						b.WriteString(v)
						j += 2 + end
						continue
					}
				}
			}
			b.WriteByte(a[j])
		}
		out[i] = b.String()
	}
	return out
}

func remapPath(s string, mounts map[string]string) string {
	keys := slices.Collect(maps.Keys(mounts))
	// Longest mount point first, as the kernel resolves nested mounts.
	slices.SortFunc(keys, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range keys {
		if i := strings.Index(s, mp); i >= 0 {
			rest := s[i+len(mp):]
			if rest == "" || rest[0] == '/' {
				return s[:i] + mounts[mp] + rest
			}
		}
	}
	return s
}

// writeVolumes copies the pod's Secret and ConfigMap volumes to their
// directories when the object changed since last written, as the kubelet
// updates such mounts: each file is replaced atomically (write, then
// rename); keys that left the object are removed.
func (k *kubelet) writeVolumes(p *corev1.Pod, rt *podRuntime) error {
	for _, v := range append(slices.Clone(p.Spec.Volumes), rt.extraVolumes...) {
		var (
			kind, name, rv string
			optional       *bool
			items          []corev1.KeyToPath
			data           map[string][]byte
			err            error
		)
		switch {
		case v.Secret != nil:
			kind, name, optional, items = "secret", v.Secret.SecretName, v.Secret.Optional, v.Secret.Items
			var s *corev1.Secret
			if s, err = k.secrets.Secrets(p.Namespace).Get(name); err == nil {
				rv, data = s.ResourceVersion, s.Data
			}
		case v.ConfigMap != nil:
			kind, name, optional, items = "configmap", v.ConfigMap.Name, v.ConfigMap.Optional, v.ConfigMap.Items
			var cm *corev1.ConfigMap
			if cm, err = k.configMaps.ConfigMaps(p.Namespace).Get(name); err == nil {
				rv, data = cm.ResourceVersion, map[string][]byte{}
				for key, val := range cm.Data {
					data[key] = []byte(val)
				}
				maps.Copy(data, cm.BinaryData)
			}
		default:
			continue
		}
		if err != nil {
			if apierrors.IsNotFound(err) && optional != nil && *optional {
				continue
			}
			return fmt.Errorf("pod %s/%s: volume %s: %s %s: %w", p.Namespace, p.Name, v.Name, kind, name, err)
		}
		if rt.written[v.Name] == rv {
			continue
		}
		if _, mounted := rt.written[v.Name]; mounted && k.volumeLag > 0 {
			pv, ok := rt.pending[v.Name]
			if !ok || pv.version != rv {
				pv = pendingVolume{version: rv, seen: time.Now()}
				rt.pending[v.Name] = pv
			}
			if time.Since(pv.seen) < k.volumeLag {
				continue
			}
		}
		dir := filepath.Join(rt.dir, v.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		files := map[string][]byte{}
		if len(items) > 0 {
			for _, it := range items {
				files[it.Path] = data[it.Key]
			}
		} else {
			maps.Copy(files, data)
		}
		for file, content := range files {
			tmp := filepath.Join(dir, "."+file+".tmp")
			if err := os.WriteFile(tmp, content, 0o600); err != nil {
				return fmt.Errorf("%s %s: %w", kind, name, err)
			}
			if err := os.Rename(tmp, filepath.Join(dir, file)); err != nil {
				return fmt.Errorf("%s %s: %w", kind, name, err)
			}
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if _, ok := files[e.Name()]; !ok && !strings.HasPrefix(e.Name(), ".") {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
		rt.written[v.Name] = rv
		k.log.Info("volume written", "pod", p.Namespace+"/"+p.Name, kind, name, "keys", len(files))
	}
	return nil
}

// pendingVolume is a version of a mounted volume's object not written yet.
type pendingVolume struct {
	version string
	seen    time.Time
}

// restart (re)starts a mesh pod's process, no more often than once a
// second, as the kubelet's restartPolicy Always with a short back-off.
func (k *kubelet) restart(rt *podRuntime) error {
	if rt.node != nil && rt.node.isDead() {
		return nil
	}
	if rt.role == RoleAPIServer && k.isStoreDown() {
		return nil
	}
	if rt.proc != nil {
		if rt.exitedAt.IsZero() {
			rt.exitedAt = time.Now()
			k.log.Warn("process exited; restarting", "process", rt.spec.Name, "err", rt.proc.Err(), "log", rt.proc.LogPath)
		}
		if time.Since(rt.exitedAt) < time.Second {
			return nil
		}
		rt.restarts++
	}
	proc, err := k.cp.Cluster.Run.Start(rt.spec)
	if err != nil {
		return err
	}
	// rt.proc is written only here, by the kubelet goroutine, under k.mu
	// because processes() reads it from other goroutines.
	k.mu.Lock()
	rt.proc, rt.exitedAt = proc, time.Time{}
	k.mu.Unlock()
	k.log.Info("process started", "process", rt.spec.Name, "pid", proc.Pid(), "restarts", rt.restarts)
	go func() {
		<-proc.Done()
		k.wake()
	}()
	return nil
}

func (k *kubelet) report(ctx context.Context, p *corev1.Pod, rt *podRuntime, c *Cluster, ready bool) error {
	ip := k.cp.IP.String()
	hostIP := ip
	if rt.node != nil {
		hostIP = rt.node.FabricIP.String()
		ip = hostIP
	}
	if rt.echo != nil {
		ip = rt.echo.IP.String()
	}
	now := metav1.Now()
	q := p.DeepCopy()
	q.Status.Phase = corev1.PodRunning
	q.Status.HostIP, q.Status.PodIP = hostIP, ip
	q.Status.HostIPs = []corev1.HostIP{{IP: hostIP}}
	q.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	q.Status.StartTime = &now
	q.Status.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		st := corev1.ConditionTrue
		if !ready && (t == corev1.ContainersReady || t == corev1.PodReady) {
			st = corev1.ConditionFalse
		}
		q.Status.Conditions = append(q.Status.Conditions, corev1.PodCondition{Type: t, Status: st, LastTransitionTime: now})
	}
	q.Status.ContainerStatuses = nil
	for _, ctr := range p.Spec.Containers {
		q.Status.ContainerStatuses = append(q.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: ctr.Name, Image: ctr.Image, Ready: ready, Started: ptrTo(true),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	if _, err := k.cp.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, q, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("cluster %s: pod %s/%s status: %w", c.Name, p.Namespace, p.Name, err)
	}
	return nil
}

func ptrTo[T any](v T) *T { return &v }

func (k *kubelet) stop(ctx context.Context, rt *podRuntime) {
	if rt.echo != nil {
		if err := rt.echo.Remove(ctx); err != nil {
			k.log.Warn("pod teardown", "pod", rt.namespace+"/"+rt.name, "error", err)
		}
	}
	if rt.proc != nil {
		_ = rt.proc.Stop(ctx)
	}
	k.log.Info("pod stopped", "pod", rt.namespace+"/"+rt.name)
}

func (k *kubelet) stopAll(ctx context.Context) error {
	k.mu.Lock()
	all := slices.Collect(maps.Values(k.running))
	k.running = map[types.UID]*podRuntime{}
	k.mu.Unlock()
	for _, rt := range all {
		k.stop(ctx, rt)
	}
	return nil
}

func (k *kubelet) isStoreDown() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.storeDown
}

// processes returns the current processes of mesh pods of role, on node (nil
// for the control plane).
func (k *kubelet) processes(role string) []*Process {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []*Process
	for _, rt := range k.running {
		if rt.role == role && rt.proc != nil {
			out = append(out, rt.proc)
		}
	}
	return out
}

// ErrNoProcess is returned when a mesh process asked for is not running.
var ErrNoProcess = errors.New("no such process running")
