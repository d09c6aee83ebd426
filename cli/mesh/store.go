package mesh

import (
	"context"
	"fmt"
	"time"

	"github.com/clustermesh/clustermesh/kvstore"
)

// DialTimeout bounds every connection attempt to a store.
const DialTimeout = 5 * time.Second

// Credentials are the TLS files of one client identity, as PEM.
type Credentials struct {
	CA, Cert, Key []byte
}

// storeConfig is how to reach the store at endpoint with these credentials.
func (cr Credentials) storeConfig(endpoint string) (kvstore.Config, error) {
	if _, err := endpointHost(endpoint); err != nil {
		return kvstore.Config{}, err
	}
	return kvstore.Config{
		Endpoints: []string{"https://" + dialAddr(endpoint)},
		CA:        cr.CA, Cert: cr.Cert, Key: cr.Key,
		DialTimeout: DialTimeout, RequestTimeout: DialTimeout,
	}, nil
}

// checkTLS does a TLS handshake with endpoint using creds and returns the
// server certificate's common name.
func checkTLS(ctx context.Context, endpoint string, creds Credentials) (string, error) {
	cfg, err := creds.storeConfig(endpoint)
	if err != nil {
		return "", err
	}
	cert, err := kvstore.ServerCertificate(ctx, cfg, cfg.Endpoints[0])
	if err != nil {
		return "", err
	}
	return cert.Subject.CommonName, nil
}

// openStore connects to a store. The caller closes the client.
func openStore(ctx context.Context, endpoint string, creds Credentials) (*kvstore.Client, error) {
	cfg, err := creds.storeConfig(endpoint)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", endpoint, err)
	}
	cli, err := kvstore.New(ctx, cfg)
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
func (c *Cluster) OpenStore(ctx context.Context, opts StoreOptions) (*kvstore.Client, *Info, error) {
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
