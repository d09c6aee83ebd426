package mesh

import (
	"context"
	"fmt"
	"log/slog"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/clustermesh/clustermesh/deploy"
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// ensureCRDs creates the CRDs the mesh reads (ServiceExport, Cilium's
// policies) where the cluster has none. An installed one (upstream's, or a newer version) is
// kept as it is: other controllers may own it. disable does not remove
// them, since ServiceExports of the users' would go with them.
func (c *Cluster) ensureCRDs(ctx context.Context, v deploy.Values, log *slog.Logger) error {
	var objs []*unstructured.Unstructured
	for _, f := range []string{deploy.FileMCSCRD, deploy.FileCiliumCRDs} {
		o, err := deploy.Render(f, v)
		if err != nil {
			return err
		}
		objs = append(objs, o...)
	}
	for _, o := range objs {
		_, err := c.Dynamic.Resource(crdGVR).Get(ctx, o.GetName(), metav1.GetOptions{})
		switch {
		case err == nil:
			log.Debug("CRD present, kept", "context", c.Context, "crd", o.GetName())
			continue
		case !apierrors.IsNotFound(err):
			return fmt.Errorf("context %s: get CRD %s: %w", c.Context, o.GetName(), err)
		}
		if _, err := c.Dynamic.Resource(crdGVR).Create(ctx, o, metav1.CreateOptions{FieldManager: FieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("context %s: create CRD %s: %w", c.Context, o.GetName(), err)
		}
		log.Info("created CRD", "context", c.Context, "crd", o.GetName())
	}
	return nil
}
