package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// Service annotations the apiserver reads (see docs/cli.md).
const (
	AnnotationGlobal           = "clustermesh.io/global"
	AnnotationShared           = "clustermesh.io/shared"
	AnnotationAffinity         = "clustermesh.io/affinity"
	AnnotationMinLocalBackends = "clustermesh.io/min-local-backends"

	ciliumAnnotationGlobal       = "service.cilium.io/global"
	ciliumLegacyAnnotationGlobal = "io.cilium/global-service"
)

// GlobalOptions are the mesh settings of a service. Nil fields leave the
// current annotation as it is.
type GlobalOptions struct {
	// Global false removes every mesh annotation.
	Global           bool
	Shared           *bool
	Affinity         *api.Affinity
	MinLocalBackends *uint32
}

// ParseServiceRef splits "namespace/name" (or "name", in namespace
// "default").
func ParseServiceRef(ref string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(ref, "/")
	if !ok {
		ns, n = "default", ref
	}
	if ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("%w: service %q: want NAMESPACE/NAME", ErrInvalidArgument, ref)
	}
	return ns, n, nil
}

// SetGlobal annotates a Service with its mesh settings after validating
// them. It is an annotate: the Service's other fields and annotations are
// left alone, and setting the same values again changes nothing.
func SetGlobal(ctx context.Context, c *Cluster, namespace, name string, opts GlobalOptions) error {
	what := fmt.Sprintf("context %s: service %s/%s", c.Context, namespace, name)
	if opts.Affinity != nil {
		if err := api.ValidateAffinity(*opts.Affinity); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	svc, err := c.Kube.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	ann := map[string]any{}
	if !opts.Global {
		for _, k := range []string{AnnotationGlobal, AnnotationShared, AnnotationAffinity, AnnotationMinLocalBackends} {
			if _, ok := svc.Annotations[k]; ok {
				ann[k] = nil
			}
		}
		// Cilium's annotations are honoured too; the project's own wins, so
		// an explicit "false" overrides them without touching them.
		for _, k := range []string{ciliumAnnotationGlobal, ciliumLegacyAnnotationGlobal} {
			if svc.Annotations[k] == "true" {
				ann[AnnotationGlobal] = "false"
			}
		}
	} else {
		ann[AnnotationGlobal] = "true"
		if opts.Shared != nil {
			ann[AnnotationShared] = strconv.FormatBool(*opts.Shared)
		}
		if opts.Affinity != nil {
			if *opts.Affinity == "" {
				ann[AnnotationAffinity] = nil
			} else {
				ann[AnnotationAffinity] = string(*opts.Affinity)
			}
		}
		if opts.MinLocalBackends != nil {
			ann[AnnotationMinLocalBackends] = strconv.FormatUint(uint64(*opts.MinLocalBackends), 10)
		}
	}
	changed := false
	for k, v := range ann {
		cur, ok := svc.Annotations[k]
		if (v == nil && ok) || (v != nil && (!ok || cur != v.(string))) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if _, err := c.Kube.CoreV1().Services(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("%s: annotate: %w", what, err)
	}
	return nil
}

// GlobalService is one global service across the clusters of the mesh.
type GlobalService struct {
	Namespace string            `json:"namespace"`
	Name      string            `json:"name"`
	Clusters  []ServiceInstance `json:"clusters"`
	// Backends is the total of ready backends the mesh shares.
	Backends int `json:"backends"`
}

// ServiceInstance is a global service as one cluster exports it.
type ServiceInstance struct {
	Cluster  string       `json:"cluster"`
	Shared   bool         `json:"shared"`
	Affinity api.Affinity `json:"affinity,omitempty"`
	// Backends counts endpoints; Ready those ready.
	Backends int `json:"backends"`
	Ready    int `json:"ready"`
	// Via says how the cluster takes part: "annotation" (global by its
	// annotations), "ServiceExport" (exported through the Multi-Cluster
	// Services API) or "import" (imported only: the clusterset IPs of its
	// derived Service, no backend of its own).
	Via string `json:"via"`
	// ClusterSetIPs are the clusterset IPs the cluster's agents balance
	// for the service, when it is imported there.
	ClusterSetIPs []string `json:"clustersetIPs,omitempty"`
}

// ServiceListResult lists global services and the clusters that could not be
// read.
type ServiceListResult struct {
	Services []GlobalService `json:"services"`
	// Unreadable names clusters whose store could not be read, with why.
	Unreadable map[string]string `json:"unreadable,omitempty"`
	// MCS is the context's cluster's ServiceExports and ServiceImports
	// with their conditions (nil without the Multi-Cluster Services CRDs).
	MCS *MCSView `json:"mcs,omitempty"`
}

// ListGlobalServices reads the global services of the cluster's own store
// (admin certificate) and of every connected peer's store (with the
// connection the agents use) and merges them by namespace and name.
func ListGlobalServices(ctx context.Context, c *Cluster, opts StoreOptions) (*ServiceListResult, error) {
	cli, info, err := c.OpenStore(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	res := &ServiceListResult{}
	byKey := map[string]*GlobalService{}
	collect := func(kv *kvstore.Client, cluster string) error {
		svcs, err := readServices(ctx, kv, cluster)
		if err != nil {
			return err
		}
		for _, s := range svcs {
			k := s.Namespace + "/" + s.Name
			g := byKey[k]
			if g == nil {
				g = &GlobalService{Namespace: s.Namespace, Name: s.Name}
				byKey[k] = g
			}
			g.Clusters = append(g.Clusters, s.inst)
			if s.inst.Shared {
				g.Backends += s.inst.Ready
			}
		}
		return nil
	}
	if err := collect(cli, info.Name); err != nil {
		return nil, fmt.Errorf("context %s: cluster %s: %w", c.Context, info.Name, err)
	}
	secret, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	entries, err := Entries(secret)
	if err != nil {
		// Bad entries are named; the good ones are still read.
		res.Unreadable = map[string]string{"(clusters Secret)": err.Error()}
	}
	for _, e := range entries {
		if e.Name == info.Name {
			continue
		}
		err := func() error {
			pc, err := openStore(ctx, e.Endpoint, Credentials{CA: e.CA, Cert: e.Cert, Key: e.Key})
			if err != nil {
				return err
			}
			defer pc.Close()
			return collect(pc, e.Name)
		}()
		if err != nil {
			if res.Unreadable == nil {
				res.Unreadable = map[string]string{}
			}
			res.Unreadable[e.Name] = err.Error()
		}
	}
	mcs, err := ReadMCS(ctx, c, info.Name)
	if err != nil {
		if res.Unreadable == nil {
			res.Unreadable = map[string]string{}
		}
		res.Unreadable["(ServiceExports, ServiceImports)"] = err.Error()
	}
	res.MCS = mcs
	for _, g := range byKey {
		sort.Slice(g.Clusters, func(i, j int) bool { return g.Clusters[i].Cluster < g.Clusters[j].Cluster })
		res.Services = append(res.Services, *g)
	}
	sort.Slice(res.Services, func(i, j int) bool {
		a, b := res.Services[i], res.Services[j]
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return res, nil
}

type exportedService struct {
	Namespace, Name string
	inst            ServiceInstance
}

func readServices(ctx context.Context, kv *kvstore.Client, cluster string) ([]exportedService, error) {
	items, err := kv.List(ctx, api.ClusterPrefix(api.KindService, cluster), kvstore.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	var out []exportedService
	for _, item := range items {
		obj, err := api.Decode(item.Key, item.Value)
		if err != nil {
			continue // a bad value never hides the others; kv get shows it
		}
		s := obj.(*api.Service)
		if !s.Global {
			continue
		}
		es := exportedService{Namespace: s.Namespace, Name: s.Name, inst: ServiceInstance{Cluster: cluster, Shared: s.Shared, Affinity: s.Affinity, Via: "annotation"}}
		switch {
		case s.ServiceExport:
			es.inst.Via = "ServiceExport"
		case !s.Shared && len(s.ClusterIPs) == 0 && len(s.ClusterSetIPs) > 0:
			es.inst.Via = "import"
		}
		for _, a := range s.ClusterSetIPs {
			es.inst.ClusterSetIPs = append(es.inst.ClusterSetIPs, a.String())
		}
		eps, err := kv.List(ctx, api.ServiceEndpointsPrefix(cluster, s.Namespace, s.Name), kvstore.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("service %s/%s: list endpoints: %w", s.Namespace, s.Name, err)
		}
		for _, ekv := range eps {
			obj, err := api.Decode(ekv.Key, ekv.Value)
			if err != nil {
				continue
			}
			for _, ep := range obj.(*api.EndpointSlice).Endpoints {
				es.inst.Backends++
				if ep.Ready {
					es.inst.Ready++
				}
			}
		}
		out = append(out, es)
	}
	return out, nil
}
