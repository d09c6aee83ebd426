package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
	apiserver "github.com/clustermesh/clustermesh/clustermesh-apiserver"
	"github.com/clustermesh/clustermesh/internal/poll"
)

func TestNamespaceGlobal(t *testing.T) {
	for _, tc := range []struct {
		ann     map[string]string
		def     bool
		want    bool
		wantErr bool
	}{
		{nil, true, true, false},
		{nil, false, false, false},
		{map[string]string{apiserver.AnnotationGlobalNamespace: "false"}, true, false, false},
		{map[string]string{apiserver.AnnotationGlobalNamespace: "true"}, false, true, false},
		{map[string]string{apiserver.CiliumAnnotationGlobalNamespace: "true"}, false, true, false},
		// Ours wins over Cilium's.
		{map[string]string{apiserver.AnnotationGlobalNamespace: "false", apiserver.CiliumAnnotationGlobalNamespace: "true"}, true, false, false},
		{map[string]string{apiserver.AnnotationGlobalNamespace: "yes please"}, true, true, true},
	} {
		got, err := apiserver.NamespaceGlobal(tc.ann, tc.def)
		if got != tc.want || (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, apiserver.ErrBadAnnotation)) {
			t.Errorf("NamespaceGlobal(%v, %v) = %v, %v; want %v, error %v", tc.ann, tc.def, got, err, tc.want, tc.wantErr)
		}
	}
}

// exportedNamespaces maps each namespace to the kinds of its objects in the
// store (services, endpoint slices, identities, ipcache entries).
func exportedNamespaces(ctx context.Context, e *env) (map[string][]string, error) {
	got, err := e.dump(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	add := func(ns, kind string) {
		if !slices.Contains(out[ns], kind) {
			out[ns] = append(out[ns], kind)
			slices.Sort(out[ns])
		}
	}
	for _, o := range got {
		switch o := o.(type) {
		case *api.Service:
			add(o.Namespace, "service")
		case *api.EndpointSlice:
			add(o.Namespace, "endpoints")
		case *api.Identity:
			add(o.Namespace, "identity")
		case *api.IPCacheEntry:
			add(o.Namespace, "ipcache")
		}
	}
	return out, nil
}

// TestGlobalNamespaces: against a real kube-apiserver and controller manager,
// a namespace annotated clustermesh.io/global-namespace=false exports nothing
// (no identity, ipcache entry, service or endpoints, although its service is
// annotated global), the others everything; flipping the annotations moves
// the exports both ways without a restart.
func TestGlobalNamespaces(t *testing.T) {
	e := newEnv(t, "c1", 3)
	ctx := context.Background()
	mkNode(t, e, "node-a", "192.168.1.10", "10.244.1.0/24", "zone-a")
	mkNamespace(t, e, "public", nil)
	mkNamespace(t, e, "private", nil)
	annotate := func(ns, value string) {
		t.Helper()
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, apiserver.AnnotationGlobalNamespace, value)
		if _, err := e.kube.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	annotate("private", "false")
	for i, ns := range []string{"public", "private"} {
		mkService(t, e, ns, "echo", map[string]string{apiserver.AnnotationGlobal: "true"})
		mkPod(t, e, ns, "echo-0", "echo", "node-a", fmt.Sprintf("10.244.1.%d", 10+i))
	}
	all := []string{"endpoints", "identity", "ipcache", "service"}
	want := func(step string, exp map[string][]string) {
		t.Helper()
		poll.Eventually(t, waitTimeout, step, func(ctx context.Context) error {
			got, err := exportedNamespaces(ctx, e)
			if err != nil {
				return err
			}
			for _, ns := range []string{"public", "private"} {
				if !slices.Equal(got[ns], exp[ns]) {
					return fmt.Errorf("namespace %s exports %v, want %v", ns, got[ns], exp[ns])
				}
			}
			return nil
		})
	}
	e.start()
	want("a namespace annotated false exports nothing", map[string][]string{"public": all})
	annotate("private", "true")
	want("annotated true, it exports everything", map[string][]string{"public": all, "private": all})
	annotate("public", "false")
	want("and the other one withdraws everything", map[string][]string{"private": all})
}
