package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Annotations touchPods sets: when the CLI last changed a Secret or
// ConfigMap the pods mount.
const (
	touchedClustersKey = "clustermesh.io/clusters-changed"
	corednsTouchedKey  = "clustermesh.io/corefile-changed"
)

// meshPodsSelector selects the agents and the clustermesh-apiserver (the
// pods that mount the clusters Secret).
const meshPodsSelector = "app.kubernetes.io/part-of=clustermesh"

// touchPods sets annotation key to now on every pod of namespace that
// selector selects, and returns how many it touched. The kubelet refreshes
// a pod's Secret and ConfigMap volumes when it syncs the pod: periodically
// (about a minute, plus its cache's delay) or when the pod changes. A
// touch is that change, so an edit of the clusters Secret (connect,
// disconnect, rotate) reaches every agent in seconds rather than at each
// node's own next sync, tens of seconds apart. Best effort: a pod that
// could not be touched gets the edit at its periodic sync anyway.
func (c *Cluster) touchPods(ctx context.Context, namespace, selector, key string, now time.Time) (int, error) {
	pods := c.Kube.CoreV1().Pods(namespace)
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return 0, fmt.Errorf("context %s: list pods %s in %s: %w", c.Context, selector, namespace, err)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, now.UTC().Format(time.RFC3339Nano))
	n := 0
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if _, err := pods.Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
			slog.Debug("touch pod: its kubelet refreshes its volumes at its next periodic sync", "context", c.Context, "pod", namespace+"/"+p.Name, "error", err)
			continue
		}
		n++
	}
	return n, nil
}
