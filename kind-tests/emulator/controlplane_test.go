package emulator

import (
	"context"
	"net/netip"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
)

// requireTools skips (or, under CI=true, fails) when the Kubernetes tools
// are not built.
func requireTools(t *testing.T) {
	t.Helper()
	needRoot(t)
	if err := bins.Require(PartKubeAPIServer, PartKCM, PartEtcd); err != nil {
		if InCI() {
			t.Fatalf("%v (CI=true: .ci/run must build the tools)", err)
		}
		t.Skip(err)
	}
}

// EchoDeployment returns a Deployment of n echo pods labelled app=name.
func echoDeployment(name string, n int32) *appsv1.Deployment {
	l := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &n,
			Selector: &metav1.LabelSelector{MatchLabels: l},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: l},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "echo", Image: "echo",
					Ports: []corev1.ContainerPort{{ContainerPort: EchoPort}},
				}}},
			},
		},
	}
}

func readyEndpoints(ctx context.Context, cs kubernetes.Interface, svc string) ([]string, error) {
	l, err := cs.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range l.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready != nil && *e.Conditions.Ready {
				out = append(out, e.Addresses...)
			}
		}
	}
	return out, nil
}

// TestKubeletRunsDeployment starts a real control plane, creates a
// Deployment and a Service, and checks the kubelet binds and runs the pods
// (echo servers reachable at the IPs the EndpointSlice lists), then scales
// to zero and checks the pods are gone from the API and the network.
func TestKubeletRunsDeployment(t *testing.T) {
	requireTools(t)
	r := newRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := r.AddCluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := c.AddNode(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.InstallStaticRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	cp, err := c.StartControlPlane(ctx, bins)
	if err != nil {
		t.Fatal(err)
	}
	cs := cp.Client
	if _, err := cs.AppsV1().Deployments("default").Create(ctx, echoDeployment("echo", 3), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: "default"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(EchoPort)}},
		},
	}
	if _, err := cs.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for len(addrs) != 3 {
		if addrs, err = readyEndpoints(ctx, cs, "echo"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("endpoints: %v: %v", addrs, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	names := map[string]bool{}
	for _, a := range addrs {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), EchoPort)
		if !c.PodCIDR.Contains(ap.Addr()) {
			t.Errorf("endpoint %s outside pod CIDR %s", a, c.PodCIDR)
		}
		names[dialFrom(t, c.Nodes()[0].Netns, "tcp", ap)] = true
	}
	if len(names) != 3 {
		t.Errorf("replies from %v, want 3 distinct pods", names)
	}
	perNode := map[string]int{}
	for _, n := range c.Nodes() {
		perNode[n.Name] = len(n.Pods())
	}
	if perNode["c1-node1"] == 0 || perNode["c1-node2"] == 0 {
		t.Errorf("pods per node %v: want both nodes used", perNode)
	}

	if _, err := cp.Kubectl(ctx, "scale", "deployment/echo", "--replicas=0"); err != nil {
		t.Fatal(err)
	}
	for {
		pods, err := cs.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		left := len(c.Nodes()[0].Pods()) + len(c.Nodes()[1].Pods())
		if len(pods.Items) == 0 && left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after scale to 0: %d pod objects, %d pods running: %v", len(pods.Items), left, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
