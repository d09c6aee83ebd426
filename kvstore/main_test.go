package kvstore

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/pki"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started once per process by etcd's and grpc's packages.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

// testPKI is a mesh CA with a server certificate for 127.0.0.1 and a client
// certificate per etcd user, as files in a temporary directory.
type testPKI struct {
	dir        string
	caFile     string
	serverCert string
	serverKey  string
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("mesh-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{dir: dir, caFile: filepath.Join(dir, "ca.crt")}
	write(t, p.caFile, ca.CertPEM())
	cert, key, err := ca.Issue(pki.IssueOptions{CommonName: "c1", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	p.serverCert, p.serverKey = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	write(t, p.serverCert, cert)
	write(t, p.serverKey, key)
	for _, user := range []string{UserAdmin, UserRemote, UserAgent} {
		cert, key, err := ca.Issue(pki.IssueOptions{CommonName: user, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, user+".crt"), cert)
		write(t, filepath.Join(dir, user+".key"), key)
	}
	// A client certificate from a CA the server does not trust, for a user
	// name that exists.
	other, err := pki.NewCA("other-ca", 0)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err = other.Issue(pki.IssueOptions{CommonName: UserAdmin, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "untrusted.crt"), cert)
	write(t, filepath.Join(dir, "untrusted.key"), key)
	return p
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// clientConfig is the connection config of a client acting as user
// ("untrusted" for the certificate of the other CA).
func (p *testPKI) clientConfig(endpoint, user string) Config {
	return Config{
		Endpoints:      []string{endpoint},
		CAFile:         p.caFile,
		CertFile:       filepath.Join(p.dir, user+".crt"),
		KeyFile:        filepath.Join(p.dir, user+".key"),
		DialTimeout:    5 * time.Second,
		RequestTimeout: 5 * time.Second,
	}
}

func (p *testPKI) serverConfig(dataDir, listen string) ServerConfig {
	return ServerConfig{
		Cluster:         "c1",
		DataDir:         dataDir,
		ListenClientURL: listen,
		CAFile:          p.caFile,
		CertFile:        p.serverCert,
		KeyFile:         p.serverKey,
		UnsafeNoFsync:   true,
	}
}

// startServer starts an embedded etcd, stopped at the end of the test.
func startServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := StartServer(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
