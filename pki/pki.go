// Package pki issues the certificates a mesh runs on: one CA per mesh (or a
// shared trust bundle), a server certificate per cluster's etcd, and client
// certificates whose common name is the etcd user they act as ("admin",
// "remote", "agent").
//
// Keys are ECDSA P-256: fast to generate in tests and accepted by etcd and Go's
// TLS stack. Everything is PEM in memory; callers decide where it is stored (a
// Kubernetes Secret, files in a test's temporary directory).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Default lifetimes. A CA outlives every certificate it signs so that leaf
// rotation never requires re-distributing trust.
const (
	DefaultCALifetime   = 5 * 365 * 24 * time.Hour
	DefaultLeafLifetime = 365 * 24 * time.Hour
)

// CA is a certificate authority able to sign leaf certificates.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
	// chain is appended to every certificate the CA issues: during and after
	// a CA rotation, the new CA's certificate cross-signed by the previous
	// one, so that whoever still trusts only the previous CA accepts the
	// new certificates.
	chain []byte
}

// NewCA creates a self-signed CA. A zero lifetime means DefaultCALifetime.
func NewCA(commonName string, lifetime time.Duration) (*CA, error) {
	if lifetime == 0 {
		lifetime = DefaultCALifetime
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA %s: generate key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"clustermesh"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("CA %s: self-sign: %w", commonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return LoadCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
}

// LoadCA parses a CA certificate and its private key from PEM.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certificate %q is not a CA", cert.Subject.CommonName)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("CA key: no PEM block")
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA %q: key does not match certificate", cert.Subject.CommonName)
	}
	return &CA{cert: cert, key: key, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// CertPEM is the CA certificate, the trust bundle peers verify against.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// KeyPEM is the CA private key.
func (ca *CA) KeyPEM() []byte { return ca.keyPEM }

// Certificate is the parsed CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Chain is what the CA appends to every certificate it issues (PEM; empty
// unless set by WithChain).
func (ca *CA) Chain() []byte { return ca.chain }

// WithChain returns a copy of the CA that appends chainPEM (intermediate or
// cross-signed certificates, leaf side first) to every certificate it
// issues. TLS peers send the whole file, so a verifier that trusts the
// chain's last issuer accepts the leaf.
func (ca *CA) WithChain(chainPEM []byte) *CA {
	c := *ca
	c.chain = chainPEM
	return &c
}

// CrossSign certifies next's subject and public key under ca: a CA
// certificate for next's key, issued by ca. A leaf issued by next and sent
// with this certificate verifies against ca as well as against next, which
// is how a CA is replaced without any verifier losing trust: first hand out
// leaves of next with the cross certificate, then move every verifier to
// next, then stop trusting ca. The cross certificate ends when ca does.
func (ca *CA) CrossSign(next *CA) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	n := next.cert
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               n.Subject,
		SubjectKeyId:          n.SubjectKeyId,
		NotBefore:             n.NotBefore,
		NotAfter:              n.NotAfter,
		KeyUsage:              n.KeyUsage,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, n.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("cross-sign CA %s with %s: %w", n.Subject.CommonName, ca.cert.Subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// IssueOptions describe a leaf certificate.
type IssueOptions struct {
	// CommonName is the subject CN; for etcd client certificates it is the
	// etcd user name.
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	// Server and Client select the extended key usages.
	Server, Client bool
	// Lifetime of the certificate; zero means DefaultLeafLifetime.
	Lifetime time.Duration
}

// Issue signs a new leaf certificate with a fresh key.
func (ca *CA) Issue(opts IssueOptions) (certPEM, keyPEM []byte, err error) {
	if opts.CommonName == "" {
		return nil, nil, errors.New("issue certificate: empty common name")
	}
	if !opts.Server && !opts.Client {
		return nil, nil, fmt.Errorf("certificate %s: neither server nor client usage requested", opts.CommonName)
	}
	lifetime := opts.Lifetime
	if lifetime == 0 {
		lifetime = DefaultLeafLifetime
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: generate key: %w", opts.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	var usage []x509.ExtKeyUsage
	if opts.Server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if opts.Client {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	now := time.Now()
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName, Organization: []string{"clustermesh"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  usage,
		DNSNames:     opts.DNSNames,
		IPAddresses:  opts.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: sign: %w", opts.CommonName, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(certPEM, ca.chain...), keyPEM, nil
}

// ParseCertificates parses every certificate of a PEM bundle.
func ParseCertificates(bundle []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d of bundle: %w", len(out)+1, err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate block")
	}
	return out, nil
}

// ParseCertificate parses the first certificate of a PEM bundle.
func ParseCertificate(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return serial, nil
}
