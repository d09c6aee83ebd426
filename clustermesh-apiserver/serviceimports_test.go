package apiserver_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/kvstore"
)

// mcsCluster is one cluster of an MCS test: a control plane with the MCS
// CRDs and a clustermesh-apiserver whose mesh cache follows the others.
type mcsCluster struct {
	*env
	dyn dynamic.Interface
}

// newMCSPair starts clusters c1 and c2, connected both ways (each one's
// clusters directory names the other's store, read as user remote), with
// the mesh cache on, as `clustermesh enable` and `connect` leave them.
func newMCSPair(t testing.TB) (c1, c2 *mcsCluster) {
	t.Helper()
	envs := []*env{newEnv(t, "c1", 1), newEnv(t, "c2", 2)}
	var out []*mcsCluster
	for i, e := range envs {
		peer := envs[1-i]
		dir := t.TempDir()
		crt, key := peer.certs.Client(kvstore.UserRemote)
		conn := fmt.Sprintf("endpoints: [%q]\ntrusted-ca-file: %s\ncert-file: %s\nkey-file: %s\n", peer.cfg.EtcdListenClientURL, peer.storeCA, crt, key)
		if err := os.WriteFile(filepath.Join(dir, peer.cfg.ClusterName), []byte(conn), 0o600); err != nil {
			t.Fatal(err)
		}
		e.cfg.ClustersDir, e.cfg.ClustersDirPoll, e.cfg.MeshCache = dir, 200*time.Millisecond, true
		out = append(out, &mcsCluster{env: e, dyn: installMCS(t, e)})
	}
	for i, c := range out {
		mkNode(t, c.env, "node-"+c.cfg.ClusterName, fmt.Sprintf("192.168.%d.10", i+1), fmt.Sprintf("10.%d.1.0/24", i+1), "zone-a")
		c.start()
	}
	return out[0], out[1]
}

func (c *mcsCluster) export(t testing.TB, ns, name string) {
	t.Helper()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
		"metadata": map[string]any{"name": name, "namespace": ns},
	}}
	if _, err := c.dyn.Resource(serviceExportGVR).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *mcsCluster) unexport(t *testing.T, ns, name string) {
	t.Helper()
	if err := c.dyn.Resource(serviceExportGVR).Namespace(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// service creates a Service of app name with the given ports (name:port).
func (c *mcsCluster) service(t *testing.T, ns, name string, ports ...corev1.ServicePort) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": name}, Ports: ports},
	}
	if _, err := c.kube.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func tcp(name string, port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}
}

// imported describes c's ServiceImport ns/name and derived Service: type,
// ports, ips, clusters, conditions; an error when either is missing or
// they disagree.
func (c *mcsCluster) imported(ctx context.Context, ns, name string) (string, error) {
	si, err := c.dyn.Resource(serviceImportGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	typ, _, _ := unstructured.NestedString(si.Object, "spec", "type")
	aff, _, _ := unstructured.NestedString(si.Object, "spec", "sessionAffinity")
	if t, ok, _ := unstructured.NestedInt64(si.Object, "spec", "sessionAffinityConfig", "clientIP", "timeoutSeconds"); ok {
		aff += fmt.Sprintf("/%ds", t)
	}
	ips, _, _ := unstructured.NestedStringSlice(si.Object, "spec", "ips")
	ports, _, _ := unstructured.NestedSlice(si.Object, "spec", "ports")
	var ps []string
	for _, p := range ports {
		m := p.(map[string]any)
		ps = append(ps, fmt.Sprintf("%v:%v/%v", m["name"], m["port"], m["protocol"]))
	}
	cl, _, _ := unstructured.NestedSlice(si.Object, "status", "clusters")
	var clusters []string
	for _, x := range cl {
		clusters = append(clusters, fmt.Sprint(x.(map[string]any)["cluster"]))
	}
	conds, err := conditions(ctx, c.dyn, serviceImportGVR, ns, name)
	if err != nil {
		return "", err
	}
	svcs, err := c.kube.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{LabelSelector: apiserver.LabelServiceName + "=" + name})
	if err != nil {
		return "", err
	}
	if len(svcs.Items) != 1 {
		return "", fmt.Errorf("%d derived Services of %s/%s", len(svcs.Items), ns, name)
	}
	d := svcs.Items[0]
	if !strings.HasPrefix(d.Name, "derived-") || d.Spec.Selector != nil || len(d.OwnerReferences) != 1 || d.OwnerReferences[0].UID != si.GetUID() {
		return "", fmt.Errorf("derived Service %s: selector %v, owners %v", d.Name, d.Spec.Selector, d.OwnerReferences)
	}
	if typ == "ClusterSetIP" && !slices.Equal(ips, d.Spec.ClusterIPs) {
		return "", fmt.Errorf("ServiceImport ips %v, derived Service %s cluster IPs %v", ips, d.Name, d.Spec.ClusterIPs)
	}
	if d.Spec.SessionAffinity != corev1.ServiceAffinity(strings.Split(aff, "/")[0]) {
		return "", fmt.Errorf("ServiceImport session affinity %s, derived Service %s", aff, d.Spec.SessionAffinity)
	}
	return fmt.Sprintf("%s ports=%v affinity=%s clusters=%v ready=%s conflict=%s", typ, ps, aff, clusters, conds["Ready"], conds["Conflict"]), nil
}

// storeEntry returns c's own store entry of ns/name ("" when absent).
func (c *mcsCluster) storeEntry(ctx context.Context, ns, name string) (*api.Service, error) {
	got, err := c.dump(ctx)
	if err != nil {
		return nil, err
	}
	s, _ := got[api.ServiceKey(c.cfg.ClusterName, ns, name)].(*api.Service)
	return s, nil
}

// event finds a Warning Event of c in ns whose reason is reason and whose
// message contains every part.
func (c *mcsCluster) event(ctx context.Context, ns, reason string, parts ...string) error {
	evs, err := c.kube.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var seen []string
	for _, ev := range evs.Items {
		if ev.Reason != reason {
			continue
		}
		ok := ev.Type == corev1.EventTypeWarning
		for _, p := range parts {
			ok = ok && strings.Contains(ev.Message, p)
		}
		if ok {
			return nil
		}
		seen = append(seen, ev.Message)
	}
	return fmt.Errorf("no Warning Event %s in %s naming %q (have %q)", reason, ns, parts, seen)
}

// TestServiceImport runs two clusters with real kube-apiservers, each with
// a clustermesh-apiserver and the mesh cache, connected both ways. A
// Service exported only in c2 is imported into c1 (ServiceImport and
// derived Service with the right ports, clusterset IP and exporters; the
// clusterset IP in c1's store entry beside c2's endpoints for the agents);
// a namespace missing in c1 is reported and the import follows when it is
// created; an ExternalName Service is refused; a later export in c1 whose
// port disagrees loses to c2's older export and both sides say so, as does
// a ClusterIP export against an older headless one; a ServiceImport the
// mesh did not write is never taken over; removing
// the exports removes the import. Each bad input leaves the others alone.
func TestServiceImport(t *testing.T) {
	c1, c2 := newMCSPair(t)
	ctx := context.Background()
	mkNamespace(t, c1.env, "shop", nil)
	mkNamespace(t, c2.env, "shop", nil)
	mkNamespace(t, c2.env, "late", nil)
	c2.service(t, "shop", "web", tcp("http", 80), tcp("admin", 9090))
	// Session affinity is part of the import (KEP: it follows the exports).
	if _, err := c2.kube.Client.CoreV1().Services("shop").Patch(ctx, "web", types.MergePatchType,
		[]byte(`{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":300}}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	mkPod(t, c2.env, "shop", "web-0", "web", "node-c2", "10.2.1.10")
	c2.export(t, "shop", "web")
	c2.service(t, "late", "api", tcp("grpc", 50051))
	c2.export(t, "late", "api")
	if _, err := c2.kube.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "shop"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c2.export(t, "shop", "ext")

	t.Run("export in c2 only is imported into c1", func(t *testing.T) {
		want := `ClusterSetIP ports=[http:80/TCP admin:9090/TCP] affinity=ClientIP/300s clusters=[c2] ready=True/Imported conflict=False/NoConflicts`
		poll.Eventually(t, waitTimeout, "c1 imports shop/web", func(ctx context.Context) error {
			got, err := c1.imported(ctx, "shop", "web")
			if err == nil && got != want {
				err = fmt.Errorf("import %s, want %s", got, want)
			}
			return err
		})
		// c1's store carries the clusterset IP as the frontend of shop/web
		// and, through the mesh cache, c2's exported backends: what the
		// agents' merger joins.
		poll.Eventually(t, waitTimeout, "clusterset IP and c2's endpoints in c1's store", func(ctx context.Context) error {
			d, err := c1.kube.Client.CoreV1().Services("shop").List(ctx, metav1.ListOptions{LabelSelector: apiserver.LabelServiceName + "=web"})
			if err != nil || len(d.Items) != 1 {
				return fmt.Errorf("derived Service: %v", err)
			}
			s, err := c1.storeEntry(ctx, "shop", "web")
			if err != nil {
				return err
			}
			if s == nil || !s.Global || s.Shared || len(s.ClusterIPs) != 0 || len(s.ClusterSetIPs) != 1 ||
				s.ClusterSetIPs[0] != netip.MustParseAddr(d.Items[0].Spec.ClusterIP) || len(s.Ports) != 2 {
				return fmt.Errorf("c1's entry %+v, want global, not shared, clusterset IP %s, 2 ports", s, d.Items[0].Spec.ClusterIP)
			}
			got, err := c1.dump(ctx)
			if err != nil {
				return err
			}
			for k, o := range got {
				if es, ok := o.(*api.EndpointSlice); ok && strings.HasPrefix(k, api.ServiceEndpointsPrefix("c2", "shop", "web")) &&
					len(es.Endpoints) == 1 && es.Endpoints[0].Addresses[0] == netip.MustParseAddr("10.2.1.10") {
					return nil
				}
			}
			return fmt.Errorf("no copy of c2's endpoint 10.2.1.10 of shop/web in c1's store")
		})
		// The exporter imports its own export too (KEP: every cluster of
		// the clusterset), its entry keeping its cluster IP.
		poll.Eventually(t, waitTimeout, "c2 imports its own export", func(ctx context.Context) error {
			s, err := c2.storeEntry(ctx, "shop", "web")
			if err == nil && (s == nil || !s.ServiceExport || s.ExportCreated.IsZero() || len(s.ClusterIPs) != 1 || len(s.ClusterSetIPs) != 1) {
				err = fmt.Errorf("c2's entry %+v, want its export with a cluster IP and a clusterset IP", s)
			}
			return err
		})
	})

	t.Run("headless: the exporter's endpoints and hostnames in labelled EndpointSlices", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
			Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": "db"}, Ports: []corev1.ServicePort{tcp("sql", 5432)}},
		}
		if _, err := c2.kube.Client.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "shop", Labels: map[string]string{"app": "db"}},
			Spec: corev1.PodSpec{NodeName: "node-c2", Hostname: "db-0", Subdomain: "db",
				Containers: []corev1.Container{{Name: "c", Image: "db", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}
		pod, err := c2.kube.Client.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.2.1.20", PodIPs: []corev1.PodIP{{IP: "10.2.1.20"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		if _, err := c2.kube.Client.CoreV1().Pods("shop").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c2.export(t, "shop", "db")
		poll.Eventually(t, waitTimeout, "c1 imports shop/db headless with c2's endpoint", func(ctx context.Context) error {
			got, err := c1.imported(ctx, "shop", "db")
			if err != nil {
				return err
			}
			if want := `Headless ports=[sql:5432/TCP] affinity=None clusters=[c2] ready=True/Imported conflict=False/NoConflicts`; got != want {
				return fmt.Errorf("import %s, want %s", got, want)
			}
			sl, err := c1.kube.Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{
				LabelSelector: apiserver.LabelServiceName + "=db," + apiserver.LabelSourceCluster + "=c2"})
			if err != nil {
				return err
			}
			for _, es := range sl.Items {
				for _, ep := range es.Endpoints {
					if ep.Hostname != nil && *ep.Hostname == "db-0" && slices.Equal(ep.Addresses, []string{"10.2.1.20"}) && len(es.Ports) == 1 && *es.Ports[0].Port == 8080 {
						return nil
					}
				}
			}
			return fmt.Errorf("no EndpointSlice of shop/db from c2 with db-0 at 10.2.1.20:8080 in c1 (%d slices)", len(sl.Items))
		})
	})

	t.Run("missing namespace is reported, then imported once created", func(t *testing.T) {
		poll.Eventually(t, waitTimeout, "NamespaceMissing Event in c1", func(ctx context.Context) error {
			return c1.event(ctx, "default", "NamespaceMissing", "cluster c1", "metadata.namespace", "late/api", "c2")
		})
		if _, err := c1.dyn.Resource(serviceImportGVR).Namespace("late").Get(ctx, "api", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("ServiceImport late/api in c1 without its namespace: %v", err)
		}
		mkNamespace(t, c1.env, "late", nil)
		poll.Eventually(t, waitTimeout, "c1 imports late/api", func(ctx context.Context) error {
			_, err := c1.imported(ctx, "late", "api")
			return err
		})
	})

	t.Run("ExternalName is refused", func(t *testing.T) {
		want := map[string]string{"Valid": "False/InvalidServiceType", "Ready": "False/NotExported"}
		poll.Eventually(t, waitTimeout, "ServiceExport shop/ext refused", func(ctx context.Context) error {
			got, err := conditions(ctx, c2.dyn, serviceExportGVR, "shop", "ext")
			if err == nil && fmt.Sprint(got) != fmt.Sprint(want) {
				err = fmt.Errorf("conditions %v, want %v", got, want)
			}
			if err == nil {
				err = c2.event(ctx, "shop", "InvalidServiceType", "cluster c2", "shop/ext", "spec.type", "ExternalName")
			}
			return err
		})
		if _, err := c1.dyn.Resource(serviceImportGVR).Namespace("shop").Get(ctx, "ext", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("ServiceImport shop/ext in c1: %v", err)
		}
	})

	t.Run("an object the mesh did not write is left alone", func(t *testing.T) {
		// Another MCS controller's (or a user's) ServiceImport in c1: c2's
		// export of the same name must not take it over.
		mine := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
			"metadata": map[string]any{"name": "mine", "namespace": "shop"},
			"spec":     map[string]any{"type": "ClusterSetIP", "ports": []any{map[string]any{"port": int64(1), "protocol": "TCP"}}},
		}}
		mine, err := c1.dyn.Resource(serviceImportGVR).Namespace("shop").Create(ctx, mine, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c2.service(t, "shop", "mine", tcp("http", 80))
		c2.export(t, "shop", "mine")
		poll.Eventually(t, waitTimeout, "ImportNotOwned Event in c1", func(ctx context.Context) error {
			return c1.event(ctx, "shop", "ImportNotOwned", "cluster c1", "shop/mine")
		})
		got, err := c1.dyn.Resource(serviceImportGVR).Namespace("shop").Get(ctx, "mine", metav1.GetOptions{})
		if err != nil || got.GetResourceVersion() != mine.GetResourceVersion() {
			t.Fatalf("ServiceImport shop/mine written by the mesh (%v)", err)
		}
		if d, err := c1.kube.Client.CoreV1().Services("shop").List(ctx, metav1.ListOptions{LabelSelector: apiserver.LabelServiceName + "=mine"}); err != nil || len(d.Items) > 0 {
			t.Fatalf("derived Service for a ServiceImport the mesh does not own (%v)", err)
		}
	})

	t.Run("conflict: the oldest export wins", func(t *testing.T) {
		// Export times have a resolution of a second: c1's must be later.
		time.Sleep(1100 * time.Millisecond)
		c1.service(t, "shop", "web", tcp("http", 8080))
		c1.export(t, "shop", "web")
		want := `ClusterSetIP ports=[http:80/TCP admin:9090/TCP] affinity=ClientIP/300s clusters=[c1 c2] ready=True/Imported conflict=True/PortConflict`
		for _, c := range []*mcsCluster{c1, c2} {
			poll.Eventually(t, waitTimeout, c.cfg.ClusterName+"'s import in conflict", func(ctx context.Context) error {
				got, err := c.imported(ctx, "shop", "web")
				if err == nil && got != want {
					err = fmt.Errorf("import %s, want %s", got, want)
				}
				return err
			})
		}
		for _, c := range []struct {
			c    *mcsCluster
			want string
		}{{c1, "True/PortConflict"}, {c2, "True/PortConflict"}} {
			poll.Eventually(t, waitTimeout, c.c.cfg.ClusterName+"'s ServiceExport conflict condition", func(ctx context.Context) error {
				got, err := conditions(ctx, c.c.dyn, serviceExportGVR, "shop", "web")
				if err == nil && got["Conflict"] != c.want {
					err = fmt.Errorf("conditions %v, want Conflict %s", got, c.want)
				}
				return err
			})
		}
		poll.Eventually(t, waitTimeout, "ExportConflict Event in c1", func(ctx context.Context) error {
			return c1.event(ctx, "shop", "ExportConflict", "shop/web", `spec.ports["http"]`, "c1", "c2")
		})
		// Headlessness: c2's older headless export of shop/db wins over
		// c1's ClusterIP one.
		c1.service(t, "shop", "db", tcp("sql", 5432))
		c1.export(t, "shop", "db")
		poll.Eventually(t, waitTimeout, "type conflict on shop/db", func(ctx context.Context) error {
			got, err := c1.imported(ctx, "shop", "db")
			if want := `Headless ports=[sql:5432/TCP] affinity=None clusters=[c1 c2] ready=True/Imported conflict=True/TypeConflict`; err == nil && got != want {
				return fmt.Errorf("import %s, want %s", got, want)
			}
			if err == nil {
				var conds map[string]string
				if conds, err = conditions(ctx, c1.dyn, serviceExportGVR, "shop", "db"); err == nil && conds["Conflict"] != "True/TypeConflict" {
					err = fmt.Errorf("c1's ServiceExport shop/db conditions %v", conds)
				}
			}
			return err
		})
		// The other import is unaffected.
		if _, err := c1.imported(ctx, "late", "api"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("removal", func(t *testing.T) {
		c1.unexport(t, "shop", "web")
		c2.unexport(t, "shop", "web")
		for _, c := range []*mcsCluster{c1, c2} {
			poll.Eventually(t, waitTimeout, c.cfg.ClusterName+" drops the import of shop/web", func(ctx context.Context) error {
				if _, err := c.dyn.Resource(serviceImportGVR).Namespace("shop").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
					return fmt.Errorf("ServiceImport still there (%v)", err)
				}
				d, err := c.kube.Client.CoreV1().Services("shop").List(ctx, metav1.ListOptions{LabelSelector: apiserver.LabelServiceName + "=web"})
				if err != nil || len(d.Items) > 0 {
					return fmt.Errorf("derived Service still there (%v)", err)
				}
				return nil
			})
		}
		poll.Eventually(t, waitTimeout, "c1's store entry of shop/web gone", func(ctx context.Context) error {
			s, err := c1.storeEntry(ctx, "shop", "web")
			if err == nil && s != nil {
				err = fmt.Errorf("entry %+v", s)
			}
			return err
		})
		if _, err := c1.imported(ctx, "late", "api"); err != nil {
			t.Fatal(err)
		}
	})
}
