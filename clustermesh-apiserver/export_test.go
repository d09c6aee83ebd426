package apiserver_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// expectStore checks that the store holds exactly what the cluster's current
// Kubernetes state calls for: no key missing, none stale. Identities have no
// predictable numbers, so they are checked by count and by every ipcache
// entry pointing at an existing identity of the pod's namespace.
func expectStore(ctx context.Context, e *env) error {
	cs, cl := e.kube.Client, e.cfg.ClusterName
	want := map[string]bool{api.ClusterKey(cl): true}
	for _, k := range append(slices.Clone(api.SyncedKinds), api.LocalKinds...) {
		want[api.SyncedKey(cl, k)] = true
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodes.Items {
		want[api.NodeKey(cl, n.Name)] = true
	}
	svcs, err := cs.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	global := map[types.NamespacedName]bool{}
	for _, s := range svcs.Items {
		set, perr := apiserver.ParseServiceAnnotations(s.Annotations)
		if set.Annotated {
			want[api.ServiceKey(cl, s.Namespace, s.Name)] = true
		}
		global[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = perr == nil && set.Global
	}
	eslices, err := cs.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	wantEndpoints := map[string][]string{}
	for _, es := range eslices.Items {
		svc := es.Labels[discoveryv1.LabelServiceName]
		if !global[types.NamespacedName{Namespace: es.Namespace, Name: svc}] {
			continue
		}
		k := api.EndpointSliceKey(cl, es.Namespace, svc, es.Name)
		want[k] = true
		for _, ep := range es.Endpoints {
			wantEndpoints[k] = append(wantEndpoints[k], ep.Addresses...)
		}
	}
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	labelSets := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		want[api.IPCacheKey(cl, netip.MustParseAddr(p.Status.PodIP))] = true
		labelSets[p.Namespace+"/"+p.Labels["app"]] = true
	}

	got, err := e.dump(ctx)
	if err != nil {
		return err
	}
	var missing, stale []string
	identities := map[uint32]*api.Identity{}
	for k, o := range got {
		if id, ok := o.(*api.Identity); ok {
			identities[id.ID] = id
			continue
		}
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing)+len(stale) > 0 {
		slices.Sort(missing)
		slices.Sort(stale)
		return fmt.Errorf("store differs from Kubernetes: missing %v, stale %v", missing, stale)
	}
	if len(identities) != len(labelSets) {
		var ids []string
		for _, id := range identities {
			ids = append(ids, fmt.Sprintf("%d:%s:%v", id.ID, id.Namespace, id.Labels))
		}
		return fmt.Errorf("%d identities in the store %v, want one per label set %v", len(identities), ids, labelSets)
	}
	for k, o := range got {
		switch o := o.(type) {
		case *api.IPCacheEntry:
			id := identities[o.Identity]
			if id == nil || id.Namespace != o.Namespace {
				return fmt.Errorf("%s: identity %d not in the store for namespace %s", k, o.Identity, o.Namespace)
			}
			if c := api.IdentityClusterID(o.Identity, api.DefaultMaxClusterID); c != e.cfg.ClusterID {
				return fmt.Errorf("%s: identity %d carries cluster ID %d, want %d", k, o.Identity, c, e.cfg.ClusterID)
			}
		case *api.EndpointSlice:
			var addrs []string
			for _, ep := range o.Endpoints {
				for _, a := range ep.Addresses {
					addrs = append(addrs, a.String())
				}
			}
			w := wantEndpoints[k]
			slices.Sort(w)
			slices.Sort(addrs)
			if !slices.Equal(addrs, w) {
				return fmt.Errorf("%s: endpoints %v, want %v", k, addrs, w)
			}
		}
	}
	return nil
}

// TestExport drives a real kube-apiserver and kube-controller-manager and
// checks the store after each step: initial export, kubectl annotate, scale
// to zero and back, a bad annotation, a restart with changes made while the
// apiserver was down, and a namespace deletion.
func TestExport(t *testing.T) {
	e := newEnv(t, "c1", 7)
	kubetest.RequireKubectl(t)
	ctx := context.Background()
	cs := e.kube.Client
	ns := "shop-" + kubetest.RandomSuffix(4)

	mkNode(t, e, "node-a", "192.168.1.10", "10.244.1.0/24", "zone-a")
	mkNamespace(t, e, ns, map[string]string{"team": "shop"})
	mkService(t, e, ns, "echo", nil)
	mkService(t, e, ns, "other", map[string]string{apiserver.CiliumAnnotationGlobal: "true"})
	mkService(t, e, ns, "plain", nil)
	for i, ip := range []string{"10.244.1.10", "10.244.1.11"} {
		mkPod(t, e, ns, fmt.Sprintf("echo-%d", i), "echo", "node-a", ip)
	}
	mkPod(t, e, ns, "other-0", "other", "node-a", "10.244.1.20")

	r := e.start()
	poll.Eventually(t, waitTimeout, "initial export", func(ctx context.Context) error {
		if err := expectStore(ctx, e); err != nil {
			return err
		}
		// the slice of "other" must be there with its pod
		got, _ := e.dump(ctx)
		for k := range got {
			if strings.HasPrefix(k, api.ServiceEndpointsPrefix("c1", ns, "other")) {
				return nil
			}
		}
		return fmt.Errorf("no endpoint slice of %s/other yet", ns)
	})

	t.Run("health and metrics", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz"} {
			resp, err := http.Get("http://" + r.srv.HealthAddr() + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: %s", path, resp.Status)
			}
		}
		for metric, want := range map[string]float64{
			`clustermesh_apiserver_exported_objects{kind="ipcache"}`:    3,
			`clustermesh_apiserver_exported_objects{kind="identities"}`: 2,
			`clustermesh_apiserver_exported_objects{kind="services"}`:   1,
			`clustermesh_apiserver_exported_objects{kind="endpoints"}`:  1,
			`clustermesh_apiserver_exported_objects{kind="nodes"}`:      1,
			`clustermesh_apiserver_synced{kind="ipcache"}`:              1,
		} {
			if got := r.metric(t, metric); got != want {
				t.Errorf("%s = %v, want %v", metric, got, want)
			}
		}
		if got := r.metric(t, `clustermesh_apiserver_export_latency_seconds_count{kind="service"}`); got < 3 {
			t.Errorf("export latency observations for services = %v, want >= 3", got)
		}
	})

	t.Run("cluster and node", func(t *testing.T) {
		got, err := e.dump(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wantCluster := &api.Cluster{Name: "c1", ID: 7, MaxClusterID: 255,
			PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, Capabilities: apiserver.Capabilities()}
		if c := got[api.ClusterKey("c1")]; !reflect.DeepEqual(c, wantCluster) {
			t.Errorf("cluster config = %+v, want %+v", c, wantCluster)
		}
		wantNode := &api.Node{Cluster: "c1", Name: "node-a", Zone: "zone-a",
			Addresses: []netip.Addr{netip.MustParseAddr("192.168.1.10")},
			PodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
		if n := got[api.NodeKey("c1", "node-a")]; !reflect.DeepEqual(n, wantNode) {
			t.Errorf("node = %+v, want %+v", n, wantNode)
		}
		e0 := got[api.IPCacheKey("c1", netip.MustParseAddr("10.244.1.10"))].(*api.IPCacheEntry)
		e1 := got[api.IPCacheKey("c1", netip.MustParseAddr("10.244.1.11"))].(*api.IPCacheEntry)
		if e0.Identity != e1.Identity || e0.Node != "node-a" || e0.Pod != "echo-0" || e0.HostIP != netip.MustParseAddr("192.168.1.10") {
			t.Errorf("ipcache entries %+v and %+v: want one identity for both pods of echo, node-a", e0, e1)
		}
		id := got[api.IdentityKey("c1", e0.Identity)].(*api.Identity)
		wantLabels := map[string]string{"app": "echo", apiserver.NamespaceLabelPrefix + "team": "shop",
			apiserver.NamespaceLabelPrefix + "kubernetes.io/metadata.name": ns}
		if id.Namespace != ns || !reflect.DeepEqual(id.Labels, wantLabels) {
			t.Errorf("identity %+v labels %v: want namespace %s, labels %v (pod-template-hash dropped)", id, id.Labels, ns, wantLabels)
		}
	})

	var echoSlice string
	t.Run("kubectl annotate global", func(t *testing.T) {
		if _, err := e.kube.Kubectl(ctx, "annotate", "service", "-n", ns, "echo",
			apiserver.AnnotationGlobal+"=true", apiserver.AnnotationAffinity+"=local", apiserver.AnnotationMinLocalBackends+"=2"); err != nil {
			t.Fatal(err)
		}
		svc, err := cs.CoreV1().Services(ns).Get(ctx, "echo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := &api.Service{Cluster: "c1", ClusterID: 7, Namespace: ns, Name: "echo",
			ClusterIPs: []netip.Addr{netip.MustParseAddr(svc.Spec.ClusterIP)},
			Ports:      []api.ServicePort{{Name: "http", Port: 80, Protocol: api.ProtocolTCP}},
			Global:     true, Shared: true, Affinity: api.AffinityLocal, MinLocalBackends: 2,
			Labels: map[string]string{"tier": "web"}}
		poll.Eventually(t, waitTimeout, "global service exported", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			if s := got[api.ServiceKey("c1", ns, "echo")]; !reflect.DeepEqual(s, want) {
				return fmt.Errorf("service = %+v, want %+v", s, want)
			}
			for k, o := range got {
				if !strings.HasPrefix(k, api.ServiceEndpointsPrefix("c1", ns, "echo")) {
					continue
				}
				es := o.(*api.EndpointSlice)
				echoSlice = k
				wantEPs := []api.Endpoint{
					{Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.10")}, NodeName: "node-a", Zone: "zone-a", Ready: true, Serving: true},
					{Addresses: []netip.Addr{netip.MustParseAddr("10.244.1.11")}, NodeName: "node-a", Zone: "zone-a", Ready: true, Serving: true},
				}
				wantPorts := []api.EndpointPort{{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}}
				if !reflect.DeepEqual(es.Endpoints, wantEPs) || !reflect.DeepEqual(es.Ports, wantPorts) {
					return fmt.Errorf("slice %s = %+v, want endpoints %+v ports %+v", k, es, wantEPs, wantPorts)
				}
				return expectStore(ctx, e)
			}
			return fmt.Errorf("no endpoint slice of echo")
		})
	})

	t.Run("scale to zero and back", func(t *testing.T) {
		rmPod(t, e, ns, "echo-0")
		rmPod(t, e, ns, "echo-1")
		poll.Eventually(t, waitTimeout, "scaled to zero", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			if es, ok := got[echoSlice].(*api.EndpointSlice); !ok || len(es.Endpoints) != 0 {
				return fmt.Errorf("slice %s = %+v, want present and empty", echoSlice, got[echoSlice])
			}
			return expectStore(ctx, e) // ipcache entries and echo's identity gone
		})
		mkPod(t, e, ns, "echo-2", "echo", "node-a", "10.244.1.12")
		mkPod(t, e, ns, "echo-3", "echo", "node-a", "10.244.1.13")
		poll.Eventually(t, waitTimeout, "scaled back", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			if es, ok := got[echoSlice].(*api.EndpointSlice); !ok || len(es.Endpoints) != 2 {
				return fmt.Errorf("slice %s = %+v, want 2 endpoints", echoSlice, got[echoSlice])
			}
			return expectStore(ctx, e)
		})
	})

	t.Run("bad annotation", func(t *testing.T) {
		mkPod(t, e, ns, "bad-0", "bad", "node-a", "10.244.1.30")
		mkService(t, e, ns, "bad", map[string]string{apiserver.AnnotationGlobal: "true", apiserver.AnnotationAffinity: "nearest"})
		poll.Eventually(t, waitTimeout, "bad service exported as non-global, with an Event", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			s, ok := got[api.ServiceKey("c1", ns, "bad")].(*api.Service)
			if !ok || s.Global {
				return fmt.Errorf("service bad = %+v, want exported non-global", got[api.ServiceKey("c1", ns, "bad")])
			}
			evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=bad,reason=InvalidMeshAnnotation"})
			if err != nil {
				return err
			}
			if len(evs.Items) == 0 {
				return fmt.Errorf("no InvalidMeshAnnotation event on service bad")
			}
			if msg := evs.Items[0].Message; !strings.Contains(msg, apiserver.AnnotationAffinity) || !strings.Contains(msg, "nearest") {
				return fmt.Errorf("event message %q does not name the annotation and value", msg)
			}
			return expectStore(ctx, e)
		})
		if v := r.metric(t, "clustermesh_apiserver_services_with_bad_annotations"); v != 1 {
			t.Errorf("services_with_bad_annotations = %v, want 1", v)
		}
		if v := r.metric(t, "clustermesh_apiserver_bad_service_annotations_total"); v != 1 {
			t.Errorf("bad_service_annotations_total = %v, want 1", v)
		}
		// Fixing the value makes it global, with its endpoints.
		if _, err := e.kube.Kubectl(ctx, "annotate", "--overwrite", "service", "-n", ns, "bad", apiserver.AnnotationAffinity+"=remote"); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, waitTimeout, "fixed service global", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			if s, ok := got[api.ServiceKey("c1", ns, "bad")].(*api.Service); !ok || !s.Global || s.Affinity != api.AffinityRemote {
				return fmt.Errorf("service bad = %+v, want global, affinity remote", got[api.ServiceKey("c1", ns, "bad")])
			}
			return expectStore(ctx, e)
		})
	})

	t.Run("restart", func(t *testing.T) {
		// Changes land while the apiserver is down and while it restarts:
		// a pod goes, another comes, a service stops being global, a new
		// global service appears, a node joins.
		r.stop()
		rmPod(t, e, ns, "echo-2")
		mkPod(t, e, ns, "echo-4", "echo", "node-a", "10.244.1.14")
		if _, err := e.kube.Kubectl(ctx, "annotate", "service", "-n", ns, "other", apiserver.CiliumAnnotationGlobal+"-"); err != nil {
			t.Fatal(err)
		}
		mkService(t, e, ns, "late", map[string]string{apiserver.AnnotationGlobal: "true"})
		mkPod(t, e, ns, "late-0", "late", "node-a", "10.244.1.40")
		mkNode(t, e, "node-b", "192.168.1.11", "10.244.2.0/24", "zone-b")
		r = e.start()
		mkPod(t, e, ns, "late-1", "late", "node-b", "10.244.2.41")
		poll.Eventually(t, waitTimeout, "store matches Kubernetes after restart", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			if c := got[api.ClusterKey("c1")].(*api.Cluster); len(c.PodCIDRs) != 2 {
				return fmt.Errorf("cluster pod CIDRs %v, want both nodes'", c.PodCIDRs)
			}
			n := 0
			for k := range got {
				if strings.HasPrefix(k, api.ServiceEndpointsPrefix("c1", ns, "late")) {
					if es := got[k].(*api.EndpointSlice); len(es.Endpoints) == 2 {
						n++
					}
				}
			}
			if n != 1 {
				return fmt.Errorf("slice of late with 2 endpoints: %d found", n)
			}
			return expectStore(ctx, e)
		})
	})

	t.Run("namespace labels", func(t *testing.T) {
		// Namespace labels are part of identities: relabelling the
		// namespace moves its pods to new identities and frees the old.
		if _, err := e.kube.Kubectl(ctx, "label", "namespace", ns, "env=prod"); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, waitTimeout, "identities follow the namespace's labels", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			for _, o := range got {
				if id, ok := o.(*api.Identity); ok && id.Labels[apiserver.NamespaceLabelPrefix+"env"] != "prod" {
					return fmt.Errorf("identity %d has labels %v, without the namespace's env=prod", id.ID, id.Labels)
				}
			}
			return expectStore(ctx, e)
		})
	})

	t.Run("delete namespace", func(t *testing.T) {
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Without a kubelet, pods bound to a node wait for it on graceful
		// deletion; play kubelet and remove them at once.
		poll.Eventually(t, waitTimeout, "pods of the namespace gone", func(ctx context.Context) error {
			pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			zero := int64(0)
			for _, p := range pods.Items {
				if err := cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
					return err
				}
			}
			if len(pods.Items) > 0 {
				return fmt.Errorf("%d pods left", len(pods.Items))
			}
			return nil
		})
		poll.Eventually(t, waitTimeout, "nothing of the namespace left in the store", func(ctx context.Context) error {
			got, err := e.dump(ctx)
			if err != nil {
				return err
			}
			for k, o := range got {
				if strings.Contains(k, "/"+ns+"/") {
					return fmt.Errorf("key %s left", k)
				}
				if id, ok := o.(*api.Identity); ok {
					return fmt.Errorf("identity %d of %s left", id.ID, id.Namespace)
				}
				if ip, ok := o.(*api.IPCacheEntry); ok {
					return fmt.Errorf("ipcache %s left", ip.IP)
				}
			}
			return nil
		})
	})
}
