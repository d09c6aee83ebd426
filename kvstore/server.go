package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/auth"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// The etcd users of a cluster's store. A client acts as the user named by
// the common name of its certificate.
const (
	// UserAdmin reads and writes everything: the cluster's own apiserver and
	// operators' tools.
	UserAdmin = "admin"
	// UserRemote reads everything under api.KeyPrefix and writes nothing:
	// what peer clusters' agents use.
	UserRemote = "remote"
	// UserAgent reads everything under api.KeyPrefix and writes under the
	// agents prefix only: the cluster's own agents, which publish their
	// status there.
	UserAgent = "agent"

	// userRoot is etcd's superuser, which must exist for auth to be enabled.
	// Nobody is issued a certificate for it; UserAdmin holds the same role.
	userRoot = "root"
	roleRoot = "root"
	// Roles carry the names of the users they are granted to.
	roleRemote = "remote"
	roleAgent  = "agent"
)

// DefaultCompactionRetention is how much history the embedded etcd keeps.
// Readers that were away for longer re-list.
const DefaultCompactionRetention = time.Hour

// ServerConfig describes an embedded etcd serving one cluster's store.
type ServerConfig struct {
	// Cluster is the name of the cluster whose store this is; it names the
	// etcd member.
	Cluster string
	// DataDir holds etcd's data; a restarted server on the same directory
	// serves the same store.
	DataDir string
	// ListenClientURL is where clients connect, an https URL. Port 0 picks a
	// free port; Endpoint reports the URL actually served. Empty means
	// https://127.0.0.1:0.
	ListenClientURL string
	// CAFile is the trust bundle client certificates are verified against;
	// CertFile and KeyFile are the server's certificate (with the listen
	// address among its SANs) and key.
	CAFile, CertFile, KeyFile string
	// CompactionRetention is the periodic auto-compaction window; zero means
	// DefaultCompactionRetention, negative disables auto-compaction.
	CompactionRetention time.Duration
	// UnsafeNoFsync skips fsync on writes: for tests and benchmarks only, a
	// crash may lose acknowledged writes.
	UnsafeNoFsync bool
	// QuotaBytes is the store's space quota; zero means DefaultQuotaBytes.
	QuotaBytes int64
	// MaxRequestBytes bounds one client request; zero means
	// DefaultMaxRequestBytes.
	MaxRequestBytes uint
	// AlarmCheckInterval is how often a space alarm is looked for and
	// cleared; zero means DefaultAlarmCheckInterval.
	AlarmCheckInterval time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Metrics records space alarms; nil records nothing.
	Metrics *Metrics
}

func (cfg *ServerConfig) quotaBytes() int64 {
	if cfg.QuotaBytes > 0 {
		return cfg.QuotaBytes
	}
	return DefaultQuotaBytes
}

// Server is a running embedded etcd. It lives until Close.
type Server struct {
	cfg       ServerConfig
	etcd      *embed.Etcd
	endpoint  string
	log       *slog.Logger
	metrics   *Metrics
	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
	owner     *ownerCredential
}

// StartServer starts an embedded etcd that requires client certificates
// signed by cfg.CAFile, creates the users and roles (UserAdmin, UserRemote,
// UserAgent) if they are missing and enables authentication. It returns once
// the server is ready to serve clients, or fails when ctx ends first.
func StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if err := api.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("%w: server: %w", ErrConfig, err)
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: cluster %s: server: data dir is required", ErrConfig, cfg.Cluster)
	}
	for _, f := range []struct{ field, val string }{{"CAFile", cfg.CAFile}, {"CertFile", cfg.CertFile}, {"KeyFile", cfg.KeyFile}} {
		if f.val == "" {
			return nil, fmt.Errorf("%w: cluster %s: server: %s is required", ErrConfig, cfg.Cluster, f.field)
		}
	}
	listen := cfg.ListenClientURL
	if listen == "" {
		listen = "https://127.0.0.1:0"
	}
	clientURL, err := url.Parse(listen)
	if err != nil || clientURL.Scheme != "https" {
		return nil, fmt.Errorf("%w: cluster %s: server: listen URL %q must be https://host:port", ErrConfig, cfg.Cluster, listen)
	}
	// The peer listener is required by etcd but never dialled: the store is a
	// single member. It listens on loopback only, on a free port.
	peerURL, err := url.Parse("http://127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("%w: cluster %s: server: peer URL: %w", ErrConfig, cfg.Cluster, err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Cluster
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{*clientURL}
	ec.AdvertiseClientUrls = []url.URL{*clientURL}
	ec.ListenPeerUrls = []url.URL{*peerURL}
	ec.AdvertisePeerUrls = []url.URL{*peerURL}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	owner, err := newOwnerCredential(cfg)
	if err != nil {
		return nil, err
	}
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile:       cfg.CertFile,
		KeyFile:        cfg.KeyFile,
		TrustedCAFile:  owner.trustedCAFile,
		ClientCertAuth: true,
	}
	ec.ClientAutoTLS = false
	// The client URL serves gRPC alone, through gRPC's own HTTP/2
	// transport. Without a URL of their own, etcd's HTTP endpoints (health,
	// version, the JSON gateway) share the client port, and etcd then
	// serves gRPC through net/http's HTTP/2 server instead: more CPU and
	// latency for every request and watch event (the stores' CPU per
	// change, and the mesh cache's hop, which goes through two stores).
	// Nothing here uses those endpoints: they are served on a Unix socket
	// in the server's private directory, with the same TLS and client
	// certificate rules.
	ec.ListenClientHttpUrls = []url.URL{{Scheme: "unixs", Path: owner.httpSocket()}}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	switch retention := cfg.CompactionRetention; {
	case retention == 0:
		ec.AutoCompactionMode = embed.CompactorModePeriodic
		ec.AutoCompactionRetention = DefaultCompactionRetention.String()
	case retention > 0:
		ec.AutoCompactionMode = embed.CompactorModePeriodic
		ec.AutoCompactionRetention = retention.String()
	}
	// Readers rely on progress notifications to learn that a quiet watch is
	// still alive.
	ec.WatchProgressNotifyInterval = 5 * time.Second
	log := logging.OrDiscard(cfg.Logger)
	ec.QuotaBackendBytes = cfg.quotaBytes()
	ec.MaxRequestBytes = DefaultMaxRequestBytes
	if cfg.MaxRequestBytes > 0 {
		ec.MaxRequestBytes = cfg.MaxRequestBytes
	}
	ec.MaxConcurrentStreams = DefaultMaxStreams
	trust, err := newTrustFile(cfg.CAFile, cfg.Cluster, log)
	if err != nil {
		owner.remove()
		return nil, err
	}
	trust.always = owner.ca.Certificate().RawSubjectPublicKeyInfo
	ec.GRPCAdditionalServerOptions = []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(trust.unary(), restrictLeaseGrant(cfg.Cluster, log)),
		grpc.ChainStreamInterceptor(trust.stream()),
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		owner.remove()
		return nil, fmt.Errorf("cluster %s: start etcd: %w", cfg.Cluster, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		owner.remove()
		return nil, fmt.Errorf("cluster %s: etcd: %w", cfg.Cluster, err)
	case <-ctx.Done():
		e.Close()
		owner.remove()
		return nil, fmt.Errorf("cluster %s: etcd not ready: %w", cfg.Cluster, ctx.Err())
	}
	s := &Server{cfg: cfg, etcd: e, log: log, metrics: cfg.Metrics, owner: owner}
	for _, l := range e.Clients {
		if l.Addr().Network() != "unix" { // not the HTTP socket
			s.endpoint = localEndpoint(*clientURL, l.Addr())
		}
	}
	if s.endpoint == "" {
		e.Close()
		owner.remove()
		return nil, fmt.Errorf("cluster %s: etcd has no client listener", cfg.Cluster)
	}
	if err := s.setupAuth(ctx); err != nil {
		e.Close()
		owner.remove()
		return nil, fmt.Errorf("cluster %s: %w", cfg.Cluster, err)
	}
	every := cfg.AlarmCheckInterval
	if every <= 0 {
		every = DefaultAlarmCheckInterval
	}
	actx, stop := context.WithCancel(context.Background())
	s.stop, s.done = stop, make(chan struct{})
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		wg.Go(func() { trust.run(actx) })
		s.watchAlarms(actx, every)
		wg.Wait()
	}()
	return s, nil
}

// setupAuth creates the users and roles and enables authentication. It talks
// to the etcd server in-process, as root: the request context carries a
// verified TLS peer whose certificate names the root user, which is how etcd
// identifies certificate-authenticated clients. Every step tolerates having
// been done by an earlier start.
func (s *Server) setupAuth(ctx context.Context) error {
	es := s.etcd.Server
	ctx = rootContext(ctx)

	ignoreExists := func(what string, err error) error {
		if err == nil || errors.Is(err, auth.ErrUserAlreadyExist) || errors.Is(err, auth.ErrRoleAlreadyExist) {
			return nil
		}
		return fmt.Errorf("etcd auth setup: %s: %w", what, err)
	}
	for _, u := range []string{userRoot, UserAdmin, UserRemote, UserAgent} {
		_, err := es.UserAdd(ctx, &pb.AuthUserAddRequest{Name: u, Options: &authpb.UserAddOptions{NoPassword: true}})
		if err := ignoreExists("add user "+u, err); err != nil {
			return err
		}
	}
	// etcd's root role is built in.
	for _, r := range []string{roleRemote, roleAgent} {
		_, err := es.RoleAdd(ctx, &pb.AuthRoleAddRequest{Name: r})
		if err := ignoreExists("add role "+r, err); err != nil {
			return err
		}
	}
	// Agents write only their own cluster's status documents; a store
	// configured without a cluster name grants the whole agents prefix.
	agentPrefix := api.KeyPrefix + string(api.KindAgents) + "/"
	if s.cfg.Cluster != "" {
		agentPrefix = api.ClusterPrefix(api.KindAgents, s.cfg.Cluster)
	}
	grants := []struct {
		role   string
		typ    authpb.Permission_Type
		prefix string
	}{
		{roleRemote, authpb.READ, api.KeyPrefix},
		{roleAgent, authpb.READ, api.KeyPrefix},
		{roleAgent, authpb.READWRITE, agentPrefix},
	}
	for _, g := range grants {
		_, err := es.RoleGrantPermission(ctx, &pb.AuthRoleGrantPermissionRequest{
			Name: g.role,
			Perm: &authpb.Permission{PermType: g.typ, Key: []byte(g.prefix), RangeEnd: []byte(clientv3.GetPrefixRangeEnd(g.prefix))},
		})
		if err != nil {
			return fmt.Errorf("etcd auth setup: grant %s on %s to role %s: %w", g.typ, g.prefix, g.role, err)
		}
	}
	for _, ur := range [][2]string{{userRoot, roleRoot}, {UserAdmin, roleRoot}, {UserRemote, roleRemote}, {UserAgent, roleAgent}} {
		if _, err := es.UserGrantRole(ctx, &pb.AuthUserGrantRoleRequest{User: ur[0], Role: ur[1]}); err != nil {
			return fmt.Errorf("etcd auth setup: grant role %s to user %s: %w", ur[1], ur[0], err)
		}
	}
	if _, err := es.AuthEnable(ctx, &pb.AuthEnableRequest{}); err != nil {
		return fmt.Errorf("etcd auth setup: enable auth: %w", err)
	}
	return nil
}

// Endpoint is the client URL the server listens on, with the port actually
// bound. For a wildcard listen address (0.0.0.0, ::) it names the loopback
// address instead, so that it is a URL local clients can dial and verify.
func (s *Server) Endpoint() string { return s.endpoint }

func localEndpoint(listen url.URL, bound net.Addr) string {
	host, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		listen.Host = bound.String()
		return listen.String()
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.Is6() && !ip.Is4In6() && listen.Hostname() != "0.0.0.0" {
			host = "::1"
		}
	}
	listen.Host = net.JoinHostPort(host, port)
	return listen.String()
}

// Close stops the server and waits for it to release its data dir and port.
// Open watch streams delay it by up to etcd's request timeout (about 7s):
// close local clients first. Closing a closed server does nothing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		<-s.done
		s.etcd.Close()
		s.owner.remove()
	})
	return nil
}
