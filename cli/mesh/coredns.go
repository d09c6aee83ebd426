package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// CoreDNS modes of EnableOptions.CoreDNS: how enable makes
// <service>.<namespace>.svc.clusterset.local resolve (docs/mcs-dns.md).
const (
	// CoreDNSAuto adds the multicluster plugin to the Corefile, then
	// watches the CoreDNS pods reload it and rolls the change back when
	// their CoreDNS lacks the plugin (or says nothing within the wait).
	CoreDNSAuto = "auto"
	// CoreDNSConfigure adds it without checking: for a CoreDNS known to
	// have the plugin whose pods cannot be watched.
	CoreDNSConfigure = "configure"
	// CoreDNSSkip leaves CoreDNS alone.
	CoreDNSSkip = "skip"
)

// DefaultCoreDNSWait bounds how long auto waits for CoreDNS to reload: the
// kubelet refreshes the ConfigMap volume when the pods are touched, and the
// reload plugin checks the Corefile every 30 s (plus up to 15 s of jitter).
const DefaultCoreDNSWait = 2 * time.Minute

// Where kubeadm (and most distributions) keep CoreDNS.
const (
	corednsNamespace = "kube-system"
	corednsName      = "coredns" // the ConfigMap and the Deployment
	corednsKey       = "Corefile"
)

// corednsLine is the plugin line enable adds; the marker comment lets
// disable remove its own line and never one an operator wrote.
const (
	corednsDirective = "multicluster clusterset.local"
	corednsMarker    = "# clustermesh: clusterset.local (removed by clustermesh disable)"
)

// The CoreDNS log lines that tell whether the plugin is there: the
// plugin's own startup line (coredns/multicluster), or the Corefile parser's
// refusal of an unknown directive.
const (
	corednsPluginStarted = "plugin/multicluster: serving"
	corednsNoPlugin      = "Unknown directive 'multicluster'"
)

// CoreDNSResult says what enable did to CoreDNS.
type CoreDNSResult struct {
	// Configured: CoreDNS serves clusterset.local (already did, or now).
	Configured bool
	// Changed: enable wrote the Corefile and kept the change.
	Changed bool
	// Message says what happened and, when not configured, what to do.
	Message string
}

// addMulticluster returns corefile with the multicluster plugin in its
// root server block (".:53" or "."), on the line before the kubernetes
// plugin; changed is false when a multicluster line is already there.
func addMulticluster(corefile string) (out string, changed bool, err error) {
	if hasMulticluster(corefile) {
		return corefile, false, nil
	}
	lines := strings.Split(corefile, "\n")
	depth, start, at, end := 0, -1, -1, -1
	for i, l := range lines {
		code := stripComment(l)
		f := strings.Fields(code)
		if depth == 0 && start < 0 && len(f) > 0 && isRootBlock(f) && strings.Contains(code, "{") {
			start = i
		}
		if start >= 0 && end < 0 && depth == 1 && len(f) > 0 && f[0] == "kubernetes" && at < 0 {
			at = i
		}
		depth += strings.Count(code, "{") - strings.Count(code, "}")
		if start >= 0 && end < 0 && i > start && depth == 0 {
			end = i
		}
	}
	if start < 0 || end < 0 {
		return corefile, false, fmt.Errorf("no root server block (\".:53 {\") in the Corefile")
	}
	indent := "    "
	if at < 0 {
		at = end
	} else {
		indent = lines[at][:len(lines[at])-len(strings.TrimLeft(lines[at], " \t"))]
	}
	line := indent + corednsDirective + " " + corednsMarker
	lines = append(lines[:at], append([]string{line}, lines[at:]...)...)
	return strings.Join(lines, "\n"), true, nil
}

// removeMulticluster removes the line addMulticluster adds (by its marker).
func removeMulticluster(corefile string) (string, bool) {
	lines := strings.Split(corefile, "\n")
	out := lines[:0]
	changed := false
	for _, l := range lines {
		if strings.Contains(l, corednsMarker) && strings.TrimSpace(stripComment(l)) == corednsDirective {
			changed = true
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n"), changed
}

// hasMulticluster tells whether a server block of corefile uses the
// multicluster plugin (written by enable or by hand).
func hasMulticluster(corefile string) bool {
	depth := 0
	for _, l := range strings.Split(corefile, "\n") {
		code := stripComment(l)
		if f := strings.Fields(code); depth >= 1 && len(f) > 0 && f[0] == "multicluster" {
			return true
		}
		depth += strings.Count(code, "{") - strings.Count(code, "}")
	}
	return false
}

// isRootBlock tells whether a server block's keys (the fields before "{")
// include the root zone.
func isRootBlock(fields []string) bool {
	for _, k := range fields {
		k = strings.TrimSuffix(k, "{")
		if k == "{" {
			break
		}
		for _, p := range []string{"", "dns://"} {
			if k == p+"." || strings.HasPrefix(k, p+".:") {
				return true
			}
		}
	}
	return false
}

func stripComment(l string) string {
	if i := strings.Index(l, "#"); i >= 0 {
		return l[:i]
	}
	return l
}

// configureCoreDNS makes the cluster's CoreDNS serve clusterset.local from
// ServiceImports (mode: CoreDNSAuto, CoreDNSConfigure or CoreDNSSkip). A
// cluster whose CoreDNS cannot be configured is no error: the result says
// what to do; errors are failures to talk to the API server.
func (c *Cluster) configureCoreDNS(ctx context.Context, v deploy.Values, mode string, wait time.Duration, log *slog.Logger) (*CoreDNSResult, error) {
	if mode == CoreDNSSkip {
		return &CoreDNSResult{Message: "CoreDNS left alone (--coredns skip): clusterset.local names resolve only if your DNS serves them (docs/mcs-dns.md)"}, nil
	}
	cms := c.Kube.CoreV1().ConfigMaps(corednsNamespace)
	cm, err := cms.Get(ctx, corednsName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &CoreDNSResult{Message: fmt.Sprintf("no ConfigMap %s/%s: this cluster's DNS is not kubeadm's CoreDNS; make it serve clusterset.local with a CoreDNS that has the multicluster plugin, or forward clusterset.local to one (docs/mcs-dns.md)", corednsNamespace, corednsName)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("context %s: get ConfigMap %s/%s: %w", c.Context, corednsNamespace, corednsName, err)
	}
	before := cm.Data[corednsKey]
	after, changed, err := addMulticluster(before)
	if err != nil {
		return &CoreDNSResult{Message: fmt.Sprintf("ConfigMap %s/%s: %v; add `%s` to the block that serves cluster.local by hand (docs/mcs-dns.md)", corednsNamespace, corednsName, err, corednsDirective)}, nil
	}
	if err := c.applyCoreDNSRBAC(ctx, v); err != nil {
		return nil, err
	}
	if !changed {
		return &CoreDNSResult{Configured: true, Message: fmt.Sprintf("CoreDNS already has the multicluster plugin in ConfigMap %s/%s", corednsNamespace, corednsName)}, nil
	}
	cm.Data[corednsKey] = after
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return nil, fmt.Errorf("context %s: update ConfigMap %s/%s: %w", c.Context, corednsNamespace, corednsName, err)
	}
	changedAt := time.Now()
	log.Info("added the multicluster plugin to the Corefile", "context", c.Context, "configmap", corednsNamespace+"/"+corednsName, "mode", mode)
	if mode == CoreDNSConfigure {
		return &CoreDNSResult{Configured: true, Changed: true, Message: fmt.Sprintf("added `%s` to ConfigMap %s/%s (--coredns configure: not checked that CoreDNS has the plugin)", corednsDirective, corednsNamespace, corednsName)}, nil
	}
	verdict, detail, err := c.watchCoreDNS(ctx, changedAt, wait, log)
	if err != nil {
		return nil, err
	}
	if verdict {
		return &CoreDNSResult{Configured: true, Changed: true, Message: fmt.Sprintf("CoreDNS serves clusterset.local (%s)", detail)}, nil
	}
	if err := c.rollbackCorefile(ctx); err != nil {
		return nil, err
	}
	log.Info("rolled the Corefile back", "context", c.Context, "reason", detail)
	return &CoreDNSResult{Message: fmt.Sprintf("%s, so the Corefile change was rolled back: clusterset.local names do not resolve in this cluster. "+
		"Run a CoreDNS built with the multicluster plugin (hack/kind/coredns builds one; its image is the kind node image's), then re-run enable; "+
		"or pass --coredns configure if it has the plugin already; docs/mcs-dns.md", detail)}, nil
}

// watchCoreDNS touches the CoreDNS pods (so that the kubelet refreshes
// their Corefile at once) and reads their logs since the change until one
// says the plugin started (true) or that it is unknown (false), or wait
// passes (false).
func (c *Cluster) watchCoreDNS(ctx context.Context, since time.Time, wait time.Duration, log *slog.Logger) (bool, string, error) {
	pods := c.Kube.CoreV1().Pods(corednsNamespace)
	selector := labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"}).String()
	if d, err := c.Kube.AppsV1().Deployments(corednsNamespace).Get(ctx, corednsName, metav1.GetOptions{}); err == nil && d.Spec.Selector != nil {
		if s, err := metav1.LabelSelectorAsSelector(d.Spec.Selector); err == nil {
			selector = s.String()
		}
	}
	if err := c.touchPods(ctx, corednsNamespace, selector, corednsTouchedKey, since, log); err != nil {
		return false, "", err
	}
	sinceTime := metav1.NewTime(since.Add(-time.Second))
	var found bool
	var detail string
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err := poll.Until(wctx, func(ctx context.Context) error {
		list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase != corev1.PodRunning {
				continue
			}
			running++
			rc, err := pods.GetLogs(p.Name, &corev1.PodLogOptions{SinceTime: &sinceTime}).Stream(ctx)
			if err != nil {
				continue
			}
			b, _ := io.ReadAll(io.LimitReader(rc, 1<<20))
			rc.Close()
			switch s := string(b); {
			case strings.Contains(s, corednsNoPlugin):
				found, detail = false, fmt.Sprintf("CoreDNS pod %s/%s has no multicluster plugin (its log: %q)", corednsNamespace, p.Name, corednsNoPlugin)
				return nil
			case strings.Contains(s, corednsPluginStarted):
				found, detail = true, fmt.Sprintf("pod %s/%s loaded the multicluster plugin", corednsNamespace, p.Name)
				return nil
			}
		}
		if running == 0 {
			return fmt.Errorf("no running CoreDNS pod (%s)", selector)
		}
		return fmt.Errorf("no CoreDNS pod has reloaded the Corefile yet")
	})
	if err != nil {
		if ctx.Err() != nil {
			return false, "", ctx.Err()
		}
		return false, fmt.Sprintf("CoreDNS did not confirm the multicluster plugin within %s (%v)", wait, err), nil
	}
	return found, detail, nil
}

// rollbackCorefile removes enable's line from the Corefile.
func (c *Cluster) rollbackCorefile(ctx context.Context) error {
	_, err := c.unconfigureCoreDNS(ctx)
	return err
}

// unconfigureCoreDNS removes the multicluster line enable added (disable
// calls it before the RBAC goes, so that CoreDNS never runs the plugin
// without read access). It reports whether it changed the Corefile.
func (c *Cluster) unconfigureCoreDNS(ctx context.Context) (bool, error) {
	cms := c.Kube.CoreV1().ConfigMaps(corednsNamespace)
	cm, err := cms.Get(ctx, corednsName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("context %s: get ConfigMap %s/%s: %w", c.Context, corednsNamespace, corednsName, err)
	}
	out, changed := removeMulticluster(cm.Data[corednsKey])
	if !changed {
		return false, nil
	}
	cm.Data[corednsKey] = out
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return false, fmt.Errorf("context %s: update ConfigMap %s/%s: %w", c.Context, corednsNamespace, corednsName, err)
	}
	return true, nil
}

// applyCoreDNSRBAC lets CoreDNS's service account (the CoreDNS
// Deployment's, else "coredns") read ServiceImports and EndpointSlices.
func (c *Cluster) applyCoreDNSRBAC(ctx context.Context, v deploy.Values) error {
	sa := corednsName
	d, err := c.Kube.AppsV1().Deployments(corednsNamespace).Get(ctx, corednsName, metav1.GetOptions{})
	switch {
	case err == nil && d.Spec.Template.Spec.ServiceAccountName != "":
		sa = d.Spec.Template.Spec.ServiceAccountName
	case err != nil && !apierrors.IsNotFound(err):
		return fmt.Errorf("context %s: get Deployment %s/%s: %w", c.Context, corednsNamespace, corednsName, err)
	}
	objs, err := deploy.Render(deploy.FileCoreDNSRBAC, v)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if o.GetKind() == "ClusterRoleBinding" {
			subjects := []any{map[string]any{"kind": "ServiceAccount", "name": sa, "namespace": corednsNamespace}}
			o.Object["subjects"] = subjects
		}
	}
	return c.apply(ctx, objs)
}
