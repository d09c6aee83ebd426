package kvstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"

	"github.com/clustermesh/clustermesh/pki"
)

// ownerCredential is how the process that embeds a store talks to it: a
// client certificate for the admin user from a CA that exists only in this
// process's memory. The owner never holds a certificate that a rotation of
// the cluster's CA could revoke under it (its connection would then be
// refused and never re-made), and no file or Secret carries a credential to
// write the store that the owner needs.
type ownerCredential struct {
	ca        *pki.CA
	cert, key []byte
	// trustedCAFile is what etcd loads its client CA pool from at start:
	// the cluster's CA file followed by the owner's CA (etcd reads it when
	// it serves).
	trustedCAFile string
	// dir is a private temporary directory, removed when the server
	// closes: it holds trustedCAFile and the socket of etcd's HTTP
	// endpoints (httpSocket).
	dir string
}

// httpSocket is where etcd serves its HTTP endpoints: a Unix socket in the
// server's private directory (see StartServer).
func (o *ownerCredential) httpSocket() string { return filepath.Join(o.dir, "http.sock") }

func newOwnerCredential(cfg ServerConfig) (*ownerCredential, error) {
	ca, err := pki.NewCA("clustermesh-store-owner "+cfg.Cluster, 0)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: server: owner CA: %w", cfg.Cluster, err)
	}
	cert, key, err := ca.Issue(pki.IssueOptions{CommonName: UserAdmin, Client: true})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: server: owner certificate: %w", cfg.Cluster, err)
	}
	bundle, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: cluster %s: server: CA file: %w", ErrConfig, cfg.Cluster, err)
	}
	// A short name: a Unix socket's path is limited to about 100 bytes.
	dir, err := os.MkdirTemp("", "cm-store-")
	if err != nil {
		return nil, fmt.Errorf("cluster %s: server: %w", cfg.Cluster, err)
	}
	if !(len(bundle) == 0 || bundle[len(bundle)-1] == '\n') {
		bundle = append(bundle, '\n')
	}
	caFile := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(caFile, append(bundle, ca.CertPEM()...), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("cluster %s: server: %w", cfg.Cluster, err)
	}
	return &ownerCredential{ca: ca, cert: cert, key: key, trustedCAFile: caFile, dir: dir}, nil
}

func (o *ownerCredential) remove() { os.RemoveAll(o.dir) }

// OwnerClient connects to the store as its owner (the admin user), with
// the in-memory credential only this process holds, over the server's
// endpoint (loopback when it listens on every address). The server's certificate is verified against the CA
// file as it is at each handshake, so that the client follows a CA
// rotation like every other client.
func (s *Server) OwnerClient(ctx context.Context) (*Client, error) {
	u, err := url.Parse(s.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: owner client: %w", s.cfg.Cluster, err)
	}
	// Dial the served port on loopback when listening on every address.
	if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
		u.Host = net.JoinHostPort("127.0.0.1", u.Port())
	}
	endpoint := u.String()
	caFile, name := s.cfg.CAFile, u.Hostname()
	cfg := Config{
		Endpoints: []string{endpoint},
		CA:        s.owner.ca.CertPEM(), // replaced by verifyServer
		Cert:      s.owner.cert,
		Key:       s.owner.key,
		verifyServer: func(cs tls.ConnectionState) error {
			bundle, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("server CA file: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(bundle) {
				return fmt.Errorf("server CA file %s: no certificate", caFile)
			}
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: no server certificate", ErrServerMismatch)
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
			return err
		},
	}
	return New(ctx, cfg)
}
