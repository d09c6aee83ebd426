package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/internal/logging"
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
// selector selects. The kubelet refreshes
// a pod's Secret and ConfigMap volumes when it syncs the pod: periodically
// (about a minute, plus its cache's delay) or when the pod changes. A
// touch is that change, so an edit of the clusters Secret (connect,
// disconnect, rotate) reaches every agent in seconds rather than at each
// node's own next sync, tens of seconds apart. Best effort: a pod that
// could not be touched (logged) gets the edit at its periodic sync anyway;
// only a failure to list the pods is returned.
func (c *Cluster) touchPods(ctx context.Context, namespace, selector, key string, now time.Time, log *slog.Logger) error {
	pods := c.Kube.CoreV1().Pods(namespace)
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return fmt.Errorf("context %s: list pods %s in %s: %w", c.Context, selector, namespace, err)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, now.UTC().Format(time.RFC3339Nano))
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if _, err := pods.Patch(ctx, p.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
			logging.OrDiscard(log).Warn("cannot touch pod: its kubelet writes the change at its next periodic sync (up to a minute or more)",
				"context", c.Context, "pod", namespace+"/"+p.Name, "error", err)
		}
	}
	return nil
}
