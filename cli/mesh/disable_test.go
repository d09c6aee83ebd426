package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// TestDisableRefusesAndForces runs disable against a real kube-apiserver
// with the namespace controller but no DaemonSet controller or kubelet, so
// no cleanup pod ever runs: disable refuses while a peer is connected and
// changes nothing; without peers it stops at the nodes it could not clean
// and names them, leaving the cleanup DaemonSet; --force removes everything
// anyway and reports the peer and the node it gave up on; a last disable
// finds nothing.
func TestDisableRefusesAndForces(t *testing.T) {
	opts := &kubetest.Options{ControllerManager: true}
	kubetest.Require(t, opts)
	kc := kubetest.Start(t, opts)
	ctx := context.Background()
	c, err := NewCluster("k1", kc.Config)
	if err != nil {
		t.Fatal(err)
	}
	node, err := kc.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-a"},
		Spec:       corev1.NodeSpec{PodCIDR: "10.1.0.0/24", PodCIDRs: []string{"10.1.0.0/24"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Disable(ctx, c, DisableOptions{}); err != nil || !res.NotEnabled {
		t.Fatalf("disable before enable: %+v, %v; want NotEnabled", res, err)
	}
	if _, err := Enable(ctx, c, EnableOptions{ClusterName: "c1", ClusterID: 1, Endpoint: "https://127.0.0.1:2379"}); err != nil {
		t.Fatal(err)
	}
	// What the apiserver's import wrote (labelled as the mesh's) goes with
	// disable; a ServiceImport of another controller stays.
	imp := func(name string, ours bool) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
			"metadata": map[string]any{"name": name, "namespace": "default"},
			"spec":     map[string]any{"type": "ClusterSetIP", "ports": []any{map[string]any{"port": int64(80), "protocol": "TCP"}}},
		}}
		if ours {
			u.SetLabels(map[string]string{deploy.LabelManagedBy: deploy.ManagedBy})
		}
		return u
	}
	for _, u := range []*unstructured.Unstructured{imp("web", true), imp("theirs", false)} {
		if _, err := c.Dynamic.Resource(serviceImportGVR).Namespace("default").Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	derived := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "derived-web", Namespace: "default", Labels: map[string]string{deploy.LabelManagedBy: deploy.ManagedBy}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}}
	if _, err := c.Kube.CoreV1().Services("default").Create(ctx, derived, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	ca := pkitest.CA(t, "peer-ca")
	cert, key := pkitest.ClientPEM(t, ca, "remote-c1")
	peer := Entry{Name: "c2", ID: 2, Endpoint: "https://127.0.0.2:2379", CA: ca.CertPEM(), Cert: cert, Key: key}
	connect := func() {
		t.Helper()
		if err := c.updateClusters(ctx, nil, func(s *corev1.Secret) error { return peer.put(s) }); err != nil {
			t.Fatal(err)
		}
	}
	connect()

	var lines []string
	progress := func(l string) { lines = append(lines, l) }
	_, err = Disable(ctx, c, DisableOptions{Progress: progress})
	if !errors.Is(err, ErrPeersConnected) || !strings.Contains(err.Error(), "connected to c2") || !strings.Contains(err.Error(), "clustermesh disconnect") {
		t.Fatalf("disable while connected: %v; want ErrPeersConnected naming c2 and disconnect", err)
	}
	if _, err := c.Kube.AppsV1().DaemonSets(c.Namespace).Get(ctx, DaemonSetName, metav1.GetOptions{}); err != nil {
		t.Fatalf("refused disable deleted the agents: %v", err)
	}

	if err := c.updateClusters(ctx, nil, func(s *corev1.Secret) error { removeEntry(s, "c2"); return nil }); err != nil {
		t.Fatal(err)
	}
	_, err = Disable(ctx, c, DisableOptions{Wait: time.Second, Progress: progress})
	if !errors.Is(err, ErrCleanupFailed) || !strings.Contains(err.Error(), "node node-a: no cleanup pod") || !strings.Contains(err.Error(), CleanupDaemonSetName) {
		t.Fatalf("disable with a node that is never cleaned: %v; want ErrCleanupFailed naming node-a", err)
	}
	if _, err := c.Kube.AppsV1().DaemonSets(c.Namespace).Get(ctx, DaemonSetName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("agent DaemonSet after the failed cleanup: %v, want deleted", err)
	}
	// The store stops before the nodes are cleaned (its node-local
	// directory is among what the cleanup removes).
	if _, err := c.Kube.AppsV1().StatefulSets(c.Namespace).Get(ctx, StatefulSetName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("apiserver StatefulSet after the failed cleanup: %v, want deleted", err)
	}
	if _, err := c.Kube.AppsV1().DaemonSets(c.Namespace).Get(ctx, CleanupDaemonSetName, metav1.GetOptions{}); err != nil {
		t.Errorf("cleanup DaemonSet after the failed cleanup: %v, want left running", err)
	}

	connect()
	lines = nil
	res, err := Disable(ctx, c, DisableOptions{Force: true, Wait: 20 * time.Second, Progress: progress})
	if err != nil {
		t.Fatalf("disable --force: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if !slices.Equal(res.Peers, []string{"c2"}) || !strings.Contains(res.FailedNodes[node.Name], "no cleanup pod") || res.ClusterName != "c1" {
		t.Errorf("disable --force: %+v; want peer c2 and node-a failed", res)
	}
	for _, want := range []string{"Namespace/" + c.Namespace, "ClusterRole/clustermesh-apiserver", "ClusterRoleBinding/clustermesh-apiserver",
		"DaemonSet/" + CleanupDaemonSetName, "Secret/" + SecretCA, "ConfigMap/" + ConfigMapName, "ConfigMap/" + deploy.AgentSettings, "PersistentVolume/" + c.Namespace + "-store"} {
		if !slices.Contains(res.Deleted, want) {
			t.Errorf("deleted %v, want %s among them", res.Deleted, want)
		}
	}
	if joined := strings.Join(lines, "\n"); !strings.Contains(joined, "--force: cluster c1 is still connected to c2") || !strings.Contains(joined, "not cleaned") {
		t.Errorf("progress does not say what --force overrode:\n%s", joined)
	}
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace after disable: %v, want not found", err)
	}
	for _, want := range []string{"ServiceImport/default/web", "Service/default/derived-web"} {
		if !slices.Contains(res.Deleted, want) {
			t.Errorf("deleted %v, want %s among them", res.Deleted, want)
		}
	}
	if _, err := c.Dynamic.Resource(serviceImportGVR).Namespace("default").Get(ctx, "theirs", metav1.GetOptions{}); err != nil {
		t.Errorf("another controller's ServiceImport after disable: %v, want kept", err)
	}
	if res, err := Disable(ctx, c, DisableOptions{}); err != nil || !res.NotEnabled {
		t.Errorf("disable after disable: %+v, %v; want NotEnabled", res, err)
	}
}

// TestCleanupTakesAgentFlags: the cleanup looks where the agent attached
// and pinned, from its arguments (which win) or its settings ConfigMap, in
// its command and in its readiness check.
func TestCleanupTakesAgentFlags(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		settings map[string]string
		// want: arguments of the cleanup and its check, once each;
		// wantNot: arguments (or, ending in "=", flags) they must lack.
		want, wantNot []string
	}{
		{"manifest defaults", []string{"--cluster-name=c1", "--bpf-cgroup=/sys/fs/cgroup"}, nil,
			[]string{"--bpf-cgroup=/sys/fs/cgroup"}, []string{"--bpf-pin-dir=", "--cluster-name="}},
		{"arguments", []string{"--bpf-cgroup", "/sys/fs/cgroup/unified", "--bpf-pin-dir=/sys/fs/bpf/cm2"}, map[string]string{"bpf-pin-dir": "/sys/fs/bpf/ignored"},
			[]string{"--bpf-cgroup=/sys/fs/cgroup/unified", "--bpf-pin-dir=/sys/fs/bpf/cm2"}, []string{"--bpf-cgroup=/sys/fs/cgroup", "--bpf-pin-dir=/sys/fs/bpf/ignored"}},
		{"settings", []string{"--bpf-cgroup=/sys/fs/cgroup"}, map[string]string{"bpf-pin-dir": " /sys/fs/bpf/cm3\n", "routes": "static"},
			[]string{"--bpf-pin-dir=/sys/fs/bpf/cm3", "--bpf-cgroup=/sys/fs/cgroup"}, []string{"--routes="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := deploy.DefaultValues()
			v.ClusterName, v.ClusterID = "c1", 1
			objs, err := deploy.Render(deploy.FileCleanup, v)
			if err != nil {
				t.Fatal(err)
			}
			ds := objs[len(objs)-1]
			if err := cleanupWithFlags(ds, agentCleanupFlags(tc.args, tc.settings)); err != nil {
				t.Fatal(err)
			}
			ctr := ds.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
			args := fmt.Sprint(ctr["args"])
			check := fmt.Sprint(ctr["readinessProbe"].(map[string]any)["exec"].(map[string]any)["command"])
			for _, got := range []string{args, check} {
				tokens := strings.Fields(strings.Trim(got, "[]"))
				for _, w := range tc.want {
					if n := slices.Index(tokens, w); n < 0 || slices.Index(tokens[n+1:], w) >= 0 {
						t.Errorf("%s: want %s once", got, w)
					}
				}
				for _, w := range tc.wantNot {
					if slices.ContainsFunc(tokens, func(tok string) bool {
						return tok == w || strings.HasSuffix(w, "=") && strings.HasPrefix(tok, w)
					}) {
						t.Errorf("%s: want no %s", got, w)
					}
				}
			}
			if !strings.HasPrefix(args, "[cleanup ") || !strings.Contains(args, "--hold") || !strings.Contains(check, "--check") {
				t.Errorf("args %s, check %s", args, check)
			}
		})
	}
}
