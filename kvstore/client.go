package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"sigs.k8s.io/yaml"
)

// Default timeouts of a Config.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// DefaultMaxRecvBytes is the default Config.MaxRecvBytes: a listing page of
// listPageSize keys of up to 64 KiB each.
const DefaultMaxRecvBytes = 64 << 20

// MaxReconnectDelay bounds the wait between attempts to reconnect to a store
// that went away, so that a store coming back is used again within seconds.
const MaxReconnectDelay = 5 * time.Second

// Config is how to reach one cluster's store. It is read from a per-cluster
// connection file (YAML) whose name is the cluster's name, one per cluster in
// the agent's config directory:
//
//	endpoints: ["https://10.1.0.10:2379"]
//	trusted-ca-file: c1.ca.crt        # relative paths resolve against the file's directory
//	cert-file: c1.client.crt
//	key-file: c1.client.key
//	dial-timeout: 5s                  # optional
//	request-timeout: 10s              # optional
type Config struct {
	// Endpoints are the etcd client URLs (https://host:port).
	Endpoints []string
	// CAFile is the trust bundle the server certificate is verified against.
	CAFile string
	// CertFile and KeyFile are the client certificate and key; the
	// certificate's common name is the etcd user the client acts as.
	CertFile, KeyFile string
	// ClusterID, when set, pins the ID the store's cluster config must
	// carry (ClusterConfig refuses another): a peer accepted with one ID is
	// never re-accepted under another.
	ClusterID uint32
	// ServerName, when set, is the common name the store's server
	// certificate must carry ("<cluster>.clustermesh"): every cluster's
	// server certificate comes from the mesh CA, so trust in the CA alone
	// would accept another cluster's store at this endpoint.
	ServerName string
	// CA, Cert and Key are the same as PEM, for callers that hold the
	// credentials in memory (the CLI reads them from Kubernetes Secrets).
	// They are used when CAFile is empty.
	CA, Cert, Key []byte
	// DialTimeout bounds connecting (and New's connectivity check); zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each request Writers and Readers make; zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxRecvBytes bounds one response from the store (a page of a listing,
	// a batch of watch events); zero means DefaultMaxRecvBytes. It is what
	// keeps a peer store holding huge values from making this process
	// allocate without bound: the request fails instead.
	MaxRecvBytes int

	// verifyServer replaces the verification of the server's certificate
	// against CA (Server.OwnerClient).
	verifyServer func(tls.ConnectionState) error
}

// ConnectionFile is the YAML form of Config, as `clustermesh connect`
// writes it and agents read it (LoadConfig).
type ConnectionFile struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file"`
	CertFile      string   `json:"cert-file"`
	KeyFile       string   `json:"key-file"`
	// ClusterID and ServerName pin the peer: see Config.
	ClusterID  uint32 `json:"cluster-id,omitempty"`
	ServerName string `json:"server-name,omitempty"`
	// Optional timeouts (Go durations).
	DialTimeout    string `json:"dial-timeout,omitempty"`
	RequestTimeout string `json:"request-timeout,omitempty"`
}

// LoadConfig reads a connection file. Relative file paths in it resolve
// against the file's directory. Errors name the file and the field.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	var f ConnectionFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %w", ErrConfig, path, err)
	}
	dir := filepath.Dir(path)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	cfg := Config{
		Endpoints: f.Endpoints,
		CAFile:    resolve(f.TrustedCAFile),
		CertFile:  resolve(f.CertFile),
		KeyFile:   resolve(f.KeyFile),
		ClusterID: f.ClusterID, ServerName: f.ServerName,
	}
	for _, d := range []struct {
		field string
		in    string
		out   *time.Duration
	}{
		{"dial-timeout", f.DialTimeout, &cfg.DialTimeout},
		{"request-timeout", f.RequestTimeout, &cfg.RequestTimeout},
	} {
		if d.in == "" {
			continue
		}
		v, err := time.ParseDuration(d.in)
		if err != nil || v <= 0 {
			return Config{}, fmt.Errorf("%w: %s: field %s: %q is not a positive duration (e.g. 5s)", ErrConfig, path, d.field, d.in)
		}
		*d.out = v
	}
	if err := cfg.validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func (cfg *Config) validate() error {
	if len(cfg.Endpoints) == 0 {
		return fmt.Errorf("%w: field endpoints: at least one endpoint is required", ErrConfig)
	}
	if cfg.inMemory() {
		for _, f := range []struct {
			field string
			val   []byte
		}{{"CA", cfg.CA}, {"Cert", cfg.Cert}, {"Key", cfg.Key}} {
			if len(f.val) == 0 {
				return fmt.Errorf("%w: field %s is required", ErrConfig, f.field)
			}
		}
		return nil
	}
	for _, f := range []struct{ field, val string }{
		{"trusted-ca-file", cfg.CAFile},
		{"cert-file", cfg.CertFile},
		{"key-file", cfg.KeyFile},
	} {
		if f.val == "" {
			return fmt.Errorf("%w: field %s is required", ErrConfig, f.field)
		}
		if _, err := os.Stat(f.val); err != nil {
			return fmt.Errorf("%w: field %s: %w", ErrConfig, f.field, err)
		}
	}
	return nil
}

func (cfg *Config) dialTimeout() time.Duration {
	if cfg.DialTimeout > 0 {
		return cfg.DialTimeout
	}
	return DefaultDialTimeout
}

func (cfg *Config) maxRecvBytes() int {
	if cfg.MaxRecvBytes > 0 {
		return cfg.MaxRecvBytes
	}
	return DefaultMaxRecvBytes
}

func (cfg *Config) requestTimeout() time.Duration {
	if cfg.RequestTimeout > 0 {
		return cfg.RequestTimeout
	}
	return DefaultRequestTimeout
}

// Client is a connection to one cluster's store. It is safe for concurrent
// use and reconnects by itself; it lives until Close.
type Client struct {
	cfg Config
	cli *clientv3.Client
	// inProcess: the client calls an embedded store in this process
	// (Server.InProcessClient), with no connection to watch.
	inProcess bool
}

// New connects to the store described by cfg over mutual TLS and checks,
// within cfg.DialTimeout, that the store answers a read under api.KeyPrefix
// with this client's identity. It returns an error wrapping ErrUnreachable
// when it does not.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          cfg.dialTimeout(),
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		MaxCallRecvMsgSize:   cfg.maxRecvBytes(),
		Context:              context.WithoutCancel(ctx),
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's default backoff grows to two minutes: a peer's store
			// that comes back would stay unused that long.
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: MaxReconnectDelay},
			MinConnectTimeout: cfg.dialTimeout(),
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", cfg.Endpoints, err)
	}
	c := &Client{cfg: cfg, cli: cli}
	cctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	defer cancel()
	if _, err := cli.Get(cctx, api.KeyPrefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		if cause := diagnoseTLS(ctx, cfg, tlsCfg); cause != nil {
			return nil, fmt.Errorf("etcd %v: %w: %w (%w)", cfg.Endpoints, ErrUnreachable, err, cause)
		}
		return nil, fmt.Errorf("etcd %v: %w: %w", cfg.Endpoints, ErrUnreachable, err)
	}
	return c, nil
}

// diagnoseTLS finds why no endpoint answered when the reason is TCP or TLS
// (a refused connection, an untrusted server, a refused client certificate),
// which gRPC reports only as a timeout.
func diagnoseTLS(ctx context.Context, cfg Config, tlsCfg *tls.Config) error {
	var errs []error
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint %q: %w", ep, err))
			continue
		}
		tc := tlsCfg.Clone()
		tc.NextProtos = []string{"h2"}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: time.Second}, Config: tc}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := d.DialContext(dctx, "tcp", u.Host)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u.Host, err))
			continue
		}
		// With TLS 1.3 the server judges the client certificate after the
		// client's handshake is done: its verdict is the first thing read.
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, io.EOF) {
			errs = append(errs, fmt.Errorf("%s: %w", u.Host, err))
		}
	}
	return errors.Join(errs...)
}

// inMemory reports whether the credentials are given as PEM.
func (cfg *Config) inMemory() bool { return cfg.CAFile == "" && len(cfg.CA) > 0 }

func clientTLS(cfg Config) (*tls.Config, error) {
	if cfg.inMemory() {
		pair, err := tls.X509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: client certificate: %w", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CA) {
			return nil, fmt.Errorf("%w: trusted CA: no certificate in PEM", ErrConfig)
		}
		if cfg.verifyServer != nil {
			// The caller verifies the server itself, against trust that
			// may change between handshakes (Server.OwnerClient).
			return &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, VerifyConnection: cfg.verifyServer, MinVersion: tls.VersionTLS12}, nil
		}
		return pinServer(cfg, &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12}), nil
	}
	info := transport.TLSInfo{
		CertFile:      cfg.CertFile,
		KeyFile:       cfg.KeyFile,
		TrustedCAFile: cfg.CAFile,
	}
	tlsCfg, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: TLS from %s, %s, %s: %w", ErrConfig, cfg.CAFile, cfg.CertFile, cfg.KeyFile, err)
	}
	return pinServer(cfg, tlsCfg), nil
}

// ServerCertificate does a TLS handshake with endpoint (an https:// URL)
// using cfg's credentials, verifying the server against cfg's CA, and returns
// the server's leaf certificate: what a caller pins or checks the name of
// before trusting a store.
func ServerCertificate(ctx context.Context, cfg Config, endpoint string) (*x509.Certificate, error) {
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%w: endpoint %q is not a URL (https://host:port)", ErrConfig, endpoint)
	}
	tlsCfg.ServerName = u.Hostname()
	ctx, cancel := context.WithTimeout(ctx, cfg.dialTimeout())
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tlsCfg}
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return nil, fmt.Errorf("endpoint %s: no server certificate", endpoint)
	}
	return state.PeerCertificates[0], nil
}

// InProcess reports whether the client calls an embedded store in this
// process (Server.InProcessClient) rather than over the network.
func (c *Client) InProcess() bool { return c.inProcess }

// Config is the configuration the client was created with.
func (c *Client) Config() Config { return c.cfg }

// Close closes the connection. Watches of Readers on it end.
func (c *Client) Close() error {
	if err := c.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd %v: close: %w", c.cfg.Endpoints, err)
	}
	return nil
}

// withTimeout derives a request context bounded by the request timeout.
func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.requestTimeout())
}

// pinServer makes tlsCfg refuse a server certificate whose common name is
// not cfg.ServerName, when one is set. The chain is verified as usual
// before.
func pinServer(cfg Config, tlsCfg *tls.Config) *tls.Config {
	if cfg.ServerName == "" {
		return tlsCfg
	}
	want := cfg.ServerName
	tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("%w: no server certificate", ErrServerMismatch)
		}
		if got := cs.PeerCertificates[0].Subject.CommonName; got != want {
			return fmt.Errorf("%w: the server presents the certificate of %q, the connection pins %q", ErrServerMismatch, got, want)
		}
		return nil
	}
	return tlsCfg
}
