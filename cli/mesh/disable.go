package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// CleanupDaemonSetName is the DaemonSet disable runs on every node to remove
// the agent's eBPF programs, pins and routes (deploy.FileCleanup).
const CleanupDaemonSetName = "clustermesh-cleanup"

// DefaultDisableWait bounds each wait of disable: the agents to stop, every
// node to be cleaned, the namespace to be deleted.
const DefaultDisableWait = 2 * time.Minute

// Errors of disable.
var (
	// ErrPeersConnected: the cluster is still connected to peers, whose
	// agents would keep dialing its store.
	ErrPeersConnected = errors.New("cluster still connected to peers")
	// ErrCleanupFailed: some nodes could not be cleaned (or the agents
	// would not stop) in time.
	ErrCleanupFailed = errors.New("node cleanup failed")
)

// partOf selects every object of the mesh: enable and disable label all of
// them so.
const partOf = "app.kubernetes.io/part-of=clustermesh"

// DisableOptions configure disable.
type DisableOptions struct {
	// Force removes the cluster even when peers are still connected (only
	// this side is removed: the peers keep an entry for it until
	// disconnected there) or when agents did not stop or nodes could not
	// be cleaned in time (those nodes keep the agent's programs and routes
	// until `clustermesh-agent cleanup` runs there).
	Force bool
	// AgentImage runs the node cleanup when no agent DaemonSet is left to
	// tell which image the agents ran; empty means deploy.AgentImage().
	AgentImage string
	// Wait bounds each wait; zero means DefaultDisableWait.
	Wait time.Duration
	// Progress, if set, gets a line per step.
	Progress func(line string)
	Log      *slog.Logger
}

// DisableResult says what disable did.
type DisableResult struct {
	// NotEnabled is set when nothing of the mesh was found: nothing was
	// done.
	NotEnabled bool
	// ClusterName is the cluster's name in the mesh, when still known.
	ClusterName string
	// Peers are the clusters still connected that Force left with an
	// entry for this cluster.
	Peers []string
	// CleanedNodes are the nodes whose cleanup finished.
	CleanedNodes []string
	// FailedNodes are the nodes Force gave up on, with the reason.
	FailedNodes map[string]string
	// Deleted lists the objects deleted ("DaemonSet/clustermesh-agent").
	Deleted []string
}

// meshKind is a kind of object the mesh creates.
type meshKind struct {
	kind       string
	gvr        schema.GroupVersionResource
	namespaced bool
}

// deletable lists the kinds of objects of the mesh, in the order disable
// deletes them: workloads first, then what they used, then cluster-scoped
// objects. The namespace goes last.
var deletable = []meshKind{
	{"DaemonSet", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, true},
	{"Deployment", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, true},
	{"StatefulSet", schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}, true},
	{"Service", schema.GroupVersionResource{Version: "v1", Resource: "services"}, true},
	{"ConfigMap", schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, true},
	{"Secret", schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, true},
	{"ServiceAccount", schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, true},
	{"PersistentVolumeClaim", schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}, true},
	{"ClusterRoleBinding", schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, false},
	{"ClusterRole", schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, false},
	{"PersistentVolume", schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumes"}, false},
	{"Namespace", schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}, false},
}

// Disable removes the mesh from the cluster: it refuses while peers are
// connected (unless opts.Force), deletes the agent DaemonSet and waits for
// its pods to stop, runs the node cleanup DaemonSet (clustermesh-agent
// cleanup on every node: eBPF programs detached, pins and routes removed)
// and waits until every node reports clean, then deletes every object
// labelled app.kubernetes.io/part-of=clustermesh and the namespace, and
// waits until they are gone. A cluster where nothing of the mesh is found
// yields NotEnabled and no error, so disable can be re-run after an
// interruption; a partial installation is removed as far as it exists.
func Disable(ctx context.Context, c *Cluster, opts DisableOptions) (*DisableResult, error) {
	log := logging.OrDiscard(opts.Log)
	if opts.Wait <= 0 {
		opts.Wait = DefaultDisableWait
	}
	progress := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		if opts.Progress == nil {
			log.Info(line, "context", c.Context)
			return
		}
		opts.Progress(line)
	}
	res := &DisableResult{}

	found, err := c.installed(ctx)
	if err != nil {
		return nil, err
	}
	if !found {
		res.NotEnabled = true
		return res, nil
	}

	// Peers. Without its ConfigMap the cluster's own entry cannot be told
	// from peers' and the installation is half removed already.
	info, err := c.ReadInfo(ctx)
	switch {
	case err == nil:
		res.ClusterName = info.Name
		peers, err := c.peers(ctx, info.Name)
		if err != nil {
			return nil, err
		}
		if len(peers) > 0 && !opts.Force {
			return nil, fmt.Errorf("context %s: %w: cluster %s is connected to %s; run clustermesh disconnect %s --destination-context CONTEXT for each of them "+
				"(--destination-cluster NAME for a peer whose context is gone), then disable again; or pass --force to remove only this cluster (the peers then keep an entry for %s until disconnected there)",
				c.Context, ErrPeersConnected, info.Name, strings.Join(peers, ", "), c.ctxFlag(), info.Name)
		}
		if len(peers) > 0 {
			res.Peers = peers
			progress("--force: cluster %s is still connected to %s; removing only this side (run clustermesh disconnect --context PEER --destination-cluster %s on each of them)",
				info.Name, strings.Join(peers, ", "), info.Name)
		} else {
			progress("no peer connected to cluster %s", info.Name)
		}
	case isNotEnabled(err):
		progress("ConfigMap %s/%s is gone (an earlier disable was interrupted?): not checking for connected peers", c.Namespace, ConfigMapName)
	default:
		return nil, err
	}

	agents, err := c.stopAgents(ctx, opts, progress)
	if err != nil {
		return nil, err
	}
	if agents.image == "" {
		agents.image = opts.AgentImage
	}
	if agents.image == "" {
		agents.image = deploy.AgentImage()
	}
	// The store goes before the nodes are cleaned: a node-local store's
	// directory is removed by the cleanup and must not be in use.
	if err := c.stopAPIServer(ctx, opts, res, progress); err != nil {
		return nil, err
	}
	if err := c.cleanNodes(ctx, agents, info, opts, res, progress); err != nil {
		return nil, err
	}
	// Multi-Cluster Services imports the apiserver wrote (it is stopped:
	// nothing recreates them); their derived Services and EndpointSlices
	// are owned by them and go with them.
	imports, err := c.deleteImports(ctx)
	if err != nil {
		return nil, err
	}
	if len(imports) > 0 {
		res.Deleted = append(res.Deleted, imports...)
		progress("deleted %d ServiceImport(s) and their derived Services", len(imports))
	}

	// The Corefile's multicluster line before its RBAC (coredns.go).
	if removed, err := c.unconfigureCoreDNS(ctx); err != nil {
		return nil, err
	} else if removed {
		progress("removed the multicluster plugin from ConfigMap %s/%s", corednsNamespace, corednsName)
	}
	deleted, err := c.deleteLabelled(ctx)
	if err != nil {
		return nil, err
	}
	res.Deleted = append(res.Deleted, deleted...)
	progress("deleted %d object(s) labelled %s", len(deleted), partOf)
	if err := c.deleteNamespace(ctx, opts.Wait, progress); err != nil {
		return nil, err
	}
	return res, nil
}

// installed tells whether anything of the mesh exists in the cluster: its
// namespace or a cluster-scoped object of it.
func (c *Cluster) installed(ctx context.Context) (bool, error) {
	_, err := c.Kube.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{})
	if err == nil {
		return true, nil
	}
	if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("context %s: get namespace %s: %w", c.Context, c.Namespace, err)
	}
	for _, d := range deletable {
		if d.namespaced {
			continue
		}
		list, err := c.Dynamic.Resource(d.gvr).List(ctx, metav1.ListOptions{LabelSelector: partOf, Limit: 1})
		if err != nil {
			return false, fmt.Errorf("context %s: list %s: %w", c.Context, d.gvr.Resource, err)
		}
		if len(list.Items) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// peers returns the clusters of the clusters Secret other than self.
func (c *Cluster) peers(ctx context.Context, self string) ([]string, error) {
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := Entries(s)
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", c.Context, err)
	}
	var out []string
	for _, e := range entries {
		if e.Name != self {
			out = append(out, e.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// agentRun is what the cleanup must know of how the agents ran.
type agentRun struct {
	// image is the agents' image ("" when the DaemonSet was gone).
	image string
	// flags are the agents' values of cleanupFlags, when set.
	flags map[string]string
}

// cleanupFlags are the agent flags saying where its node state lives; the
// cleanup takes them with the agent's values.
var cleanupFlags = []string{"bpf-cgroup", "bpf-pin-dir"}

// agentCleanupFlags returns the values of cleanupFlags the agent ran with:
// its container's arguments win over its settings ConfigMap (which it reads
// through --config-dir), as in the agent.
func agentCleanupFlags(args []string, settings map[string]string) map[string]string {
	out := map[string]string{}
	for _, name := range cleanupFlags {
		if v, ok := settings[name]; ok {
			out[name] = strings.TrimSpace(v)
		}
		for i, a := range args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				out[name] = v
			} else if a == "--"+name && i+1 < len(args) {
				out[name] = args[i+1]
			}
		}
	}
	return out
}

// withFlag returns args with --name=value in place of any value of name.
func withFlag(args []any, name, value string) []any {
	out := make([]any, 0, len(args)+1)
	for i := 0; i < len(args); i++ {
		a, _ := args[i].(string)
		if strings.HasPrefix(a, "--"+name+"=") {
			continue
		}
		if a == "--"+name {
			i++ // and its value
			continue
		}
		out = append(out, args[i])
	}
	return append(out, "--"+name+"="+value)
}

// stopAgents deletes the agent DaemonSet and waits until its pods are gone,
// so that no agent re-attaches or re-routes behind the cleanup. It returns
// how the agents ran.
func (c *Cluster) stopAgents(ctx context.Context, opts DisableOptions, progress func(string, ...any)) (agentRun, error) {
	dsc := c.Kube.AppsV1().DaemonSets(c.Namespace)
	var run agentRun
	settings, err := c.Kube.CoreV1().ConfigMaps(c.Namespace).Get(ctx, deploy.AgentSettings, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return run, fmt.Errorf("context %s: get ConfigMap %s/%s: %w", c.Context, c.Namespace, deploy.AgentSettings, err)
	}
	var args []string
	ds, err := dsc.Get(ctx, DaemonSetName, metav1.GetOptions{})
	switch {
	case err == nil:
		if ctrs := ds.Spec.Template.Spec.Containers; len(ctrs) > 0 {
			run.image = ctrs[0].Image
			args = append(slices.Clone(ctrs[0].Command), ctrs[0].Args...)
		}
		bg := metav1.DeletePropagationBackground
		if err := dsc.Delete(ctx, DaemonSetName, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
			return run, fmt.Errorf("context %s: delete DaemonSet %s/%s: %w", c.Context, c.Namespace, DaemonSetName, err)
		}
		progress("deleted DaemonSet %s; waiting up to %s for the agents to stop", DaemonSetName, opts.Wait)
	case apierrors.IsNotFound(err):
		progress("DaemonSet %s is gone already; waiting for any agent pod left to stop", DaemonSetName)
	default:
		return run, fmt.Errorf("context %s: get DaemonSet %s/%s: %w", c.Context, c.Namespace, DaemonSetName, err)
	}
	var data map[string]string
	if settings != nil {
		data = settings.Data
	}
	run.flags = agentCleanupFlags(args, data)
	left, err := c.waitPodsGone(ctx, opts.Wait, DaemonSetName)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		if !opts.Force {
			return run, fmt.Errorf("context %s: %w: agent pods still running after %s: %s; their nodes may be down: bring them back or delete the pods, and disable again; or pass --force to go on (those nodes are not cleaned while their agent runs)",
				c.Context, ErrCleanupFailed, opts.Wait, strings.Join(left, ", "))
		}
		progress("--force: agent pods still running after %s: %s; going on", opts.Wait, strings.Join(left, ", "))
		return run, nil
	}
	if err != nil {
		return run, err
	}
	progress("agents stopped")
	return run, nil
}

// stopAPIServer deletes the apiserver (its StatefulSet, or the Deployment of
// older installs) and waits until its pods are gone; --force goes on after
// the wait.
func (c *Cluster) stopAPIServer(ctx context.Context, opts DisableOptions, res *DisableResult, progress func(string, ...any)) error {
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	switch err := c.Kube.AppsV1().StatefulSets(c.Namespace).Delete(ctx, StatefulSetName, del); {
	case err == nil:
		res.Deleted = append(res.Deleted, "StatefulSet/"+StatefulSetName)
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("context %s: delete StatefulSet %s/%s: %w", c.Context, c.Namespace, StatefulSetName, err)
	}
	switch err := c.Kube.AppsV1().Deployments(c.Namespace).Delete(ctx, LegacyDeploymentName, del); {
	case err == nil:
		res.Deleted = append(res.Deleted, "Deployment/"+LegacyDeploymentName)
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("context %s: delete Deployment %s/%s: %w", c.Context, c.Namespace, LegacyDeploymentName, err)
	}
	left, err := c.waitPodsGone(ctx, opts.Wait, StatefulSetName)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		if !opts.Force {
			return fmt.Errorf("context %s: %w: apiserver pods still running after %s: %s; delete them and disable again, or pass --force to go on (a node-local store's data then stays on its node)",
				c.Context, ErrCleanupFailed, opts.Wait, strings.Join(left, ", "))
		}
		progress("--force: apiserver pods still running after %s: %s; going on", opts.Wait, strings.Join(left, ", "))
		return nil
	}
	if err != nil {
		return err
	}
	progress("apiserver stopped")
	return nil
}

// waitPodsGone waits up to wait until no pod of the workload named name
// (label app.kubernetes.io/name) is left, and names those left ("pod on node
// n") when the wait ends first (context.DeadlineExceeded).
func (c *Cluster) waitPodsGone(ctx context.Context, wait time.Duration, name string) ([]string, error) {
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + name}
	var left []string
	err := c.waitFor(ctx, wait, func(ctx context.Context) (bool, error) {
		pods, err := c.Kube.CoreV1().Pods(c.Namespace).List(ctx, sel)
		if err != nil {
			return false, fmt.Errorf("context %s: list pods of %s: %w", c.Context, name, err)
		}
		left = left[:0]
		for _, p := range pods.Items {
			left = append(left, fmt.Sprintf("%s on node %s", p.Name, p.Spec.NodeName))
		}
		return len(left) == 0, nil
	})
	return left, err
}

// cleanNodes runs the cleanup DaemonSet and waits until its pod on every
// node is Ready: nothing of the agent is left there.
func (c *Cluster) cleanNodes(ctx context.Context, agents agentRun, info *Info, opts DisableOptions, res *DisableResult, progress func(string, ...any)) error {
	image := agents.image
	v := deploy.DefaultValues()
	v.Namespace, v.AgentImage = c.Namespace, image
	// Render validates the values every manifest needs; the cleanup
	// manifest uses none of the cluster's identity.
	v.ClusterName, v.ClusterID = "cleanup", 1
	if info != nil {
		v.ClusterName, v.ClusterID = info.Name, info.ID
	}
	// The namespace too, for a run interrupted after it was deleted.
	objs, err := renderFiles(v, deploy.FileNamespace, deploy.FileCleanup)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" {
			if err := cleanupWithFlags(o, agents.flags); err != nil {
				return err
			}
		}
		d := slices.IndexFunc(deletable, func(k meshKind) bool { return k.kind == o.GetKind() })
		if d < 0 {
			return fmt.Errorf("manifest %s: kind %s not supported", deploy.FileCleanup, o.GetKind())
		}
		var ri dynamic.ResourceInterface = c.Dynamic.Resource(deletable[d].gvr)
		if deletable[d].namespaced {
			ri = c.Dynamic.Resource(deletable[d].gvr).Namespace(o.GetNamespace())
		}
		_, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			return fmt.Errorf("context %s: apply %s %s: %w", c.Context, o.GetKind(), o.GetName(), err)
		}
	}
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("context %s: list nodes: %w", c.Context, err)
	}
	progress("running the node cleanup (DaemonSet %s, image %s) on %d node(s); waiting up to %s", CleanupDaemonSetName, image, len(nodes.Items), opts.Wait)
	clean := map[string]bool{}
	pending := map[string]string{}
	err = c.waitFor(ctx, opts.Wait, func(ctx context.Context) (bool, error) {
		pods, err := c.Kube.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + CleanupDaemonSetName})
		if err != nil {
			return false, fmt.Errorf("context %s: list cleanup pods: %w", c.Context, err)
		}
		byNode := map[string]*corev1.Pod{}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && p.Spec.NodeName != "" {
				byNode[p.Spec.NodeName] = p
			}
		}
		clear(pending)
		for _, n := range nodes.Items {
			if clean[n.Name] {
				continue
			}
			p := byNode[n.Name]
			if p == nil {
				pending[n.Name] = "no cleanup pod on the node yet"
				if !nodeReady(&n) {
					pending[n.Name] += " (the node is not Ready)"
				}
				continue
			}
			if podReady(p) {
				clean[n.Name] = true
				progress("node %s clean", n.Name)
				continue
			}
			pending[n.Name] = cleanupPodState(p)
		}
		return len(pending) == 0, nil
	})
	for _, n := range nodes.Items {
		if clean[n.Name] {
			res.CleanedNodes = append(res.CleanedNodes, n.Name)
		}
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		var lines []string
		for _, n := range sortedKeys(pending) {
			lines = append(lines, fmt.Sprintf("node %s: %s", n, pending[n]))
		}
		if !opts.Force {
			return fmt.Errorf("context %s: %w after %s on %d of %d node(s): %s; the DaemonSet %s/%s is left running: fix what it reports (kubectl logs) and disable again, or pass --force to remove the rest anyway (then run clustermesh-agent cleanup on those nodes)",
				c.Context, ErrCleanupFailed, opts.Wait, len(pending), len(nodes.Items), strings.Join(lines, "; "), c.Namespace, CleanupDaemonSetName)
		}
		res.FailedNodes = map[string]string{}
		for n, why := range pending {
			res.FailedNodes[n] = why
		}
		progress("--force: %d node(s) not cleaned: %s; going on", len(pending), strings.Join(lines, "; "))
		return nil
	}
	return err
}

// cleanupWithFlags gives the cleanup container, and its readiness check,
// the agent's values of cleanupFlags.
func cleanupWithFlags(ds *unstructured.Unstructured, flags map[string]string) error {
	if len(flags) == 0 {
		return nil
	}
	ctrs, _, err := unstructured.NestedSlice(ds.Object, "spec", "template", "spec", "containers")
	if err != nil || len(ctrs) == 0 {
		return fmt.Errorf("manifest %s: no container (%v)", deploy.FileCleanup, err)
	}
	ctr, ok := ctrs[0].(map[string]any)
	if !ok {
		return fmt.Errorf("manifest %s: bad container", deploy.FileCleanup)
	}
	for _, path := range [][]string{{"args"}, {"readinessProbe", "exec", "command"}} {
		args, found, err := unstructured.NestedSlice(ctr, path...)
		if err != nil || !found {
			return fmt.Errorf("manifest %s: container %s: %v", deploy.FileCleanup, strings.Join(path, "."), err)
		}
		for _, name := range cleanupFlags {
			if v, ok := flags[name]; ok {
				args = withFlag(args, name, v)
			}
		}
		if err := unstructured.SetNestedSlice(ctr, args, path...); err != nil {
			return err
		}
	}
	ctrs[0] = ctr
	return unstructured.SetNestedSlice(ds.Object, ctrs, "spec", "template", "spec", "containers")
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// cleanupPodState says why a cleanup pod is not Ready, with the output of
// its last failed run when there was one.
func cleanupPodState(p *corev1.Pod) string {
	s := fmt.Sprintf("pod %s %s", p.Name, p.Status.Phase)
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			s += ": " + w.Reason
			if w.Message != "" {
				s += " (" + w.Message + ")"
			}
		}
		if cs.RestartCount > 0 {
			s += fmt.Sprintf(", %d restart(s)", cs.RestartCount)
		}
		if t := cs.LastTerminationState.Terminated; t != nil {
			s += fmt.Sprintf(", last run exited %d", t.ExitCode)
			if msg := strings.TrimSpace(t.Message); msg != "" {
				s += ": " + lastLine(msg)
			}
		}
	}
	if p.Status.Phase == corev1.PodRunning {
		s += ", cleanup not done yet"
	}
	return s
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// deleteLabelled deletes every object of the mesh (label partOf), in the
// namespace and cluster-wide, and returns "Kind/name" of each.
func (c *Cluster) deleteLabelled(ctx context.Context) ([]string, error) {
	var deleted []string
	bg := metav1.DeletePropagationBackground
	for _, d := range deletable {
		var ri dynamic.ResourceInterface = c.Dynamic.Resource(d.gvr)
		if d.namespaced {
			ri = c.Dynamic.Resource(d.gvr).Namespace(c.Namespace)
		}
		l, err := ri.List(ctx, metav1.ListOptions{LabelSelector: partOf})
		if apierrors.IsNotFound(err) {
			continue // a resource the cluster does not serve
		}
		if err != nil {
			return deleted, fmt.Errorf("context %s: list %s: %w", c.Context, d.gvr.Resource, err)
		}
		for _, o := range l.Items {
			err := ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg})
			if err != nil && !apierrors.IsNotFound(err) {
				return deleted, fmt.Errorf("context %s: delete %s %s: %w", c.Context, d.kind, o.GetName(), err)
			}
			deleted = append(deleted, d.kind+"/"+o.GetName())
		}
	}
	return deleted, nil
}

// deleteImports deletes, in every namespace, the ServiceImports the mesh
// wrote (labelled deploy.LabelManagedBy=deploy.ManagedBy) and the Services
// derived from them; ServiceImports of another controller are left alone.
// Derived EndpointSlices are owned by their ServiceImport and go with it.
func (c *Cluster) deleteImports(ctx context.Context) ([]string, error) {
	sel := metav1.ListOptions{LabelSelector: deploy.LabelManagedBy + "=" + deploy.ManagedBy}
	bg := metav1.DeletePropagationBackground
	var deleted []string
	for _, r := range []struct {
		kind string
		gvr  schema.GroupVersionResource
	}{
		{"ServiceImport", serviceImportGVR},
		{"Service", schema.GroupVersionResource{Version: "v1", Resource: "services"}},
	} {
		l, err := c.Dynamic.Resource(r.gvr).Namespace(metav1.NamespaceAll).List(ctx, sel)
		if apierrors.IsNotFound(err) {
			continue // no ServiceImport CRD
		}
		if err != nil {
			return deleted, fmt.Errorf("context %s: list %s: %w", c.Context, r.gvr.Resource, err)
		}
		for _, o := range l.Items {
			err := c.Dynamic.Resource(r.gvr).Namespace(o.GetNamespace()).Delete(ctx, o.GetName(), metav1.DeleteOptions{PropagationPolicy: &bg})
			if err != nil && !apierrors.IsNotFound(err) {
				return deleted, fmt.Errorf("context %s: delete %s %s/%s: %w", c.Context, r.kind, o.GetNamespace(), o.GetName(), err)
			}
			deleted = append(deleted, r.kind+"/"+o.GetNamespace()+"/"+o.GetName())
		}
	}
	return deleted, nil
}

// deleteNamespace deletes the namespace (deleteLabelled did, unless its
// label was lost) and waits until it and every cluster-scoped object of the
// mesh are gone.
func (c *Cluster) deleteNamespace(ctx context.Context, wait time.Duration, progress func(string, ...any)) error {
	err := c.Kube.CoreV1().Namespaces().Delete(ctx, c.Namespace, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("context %s: delete namespace %s: %w", c.Context, c.Namespace, err)
	}
	progress("waiting up to %s for namespace %s to be deleted", wait, c.Namespace)
	var why string
	err = c.waitFor(ctx, wait, func(ctx context.Context) (bool, error) {
		found, err := c.installed(ctx)
		if err != nil {
			return false, err
		}
		if found {
			why = "namespace " + c.Namespace + " or a cluster-scoped object of the mesh still exists"
			if ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{}); err == nil {
				why = fmt.Sprintf("namespace %s is %s", c.Namespace, ns.Status.Phase)
				for _, cond := range ns.Status.Conditions {
					if cond.Status == corev1.ConditionTrue && cond.Message != "" {
						why += ": " + cond.Message
					}
				}
			}
		}
		return !found, nil
	})
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("context %s: %s after %s; disable again once it is gone, or see kubectl get namespace %s -o yaml", c.Context, why, wait, c.Namespace)
	}
	return err
}

// waitFor polls cond until it holds, fails, or wait has passed (then it
// returns context.DeadlineExceeded).
func (c *Cluster) waitFor(ctx context.Context, wait time.Duration, cond func(context.Context) (bool, error)) error {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	retry := backoff.New(200*time.Millisecond, 2*time.Second)
	for {
		ok, err := cond(wctx)
		if ok {
			return nil
		}
		if err != nil && wctx.Err() == nil {
			return err
		}
		if err := retry.Wait(wctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return context.DeadlineExceeded
		}
	}
}
