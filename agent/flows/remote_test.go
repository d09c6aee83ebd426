package flows

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/observe"
	"github.com/clustermesh/clustermesh/pki"
)

// TestRemoteAccess runs the observe endpoint over real mutual TLS: the own
// cluster's observers are served, another cluster's only once allowed and
// no longer once revoked, a certificate that is not an observer's gets 403,
// and an observer pinning another cluster's name refuses the agent.
func TestRemoteAccess(t *testing.T) {
	o, err := New(Config{Cluster: "c1", Node: "c1-n1", Source: fakeSource{}, Resolver: fakeNames{}})
	if err != nil {
		t.Fatal(err)
	}
	o.add(o.enrich(bpf.Event{Time: time.Now(), Kind: bpf.EventNoBackend, NetnsCookie: 42, Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: 6}))

	meshCA := mustCA(t, "mesh")
	obsC1, obsC2 := mustCA(t, "observe c1"), mustCA(t, "observe c2")
	serverDir, clientsDir := t.TempDir(), t.TempDir()
	crt, key, err := meshCA.Issue(pki.IssueOptions{CommonName: observe.ServerName("c1"), Server: true})
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(serverDir, observe.ServerCertFile), crt)
	write(t, filepath.Join(serverDir, observe.ServerKeyFile), key)
	write(t, filepath.Join(clientsDir, observe.ClientCAFile("c1")), obsC1.CertPEM())

	access, err := observe.NewServerAccess(serverDir, clientsDir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", access.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: o.RemoteHandler(access, 0, nil), ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "https://" + ln.Addr().String()

	client := func(ca *pki.CA, cn, pin string) *http.Client {
		t.Helper()
		c, k, err := ca.Issue(pki.IssueOptions{CommonName: cn, Client: true})
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := observe.ClientTLS(pair, meshCA.CertPEM(), pin)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
	}
	count := func(hc *http.Client) (int, error) {
		n := 0
		err := observe.Stream(context.Background(), hc, base, observe.Request{}, func(observe.Flow) error { n++; return nil })
		return n, err
	}

	if n, err := count(client(obsC1, observe.ClientCommonName, "c1")); err != nil || n != 1 {
		t.Fatalf("own observer: %d flows, %v; want 1 flow", n, err)
	}
	if _, err := count(client(obsC2, observe.ClientCommonName, "c1")); !observe.IsRefused(err) {
		t.Fatalf("observer of c2 before it was allowed: %v, want a TLS alert", err)
	}
	if _, err := count(client(obsC1, "admin", "c1")); !errors.Is(err, observe.ErrStatus) {
		t.Fatalf("a non-observer certificate of an allowed CA: %v, want a 403 refusal", err)
	}
	if _, err := count(client(obsC1, observe.ClientCommonName, "c2")); err == nil {
		t.Fatal("an observer expecting c2's agents accepted c1's agent")
	}
	resp, err := client(obsC1, observe.ClientCommonName, "c1").Get(base + "/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /status off the node: %d, want 404 (only flows are served)", resp.StatusCode)
	}

	// Allow c2: applies within the reload interval, without a restart.
	write(t, filepath.Join(clientsDir, observe.ClientCAFile("c2")), obsC2.CertPEM())
	waitFor(t, "c2's observer served after allow", func() bool {
		n, err := count(client(obsC2, observe.ClientCommonName, "c1"))
		return err == nil && n == 1
	})
	if err := os.Remove(filepath.Join(clientsDir, observe.ClientCAFile("c2"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c2's observer refused after revoke", func() bool {
		_, err := count(client(obsC2, observe.ClientCommonName, "c1"))
		return observe.IsRefused(err)
	})
}

func mustCA(t *testing.T, name string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
