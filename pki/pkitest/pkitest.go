// Package pkitest is the one place tests get certificates from. It issues
// through package pki, failing the test on error, either in memory (CA,
// Issue) or as PEM files in a test's temporary directory (New): a CA, a
// server certificate for a store on loopback, and client certificates for
// etcd users. Tests that start an embedded store, a clustermesh-apiserver or
// write connection files use it instead of issuing and writing each file
// themselves.
//
// Everything lives as long as the test: files are in tb.TempDir.
package pkitest

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/pki"
)

// CA returns a fresh authority named name, in memory.
func CA(tb testing.TB, name string) *pki.CA {
	tb.Helper()
	ca, err := pki.NewCA(name, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// Issue issues a certificate with ca and returns its PEM certificate and key.
func Issue(tb testing.TB, ca *pki.CA, opts pki.IssueOptions) (cert, key []byte) {
	tb.Helper()
	cert, key, err := ca.Issue(opts)
	if err != nil {
		tb.Fatal(err)
	}
	return cert, key
}

// ClientPEM issues a client certificate for an etcd user with ca, in memory.
func ClientPEM(tb testing.TB, ca *pki.CA, user string) (cert, key []byte) {
	tb.Helper()
	return Issue(tb, ca, pki.IssueOptions{CommonName: user, Client: true})
}

// Files is a CA and the certificate files issued by it so far.
type Files struct {
	tb testing.TB
	// CA is the authority; tests may issue more certificates with it.
	CA *pki.CA
	// Dir holds every file.
	Dir string
	// CAFile is the CA certificate, the trust bundle for servers and clients.
	CAFile string
	// ServerCert and ServerKey are a server certificate valid for 127.0.0.1
	// and localhost.
	ServerCert, ServerKey string
}

// New creates a CA and a server certificate with common name serverCN, in a
// fresh temporary directory.
func New(tb testing.TB, serverCN string) *Files {
	tb.Helper()
	f := &Files{tb: tb, CA: CA(tb, "test-mesh"), Dir: tb.TempDir()}
	f.CAFile = f.Write("ca.crt", f.CA.CertPEM())
	f.ServerCert, f.ServerKey = f.Issue("server", pki.IssueOptions{
		CommonName: serverCN, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}, Server: true,
	})
	return f
}

// Client issues a client certificate for an etcd user and returns the paths
// of its certificate and key (<user>.crt, <user>.key).
func (f *Files) Client(user string) (cert, key string) {
	f.tb.Helper()
	return f.Issue(user, pki.IssueOptions{CommonName: user, Client: true})
}

// Issue issues a certificate with opts and writes it as <name>.crt and
// <name>.key, returning their paths.
func (f *Files) Issue(name string, opts pki.IssueOptions) (cert, key string) {
	f.tb.Helper()
	c, k := Issue(f.tb, f.CA, opts)
	return f.Write(name+".crt", c), f.Write(name+".key", k)
}

// Write writes b to name (a path relative to Dir, whose directories are
// created) with mode 0600 and returns its path.
func (f *Files) Write(name string, b []byte) string {
	f.tb.Helper()
	p := filepath.Join(f.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		f.tb.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		f.tb.Fatal(err)
	}
	return p
}
