package kubetest_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

func TestBinDir(t *testing.T) {
	t.Setenv(kubetest.EnvToolsBin, "")
	dir, err := kubetest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(dir, filepath.Join("hack", "bin")) {
		t.Fatalf("BinDir() = %s, want .../hack/bin of the module root", dir)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(dir)), "go.mod")); err != nil {
		t.Fatalf("BinDir() = %s: no go.mod two levels up: %v", dir, err)
	}

	other := t.TempDir()
	t.Setenv(kubetest.EnvToolsBin, other)
	if dir, _ := kubetest.BinDir(); dir != other {
		t.Fatalf("BinDir() with %s=%s = %s", kubetest.EnvToolsBin, other, dir)
	}
	if _, err := kubetest.Binary(kubetest.Etcd); err == nil {
		t.Fatalf("Binary(etcd) in an empty dir: want an error")
	}
}

// TestCluster starts a control plane with the controller manager and checks
// what the apiserver's export relies on: a Service with a selector gets an
// EndpointSlice listing a ready Pod whose status the test set, kubectl works
// against the kubeconfig, and a deleted namespace goes away.
func TestCluster(t *testing.T) {
	c := kubetest.Start(t, &kubetest.Options{ControllerManager: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := c.Client

	// The EndpointSlice controller skips pods on nodes it does not know.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kt-" + kubetest.RandomSuffix(4)}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns.Name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}
	if _, err := cs.CoreV1().Services(ns.Name).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-0", Namespace: ns.Name, Labels: map[string]string{"app": "echo"}},
		Spec: corev1.PodSpec{
			NodeName:   "node-a",
			Containers: []corev1.Container{{Name: "echo", Image: "echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		},
	}
	pod, err := cs.CoreV1().Pods(ns.Name).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      "10.244.1.5",
		PodIPs:     []corev1.PodIP{{IP: "10.244.1.5"}},
		HostIP:     "192.168.0.1",
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	if _, err := cs.CoreV1().Pods(ns.Name).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Logf("%v pod ready, waiting for its EndpointSlice", time.Now())
	var got []string
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := cs.DiscoveryV1().EndpointSlices(ns.Name).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
		if err != nil {
			return false, err
		}
		got = nil
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					got = append(got, ep.Addresses...)
				}
			}
		}
		return len(got) == 1, nil
	})
	if err != nil || got[0] != "10.244.1.5" {
		t.Fatalf("ready endpoints of echo = %v, want [10.244.1.5] (%v)", got, err)
	}

	t.Logf("%v EndpointSlice ready", time.Now())
	kubetest.RequireKubectl(t)
	out, err := c.Kubectl(ctx, "annotate", "service", "-n", ns.Name, "echo", "example.com/x=y")
	if err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Services(ns.Name).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil || s.Annotations["example.com/x"] != "y" {
		t.Fatalf("annotation after kubectl annotate (%s): %v %v", out, s.Annotations, err)
	}

	// No kubelet confirms the pod's termination: play kubelet and delete
	// it at once, as the namespace controller waits for pods to be gone.
	zero := int64(0)
	if err := cs.CoreV1().Pods(ns.Name).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%v deleting namespace", time.Now())
	if err := cs.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
		return err != nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s not finalized by the controller manager: %v", ns.Name, err)
	}
}

// TestStartProcess checks the non-testing entry point and that Stop ends
// every process.
func TestStartProcess(t *testing.T) {
	kubetest.Require(t, nil)
	c, err := kubetest.StartProcess(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		c.Stop()
		t.Fatalf("get namespace default: %v", err)
	}
	c.Stop()
	c.Stop() // idempotent
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err == nil {
		t.Fatal("API still answers after Stop")
	}
}
