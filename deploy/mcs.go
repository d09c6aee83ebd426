package deploy

import "k8s.io/apimachinery/pkg/runtime/schema"

// The Multi-Cluster Services API (KEP-1645), whose CRDs FileMCSCRD ships:
// the clustermesh-apiserver, the CLI and the drills name its resources from
// here, so a new version is added in one place with the manifest.
const (
	MCSGroup = "multicluster.x-k8s.io"
	// MCSVersion is the version the CRDs store, and the one written.
	MCSVersion = "v1beta1"
)

// MCSVersions are the versions the CRDs serve, newest first: a reader
// uses the first one the cluster's API server serves (a cluster may carry
// an older CRD installed by another MCS implementation).
func MCSVersions() []string { return []string{MCSVersion, "v1alpha1"} }

// ServiceExportGVR is the ServiceExport resource at version v.
func ServiceExportGVR(v string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: MCSGroup, Version: v, Resource: "serviceexports"}
}

// ServiceImportGVR is the ServiceImport resource at version v.
func ServiceImportGVR(v string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: MCSGroup, Version: v, Resource: "serviceimports"}
}
