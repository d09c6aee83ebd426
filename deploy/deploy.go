package deploy

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/template"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Namespace is where every clustermesh object of a cluster lives.
const Namespace = "clustermesh-system"

// Manifest files in the order enable applies them. Group one must exist
// before certificates are issued (the server certificate names the Service's
// address); group two refers to the certificates.
const (
	FileNamespace   = "namespace.yaml"
	FileRBAC        = "rbac.yaml"
	FileService     = "apiserver-service.yaml"
	FileConfig      = "config.yaml"
	FileSettings    = "settings.yaml"
	FileStoreVolume = "apiserver-volume.yaml"
	FileStatefulSet = "apiserver-statefulset.yaml"
	FileDaemonSet   = "agent-daemonset.yaml"
	// FileCleanup is the node cleanup DaemonSet `clustermesh disable` runs
	// once the agents are gone; it is not in Files (enable never applies
	// it) and uses only Namespace and AgentImage of the values.
	FileCleanup = "cleanup-daemonset.yaml"
	// FileMCSCRD holds the ServiceExport and ServiceImport CRDs, created by enable only where
	// the cluster has none; not in Files. It takes no values.
	FileMCSCRD = "mcs-crd.yaml"
	// FileCiliumCRDs are Cilium's policy CRDs, created by enable only
	// where absent; not in Files. They take no values.
	FileCiliumCRDs = "cilium-policy-crds.yaml"
	// FileCoreDNSRBAC lets CoreDNS's multicluster plugin read
	// ServiceImports; applied by enable only when it configures CoreDNS;
	// not in Files. It takes no values.
	FileCoreDNSRBAC = "coredns-rbac.yaml"
)

// Files lists every manifest in apply order.
var Files = []string{FileNamespace, FileRBAC, FileService, FileConfig, FileSettings, FileStoreVolume, FileStatefulSet, FileDaemonSet}

// Storage modes of the apiserver's store (Values.Storage).
const (
	// StorageClaim: a PersistentVolumeClaim of StorageClass (empty: the
	// cluster's default class), provisioned by the cluster.
	StorageClaim = "claim"
	// StorageNodeLocal: a "local" PersistentVolume on StoreNode's disk at
	// StoreHostPath, for clusters without a provisioner.
	StorageNodeLocal = "node-local"
	// StorageEphemeral: an emptyDir; the store starts empty whenever its pod
	// is replaced (tests, throw-away clusters).
	StorageEphemeral = "ephemeral"
)

// Settings ConfigMaps: one key per daemon flag, read through --config-dir.
const (
	AgentSettings     = "clustermesh-agent-config"
	APIServerSettings = "clustermesh-apiserver-config"
)

//go:embed *.yaml
var manifests embed.FS

// LabelManagedBy = ManagedBy marks the objects the clustermesh-apiserver
// writes in a cluster's namespaces for Multi-Cluster Services
// (ServiceImports, derived Services and their EndpointSlices): the
// apiserver never takes over or deletes an object without it, and disable
// deletes those with it.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "clustermesh"
)

// ErrInvalidValues is returned when Values lack something a manifest needs.
var ErrInvalidValues = errors.New("invalid manifest values")

// Values parameterise the manifests.
type Values struct {
	Namespace      string
	ClusterName    string
	ClusterID      uint32
	MaxClusterID   uint32
	Endpoint       string
	ServiceType    string
	EtcdPort       uint16
	APIServerImage string
	AgentImage     string
	// Routes is the agents' --routes mode: bgp (the default: every
	// agent's BGP speaker announces its node's pod CIDRs to the cluster's
	// route reflector, hosted by the clustermesh-apiserver, and installs
	// every other node's, of this cluster and of connected ones), static
	// (remote clusters' pod CIDRs from the stores; the CNI routes inside
	// the cluster), static-all (the own cluster's other nodes too: a CNI
	// that does not route between nodes, like kind without kindnet) or
	// none (a fabric routes them). It is written to the agents' settings
	// ConfigMap.
	Routes string
	// BGPASN is the cluster's autonomous system number with Routes bgp;
	// 0 takes BGPDefaultASNBase + ClusterID (ASN). BGPReflectorPort is
	// the route reflector's port on the apiserver's node address (not
	// 179: the node's own speaker listens there).
	BGPASN           uint32
	BGPReflectorPort uint16

	// Storage is the store's volume: StorageClaim, StorageNodeLocal or
	// StorageEphemeral. StorageClass and StorageSize shape the claim;
	// StoreNode is the node of a node-local volume.
	Storage      string
	StorageClass string
	StorageSize  string
	StoreNode    string

	// AgentConfigHash and APIServerConfigHash are hashes of the settings
	// ConfigMaps' data, put on the pod templates so that a settings change
	// rolls the pods.
	AgentConfigHash     string
	APIServerConfigHash string
}

// StoreVolumeName is the node-local PersistentVolume's name (cluster-scoped,
// so named for the namespace).
func (v Values) StoreVolumeName() string { return v.Namespace + "-store" }

// StoreHostPath is the node-local volume's directory on its node.
func (v Values) StoreHostPath() string { return "/var/lib/clustermesh/" + v.Namespace + "/store" }

// DefaultValues returns values with every optional field set; the images
// are this build's (APIServerImage, AgentImage).
func DefaultValues() Values {
	return Values{
		Namespace:        Namespace,
		MaxClusterID:     255,
		ServiceType:      "NodePort",
		EtcdPort:         2379,
		Routes:           RoutesBGP,
		BGPReflectorPort: DefaultBGPReflectorPort,
		Storage:          StorageClaim,
		StorageSize:      "4Gi",
		APIServerImage:   APIServerImage(),
		AgentImage:       AgentImage(),
	}
}

// HostNetworkEtcdPort is the store's port when it runs on the host network
// (HostNetworkStore): 2379 is taken there by the Kubernetes control plane's
// own etcd on control-plane nodes.
const HostNetworkEtcdPort = 12379

// Routing modes of Values.Routes (the agents' --routes).
const (
	RoutesBGP       = "bgp"
	RoutesStatic    = "static"
	RoutesStaticAll = "static-all"
	RoutesNone      = "none"
)

// BGPDefaultASNBase + the cluster ID is a cluster's ASN unless given: the
// 16-bit private range (RFC 6996, 64512–65534) holds cluster IDs up to 1022.
const BGPDefaultASNBase = 64512

// DefaultBGPReflectorPort is the route reflector's port on its node.
const DefaultBGPReflectorPort = 1790

// ASN is the cluster's BGP autonomous system number (Routes bgp).
func (v Values) ASN() uint32 {
	if v.BGPASN != 0 {
		return v.BGPASN
	}
	return BGPDefaultASNBase + v.ClusterID
}

// HostNetworkStore tells whether the apiserver runs on the host network:
// with Routes static-all or bgp the agents are the cluster's pod router and
// learn its routes from this store (static-all) or from the route reflector
// the apiserver hosts (bgp), so both must be reachable without pod routing
// (a NodePort on any node forwards to the store's node address; nodes and
// peer reflectors dial the reflector on its node address).
func (v Values) HostNetworkStore() bool {
	return v.Routes == RoutesStaticAll || v.Routes == RoutesBGP
}

func (v Values) validate() error {
	switch {
	case v.Namespace == "":
		return fmt.Errorf("%w: empty namespace", ErrInvalidValues)
	case v.ClusterName == "":
		return fmt.Errorf("%w: empty cluster name", ErrInvalidValues)
	case v.ClusterID == 0:
		return fmt.Errorf("%w: cluster %s: cluster ID 0", ErrInvalidValues, v.ClusterName)
	case v.EtcdPort == 0:
		return fmt.Errorf("%w: cluster %s: etcd port 0", ErrInvalidValues, v.ClusterName)
	}
	switch v.Routes {
	case RoutesNone, RoutesStatic, RoutesStaticAll:
	case RoutesBGP:
		if v.BGPReflectorPort == 0 || v.BGPReflectorPort == 179 {
			return fmt.Errorf("%w: cluster %s: route reflector port %d: the node's speaker listens on 179; take another", ErrInvalidValues, v.ClusterName, v.BGPReflectorPort)
		}
		if asn := v.ASN(); asn == 0 || asn == 23456 || asn == 65535 || asn == 4294967295 {
			return fmt.Errorf("%w: cluster %s: BGP ASN %d is reserved", ErrInvalidValues, v.ClusterName, asn)
		}
	default:
		return fmt.Errorf("%w: cluster %s: routes %q: must be bgp, none, static or static-all", ErrInvalidValues, v.ClusterName, v.Routes)
	}
	switch v.Storage {
	case StorageClaim, StorageEphemeral:
	case StorageNodeLocal:
		if v.StoreNode == "" {
			return fmt.Errorf("%w: cluster %s: store storage node-local without a node", ErrInvalidValues, v.ClusterName)
		}
	default:
		return fmt.Errorf("%w: cluster %s: store storage %q: must be claim, node-local or ephemeral", ErrInvalidValues, v.ClusterName, v.Storage)
	}
	if v.Storage != StorageEphemeral && v.StorageSize == "" {
		return fmt.Errorf("%w: cluster %s: empty store size", ErrInvalidValues, v.ClusterName)
	}
	switch v.ServiceType {
	case "ClusterIP", "NodePort", "LoadBalancer":
	default:
		return fmt.Errorf("%w: cluster %s: service type %q: must be ClusterIP, NodePort or LoadBalancer", ErrInvalidValues, v.ClusterName, v.ServiceType)
	}
	return nil
}

// Render renders one manifest file into its objects.
func Render(file string, v Values) ([]*unstructured.Unstructured, error) {
	if err := v.validate(); err != nil {
		return nil, err
	}
	raw, err := manifests.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", file, err)
	}
	tmpl, err := template.New(file).Option("missingkey=error").Funcs(template.FuncMap{
		"quote": func(x any) string { return strconv.Quote(fmt.Sprint(x)) },
	}).Parse(string(raw))
	if err != nil {
		return nil, fmt.Errorf("manifest %s: parse: %w", file, err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, v); err != nil {
		return nil, fmt.Errorf("manifest %s: render: %w", file, err)
	}
	var objs []*unstructured.Unstructured
	for i, doc := range strings.Split(buf.String(), "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			return nil, fmt.Errorf("manifest %s: document %d: %w", file, i, err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("manifest %s: document %d: missing kind or name", file, i)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// RenderAll renders every manifest in apply order.
func RenderAll(v Values) ([]*unstructured.Unstructured, error) {
	var all []*unstructured.Unstructured
	for _, f := range Files {
		objs, err := Render(f, v)
		if err != nil {
			return nil, err
		}
		all = append(all, objs...)
	}
	return all, nil
}
