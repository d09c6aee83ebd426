package apiserver

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/deploy"
)

// Labels of the objects the import writes (KEP-1645 names the first two;
// the reference controller of sigs.k8s.io/mcs-api and Cilium use them
// too).
const (
	// LabelServiceName names the imported service on its derived Service
	// and on the EndpointSlices of a headless import.
	LabelServiceName = "multicluster.kubernetes.io/service-name"
	// LabelSourceCluster names the exporting cluster on the EndpointSlices
	// of a headless import.
	LabelSourceCluster = "multicluster.kubernetes.io/source-cluster"
	// LabelManagedBy marks what the mesh writes, so that it never takes
	// over or deletes an object someone else owns (and disable deletes
	// them).
	LabelManagedBy = deploy.LabelManagedBy
	// ManagedBy is LabelManagedBy's value.
	ManagedBy = deploy.ManagedBy
)

// Condition reasons of the Multi-Cluster Services API (sigs.k8s.io/mcs-api
// v1beta1) the apiserver writes.
const (
	ReasonInvalidServiceType      = "InvalidServiceType"
	ReasonNoConflicts             = "NoConflicts"
	ReasonPortConflict            = "PortConflict"
	ReasonTypeConflict            = "TypeConflict"
	ReasonSessionAffinityConflict = "SessionAffinityConflict"
)

// derivedName is the name of the derived Service of an imported service,
// as the mcs-api reference controller and Cilium spell it: "derived-" and
// ten characters of a hash of namespace/name, so that it never collides
// with a user's Service and fits any name length.
func derivedName(nn types.NamespacedName) string {
	h := sha256.Sum256([]byte(nn.String()))
	return "derived-" + strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:]))[:10]
}

// importedName returns the name of the service a derived Service the mesh
// wrote was derived for, or "" for any other object.
func importedName(m metav1.Object) string {
	l := m.GetLabels()
	name := l[LabelServiceName]
	if l[LabelManagedBy] != ManagedBy || name == "" {
		return ""
	}
	if derivedName(types.NamespacedName{Namespace: m.GetNamespace(), Name: name}) != m.GetName() {
		return ""
	}
	return name
}

// clusterSet returns the local store entry of the clusterset IPs of
// service nn when it is imported: the derived Service's cluster IPs and
// ports, global, lending no backend (Shared false). nil when nn is not
// imported, or imported headless, or the derived Service has no IP yet.
func (c *controller) clusterSet(nn types.NamespacedName) *api.Service {
	d, err := c.services.Services(nn.Namespace).Get(derivedName(nn))
	if err != nil || importedName(d) != nn.Name {
		return nil
	}
	out := convertService(c.cluster, c.clusterID, d, ServiceSettings{Global: true, Affinity: api.AffinityNone})
	if len(out.ClusterIPs) == 0 || d.Spec.Type != corev1.ServiceTypeClusterIP {
		return nil
	}
	out.Name, out.Labels = nn.Name, nil
	out.ClusterSetIPs, out.ClusterIPs = out.ClusterIPs, nil
	return out
}
