package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/pki"
)

// EnableOptions configure enable.
type EnableOptions struct {
	ClusterName  string
	ClusterID    uint32
	MaxClusterID uint32 // 0 means api.DefaultMaxClusterID
	// Endpoint is the address peers dial for this cluster's store
	// ("https://host:port"). Empty: keep the one recorded by a previous
	// enable, else derive it from the Service (LoadBalancer ingress,
	// NodePort on the first node's InternalIP, or the ClusterIP).
	Endpoint string
	// ServiceType of the apiserver Service; empty means NodePort.
	ServiceType string
	// Routes is the agents' --routes mode (bgp, static, static-all,
	// none); empty keeps the cluster's, else bgp.
	Routes string
	// BGPASN is the cluster's BGP autonomous system number with routes
	// bgp; 0 keeps the recorded one, else deploy.BGPDefaultASNBase + the
	// cluster ID.
	BGPASN uint32
	// Storage is the store's volume: deploy.StorageClaim,
	// deploy.StorageNodeLocal, deploy.StorageEphemeral, or StorageAuto /
	// empty (a claim when the cluster has a default StorageClass, else
	// node-local). An installed cluster keeps its mode; StorageClass and
	// StoreNode refine it (StoreNode: the node-local volume's node, default
	// the first control-plane node). StorageSize defaults to 4Gi.
	Storage        string
	StorageClass   string
	StorageSize    string
	StoreNode      string
	APIServerImage string
	AgentImage     string
	// CA, if set, is the CA to use (given files or another cluster's CA, so
	// that clusters share trust). Nil: reuse the cluster's CA or create one.
	CA *pki.CA
	// ReplaceCA allows CA to replace a different CA the cluster already
	// has; every leaf certificate is then re-issued and existing
	// connections must be re-made.
	ReplaceCA bool
	// GossipKey, if set, is the mesh's memberlist key (base64) to use, so
	// that agents of all clusters can gossip; it replaces the cluster's
	// key. Nil: keep the cluster's key or create one.
	GossipKey []byte
	// InheritFrom, if set, is an enabled cluster whose CA and gossip key
	// this cluster shares (it overrides CA and GossipKey).
	InheritFrom *Cluster
	// CoreDNS is how enable configures the cluster's CoreDNS for
	// clusterset.local names: CoreDNSAuto, CoreDNSConfigure or CoreDNSSkip
	// (coredns.go); empty skips, as for callers that predate it.
	// CoreDNSWait bounds auto's wait for CoreDNS (default
	// DefaultCoreDNSWait).
	CoreDNS     string
	CoreDNSWait time.Duration
	Log         *slog.Logger
}

// EnableResult says what enable settled on.
type EnableResult struct {
	ClusterName string
	ClusterID   uint32
	Endpoint    string
	// CreatedCA is set when enable created a new CA.
	CreatedCA bool
	// Changes lists the objects created or updated ("created Secret/x",
	// "updated StatefulSet/y"); empty when enable changed nothing.
	Changes []string
	// CoreDNS says whether clusterset.local names resolve, and what to do
	// if not; nil when CoreDNS was skipped.
	CoreDNS *CoreDNSResult
}

// Info is what the CLI reads back about an enabled cluster.
type Info struct {
	Name         string
	ID           uint32
	MaxClusterID uint32
	Endpoint     string
}

// ReadInfo reads the cluster's clustermesh-config ConfigMap. It returns an
// error wrapping ErrNotEnabled when clustermesh is not installed.
func (c *Cluster) ReadInfo(ctx context.Context) (*Info, error) {
	cm, err := c.Kube.CoreV1().ConfigMaps(c.Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: %w (ConfigMap %s/%s not found); run: clustermesh enable %s --cluster-name NAME --cluster-id ID",
			c.Context, ErrNotEnabled, c.Namespace, ConfigMapName, c.ctxFlag())
	}
	if err != nil {
		return nil, fmt.Errorf("context %s: get ConfigMap %s/%s: %w", c.Context, c.Namespace, ConfigMapName, err)
	}
	id, err := strconv.ParseUint(cm.Data["cluster-id"], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("context %s: ConfigMap %s/%s: cluster-id %q: %w", c.Context, c.Namespace, ConfigMapName, cm.Data["cluster-id"], err)
	}
	maxID, err := strconv.ParseUint(cm.Data["max-cluster-id"], 10, 32)
	if err != nil {
		maxID = api.DefaultMaxClusterID
	}
	return &Info{Name: cm.Data["cluster-name"], ID: uint32(id), MaxClusterID: uint32(maxID), Endpoint: cm.Data["endpoint"]}, nil
}

var gvrByKind = map[string]schema.GroupVersionResource{
	"Namespace":          {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
	"Service":            {Version: "v1", Resource: "services"},
	"ConfigMap":          {Version: "v1", Resource: "configmaps"},
	"Secret":             {Version: "v1", Resource: "secrets"},
	"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"PersistentVolume":   {Version: "v1", Resource: "persistentvolumes"},
	"StatefulSet":        {Group: "apps", Version: "v1", Resource: "statefulsets"},
	"DaemonSet":          {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

// apply server-side applies rendered objects in order.
func (c *Cluster) apply(ctx context.Context, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		gvr, ok := gvrByKind[o.GetKind()]
		if !ok {
			return fmt.Errorf("context %s: %s %s: kind not supported by apply", c.Context, o.GetKind(), o.GetName())
		}
		var ri interface {
			Apply(context.Context, string, *unstructured.Unstructured, metav1.ApplyOptions, ...string) (*unstructured.Unstructured, error)
		} = c.Dynamic.Resource(gvr)
		if ns := o.GetNamespace(); ns != "" {
			ri = c.Dynamic.Resource(gvr).Namespace(ns)
		}
		if _, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return fmt.Errorf("context %s: apply %s %s: %w", c.Context, o.GetKind(), o.GetName(), err)
		}
	}
	return nil
}

func renderFiles(v deploy.Values, files ...string) ([]*unstructured.Unstructured, error) {
	var all []*unstructured.Unstructured
	for _, f := range files {
		objs, err := deploy.Render(f, v)
		if err != nil {
			return nil, err
		}
		all = append(all, objs...)
	}
	return all, nil
}

// Enable installs clustermesh into the cluster, or converges an existing
// installation to opts. Running it twice with the same options changes
// nothing.
func Enable(ctx context.Context, c *Cluster, opts EnableOptions) (*EnableResult, error) {
	log := logging.OrDiscard(opts.Log)
	if opts.MaxClusterID == 0 {
		opts.MaxClusterID = api.DefaultMaxClusterID
	}
	if err := api.ValidateClusterName(opts.ClusterName); err != nil {
		return nil, fmt.Errorf("context %s: %w", c.Context, err)
	}
	if err := api.ValidateClusterID(opts.ClusterID, opts.MaxClusterID); err != nil {
		return nil, fmt.Errorf("context %s: %w", c.Context, err)
	}
	if opts.Endpoint != "" {
		if _, err := endpointHost(opts.Endpoint); err != nil {
			return nil, fmt.Errorf("context %s: %w", c.Context, err)
		}
	}

	if opts.InheritFrom != nil {
		var err error
		if opts.CA, err = opts.InheritFrom.LoadCA(ctx); err != nil {
			return nil, fmt.Errorf("inherit from context %s: %w", opts.InheritFrom.Context, err)
		}
		if opts.GossipKey, err = opts.InheritFrom.GossipKey(ctx); err != nil {
			return nil, fmt.Errorf("inherit from context %s: %w", opts.InheritFrom.Context, err)
		}
	}

	// An installed cluster keeps its name and ID: identities and peers'
	// connections carry them.
	info, err := c.ReadInfo(ctx)
	switch {
	case err == nil:
		if info.Name != opts.ClusterName || info.ID != opts.ClusterID || info.MaxClusterID != opts.MaxClusterID {
			return nil, fmt.Errorf("context %s: %w: it is enabled as %s (ID %d of max %d), not %s (ID %d of max %d); re-run with --cluster-name %s --cluster-id %d --max-cluster-id %d, or delete namespace %s to start over",
				c.Context, ErrAlreadyEnabled, info.Name, info.ID, info.MaxClusterID, opts.ClusterName, opts.ClusterID, opts.MaxClusterID,
				info.Name, info.ID, info.MaxClusterID, c.Namespace)
		}
		if opts.Endpoint == "" {
			opts.Endpoint = info.Endpoint
		}
	case !isNotEnabled(err):
		return nil, err
	}
	if err := c.resolveSettings(ctx, &opts); err != nil {
		return nil, err
	}

	before, err := c.snapshot(ctx)
	if err != nil {
		return nil, err
	}

	v := opts.values(c.Namespace)

	objs, err := renderFiles(v, deploy.FileNamespace, deploy.FileRBAC, deploy.FileService)
	if err != nil {
		return nil, err
	}
	if err := c.apply(ctx, objs); err != nil {
		return nil, err
	}
	log.Info("applied namespace, RBAC and service", "context", c.Context, "cluster", opts.ClusterName)
	if err := c.ensureCRDs(ctx, v, log); err != nil {
		return nil, err
	}

	svc, err := c.Kube.CoreV1().Services(c.Namespace).Get(ctx, ServiceName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %s: get service %s/%s: %w", c.Context, c.Namespace, ServiceName, err)
	}
	if opts.Endpoint == "" {
		opts.Endpoint, err = c.deriveEndpoint(ctx, svc)
		if err != nil {
			return nil, err
		}
	}
	v.Endpoint = opts.Endpoint

	ca, created, err := c.ensureCA(ctx, opts.CA, opts.ReplaceCA)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created CA", "context", c.Context, "cluster", opts.ClusterName)
	}
	if err := c.issueLeaves(ctx, ca, opts.ClusterName, opts.Endpoint, svc, false); err != nil {
		return nil, err
	}
	if err := c.ensureGossipKey(ctx, opts.GossipKey); err != nil {
		return nil, err
	}
	if err := c.ensureObserveAccess(ctx, opts.ClusterName); err != nil {
		return nil, err
	}

	// Settings first: the pod templates carry their hashes, so that a
	// change made by the operator since the last run rolls the pods.
	objs, err = renderFiles(v, deploy.FileConfig, deploy.FileSettings)
	if err != nil {
		return nil, err
	}
	if err := c.apply(ctx, objs); err != nil {
		return nil, err
	}
	if v.AgentConfigHash, err = c.settingsHash(ctx, deploy.AgentSettings); err != nil {
		return nil, err
	}
	if v.APIServerConfigHash, err = c.settingsHash(ctx, deploy.APIServerSettings); err != nil {
		return nil, err
	}
	objs, err = renderFiles(v, deploy.FileStoreVolume, deploy.FileStatefulSet, deploy.FileDaemonSet)
	if err != nil {
		return nil, err
	}
	if err := c.apply(ctx, objs); err != nil {
		return nil, err
	}
	if deleted, err := c.deleteLegacyDeployment(ctx); err != nil {
		return nil, err
	} else if deleted {
		log.Info("replaced the apiserver Deployment with a StatefulSet", "context", c.Context, "cluster", opts.ClusterName)
	}
	log.Info("store storage", "context", c.Context, "cluster", opts.ClusterName, "storage", v.Storage, "node", v.StoreNode, "class", v.StorageClass)
	if err := c.writeOwnEntry(ctx, Info{Name: opts.ClusterName, ID: opts.ClusterID, Endpoint: opts.Endpoint}); err != nil {
		return nil, err
	}
	// CoreDNS last: the ServiceImport CRD its plugin reads exists by now,
	// and auto's wait for CoreDNS does not hold the rest back.
	var dnsRes *CoreDNSResult
	if opts.CoreDNS != "" && opts.CoreDNS != CoreDNSSkip {
		wait := opts.CoreDNSWait
		if wait <= 0 {
			wait = DefaultCoreDNSWait
		}
		if dnsRes, err = c.configureCoreDNS(ctx, v, opts.CoreDNS, wait, log); err != nil {
			return nil, err
		}
	}
	after, err := c.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	changes := diffSnapshots(before, after)
	log.Info("enabled", "context", c.Context, "cluster", opts.ClusterName, "id", opts.ClusterID, "endpoint", opts.Endpoint, "changes", len(changes))
	return &EnableResult{ClusterName: opts.ClusterName, ClusterID: opts.ClusterID, Endpoint: opts.Endpoint, CreatedCA: created, Changes: changes, CoreDNS: dnsRes}, nil
}

// issueLeaves makes sure every leaf certificate Secret holds a good
// certificate; force re-issues all of them.
func (c *Cluster) issueLeaves(ctx context.Context, ca *pki.CA, name, endpoint string, svc *corev1.Service, force bool) error {
	hosts := []string{svc.Spec.ClusterIP}
	if h, err := endpointHost(endpoint); err == nil {
		hosts = append(hosts, h)
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		hosts = append(hosts, ing.IP, ing.Hostname)
	}
	bundle, err := c.trustBundle(ctx, ca)
	if err != nil {
		return err
	}
	specs := append([]leafSpec{serverLeaf(c.Namespace, name, hosts), observeServerLeaf(name)}, clientLeaves()...)
	for _, spec := range specs {
		if _, err := c.ensureLeaf(ctx, ca, bundle, spec, force); err != nil {
			return err
		}
	}
	return nil
}

// writeOwnEntry puts the cluster's own store into its clusters Secret, with
// the agent certificate, so local agents follow the local store.
func (c *Cluster) writeOwnEntry(ctx context.Context, info Info) error {
	agent, err := c.getSecret(ctx, SecretAgent)
	if err != nil {
		return err
	}
	if agent == nil {
		return fmt.Errorf("context %s: %w: secret %s/%s not found", c.Context, ErrNotEnabled, c.Namespace, SecretAgent)
	}
	e := Entry{Name: info.Name, ID: info.ID, Endpoint: info.Endpoint, CA: agent.Data[KeyCACert], Cert: agent.Data[KeyCert], Key: agent.Data[KeyKey]}
	// No logger here: a pod not touched gets the entry at its kubelet's
	// periodic sync.
	return c.updateClusters(ctx, nil, func(s *corev1.Secret) error { return e.put(s) })
}

// values are the manifests' values for these options, defaults filled in.
func (opts EnableOptions) values(namespace string) deploy.Values {
	v := deploy.DefaultValues()
	v.Namespace = namespace
	v.ClusterName, v.ClusterID, v.MaxClusterID = opts.ClusterName, opts.ClusterID, opts.MaxClusterID
	if opts.ServiceType != "" {
		v.ServiceType = opts.ServiceType
	}
	if opts.APIServerImage != "" {
		v.APIServerImage = opts.APIServerImage
	}
	if opts.AgentImage != "" {
		v.AgentImage = opts.AgentImage
	}
	if opts.Routes != "" {
		v.Routes = opts.Routes
	}
	v.BGPASN = opts.BGPASN
	if opts.Storage != "" && opts.Storage != StorageAuto {
		v.Storage = opts.Storage
	}
	if opts.StorageSize != "" {
		v.StorageSize = opts.StorageSize
	}
	v.StorageClass, v.StoreNode = opts.StorageClass, opts.StoreNode
	if v.HostNetworkStore() {
		v.EtcdPort = deploy.HostNetworkEtcdPort
	}
	return v
}

func isNotEnabled(err error) bool {
	return err != nil && errors.Is(err, ErrNotEnabled)
}

// ensureCA returns the CA to sign with: the given one (stored if the
// cluster has none, refused if the cluster has another unless replace), the
// cluster's existing one, or a new one.
func (c *Cluster) ensureCA(ctx context.Context, given *pki.CA, replace bool) (*pki.CA, bool, error) {
	existing, err := c.LoadCA(ctx)
	if err != nil && !isNotEnabled(err) {
		return nil, false, err
	}
	if existing == nil && given == nil {
		// No CA Secret: a new cluster, or one whose CA key is kept
		// offline. Creating a CA for the latter would silently cut it
		// from the mesh.
		if server, err := c.getSecret(ctx, SecretServer); err != nil {
			return nil, false, err
		} else if server != nil {
			return nil, false, fmt.Errorf("context %s: %w: secret %s/%s is missing but certificates exist (CA kept offline?); pass --ca-cert/--ca-key (or --inherit-ca-from)",
				c.Context, ErrCAMismatch, c.Namespace, SecretCA)
		}
	}
	switch {
	case given == nil && existing != nil:
		return existing, false, c.storeCA(ctx, existing)
	case given != nil && existing != nil && !existing.Certificate().Equal(given.Certificate()) && !replace:
		return nil, false, fmt.Errorf("context %s: %w (CA %q, the given one is %q); re-run with --replace-ca to replace it and re-issue every certificate (connections must then be re-made with connect)",
			c.Context, ErrCAMismatch, existing.Certificate().Subject.CommonName, given.Certificate().Subject.CommonName)
	case given != nil:
		return given, false, c.storeCA(ctx, given)
	}
	ca, err := pki.NewCA("clustermesh-ca", 0)
	if err != nil {
		return nil, false, fmt.Errorf("context %s: %w", c.Context, err)
	}
	return ca, true, c.storeCA(ctx, ca)
}

// storeCA writes the CA Secret. For the CA it already holds, the rotation
// state (the cross-signed chain, the previous CA) is kept.
func (c *Cluster) storeCA(ctx context.Context, ca *pki.CA) error {
	data := map[string][]byte{KeyCACert: ca.CertPEM(), KeyCAKey: ca.KeyPEM()}
	if len(ca.Chain()) > 0 {
		data[KeyCAChain] = ca.Chain()
	}
	s, err := c.getSecret(ctx, SecretCA)
	if err != nil {
		return err
	}
	if s != nil && bytes.Equal(s.Data[KeyCACert], ca.CertPEM()) {
		for _, k := range []string{KeyCAChain, KeyCAPrevious, KeyCARotationStarted} {
			if v := s.Data[k]; len(v) > 0 && len(data[k]) == 0 {
				data[k] = v
			}
		}
	}
	return c.applySecret(ctx, SecretCA, corev1.SecretTypeOpaque, data)
}

// deriveEndpoint picks the address peers dial when none was given.
func (c *Cluster) deriveEndpoint(ctx context.Context, svc *corev1.Service) (string, error) {
	var port int32
	for _, p := range svc.Spec.Ports {
		if p.Name == "etcd" {
			port = p.Port
			if svc.Spec.Type == corev1.ServiceTypeNodePort {
				port = p.NodePort
			}
		}
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			host := ing.IP
			if host == "" {
				host = ing.Hostname
			}
			if host != "" {
				return endpointURL(host, port), nil
			}
		}
		return "", fmt.Errorf("context %s: %w: service %s/%s has no load balancer address yet; re-run enable when it has one, or pass --endpoint",
			c.Context, ErrNotReady, c.Namespace, ServiceName)
	case corev1.ServiceTypeNodePort:
		nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return "", fmt.Errorf("context %s: list nodes: %w", c.Context, err)
		}
		for _, n := range nodes.Items {
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					return endpointURL(a.Address, port), nil
				}
			}
		}
		return "", fmt.Errorf("context %s: %w: no node has an InternalIP to reach NodePort %d; pass --endpoint", c.Context, ErrNotReady, port)
	}
	return endpointURL(svc.Spec.ClusterIP, port), nil
}

func endpointURL(host string, port int32) string {
	return "https://" + net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// endpointHost returns the host of an endpoint given as https://host:port or
// host:port.
func endpointHost(ep string) (string, error) {
	hostport := ep
	if u, err := url.Parse(ep); err == nil && u.Scheme != "" && u.Host != "" {
		if u.Scheme != "https" {
			return "", fmt.Errorf("%w: endpoint %q: scheme must be https (the store is served over mTLS)", ErrInvalidArgument, ep)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil || host == "" || port == "" {
		return "", fmt.Errorf("%w: endpoint %q: want https://HOST:PORT", ErrInvalidArgument, ep)
	}
	return host, nil
}

// dialAddr returns host:port of an endpoint.
func dialAddr(ep string) string {
	if u, err := url.Parse(ep); err == nil && u.Scheme != "" && u.Host != "" {
		return u.Host
	}
	return ep
}

// GossipKey returns the cluster's memberlist key, or nil when it has none.
func (c *Cluster) GossipKey(ctx context.Context) ([]byte, error) {
	s, err := c.getSecret(ctx, SecretGossipKey)
	if err != nil || s == nil {
		return nil, err
	}
	return s.Data[KeyGossip], nil
}

// KeyGossip is the key of the gossip key Secret.
const KeyGossip = "key"

func (c *Cluster) ensureGossipKey(ctx context.Context, given []byte) error {
	key := given
	if key == nil {
		existing, err := c.GossipKey(ctx)
		if err != nil {
			return err
		}
		key = existing
	}
	if len(key) == 0 {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return fmt.Errorf("context %s: gossip key: %w", c.Context, err)
		}
		key = []byte(base64.StdEncoding.EncodeToString(raw))
	}
	return c.applySecret(ctx, SecretGossipKey, corev1.SecretTypeOpaque, map[string][]byte{KeyGossip: key})
}

// RenderManifests returns, as multi-document YAML, the objects Enable
// applies from deploy/ for opts, without contacting any cluster (certificate
// Secrets, which hold keys, are not included). An empty Endpoint is shown as
// a placeholder; Enable derives it from the Service.
func RenderManifests(namespace string, opts EnableOptions) ([]byte, error) {
	if opts.MaxClusterID == 0 {
		opts.MaxClusterID = api.DefaultMaxClusterID
	}
	if err := api.ValidateClusterName(opts.ClusterName); err != nil {
		return nil, err
	}
	if err := api.ValidateClusterID(opts.ClusterID, opts.MaxClusterID); err != nil {
		return nil, err
	}
	v := opts.values(namespace)
	v.Endpoint = opts.Endpoint
	if v.Storage == deploy.StorageNodeLocal && v.StoreNode == "" {
		v.StoreNode = "<chosen at enable: the first control-plane node>"
	}
	if v.Endpoint == "" {
		v.Endpoint = "<derived from Service " + ServiceName + " at enable>"
	}
	objs, err := deploy.RenderAll(v)
	if err != nil {
		return nil, err
	}
	var out []byte
	for i, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
		}
		if i > 0 {
			out = append(out, "---\n"...)
		}
		out = append(out, b...)
	}
	return out, nil
}

// snapshot maps "Kind/name" of every object enable owns to its
// resourceVersion, so Enable can say what it changed.
func (c *Cluster) snapshot(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/part-of=clustermesh"}
	if ns, err := c.Kube.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{}); err == nil {
		out["Namespace/"+ns.Name] = ns.ResourceVersion
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %s: get namespace %s: %w", c.Context, c.Namespace, err)
	}
	k, ns := c.Kube, c.Namespace
	for _, l := range []struct {
		kind string
		list func() (runtime.Object, error)
	}{
		{"ClusterRole", func() (runtime.Object, error) { return k.RbacV1().ClusterRoles().List(ctx, sel) }},
		{"ClusterRoleBinding", func() (runtime.Object, error) { return k.RbacV1().ClusterRoleBindings().List(ctx, sel) }},
		{"ServiceAccount", func() (runtime.Object, error) { return k.CoreV1().ServiceAccounts(ns).List(ctx, sel) }},
		{"Service", func() (runtime.Object, error) { return k.CoreV1().Services(ns).List(ctx, sel) }},
		{"ConfigMap", func() (runtime.Object, error) { return k.CoreV1().ConfigMaps(ns).List(ctx, sel) }},
		{"Secret", func() (runtime.Object, error) { return k.CoreV1().Secrets(ns).List(ctx, sel) }},
		{"Deployment", func() (runtime.Object, error) { return k.AppsV1().Deployments(ns).List(ctx, sel) }},
		{"StatefulSet", func() (runtime.Object, error) { return k.AppsV1().StatefulSets(ns).List(ctx, sel) }},
		{"PersistentVolume", func() (runtime.Object, error) { return k.CoreV1().PersistentVolumes().List(ctx, sel) }},
		{"DaemonSet", func() (runtime.Object, error) { return k.AppsV1().DaemonSets(ns).List(ctx, sel) }},
	} {
		list, err := l.list()
		if err != nil {
			return nil, fmt.Errorf("context %s: list %s: %w", c.Context, l.kind, err)
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			return nil, fmt.Errorf("context %s: list %s: %w", c.Context, l.kind, err)
		}
		for _, item := range items {
			if o, err := meta.Accessor(item); err == nil {
				out[l.kind+"/"+o.GetName()] = o.GetResourceVersion()
			}
		}
	}
	return out, nil
}

// diffSnapshots lists what changed between two snapshots, sorted.
func diffSnapshots(before, after map[string]string) []string {
	var out []string
	for k, rv := range after {
		switch old, ok := before[k]; {
		case !ok:
			out = append(out, "created "+k)
		case old != rv:
			out = append(out, "updated "+k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			out = append(out, "deleted "+k)
		}
	}
	sort.Strings(out)
	return out
}
