package mesh

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DialTimeout bounds every connection attempt to a store.
const DialTimeout = 5 * time.Second

// Credentials are the TLS files of one client identity, as PEM.
type Credentials struct {
	CA, Cert, Key []byte
}

func (cr Credentials) tlsConfig(serverName string) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(cr.Cert, cr.Key)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cr.CA) {
		return nil, fmt.Errorf("trusted CA: no certificate in PEM")
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
}

// checkTLS does a TLS handshake with endpoint using creds and returns the
// server certificate's common name.
func checkTLS(ctx context.Context, endpoint string, creds Credentials) (string, error) {
	host, err := endpointHost(endpoint)
	if err != nil {
		return "", err
	}
	cfg, err := creds.tlsConfig(host)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", dialAddr(endpoint))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	state := conn.(*tls.Conn).ConnectionState()
	if len(state.PeerCertificates) == 0 {
		return "", fmt.Errorf("endpoint %s: no server certificate", endpoint)
	}
	return state.PeerCertificates[0].Subject.CommonName, nil
}

// openStore connects to a store. The caller closes the client.
func openStore(ctx context.Context, endpoint string, creds Credentials) (*clientv3.Client, error) {
	host, err := endpointHost(endpoint)
	if err != nil {
		return nil, err
	}
	cfg, err := creds.tlsConfig(host)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", endpoint, err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"https://" + dialAddr(endpoint)},
		TLS:         cfg,
		DialTimeout: DialTimeout,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", endpoint, err)
	}
	return cli, nil
}

// StoreOptions select how the CLI reaches a cluster's store.
type StoreOptions struct {
	// Endpoint overrides the endpoint recorded by enable, e.g. a local
	// port-forward ("https://127.0.0.1:2379").
	Endpoint string
}

// OpenStore connects to the cluster's own store with the admin certificate
// kept in the cluster. The caller closes the client.
func (c *Cluster) OpenStore(ctx context.Context, opts StoreOptions) (*clientv3.Client, *Info, error) {
	info, err := c.ReadInfo(ctx)
	if err != nil {
		return nil, nil, err
	}
	creds, err := c.credentials(ctx, SecretAdmin)
	if err != nil {
		return nil, nil, err
	}
	ep := info.Endpoint
	if opts.Endpoint != "" {
		ep = opts.Endpoint
	}
	cli, err := openStore(ctx, ep, creds)
	if err != nil {
		return nil, nil, fmt.Errorf("context %s: cluster %s: %w", c.Context, info.Name, err)
	}
	return cli, info, nil
}

func (c *Cluster) credentials(ctx context.Context, secret string) (Credentials, error) {
	s, err := c.getSecret(ctx, secret)
	if err != nil {
		return Credentials{}, err
	}
	if s == nil {
		return Credentials{}, fmt.Errorf("context %s: %w: secret %s/%s not found", c.Context, ErrNotEnabled, c.Namespace, secret)
	}
	return Credentials{CA: s.Data[KeyCACert], Cert: s.Data[KeyCert], Key: s.Data[KeyKey]}, nil
}
