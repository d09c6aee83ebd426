package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/clustermesh/clustermesh/cli/internal/clitest"
	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/internal/poll"
)

// TestMultiClusterServices: against a real kube-apiserver with the CRDs
// enable installs and a clustermesh-apiserver running with exactly the RBAC
// of deploy/rbac.yaml, a ServiceExport makes the cluster import its own
// export (KEP: every cluster of the clusterset, exporters included);
// service list shows the export and the import with their conditions and
// the clusterset IP, and status warns of a refused ExternalName export,
// naming the cluster, the object and the field.
func TestMultiClusterServices(t *testing.T) {
	env := clitest.Start(t, clitest.Spec{Name: "c1", NodeIP: "127.0.0.41", PodCIDR: "10.41.0.0/24"})
	ctx := context.Background()
	c := env.Clusters["c1"].C
	kube := env.Clusters["c1"].Kube.Client
	if _, err := mesh.Enable(ctx, c, mesh.EnableOptions{ClusterName: "c1", ClusterID: 1}); err != nil {
		t.Fatal(err)
	}
	env.RunProcesses(t, "c1")
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"}, Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "demo"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}},
	} {
		if _, err := kube.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceExport",
			"metadata": map[string]any{"name": svc.Name, "namespace": "demo"},
		}}
		gvr := schema.GroupVersionResource{Group: "multicluster.x-k8s.io", Version: "v1beta1", Resource: "serviceexports"}
		if _, err := c.Dynamic.Resource(gvr).Namespace("demo").Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	clitest.CreateBackends(t, env.Clusters["c1"].Kube, "demo", "web", "10.41.0.", 8080, 2)

	poll.Eventually(t, 90*time.Second, "service list shows the export and the import", func(ctx context.Context) error {
		res, err := mesh.ListGlobalServices(ctx, c, mesh.StoreOptions{})
		if err != nil {
			return err
		}
		if res.MCS == nil || len(res.MCS.Imports) != 1 || len(res.MCS.Exports) != 2 {
			return fmt.Errorf("MCS view %+v", res.MCS)
		}
		im := res.MCS.Imports[0]
		if im.Name != "web" || im.Type != "ClusterSetIP" || len(im.IPs) != 1 || fmt.Sprint(im.Clusters) != "[c1]" || im.Condition("Ready").Status != "True" {
			return fmt.Errorf("import %+v", im)
		}
		if ex := res.MCS.Exports[1]; ex.Name != "web" || ex.Condition("Valid").Status != "True" {
			return fmt.Errorf("export %+v", ex)
		}
		if len(res.Services) != 1 || len(res.Services[0].Clusters) != 1 {
			return fmt.Errorf("services %+v", res.Services)
		}
		in := res.Services[0].Clusters[0]
		if in.Via != "ServiceExport" || fmt.Sprint(in.ClusterSetIPs) != fmt.Sprint(im.IPs) || in.Ready != 2 {
			return fmt.Errorf("c1's instance %+v, want via ServiceExport, clusterset IPs %v, 2 ready", in, im.IPs)
		}
		return nil
	})
	poll.Eventually(t, 90*time.Second, "status warns of the refused ExternalName export", func(ctx context.Context) error {
		st, err := mesh.GetStatus(ctx, c, mesh.StatusOptions{})
		if err != nil {
			return err
		}
		for _, p := range st.Warnings {
			if errors.Is(p.Err, mesh.ErrMCS) && strings.Contains(p.Reason, "cluster c1") && strings.Contains(p.Reason, "demo/ext") &&
				strings.Contains(p.Reason, "spec.type") && p.Fix != "" {
				return nil
			}
		}
		return fmt.Errorf("warnings %v", st.Warnings)
	})
}
