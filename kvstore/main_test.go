package kvstore

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/pki/pkitest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started once per process by etcd's and grpc's packages.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

// testPKI is a mesh CA with a server certificate for 127.0.0.1 and a client
// certificate per etcd user, as files; untrusted holds a client certificate
// for UserAdmin from a CA the server does not trust.
type testPKI struct {
	*pkitest.Files
	untrusted *pkitest.Files
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{Files: pkitest.New(t, "c1"), untrusted: pkitest.New(t, "other")}
	for _, user := range []string{UserAdmin, UserRemote, UserAgent} {
		p.Client(user)
	}
	p.untrusted.Client(UserAdmin)
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
	dir := p.Dir
	if user == "untrusted" {
		dir, user = p.untrusted.Dir, UserAdmin
	}
	return Config{
		Endpoints:      []string{endpoint},
		CAFile:         p.CAFile,
		CertFile:       filepath.Join(dir, user+".crt"),
		KeyFile:        filepath.Join(dir, user+".key"),
		DialTimeout:    5 * time.Second,
		RequestTimeout: 5 * time.Second,
	}
}

func (p *testPKI) serverConfig(dataDir, listen string) ServerConfig {
	return ServerConfig{
		Cluster:         "c1",
		DataDir:         dataDir,
		ListenClientURL: listen,
		CAFile:          p.CAFile,
		CertFile:        p.ServerCert,
		KeyFile:         p.ServerKey,
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
