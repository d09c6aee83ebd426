package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
)

// StatefulSetName is the apiserver's workload. Before the store persisted,
// it was a Deployment of the same name (LegacyDeploymentName), which enable
// replaces.
const (
	StatefulSetName      = "clustermesh-apiserver"
	LegacyDeploymentName = "clustermesh-apiserver"
)

// Keys of the clustermesh-config ConfigMap that record how the store is kept;
// a re-run of enable keeps them unless given again.
const (
	keyStoreStorage = "store-storage"
	keyStoreNode    = "store-node"
	keyStoreClass   = "store-class"
	keyStoreSize    = "store-size"
	keyBGPASN       = "bgp-asn"
)

// defaultStorageClassAnnotation marks a cluster's default StorageClass.
const defaultStorageClassAnnotation = "storageclass.kubernetes.io/is-default-class"

// StorageAuto lets enable choose the store's storage: a claim when the
// cluster has a default StorageClass, else a node-local volume.
const StorageAuto = "auto"

// resolveSettings fills the options a re-run of enable keeps from what the
// cluster has: the agents' routing mode (their settings ConfigMap) and the
// store's storage (the clustermesh-config ConfigMap). Options given win,
// except a storage mode that differs from the store's, which would strand
// its data: that is refused.
func (c *Cluster) resolveSettings(ctx context.Context, opts *EnableOptions) error {
	if opts.Routes == "" {
		cm, err := c.configMap(ctx, deploy.AgentSettings)
		if err != nil {
			return err
		}
		if cm != nil && cm.Data["routes"] != "" {
			opts.Routes = cm.Data["routes"]
		}
	}
	cfg, err := c.configMap(ctx, ConfigMapName)
	if err != nil {
		return err
	}
	if opts.BGPASN == 0 && cfg != nil && cfg.Data[keyBGPASN] != "" {
		asn, err := strconv.ParseUint(cfg.Data[keyBGPASN], 10, 32)
		if err != nil {
			return fmt.Errorf("context %s: ConfigMap %s/%s: %s %q: %w", c.Context, c.Namespace, ConfigMapName, keyBGPASN, cfg.Data[keyBGPASN], err)
		}
		opts.BGPASN = uint32(asn)
	}
	var had string
	if cfg != nil {
		had = cfg.Data[keyStoreStorage]
	}
	if had != "" {
		// The StatefulSet's claim template cannot change, and the data
		// would stay behind: what is recorded is kept, and a different
		// value given is refused.
		for _, f := range []struct {
			flag  string
			given *string
			key   string
		}{
			{"--store-storage", &opts.Storage, keyStoreStorage},
			{"--store-node", &opts.StoreNode, keyStoreNode},
			{"--store-class", &opts.StorageClass, keyStoreClass},
			{"--store-size", &opts.StorageSize, keyStoreSize},
		} {
			rec := cfg.Data[f.key]
			if *f.given != "" && *f.given != StorageAuto && *f.given != rec {
				return fmt.Errorf("context %s: %w: %s %s: the store is kept with %s %q; changing it starts an empty store: run clustermesh disable %s first (or drop %s)",
					c.Context, ErrInvalidArgument, f.flag, *f.given, f.key, rec, c.ctxFlag(), f.flag)
			}
			*f.given = rec
		}
		return nil
	}
	if opts.Storage == "" || opts.Storage == StorageAuto {
		opts.Storage, err = c.autoStorage(ctx, opts.StorageClass)
		if err != nil {
			return err
		}
	}
	if opts.Storage == deploy.StorageNodeLocal && opts.StoreNode == "" {
		opts.StoreNode, err = c.storeNode(ctx)
		if err != nil {
			return err
		}
	}
	return nil
}

// autoStorage picks a claim when one can be provisioned (a class was named,
// or the cluster has a default class), else a node-local volume.
func (c *Cluster) autoStorage(ctx context.Context, class string) (string, error) {
	if class != "" {
		return deploy.StorageClaim, nil
	}
	classes, err := c.Kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("context %s: list StorageClasses: %w", c.Context, err)
	}
	for _, sc := range classes.Items {
		if sc.Annotations[defaultStorageClassAnnotation] == "true" {
			return deploy.StorageClaim, nil
		}
	}
	return deploy.StorageNodeLocal, nil
}

// storeNode picks the node of a new node-local store: a control-plane node
// (the store then shares the fate of the Kubernetes API, not of a worker),
// else any node, the first by name so that the choice is stable.
func (c *Cluster) storeNode(ctx context.Context) (string, error) {
	nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("context %s: list nodes: %w", c.Context, err)
	}
	var control, all []string
	for _, n := range nodes.Items {
		all = append(all, n.Name)
		if _, ok := n.Labels["node-role.kubernetes.io/control-plane"]; ok {
			control = append(control, n.Name)
		}
	}
	for _, names := range [][]string{control, all} {
		if len(names) > 0 {
			sort.Strings(names)
			return names[0], nil
		}
	}
	return "", fmt.Errorf("context %s: %w: no node for the store's node-local volume; pass --store-node or --store-storage", c.Context, ErrNotReady)
}

// configMap returns a ConfigMap of the namespace, or nil when absent.
func (c *Cluster) configMap(ctx context.Context, name string) (*corev1.ConfigMap, error) {
	cm, err := c.Kube.CoreV1().ConfigMaps(c.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("context %s: get ConfigMap %s/%s: %w", c.Context, c.Namespace, name, err)
	}
	return cm, nil
}

// settingsHash hashes a settings ConfigMap's data, keys sorted: the pod
// template annotation that rolls the pods when the settings change.
func (c *Cluster) settingsHash(ctx context.Context, name string) (string, error) {
	cm, err := c.configMap(ctx, name)
	if err != nil || cm == nil {
		return "", err
	}
	keys := make([]string, 0, len(cm.Data))
	for k := range cm.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%q=%q\n", k, cm.Data[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// deleteLegacyDeployment removes the apiserver Deployment of installs made
// before the StatefulSet; its store was an emptyDir, so nothing is lost that
// a restart would not lose.
func (c *Cluster) deleteLegacyDeployment(ctx context.Context) (bool, error) {
	err := c.Kube.AppsV1().Deployments(c.Namespace).Delete(ctx, LegacyDeploymentName, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("context %s: delete the old apiserver Deployment %s/%s: %w", c.Context, c.Namespace, LegacyDeploymentName, err)
	}
	return true, nil
}

// claimStuckAfter is how long the store's claim may stay Pending without a
// warning before status calls it stuck: a provisioner binds in seconds.
const claimStuckAfter = 2 * time.Minute

// storeClaimProblems reports the store's claims that keep its pod from
// starting: Pending with a warning event (a provisioner that failed), or
// Pending for longer than claimStuckAfter (no provisioner at all, as with
// kind's default class where its image cannot be pulled). Each names the
// claim, its class and the last event.
func (c *Cluster) storeClaimProblems(ctx context.Context) ([]Problem, error) {
	claims, err := c.Kube.CoreV1().PersistentVolumeClaims(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + StatefulSetName})
	if err != nil {
		return nil, fmt.Errorf("context %s: list claims in %s: %w", c.Context, c.Namespace, err)
	}
	var ps []Problem
	for _, pvc := range claims.Items {
		if pvc.Status.Phase != corev1.ClaimPending {
			continue
		}
		events, err := c.Kube.CoreV1().Events(c.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=" + pvc.Name})
		if err != nil {
			return nil, fmt.Errorf("context %s: events of claim %s: %w", c.Context, pvc.Name, err)
		}
		var last *corev1.Event
		warned := false
		for i := range events.Items {
			e := &events.Items[i]
			warned = warned || e.Type == corev1.EventTypeWarning
			if last == nil || eventTime(e).After(eventTime(last)) {
				last = e
			}
		}
		age := time.Since(pvc.CreationTimestamp.Time)
		if !warned && age < claimStuckAfter {
			continue
		}
		class := "(none)"
		if pvc.Spec.StorageClassName != nil {
			class = *pvc.Spec.StorageClassName
		}
		reason := fmt.Sprintf("the store's claim %s/%s (StorageClass %s) is Pending after %s, so the apiserver cannot start", c.Namespace, pvc.Name, class, age.Round(time.Second))
		if last != nil {
			reason += fmt.Sprintf(": %s: %s", last.Reason, last.Message)
		}
		ps = append(ps, problem(ErrNotReady,
			fmt.Sprintf("make class %s provision (its provisioner runs?), or keep the store on a node's disk: clustermesh disable %s, then clustermesh enable %s ... --store-storage node-local", class, c.ctxFlag(), c.ctxFlag()),
			"%s", reason))
	}
	return ps, nil
}

func eventTime(e *corev1.Event) time.Time {
	switch {
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}
