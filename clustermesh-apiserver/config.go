package apiserver

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/meshcache"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid apiserver configuration")

// Config is the apiserver's configuration; every field is a flag (see Flags).
type Config struct {
	// ClusterName and ClusterID identify the cluster in the mesh.
	ClusterName string
	ClusterID   uint32
	// MaxClusterID is the mesh-wide cluster ID limit (255 or 511).
	MaxClusterID uint32
	// Kubeconfig is the path of a kubeconfig; empty means the in-cluster
	// config (the pod's service account).
	Kubeconfig string
	// PodCIDRs are the cluster's pod CIDRs published in the cluster config;
	// empty means the union of the nodes' spec.podCIDRs.
	PodCIDRs []string

	// Embedded etcd (the default): data directory, client URL, and the
	// server certificate with the CA client certificates are verified
	// against.
	EtcdDataDir         string
	EtcdListenClientURL string
	EtcdCA              string
	EtcdCert            string
	EtcdKey             string
	// KVStoreConfig is a kvstore connection file; when set, no etcd is
	// embedded and the store is the external etcd it describes.
	KVStoreConfig string

	// LeaderElect makes replicas sharing an external store elect one
	// exporter; the others wait as standbys. Ignored with the embedded etcd,
	// where every replica has a store of its own.
	LeaderElect bool

	// HealthAddr serves /healthz, /readyz and /metrics.
	HealthAddr string
	// Workers is the number of concurrent export workers.
	Workers int
	// LeaseTTL is the TTL of the store leases the exported keys hang on.
	LeaseTTL time.Duration
	// EtcdQuotaBytes is the embedded etcd's space quota.
	EtcdQuotaBytes int64
	// UnsafeNoFsync disables fsync in the embedded etcd (tests only).
	UnsafeNoFsync bool

	// BGPReflectorAddress is the IP:port the cluster's BGP route reflector
	// listens on and is published under (api.Cluster.RouteReflector); empty
	// means no reflector and BGP off in the exported cluster config.
	BGPReflectorAddress string
	// BGPASN is the cluster's autonomous system number; required with
	// BGPReflectorAddress.
	BGPASN uint32
	// BGPShortTimers uses bgp.DefaultKindConfig (test clusters on one
	// machine) instead of bgp.DefaultConfig.
	BGPShortTimers bool
	// BGPPeerDrain is how long a disconnected cluster's reflector stays a
	// peer of this one after its connection file is gone, so that its
	// routes outlive the agents' switch-over (as the agents' --route-drain
	// does for static routes).
	BGPPeerDrain time.Duration
	// ClustersDir holds one kvstore connection file per cluster (named for
	// the cluster), as for the agent; the reflector peers with the reflectors
	// the connected clusters publish in their stores.
	ClustersDir string
	// ClustersDirPoll is how often ClustersDir is scanned for changes.
	ClustersDirPoll time.Duration
	// MeshCache copies every peer of ClustersDir into the cluster's own
	// store (package meshcache), for agents run with --cached-peers;
	// MeshCacheDrainGrace is how long a disconnected peer's copy stays.
	MeshCache           bool
	MeshCacheDrainGrace time.Duration
	// DefaultGlobalNamespace is whether a namespace without the
	// AnnotationGlobalNamespace annotation is exported to peers: true
	// exports every namespace but those annotated "false"; false only those
	// annotated "true".
	DefaultGlobalNamespace bool
}

// DefaultConfig returns the defaults of every flag.
func DefaultConfig() Config {
	return Config{
		MaxClusterID:        api.DefaultMaxClusterID,
		EtcdDataDir:         "/var/lib/clustermesh/etcd",
		EtcdQuotaBytes:      kvstore.DefaultQuotaBytes,
		EtcdListenClientURL: "https://0.0.0.0:2379",
		// Where deploy/ mounts the clustermesh-admin-cert Secret.
		LeaderElect: true,
		HealthAddr:  ":9880",
		Workers:     4,
		LeaseTTL:    5 * time.Minute,

		ClustersDirPoll:     2 * time.Second,
		BGPPeerDrain:        DefaultBGPPeerDrain,
		MeshCacheDrainGrace: meshcache.DefaultDrainGrace,

		DefaultGlobalNamespace: true,
	}
}

// Flags registers the configuration's flags on fs, with the current values
// as defaults.
func (c *Config) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName,
		"Name of this cluster in the mesh: a lower-case DNS label of at most 32 characters, unique in the mesh. Required.")
	fs.Uint32Var(&c.ClusterID, "cluster-id", c.ClusterID,
		"Numeric ID of this cluster, 1..max-cluster-id, unique in the mesh; carried in the high bits of every identity the cluster allocates. Required.")
	fs.Uint32Var(&c.MaxClusterID, "max-cluster-id", c.MaxClusterID,
		"Mesh-wide cluster ID limit, 255 or 511; every cluster of a mesh must use the same value (511 leaves fewer identities per cluster).")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig,
		"Path of the kubeconfig for the cluster's Kubernetes API; empty uses the in-cluster service account.")
	fs.StringSliceVar(&c.PodCIDRs, "cluster-pod-cidrs", c.PodCIDRs,
		"Pod CIDRs of the cluster (comma-separated) published in the cluster config for peers' overlap checks; empty derives them from the nodes' spec.podCIDRs.")
	fs.StringVar(&c.EtcdDataDir, "etcd-data-dir", c.EtcdDataDir,
		"Data directory of the embedded etcd.")
	fs.StringVar(&c.EtcdListenClientURL, "etcd-listen-client-url", c.EtcdListenClientURL,
		"https URL the embedded etcd serves peers and agents on (mutual TLS). The apiserver itself connects to 127.0.0.1 when the host is unspecified, so the server certificate must include 127.0.0.1 or the given host.")
	fs.StringVar(&c.EtcdCA, "etcd-ca", c.EtcdCA,
		"PEM file of the CA (trust bundle) client certificates of the embedded etcd are verified against.")
	fs.StringVar(&c.EtcdCert, "etcd-cert", c.EtcdCert,
		"PEM file of the embedded etcd's server certificate.")
	fs.StringVar(&c.EtcdKey, "etcd-key", c.EtcdKey,
		"PEM file of the embedded etcd's server key.")
	// The apiserver now talks to its embedded etcd with an in-memory
	// credential (kvstore.Server.OwnerClient); the admin certificate flags
	// are accepted so that older manifests keep working.
	for _, name := range []string{"etcd-admin-cert", "etcd-admin-key"} {
		fs.String(name, "", "Ignored (deprecated): the apiserver writes its embedded etcd with an in-memory credential.")
		_ = fs.MarkDeprecated(name, "the apiserver writes its embedded etcd with an in-memory credential; the flag is ignored")
	}
	fs.StringVar(&c.KVStoreConfig, "kvstore-config", c.KVStoreConfig,
		"Connection file of an external etcd (endpoints, trusted-ca-file, cert-file, key-file; see docs/kvstore.md). When set, no etcd is embedded and the --etcd-* flags are ignored.")
	fs.BoolVar(&c.DefaultGlobalNamespace, "default-global-namespace", c.DefaultGlobalNamespace,
		"Export namespaces without the "+AnnotationGlobalNamespace+" annotation (or Cilium's "+CiliumAnnotationGlobalNamespace+"): with false, only the identities, ipcache entries, services and endpoints of namespaces annotated \"true\" leave the cluster; global services still need their own annotation.")
	fs.BoolVar(&c.LeaderElect, "leader-elect", c.LeaderElect,
		"With --kvstore-config: elect one exporting replica among those sharing the store (an etcd lease-backed election); the others wait as standbys and take over within the lease TTL (15s) when it goes.")
	fs.StringVar(&c.HealthAddr, "health-addr", c.HealthAddr,
		"Address serving /healthz (process alive), /readyz (initial export of every kind complete) and /metrics (Prometheus).")
	fs.IntVar(&c.Workers, "workers", c.Workers,
		"Number of objects exported concurrently.")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", c.LeaseTTL,
		"TTL of the store leases exported keys are attached to: how long the cluster stays visible to peers after this apiserver stops renewing them.")
	fs.Int64Var(&c.EtcdQuotaBytes, "etcd-quota-bytes", c.EtcdQuotaBytes,
		"Space quota of the embedded etcd in bytes. When the store reaches it, etcd refuses writes (NOSPACE alarm); the apiserver then compacts, defragments and disarms, logging and counting it (clustermesh_kvstore_space_alarms_total).")
	fs.BoolVar(&c.UnsafeNoFsync, "etcd-unsafe-no-fsync", c.UnsafeNoFsync,
		"Disable fsync in the embedded etcd. For tests only: a crash may lose acknowledged writes.")
	fs.StringVar(&c.BGPReflectorAddress, "bgp-reflector-address", c.BGPReflectorAddress,
		"IP:port of the cluster's BGP route reflector, hosted by this apiserver in its network namespace: it listens on the port and the address is published in the cluster config, where the cluster's nodes and the reflectors of connected clusters find it. Empty: no reflector, BGP off for the cluster.")
	fs.Uint32Var(&c.BGPASN, "bgp-asn", c.BGPASN,
		"The cluster's BGP autonomous system number (required with --bgp-reflector-address); must differ from every connected cluster's.")
	fs.BoolVar(&c.BGPShortTimers, "bgp-short-timers", c.BGPShortTimers,
		"Short BGP timers (hold time 9s), for test clusters on one machine.")
	fs.DurationVar(&c.BGPPeerDrain, "bgp-peer-drain", c.BGPPeerDrain,
		"How long a disconnected cluster's route reflector stays a BGP peer after its connection file is removed: its pod CIDRs stay routed while this cluster's agents still balance to its backends (disconnect reaches each pod's mounted files at its own pace); 0 drops it at once.")
	fs.StringVar(&c.ClustersDir, "clusters-dir", c.ClustersDir,
		"Directory with one kvstore connection file per cluster, named for the cluster (names containing '.' are certificates and keys), as mounted for the agents. Every connected peer gets its read-only store user back if the store lost it (grants only; disconnect revokes), and the route reflector peers with the reflector each connected cluster publishes in its store; files are followed live.")
	fs.DurationVar(&c.ClustersDirPoll, "clusters-dir-poll", c.ClustersDirPoll,
		"How often --clusters-dir is scanned for added, changed and removed files.")
	fs.BoolVar(&c.MeshCache, "mesh-cache", c.MeshCache,
		"Keep a checked copy of every connected peer's exports (--clusters-dir) in this cluster's store, for agents run with --cached-peers: each peer's store then serves one client per cluster instead of one per node, and the peer checks run once here. A peer that is unreachable keeps its last copy; a disconnected one is purged after --mesh-cache-drain-grace.")
	fs.DurationVar(&c.MeshCacheDrainGrace, "mesh-cache-drain-grace", c.MeshCacheDrainGrace,
		"How long a disconnected peer's copy stays in the store before it is purged.")
}

// Validate checks the configuration; errors name the flag.
func (c *Config) Validate() error {
	if err := api.ValidateClusterName(c.ClusterName); err != nil {
		return fmt.Errorf("%w: --cluster-name: %w", ErrConfig, err)
	}
	if err := api.ValidateClusterID(c.ClusterID, c.MaxClusterID); err != nil {
		return fmt.Errorf("%w: --cluster-id/--max-cluster-id: %w", ErrConfig, err)
	}
	if _, err := c.podCIDRs(); err != nil {
		return err
	}
	if _, err := c.reflectorAddress(); err != nil {
		return err
	}
	if c.ClustersDir != "" && c.ClustersDirPoll <= 0 {
		return fmt.Errorf("%w: --clusters-dir-poll %s: must be positive", ErrConfig, c.ClustersDirPoll)
	}
	if c.MeshCache && c.ClustersDir == "" {
		return fmt.Errorf("%w: --mesh-cache needs --clusters-dir (the peers to copy)", ErrConfig)
	}
	if c.Workers < 1 {
		return fmt.Errorf("%w: --workers %d: must be at least 1", ErrConfig, c.Workers)
	}
	if c.KVStoreConfig != "" {
		return nil
	}
	for _, f := range []struct{ flag, v string }{
		{"--etcd-data-dir", c.EtcdDataDir}, {"--etcd-ca", c.EtcdCA}, {"--etcd-cert", c.EtcdCert},
		{"--etcd-key", c.EtcdKey},
	} {
		if f.v == "" {
			return fmt.Errorf("%w: %s is required with the embedded etcd (or give --kvstore-config)", ErrConfig, f.flag)
		}
	}
	if u, err := url.Parse(c.EtcdListenClientURL); err != nil || u.Scheme != "https" || u.Port() == "" {
		return fmt.Errorf("%w: --etcd-listen-client-url %q: want https://host:port", ErrConfig, c.EtcdListenClientURL)
	}
	return nil
}

// podCIDRs parses --cluster-pod-cidrs; nil means derive from nodes.
func (c *Config) podCIDRs() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range c.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%w: --cluster-pod-cidrs: %q: %w", ErrConfig, s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// DefaultBGPPeerDrain is Config.BGPPeerDrain's default, the agents'
// --route-drain default.
const DefaultBGPPeerDrain = 2 * time.Minute

// reflectorAddress parses --bgp-reflector-address; the zero value means BGP
// is off.
func (c *Config) reflectorAddress() (netip.AddrPort, error) {
	if c.BGPReflectorAddress == "" {
		if c.BGPASN != 0 {
			return netip.AddrPort{}, fmt.Errorf("%w: --bgp-asn %d needs --bgp-reflector-address", ErrConfig, c.BGPASN)
		}
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(c.BGPReflectorAddress)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: --bgp-reflector-address %q: want IP:port: %w", ErrConfig, c.BGPReflectorAddress, err)
	}
	if ap.Port() == 0 || ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("%w: --bgp-reflector-address %q: want a specific IP and a non-zero port (peers dial it)", ErrConfig, c.BGPReflectorAddress)
	}
	if c.BGPASN == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: --bgp-reflector-address needs --bgp-asn", ErrConfig)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
