package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"

	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// env is a real Kubernetes control plane plus what a clustermesh-apiserver
// needs to run against it with its embedded etcd, and an admin client of
// that etcd for the test's assertions.
type env struct {
	t       testing.TB
	kube    *kubetest.Cluster
	cfg     apiserver.Config
	storeCA string
	admin   [2]string // cert, key
	store   *kvstore.Client
	// certs issued the store's certificates: tests issue peers' client
	// certificates with it.
	certs *pkitest.Files
}

func newEnv(t testing.TB, cluster string, id uint32) *env {
	t.Helper()
	kube := kubetest.Start(t, &kubetest.Options{ControllerManager: true})
	certs := pkitest.New(t, cluster)
	admCert, admKey := certs.Client(kvstore.UserAdmin)
	// A fixed port, so the test's client finds the store again after an
	// apiserver restart.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	cfg := apiserver.DefaultConfig()
	cfg.ClusterName = cluster
	cfg.ClusterID = id
	cfg.EtcdDataDir = filepath.Join(certs.Dir, "etcd")
	cfg.EtcdListenClientURL = "https://127.0.0.1:" + strconv.Itoa(port)
	cfg.EtcdCA, cfg.EtcdCert, cfg.EtcdKey = certs.CAFile, certs.ServerCert, certs.ServerKey
	cfg.HealthAddr = "127.0.0.1:0"
	cfg.UnsafeNoFsync = true
	cfg.LeaseTTL = time.Minute
	return &env{t: t, kube: kube, cfg: cfg, storeCA: cfg.EtcdCA, admin: [2]string{admCert, admKey}, certs: certs}
}

// running is one apiserver started by a test.
type running struct {
	t      testing.TB
	srv    *apiserver.Server
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// start runs an apiserver until stop or the end of the test and waits until
// it is ready.
func (e *env) start() *running {
	e.t.Helper()
	r := e.startNoWait()
	poll.Eventually(e.t, 2*time.Minute, "apiserver ready", func(context.Context) error {
		select {
		case err := <-r.done:
			r.done <- err
			e.t.Fatalf("apiserver exited before ready: %v", err)
		default:
		}
		if !r.srv.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	return r
}

// startNoWait runs an apiserver until stop or the end of the test.
func (e *env) startNoWait() *running {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := apiserver.New(e.cfg, &apiserver.Options{Logger: log, Registerer: reg, Gatherer: reg, RESTConfig: e.kube.Config})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{t: e.t, srv: srv, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Run(ctx) }()
	e.t.Cleanup(r.stop)
	if e.store == nil {
		c, err := kvstore.New(context.Background(), kvstore.Config{
			Endpoints: []string{e.cfg.EtcdListenClientURL},
			CAFile:    e.storeCA, CertFile: e.admin[0], KeyFile: e.admin[1],
		})
		if err != nil {
			e.t.Fatal(err)
		}
		e.store = c
		e.t.Cleanup(func() { c.Close() })
	}
	return r
}

// stop ends the apiserver and waits for Run to return. It is called by tests
// and again by cleanup; only the first call waits, and an error from Run
// fails the test rather than panicking, so cleanup never blocks on a second
// receive.
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		err := <-r.done
		r.done <- err
		if err != nil {
			r.t.Errorf("apiserver Run: %v", err)
		}
	})
}

// metric returns the value of a metric sample, rendered as in the text
// exposition ("name{label=\"v\"}").
func (r *running) metric(t testing.TB, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.srv.HealthAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// dump returns every key of the cluster under api.KeyPrefix, decoded (synced
// canaries map to nil).
func (e *env) dump(ctx context.Context) (map[string]api.Object, error) {
	kvs, err := e.store.List(ctx, api.KeyPrefix, kvstore.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]api.Object{}
	for _, kv := range kvs {
		k := kv.Key
		pk, err := api.ParseKey(k)
		if err != nil {
			return nil, err
		}
		if pk.Kind == api.KindSynced {
			out[k] = nil
			continue
		}
		o, err := api.Decode(k, kv.Value)
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", k, err)
		}
		out[k] = o
	}
	return out, nil
}

// waitTimeout bounds a wait for the apiserver's exports to converge; a
// liveness bound of a broken run, not a performance assertion.
const waitTimeout = 90 * time.Second

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// Kubernetes object helpers.

func mkNamespace(t testing.TB, e *env, name string, labels map[string]string) {
	t.Helper()
	_, err := e.kube.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func mkNode(t testing.TB, e *env, name, ip, podCIDR, zone string) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
	}
	n, err := e.kube.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	if _, err := e.kube.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func mkService(t testing.TB, e *env, ns, name string, annotations map[string]string) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: annotations, Labels: map[string]string{"tier": "web"}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	svc, err := e.kube.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// mkPod creates a pod of app and sets its status as a kubelet would: bound
// to node, running, ready, with ip.
func mkPod(t testing.TB, e *env, ns, name, app, node, ip string) {
	t.Helper()
	if err := createPod(context.Background(), e, ns, name, app, node, ip); err != nil {
		t.Fatal(err)
	}
}

func createPod(ctx context.Context, e *env, ns, name, app, node, ip string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
			Labels: map[string]string{"app": app, "pod-template-hash": "5d8f9c"}},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "echo", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		},
	}
	pod, err := e.kube.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	pod.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		HostIP:     "192.168.1.10",
		PodIP:      ip,
		PodIPs:     []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
	}
	_, err = e.kube.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

// rmPod deletes a pod at once, as a kubelet confirming its termination.
func rmPod(t testing.TB, e *env, ns, name string) {
	t.Helper()
	if err := deletePod(context.Background(), e, ns, name); err != nil {
		t.Fatal(err)
	}
}

func deletePod(ctx context.Context, e *env, ns, name string) error {
	zero := int64(0)
	return e.kube.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}
