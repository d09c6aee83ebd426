package mesh

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/pki"
)

// ServerNameSuffix follows the cluster name in the common name of its
// store's server certificate ("c1.clustermesh"); connection files pin it.
const ServerNameSuffix = ".clustermesh"

// Keys of the certificate Secrets. The CA Secret holds ca.crt and ca.key;
// every leaf Secret holds ca.crt, tls.crt and tls.key so that a mount of it
// is a complete TLS configuration.
const (
	KeyCACert = "ca.crt"
	KeyCAKey  = "ca.key"
	// KeyCAChain (CA Secret) is appended to every certificate the CA
	// issues: after a CA rotation, the CA's certificate cross-signed by the
	// previous CA, so that verifiers still trusting only the previous CA
	// accept the new certificates (see RotateCA).
	KeyCAChain = "ca-chain.crt"
	// KeyCAPrevious (CA Secret) is the previous CA while a rotation is under
	// way: every trust bundle holds it beside ca.crt until the rotation
	// finishes.
	KeyCAPrevious = "ca-previous.crt"
	// KeyCARotationStarted (CA Secret) is when the rotation under way
	// started (RFC 3339).
	KeyCARotationStarted = "rotation-started"
	KeyCert              = corev1.TLSCertKey
	KeyKey               = corev1.TLSPrivateKeyKey
)

// RenewBefore is how long before expiry a certificate counts as expiring:
// enable re-issues it and status warns about it.
const RenewBefore = 30 * 24 * time.Hour

// The etcd users client certificates act as (their common name).
const (
	UserAdmin  = "admin"
	UserRemote = "remote"
	UserAgent  = "agent"
)

// leafSpec describes one leaf certificate Secret.
type leafSpec struct {
	secret string
	opts   pki.IssueOptions
}

func clientLeaves() []leafSpec {
	return []leafSpec{
		{SecretAdmin, pki.IssueOptions{CommonName: UserAdmin, Client: true}},
		{SecretRemote, pki.IssueOptions{CommonName: UserRemote, Client: true}},
		{SecretAgent, pki.IssueOptions{CommonName: UserAgent, Client: true}},
	}
}

// observeServerLeaf is the agents' observe server certificate: agents are
// reached by address, so observers pin its common name instead of a host.
func observeServerLeaf(clusterName string) leafSpec {
	return leafSpec{SecretObserveServer, pki.IssueOptions{CommonName: observe.ServerName(clusterName), Server: true}}
}

func serverLeaf(ns string, clusterName string, sanHosts []string) leafSpec {
	svc := ServiceName
	opts := pki.IssueOptions{
		CommonName: clusterName + ServerNameSuffix,
		Server:     true,
		// The apiserver's own writer dials its etcd on localhost with the
		// admin certificate; the server certificate must name it too.
		DNSNames: []string{"localhost", svc, svc + "." + ns, svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range sanHosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(opts.IPs, ip.Equal) {
				opts.IPs = append(opts.IPs, ip)
			}
		} else if !slices.Contains(opts.DNSNames, h) {
			opts.DNSNames = append(opts.DNSNames, h)
		}
	}
	return leafSpec{SecretServer, opts}
}

// leafValid tells whether the leaf Secret data holds a certificate issued by
// ca with the given trust bundle, not expiring within RenewBefore, for the
// same name and (for servers) covering every wanted address.
func leafValid(data map[string][]byte, ca *pki.CA, bundle []byte, spec leafSpec, now time.Time) bool {
	if !bytes.Equal(data[KeyCACert], bundle) || len(data[KeyKey]) == 0 {
		return false
	}
	cert, err := pki.ParseCertificate(data[KeyCert])
	if err != nil {
		return false
	}
	if cert.Subject.CommonName != spec.opts.CommonName || now.Add(RenewBefore).After(cert.NotAfter) {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Certificate())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: now}); err != nil {
		return false
	}
	for _, d := range spec.opts.DNSNames {
		if !slices.Contains(cert.DNSNames, d) {
			return false
		}
	}
	for _, ip := range spec.opts.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func (c *Cluster) getSecret(ctx context.Context, name string) (*corev1.Secret, error) {
	s, err := c.Kube.CoreV1().Secrets(c.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("context %s: get secret %s/%s: %w", c.Context, c.Namespace, name, err)
	}
	return s, nil
}

func (c *Cluster) applySecret(ctx context.Context, name string, typ corev1.SecretType, data map[string][]byte) error {
	ac := corev1ac.Secret(name, c.Namespace).
		WithLabels(map[string]string{"app.kubernetes.io/part-of": "clustermesh"}).
		WithType(typ).
		WithData(data)
	_, err := c.Kube.CoreV1().Secrets(c.Namespace).Apply(ctx, ac, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("context %s: apply secret %s/%s: %w", c.Context, c.Namespace, name, err)
	}
	return nil
}

// LoadCA reads the cluster's CA from its CA Secret, with the chain it
// appends to what it issues. It returns ErrNotEnabled when the Secret does
// not exist.
func (c *Cluster) LoadCA(ctx context.Context) (*pki.CA, error) {
	ca, _, err := c.loadCAState(ctx)
	return ca, err
}

// loadCAState reads the CA Secret: the CA and, while a rotation is under
// way, the previous CA's certificate (PEM).
func (c *Cluster) loadCAState(ctx context.Context) (*pki.CA, []byte, error) {
	s, err := c.getSecret(ctx, SecretCA)
	if err != nil {
		return nil, nil, err
	}
	if s == nil {
		return nil, nil, fmt.Errorf("context %s: %w: secret %s/%s not found", c.Context, ErrNotEnabled, c.Namespace, SecretCA)
	}
	ca, err := pki.LoadCA(s.Data[KeyCACert], s.Data[KeyCAKey])
	if err != nil {
		return nil, nil, fmt.Errorf("context %s: secret %s/%s: %w", c.Context, c.Namespace, SecretCA, err)
	}
	if chain := s.Data[KeyCAChain]; len(chain) > 0 {
		ca = ca.WithChain(chain)
	}
	return ca, s.Data[KeyCAPrevious], nil
}

// trustBundle is what the cluster's verifiers trust while it signs with
// ca: ca itself and, during a CA rotation, the previous CA.
func (c *Cluster) trustBundle(ctx context.Context, ca *pki.CA) ([]byte, error) {
	s, err := c.getSecret(ctx, SecretCA)
	if err != nil {
		return nil, err
	}
	if s != nil && bytes.Equal(s.Data[KeyCACert], ca.CertPEM()) && len(s.Data[KeyCAPrevious]) > 0 {
		return bundleOf(ca.CertPEM(), s.Data[KeyCAPrevious]), nil
	}
	return ca.CertPEM(), nil
}

// bundleOf concatenates PEM certificates, current CA first.
func bundleOf(pems ...[]byte) []byte {
	var out []byte
	for _, p := range pems {
		out = append(out, p...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
	}
	return out
}

// ensureLeaf keeps the existing certificate if it is still good, otherwise
// issues a new one (always when force is set). It returns the Secret data.
func (c *Cluster) ensureLeaf(ctx context.Context, ca *pki.CA, bundle []byte, spec leafSpec, force bool) (map[string][]byte, error) {
	s, err := c.getSecret(ctx, spec.secret)
	if err != nil {
		return nil, err
	}
	if !force && s != nil && leafValid(s.Data, ca, bundle, spec, time.Now()) {
		// Re-apply the same bytes so the field manager owns them; a no-op
		// for the API server.
		data := map[string][]byte{KeyCACert: s.Data[KeyCACert], KeyCert: s.Data[KeyCert], KeyKey: s.Data[KeyKey]}
		return data, c.applySecret(ctx, spec.secret, corev1.SecretTypeTLS, data)
	}
	certPEM, keyPEM, err := ca.Issue(spec.opts)
	if err != nil {
		return nil, fmt.Errorf("context %s: secret %s: %w", c.Context, spec.secret, err)
	}
	data := map[string][]byte{KeyCACert: bundle, KeyCert: certPEM, KeyKey: keyPEM}
	return data, c.applySecret(ctx, spec.secret, corev1.SecretTypeTLS, data)
}

// CertStatus describes one certificate kept in a Secret.
type CertStatus struct {
	Secret     string    `json:"secret"`
	CommonName string    `json:"commonName"`
	NotAfter   time.Time `json:"notAfter"`
	Expiring   bool      `json:"expiring"`
}

func (c *Cluster) certStatuses(ctx context.Context, now time.Time) ([]CertStatus, error) {
	var out []CertStatus
	for _, name := range []string{SecretCA, SecretServer, SecretAdmin, SecretRemote, SecretAgent, SecretObserveServer, SecretObserveCA} {
		s, err := c.getSecret(ctx, name)
		if err != nil {
			return nil, err
		}
		if s == nil {
			continue
		}
		key := KeyCert
		if name == SecretCA || name == SecretObserveCA {
			key = KeyCACert
		}
		cert, err := pki.ParseCertificate(s.Data[key])
		if err != nil {
			return nil, fmt.Errorf("context %s: secret %s/%s: %w", c.Context, c.Namespace, name, err)
		}
		out = append(out, CertStatus{
			Secret:     name,
			CommonName: cert.Subject.CommonName,
			NotAfter:   cert.NotAfter,
			Expiring:   now.Add(RenewBefore).After(cert.NotAfter),
		})
	}
	return out, nil
}
