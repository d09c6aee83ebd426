package mesh_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/deploy"
)

// TestEnableKeepsSettings: against a real kube-apiserver, operator settings
// live in the settings ConfigMaps and the recorded store storage, and a
// re-run of enable keeps them: the routing mode given once, a key the
// operator added by hand, the node-local store on its node. A settings edit
// rolls the pods (the template's hash changes); a storage change that would
// strand the store's data is refused by name.
func TestEnableKeepsSettings(t *testing.T) {
	env := clitest.Start(t, clitest.Spec{Name: "c1", NodeIP: "127.0.0.31", PodCIDR: "10.31.0.0/24"})
	ctx := context.Background()
	c := env.Clusters["c1"].C
	k := c.Kube

	// No default StorageClass: auto keeps the store on a node's disk.
	if _, err := mesh.Enable(ctx, c, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1, Routes: "static-all"}); err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	if _, err := c.Dynamic.Resource(crdGVR).Get(ctx, "serviceexports.multicluster.x-k8s.io", metav1.GetOptions{}); err != nil {
		t.Fatalf("enable did not install the ServiceExport CRD: %v", err)
	}
	cm, err := k.CoreV1().ConfigMaps(c.Namespace).Get(ctx, deploy.AgentSettings, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["routes"] != "static-all" {
		t.Fatalf("agent settings %v, want routes static-all", cm.Data)
	}
	pv, err := k.CoreV1().PersistentVolumes().Get(ctx, c.Namespace+"-store", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node-local store volume: %v", err)
	}
	if got := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values; len(got) != 1 || got[0] != "node-c1" {
		t.Fatalf("store volume pinned to %v, want node-c1", got)
	}
	hash := func(kind string) string {
		t.Helper()
		var ann map[string]string
		switch kind {
		case "agent":
			ds, err := k.AppsV1().DaemonSets(c.Namespace).Get(ctx, mesh.DaemonSetName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ann = ds.Spec.Template.Annotations
		default:
			sts, err := k.AppsV1().StatefulSets(c.Namespace).Get(ctx, mesh.StatefulSetName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !sts.Spec.Template.Spec.HostNetwork {
				t.Errorf("apiserver not on the host network with routes static-all")
			}
			ann = sts.Spec.Template.Annotations
		}
		return ann["clustermesh.io/config-hash"]
	}
	agentHash, apiHash := hash("agent"), hash("apiserver")
	if agentHash == "" || apiHash == "" {
		t.Fatalf("pod templates carry no settings hash: agent %q apiserver %q", agentHash, apiHash)
	}

	// The operator adds a flag by hand, as kubectl edit would.
	cm.Data["peer-max-bytes"] = "1000000"
	if _, err := k.CoreV1().ConfigMaps(c.Namespace).Update(ctx, cm, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	// A default StorageClass appearing later does not move the store.
	if _, err := k.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta:  metav1.ObjectMeta{Name: "fast", Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}},
		Provisioner: "example.com/fast",
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	res, err := mesh.Enable(ctx, c, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1})
	if err != nil {
		t.Fatal(err)
	}
	cm, err = k.CoreV1().ConfigMaps(c.Namespace).Get(ctx, deploy.AgentSettings, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Data["routes"] != "static-all" || cm.Data["peer-max-bytes"] != "1000000" {
		t.Errorf("after a re-run the agent settings are %v, want routes static-all and the operator's peer-max-bytes", cm.Data)
	}
	if got := hash("agent"); got == agentHash {
		t.Errorf("agent template hash unchanged (%s) after a settings edit: the agents would not restart; changes %v", got, res.Changes)
	}
	if got := hash("apiserver"); got != apiHash {
		t.Errorf("apiserver template hash changed (%s -> %s) with its settings untouched", apiHash, got)
	}
	cfg, err := k.CoreV1().ConfigMaps(c.Namespace).Get(ctx, mesh.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Data["store-storage"] != deploy.StorageNodeLocal || cfg.Data["store-node"] != "node-c1" {
		t.Errorf("recorded store %v, want node-local on node-c1", cfg.Data)
	}

	for _, tc := range []struct {
		name string
		opts mesh.EnableOptions
		flag string
	}{
		{"storage", mesh.EnableOptions{Storage: deploy.StorageClaim}, "--store-storage"},
		{"node", mesh.EnableOptions{StoreNode: "node-c9"}, "--store-node"},
		{"size", mesh.EnableOptions{StorageSize: "8Gi"}, "--store-size"},
	} {
		t.Run("refuses a new store "+tc.name, func(t *testing.T) {
			tc.opts.ClusterName, tc.opts.ClusterID = "c1", 1
			_, err := mesh.Enable(ctx, c, tc.opts)
			if !errors.Is(err, mesh.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.flag) || !strings.Contains(err.Error(), "disable") {
				t.Fatalf("err = %v, want ErrInvalidArgument naming %s and disable", err, tc.flag)
			}
		})
	}

	t.Run("status names a claim no provisioner binds", func(t *testing.T) {
		class := "fast"
		labels := map[string]string{"app.kubernetes.io/name": mesh.StatefulSetName}
		pvc, err := k.CoreV1().PersistentVolumeClaims(c.Namespace).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "data-clustermesh-apiserver-1", Labels: labels},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &class,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pvc.Status.Phase = corev1.ClaimPending
		if _, err := k.CoreV1().PersistentVolumeClaims(c.Namespace).UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Problems {
			if strings.Contains(p.Reason, pvc.Name) {
				t.Fatalf("a claim Pending for seconds without a warning reported: %s", p.Reason)
			}
		}
		now := metav1.Now()
		if _, err := k.CoreV1().Events(c.Namespace).Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Name: pvc.Name + ".1"},
			InvolvedObject: corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: c.Namespace, Name: pvc.Name, UID: pvc.UID},
			Type:           corev1.EventTypeWarning, Reason: "ProvisioningFailed",
			Message:        `storageclass.storage.k8s.io "fast" not found`,
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		st, err = mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range st.Problems {
			if strings.Contains(p.Reason, pvc.Name) {
				found = true
				if !strings.Contains(p.Reason, "StorageClass fast") || !strings.Contains(p.Reason, "ProvisioningFailed") || !strings.Contains(p.Fix, "node-local") {
					t.Errorf("problem %q (fix %q): want the class, the event and the node-local way out", p.Reason, p.Fix)
				}
			}
		}
		if !found {
			t.Fatalf("status problems %v: none names claim %s", st.Problems, pvc.Name)
		}
		if err := k.CoreV1().PersistentVolumeClaims(c.Namespace).Delete(ctx, pvc.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("status warns of a policy the mesh cannot enforce", func(t *testing.T) {
		named := intstr.FromString("http")
		if _, err := k.NetworkingV1().NetworkPolicies("default").Create(ctx, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "named"},
			Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Port: &named}}}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range st.Problems {
			if errors.Is(p.Err, mesh.ErrPolicy) {
				t.Errorf("a policy problem among the problems (it is a warning): %s", p.Reason)
			}
		}
		for _, w := range st.Warnings {
			if errors.Is(w.Err, mesh.ErrPolicy) && strings.Contains(w.Reason, "NetworkPolicy default/named") && strings.Contains(w.Reason, `named port "http"`) {
				return
			}
		}
		t.Fatalf("warnings %v: none names NetworkPolicy default/named and its named port", st.Warnings)
	})

	t.Run("an old Deployment is replaced", func(t *testing.T) {
		one := int32(1)
		labels := map[string]string{"app.kubernetes.io/name": "clustermesh-apiserver"}
		if _, err := k.AppsV1().Deployments(c.Namespace).Create(ctx, legacyDeployment(c.Namespace, labels, &one), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := mesh.Enable(ctx, c, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := k.AppsV1().Deployments(c.Namespace).Get(ctx, mesh.LegacyDeploymentName, metav1.GetOptions{}); err == nil {
			t.Fatal("the old apiserver Deployment survived enable")
		}
	})
}

func legacyDeployment(ns string, labels map[string]string, replicas *int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: mesh.LegacyDeploymentName, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "apiserver", Image: "old"}}},
			},
		},
	}
}
