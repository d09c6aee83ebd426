package observe

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/pki"
)

// DefaultPort is where agents serve their flows off the node (their
// --observe-addr), on the node's address.
const DefaultPort = 4245

// ClientCommonName is the common name of an observer's client
// certificate. Which cluster the observer belongs to is told by the CA that
// signed it, not by a name in the certificate: every cluster has an observe
// CA of its own that no other cluster holds.
const ClientCommonName = "clustermesh-observer"

// Files of the agent's observe directories: the server certificate and key
// (--observe-tls-dir, the clustermesh-observe-server Secret) and one client
// CA file per cluster whose observers the operator allowed, the agent's own
// cluster always (--observe-clients-dir, the clustermesh-observe-clients
// Secret).
const (
	ServerCertFile = "tls.crt"
	ServerKeyFile  = "tls.key"
	clientCAPrefix = "client-ca."
	clientCASuffix = ".crt"
)

// ClientCAFile is the name of the file (and Secret key) that allows the
// observers of cluster.
func ClientCAFile(cluster string) string { return clientCAPrefix + cluster + clientCASuffix }

// ClusterOfClientCAFile is the inverse of ClientCAFile.
func ClusterOfClientCAFile(name string) (string, bool) {
	if !strings.HasPrefix(name, clientCAPrefix) || !strings.HasSuffix(name, clientCASuffix) {
		return "", false
	}
	c := strings.TrimSuffix(strings.TrimPrefix(name, clientCAPrefix), clientCASuffix)
	return c, c != ""
}

// ServerName is the common name of the agents' observe server certificate
// in cluster; observers pin it, so an agent of one cluster cannot pass for
// one of another.
func ServerName(cluster string) string { return cluster + ".observe.clustermesh" }

// reloadEvery bounds how often the server rereads its directory: the
// kubelet rewrites a Secret mount in place, and a grant or revocation must
// apply without a restart.
const reloadEvery = time.Second

// ServerAccess is the agent's side of the mutual TLS: its certificate and
// the allowed observers' CAs, reread from the directory at most once per
// second, so that `clustermesh observe allow` and `revoke` apply to the
// next connection.
type ServerAccess struct {
	dir, clientsDir string

	mu     sync.Mutex
	read   time.Time
	cert   *tls.Certificate
	pool   *x509.CertPool
	byCA   map[string]string // raw subject+key of a client CA → its cluster
	errMsg string
}

// NewServerAccess reads the directories once and fails if dir holds no
// usable server certificate.
func NewServerAccess(dir, clientsDir string) (*ServerAccess, error) {
	s := &ServerAccess{dir: dir, clientsDir: clientsDir}
	if err := s.reload(true); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *ServerAccess) reload(force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !force && time.Since(s.read) < reloadEvery {
		return nil
	}
	s.read = time.Now()
	cert, err := tls.LoadX509KeyPair(filepath.Join(s.dir, ServerCertFile), filepath.Join(s.dir, ServerKeyFile))
	if err != nil {
		if s.cert != nil {
			// Keep serving with the last good pair while a mount is
			// being rewritten.
			return nil
		}
		return fmt.Errorf("observe tls dir %s: server certificate: %w", s.dir, err)
	}
	entries, err := os.ReadDir(s.clientsDir)
	if err != nil && s.cert == nil {
		return fmt.Errorf("observe clients dir %s: %w", s.clientsDir, err)
	}
	pool, byCA := x509.NewCertPool(), map[string]string{}
	var bad []string
	for _, e := range entries {
		cluster, ok := ClusterOfClientCAFile(e.Name())
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.clientsDir, e.Name()))
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		certs, err := pki.ParseCertificates(b)
		if err != nil || len(certs) == 0 {
			bad = append(bad, fmt.Sprintf("%s: no certificate", e.Name()))
			continue
		}
		for _, c := range certs {
			pool.AddCert(c)
			byCA[caKey(c)] = cluster
		}
	}
	s.cert, s.pool, s.byCA, s.errMsg = &cert, pool, byCA, strings.Join(bad, "; ")
	return nil
}

// caKey identifies a CA certificate by subject and public key: what a
// chain's root is matched by.
func caKey(c *x509.Certificate) string {
	return string(c.RawSubject) + "\x00" + string(c.RawSubjectPublicKeyInfo)
}

// Problems names the client CA files that could not be read, if any.
func (s *ServerAccess) Problems() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errMsg
}

// TLSConfig is the listener's configuration: TLS 1.3, a client
// certificate required and verified against the allowed CAs of the moment.
func (s *ServerAccess) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			_ = s.reload(false)
			s.mu.Lock()
			defer s.mu.Unlock()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*s.cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    s.pool,
			}, nil
		},
	}
}

// ErrNotObserver: the client certificate verified but is not an observer's.
var ErrNotObserver = errors.New("client certificate is not an observer's")

// ClientCluster tells which allowed cluster a verified connection's
// observer belongs to: the cluster whose CA its chain ends in.
func (s *ServerAccess) ClientCluster(st *tls.ConnectionState) (string, error) {
	if st == nil || len(st.VerifiedChains) == 0 {
		return "", errors.New("no verified client certificate")
	}
	chain := st.VerifiedChains[0]
	if chain[0].Subject.CommonName != ClientCommonName {
		return "", fmt.Errorf("%w: common name %q, want %q", ErrNotObserver, chain[0].Subject.CommonName, ClientCommonName)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.byCA[caKey(chain[len(chain)-1])]; ok {
		return c, nil
	}
	return "", errors.New("client CA no longer allowed")
}

// ClientTLS is an observer's configuration for the agents of cluster: its
// client certificate, and the mesh CA bundle the agents' server
// certificates chain to, with the common name pinned to ServerName(cluster)
// (agents are reached by address, so no host name is checked).
func ClientTLS(cert tls.Certificate, roots []byte, cluster string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, errors.New("observe: no CA certificate in the mesh trust bundle")
	}
	want := ServerName(cluster)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Verified below, against the pinned name instead of a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("agent sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("agent certificate: %w", err)
			}
			if leaf.Subject.CommonName != want {
				return fmt.Errorf("agent certificate is %q, want %q (an agent of another cluster?)", leaf.Subject.CommonName, want)
			}
			return nil
		},
	}, nil
}

// IsRefused tells whether err is an agent's TLS refusal of the observer's
// certificate (its cluster is not allowed there). In TLS 1.3 the refusal
// arrives after the client's handshake, on the first read, and HTTP
// clients report it as text only.
func IsRefused(err error) bool {
	var alert tls.AlertError
	return err != nil && (errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls: "))
}
