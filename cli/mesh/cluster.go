package mesh

import (
	"errors"
	"fmt"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/deploy"
)

// FieldManager is the server-side apply field manager of every object the CLI
// writes.
const FieldManager = "clustermesh"

// Names of the objects enable creates in deploy.Namespace.
const (
	ConfigMapName  = "clustermesh-config"
	SecretCA       = "clustermesh-ca"
	SecretServer   = "clustermesh-server-cert"
	SecretAdmin    = "clustermesh-admin-cert"
	SecretRemote   = "clustermesh-remote-cert"
	SecretAgent    = "clustermesh-agent-cert"
	SecretClusters = "clustermesh-clusters"
	// SecretGossipKey holds the mesh's memberlist key (key "key", base64),
	// the same in every cluster of a mesh.
	SecretGossipKey = "clustermesh-gossip-key"
	ServiceName     = "clustermesh-apiserver"
	DaemonSetName   = "clustermesh-agent"
)

// Sentinel errors. Problems found by checks wrap one of them.
var (
	ErrNotEnabled      = errors.New("clustermesh is not enabled")
	ErrAlreadyEnabled  = errors.New("cluster is enabled with a different name or ID")
	ErrNameCollision   = errors.New("cluster name collision")
	ErrIDCollision     = errors.New("cluster ID collision")
	ErrMaxIDMismatch   = errors.New("max cluster ID mismatch")
	ErrUntrusted       = errors.New("clusters do not share a CA")
	ErrCIDROverlap     = errors.New("pod CIDRs overlap")
	ErrUnreachable     = errors.New("endpoint unreachable")
	ErrWrongCluster    = errors.New("endpoint serves another cluster")
	ErrCAMismatch      = errors.New("cluster already has a different CA")
	ErrNotReady        = errors.New("not ready")
	ErrRefused         = errors.New("cluster refused by agents")
	ErrExpiring        = errors.New("certificate expiring")
	ErrInvalidArgument = errors.New("invalid argument")
	ErrKeyNotFound     = errors.New("key not found")
	ErrBadEntry        = errors.New("bad entry in the clusters Secret")
	ErrImage           = errors.New("image not available")
	ErrPolicy          = errors.New("network policy not enforceable by the mesh")
)

// Cluster is a handle on one cluster reached through a kubeconfig context.
type Cluster struct {
	// Context is the kubeconfig context name, used in messages and in the
	// fixes they suggest.
	Context   string
	Kube      kubernetes.Interface
	Dynamic   dynamic.Interface
	Namespace string
	// Kubeconfig is the kubeconfig path the handle was opened from, if any;
	// suggested commands repeat it.
	Kubeconfig string
}

// Open opens a kubeconfig context like kubectl does: kubeconfig may be empty
// (KUBECONFIG or ~/.kube/config), context may be empty (current context).
func Open(kubeconfig, context string) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: context})
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	name := context
	if name == "" {
		name = raw.CurrentContext
	}
	if _, ok := raw.Contexts[name]; !ok {
		return nil, fmt.Errorf("%w: context %q not found in kubeconfig", ErrInvalidArgument, name)
	}
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", name, err)
	}
	c, err := NewCluster(name, cfg)
	if err != nil {
		return nil, err
	}
	c.Kubeconfig = kubeconfig
	return c, nil
}

// NewCluster builds a handle from a REST config.
func NewCluster(context string, cfg *rest.Config) (*Cluster, error) {
	// client-go's default of 5 requests/s throttles a status poll (a dozen
	// reads) into seconds; kubectl uses 50.
	if cfg.QPS == 0 {
		cfg = rest.CopyConfig(cfg)
		cfg.QPS, cfg.Burst = 50, 100
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: kubernetes client: %w", context, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %s: dynamic client: %w", context, err)
	}
	return &Cluster{Context: context, Kube: kube, Dynamic: dyn, Namespace: deploy.Namespace}, nil
}

// ctxFlag renders the flags that select this cluster in a suggested command.
func (c *Cluster) ctxFlag() string {
	s := "--context " + c.Context
	if c.Kubeconfig != "" {
		s += " --kubeconfig " + c.Kubeconfig
	}
	return s
}
