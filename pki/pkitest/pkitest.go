// Package pkitest writes a mesh's certificates as PEM files into a test's
// temporary directory: a CA, a server certificate for a store on loopback,
// and client certificates for etcd users. Tests that start an embedded store
// or a clustermesh-apiserver use it instead of issuing and writing each file
// themselves.
package pkitest

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/pki"
)

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
	ca, err := pki.NewCA("test-mesh", 0)
	if err != nil {
		tb.Fatal(err)
	}
	f := &Files{tb: tb, CA: ca, Dir: tb.TempDir()}
	f.CAFile = f.write("ca.crt", ca.CertPEM())
	f.ServerCert, f.ServerKey = f.issue("server", pki.IssueOptions{
		CommonName: serverCN, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}, Server: true,
	})
	return f
}

// Client issues a client certificate for an etcd user and returns the paths
// of its certificate and key (<user>.crt, <user>.key).
func (f *Files) Client(user string) (cert, key string) {
	f.tb.Helper()
	return f.issue(user, pki.IssueOptions{CommonName: user, Client: true})
}

func (f *Files) issue(name string, opts pki.IssueOptions) (cert, key string) {
	f.tb.Helper()
	c, k, err := f.CA.Issue(opts)
	if err != nil {
		f.tb.Fatal(err)
	}
	return f.write(name+".crt", c), f.write(name+".key", k)
}

func (f *Files) write(name string, b []byte) string {
	f.tb.Helper()
	p := filepath.Join(f.Dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		f.tb.Fatal(err)
	}
	return p
}
