package clitest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/clustermesh/clustermesh/cli/mesh"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// Spec describes a cluster of an Env: its name (also its context's), the
// InternalIP of its one node (a distinct loopback address per cluster, so
// NodePorts of different clusters never collide) and the node's pod CIDR.
type Spec struct{ Name, NodeIP, PodCIDR string }

// Cluster is one emulated cluster.
type Cluster struct {
	Spec
	Kube *kubetest.Cluster
	C    *mesh.Cluster
}

// Env is a set of clusters sharing one kubeconfig, as a user's would.
type Env struct {
	Kubeconfig string
	Clusters   map[string]*Cluster
}

// Start starts the clusters; it skips (or fails under CI=true) when the
// control-plane binaries are missing.
func Start(t testing.TB, specs ...Spec) *Env {
	t.Helper()
	kubetest.Require(t, nil)
	env := &Env{Clusters: map[string]*Cluster{}}
	merged := clientcmdapi.NewConfig()
	for _, s := range specs {
		kc := kubetest.Start(t, nil)
		cfg, err := clientcmd.LoadFromFile(kc.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		cur := cfg.Contexts[cfg.CurrentContext]
		merged.Clusters[s.Name] = cfg.Clusters[cur.Cluster]
		merged.AuthInfos[s.Name] = cfg.AuthInfos[cur.AuthInfo]
		merged.Contexts[s.Name] = &clientcmdapi.Context{Cluster: s.Name, AuthInfo: s.Name}
		createNode(t, kc, "node-"+s.Name, s.NodeIP, s.PodCIDR)
		env.Clusters[s.Name] = &Cluster{Spec: s, Kube: kc}
	}
	merged.CurrentContext = specs[0].Name
	env.Kubeconfig = filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*merged, env.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	for _, tc := range env.Clusters {
		c, err := mesh.Open(env.Kubeconfig, tc.Name)
		if err != nil {
			t.Fatal(err)
		}
		tc.C = c
	}
	return env
}

// createNode plays the kubelet and node IPAM: a Node with a pod CIDR and an
// InternalIP.
func createNode(t testing.TB, kc *kubetest.Cluster, name, ip, cidr string) {
	t.Helper()
	ctx := context.Background()
	n, err := kc.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if _, err := kc.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// RunProcesses runs the cluster's clustermesh-apiserver (embedded etcd at
// the endpoint enable recorded) and one agent (datapath none) on its node,
// from the Secrets enable created; their Secret directories (certificates,
// the agent's clusters directory) are refreshed every 200 ms, as the kubelet
// refreshes Secret mounts. They stop at the test's cleanup.
func (e *Env) RunProcesses(t testing.TB, name string) {
	t.Helper()
	if err := e.runProcesses(t, name); err != nil {
		t.Fatal(err)
	}
}

// Kubelet plays the kubelet of the named clusters from now on: as soon as
// enable has installed a cluster's workloads (with their configuration, the
// clustermesh-config ConfigMap, whatever kind the workloads are), it runs the
// cluster's processes (RunProcesses), as a kubelet starts pods once they are
// scheduled. enable, which waits until its store serves, can thus
// run as against a real cluster: the processes start while it waits.
// Failures are reported with t.Errorf; the watch stops at the test's
// cleanup.
func (e *Env) Kubelet(t testing.TB, names ...string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, name := range names {
		tc := e.Clusters[name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := poll.Until(ctx, func(ctx context.Context) error {
				_, err := tc.C.ReadInfo(ctx)
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("kubelet of %s: %v", name, err)
				}
				return
			}
			if err := e.runProcesses(t, name); err != nil {
				t.Errorf("kubelet of %s: %v", name, err)
			}
		}()
	}
}

// runProcesses is RunProcesses returning its error, so that it may run off
// the test's goroutine.
func (e *Env) runProcesses(t testing.TB, name string) error {
	tc := e.Clusters[name]
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	run := func(what string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("%s: %v", what, err)
			}
		}()
	}

	info, err := tc.C.ReadInfo(ctx)
	if err != nil {
		return err
	}
	dir := t.TempDir()
	clusters := filepath.Join(dir, "clusters")
	// The kubelet writes the Secret volumes before starting the pods and
	// refreshes them while they run.
	mounts := func(ctx context.Context) error {
		for secret, sub := range map[string]string{mesh.SecretServer: "server"} {
			if err := tc.C.WriteSecretDir(ctx, secret, filepath.Join(dir, sub)); err != nil {
				return err
			}
		}
		return tc.C.WriteClustersDir(ctx, clusters)
	}
	if err := mounts(ctx); err != nil {
		return err
	}
	cfg := apiserver.DefaultConfig()
	cfg.ClusterName, cfg.ClusterID, cfg.MaxClusterID = info.Name, info.ID, info.MaxClusterID
	cfg.EtcdDataDir = filepath.Join(dir, "etcd")
	cfg.EtcdListenClientURL = info.Endpoint
	cfg.EtcdCA = filepath.Join(dir, "server", mesh.KeyCACert)
	cfg.EtcdCert = filepath.Join(dir, "server", mesh.KeyCert)
	cfg.EtcdKey = filepath.Join(dir, "server", mesh.KeyKey)
	cfg.HealthAddr = "127.0.0.1:0"
	cfg.UnsafeNoFsync = true
	cfg.LeaseTTL = 10 * time.Second
	// The apiserver acts as its ServiceAccount, so the test runs it with
	// exactly the RBAC deploy/rbac.yaml grants.
	rc := rest.CopyConfig(tc.Kube.Config)
	rc.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + tc.C.Namespace + ":clustermesh-apiserver",
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + tc.C.Namespace, "system:authenticated"},
	}
	srv, err := apiserver.New(cfg, &apiserver.Options{RESTConfig: rc, Logger: logger(t)})
	if err != nil {
		return err
	}
	run("apiserver "+name, srv.Run)

	run("kubelet refresh of "+name, func(ctx context.Context) error {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			if err := mounts(ctx); err != nil && ctx.Err() == nil {
				return err
			}
		}
	})
	a, err := agent.New(agent.Config{
		ClusterName: name, NodeName: "node-" + name, ClustersDir: clusters,
		Datapath: agent.NoopDatapath{}, DatapathName: "none",
		Logger:          logger(t),
		DirPollInterval: 100 * time.Millisecond, ProbeInterval: 200 * time.Millisecond,
		MaxRetryInterval: time.Second, StatusInterval: 300 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	run("agent "+name, a.Run)
	return nil
}

// CreateBackends plays the EndpointSlice controller (and the kubelet
// reporting ready pods): one slice of n ready endpoints for the Service
// namespace/name, addressed from base (e.g. "10.1.0.").
func CreateBackends(t testing.TB, kc *kubetest.Cluster, namespace, name, base string, port int32, n int) {
	t.Helper()
	ready := true
	proto := corev1.ProtocolTCP
	portName := "http"
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name + "-mesh-test", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &proto}},
	}
	for i := range n {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("%s%d", base, i+10)},
			NodeName:   ptr(fmt.Sprintf("node-%d", i)),
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &ready},
		})
	}
	if _, err := kc.Client.DiscoveryV1().EndpointSlices(namespace).Create(context.Background(), slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

// ResourceVersions records the resourceVersion of everything enable owns in
// the cluster.
func ResourceVersions(t testing.TB, c *mesh.Cluster) map[string]string {
	t.Helper()
	ctx := context.Background()
	rv := map[string]string{}
	k := c.Kube
	ns, err := k.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv["namespace"] = ns.ResourceVersion
	secrets, err := k.CoreV1().Secrets(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range secrets.Items {
		rv["secret/"+x.Name] = x.ResourceVersion
	}
	cms, err := k.CoreV1().ConfigMaps(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range cms.Items {
		rv["configmap/"+x.Name] = x.ResourceVersion
	}
	sas, err := k.CoreV1().ServiceAccounts(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range sas.Items {
		rv["serviceaccount/"+x.Name] = x.ResourceVersion
	}
	svcs, err := k.CoreV1().Services(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range svcs.Items {
		rv["service/"+x.Name] = x.ResourceVersion
	}
	d, err := k.AppsV1().StatefulSets(c.Namespace).Get(ctx, mesh.StatefulSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv["statefulset"] = d.ResourceVersion
	ds, err := k.AppsV1().DaemonSets(c.Namespace).Get(ctx, mesh.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv["daemonset"] = ds.ResourceVersion
	cr, err := k.RbacV1().ClusterRoles().Get(ctx, "clustermesh-apiserver", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv["clusterrole"] = cr.ResourceVersion
	crb, err := k.RbacV1().ClusterRoleBindings().Get(ctx, "clustermesh-apiserver", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rv["clusterrolebinding"] = crb.ResourceVersion
	return rv
}
