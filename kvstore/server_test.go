package kvstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// TestPermissions checks every user's rights on a real embedded etcd, before
// and after a restart on the same data dir (the auth setup must be
// idempotent).
func TestPermissions(t *testing.T) {
	p := newTestPKI(t)
	dataDir := t.TempDir()
	srv, err := StartServer(context.Background(), p.serverConfig(dataDir, ""))
	if err != nil {
		t.Fatal(err)
	}
	endpoint := srv.Endpoint()
	checkPermissions(t, p, endpoint)
	srv.Close()
	srv = startServer(t, p.serverConfig(dataDir, endpoint))
	if srv.Endpoint() != endpoint {
		t.Fatalf("restarted endpoint %s, want %s", srv.Endpoint(), endpoint)
	}
	checkPermissions(t, p, endpoint)
}

func checkPermissions(t *testing.T, p *testPKI, endpoint string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	serviceKey := api.ServiceKey("c1", "default", "web")
	agentKey := api.AgentStatusKey("c1", "node-1")
	// Agents of this store's cluster (c1) publish under agents/c1/ only.
	otherAgentKey := api.AgentStatusKey("c2", "node-1")
	outsideKey := "other/key"
	tests := []struct {
		user       string
		key        string
		canWrite   bool
		canRead    bool
		wantDenied bool
	}{
		{UserAdmin, serviceKey, true, true, false},
		{UserAdmin, outsideKey, true, true, false},
		{UserRemote, serviceKey, false, true, true},
		{UserRemote, agentKey, false, true, true},
		{UserRemote, outsideKey, false, false, true},
		{UserAgent, serviceKey, false, true, true},
		{UserAgent, agentKey, true, true, false},
		{UserAgent, otherAgentKey, false, true, true},
		{UserAgent, outsideKey, false, false, true},
	}
	clients := map[string]*Client{}
	for _, u := range []string{UserAdmin, UserRemote, UserAgent} {
		c, err := New(ctx, p.clientConfig(endpoint, u))
		if err != nil {
			t.Fatalf("user %s: %v", u, err)
		}
		defer c.Close()
		clients[u] = c
	}
	for _, tt := range tests {
		c := clients[tt.user]
		_, err := c.cli.Put(ctx, tt.key, "v-"+tt.user)
		if tt.canWrite != (err == nil) {
			t.Errorf("user %s: put %s: err = %v, want allowed=%v", tt.user, tt.key, err, tt.canWrite)
		}
		if err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("user %s: put %s: err = %v, want permission denied", tt.user, tt.key, err)
		}
		_, err = c.cli.Delete(ctx, tt.key)
		if tt.canWrite != (err == nil) {
			t.Errorf("user %s: delete %s: err = %v, want allowed=%v", tt.user, tt.key, err, tt.canWrite)
		}
		_, err = c.cli.Get(ctx, tt.key)
		if tt.canRead != (err == nil) {
			t.Errorf("user %s: get %s: err = %v, want allowed=%v", tt.user, tt.key, err, tt.canRead)
		}
	}
	// Nobody but the admin may change users.
	if _, err := clients[UserRemote].cli.UserGrantRole(ctx, UserRemote, "root"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("remote granting itself root: err = %v, want permission denied", err)
	}

	// A certificate from another CA is refused at the TLS handshake.
	cfg := p.clientConfig(endpoint, "untrusted")
	cfg.DialTimeout = 2 * time.Second
	if c, err := New(ctx, cfg); err == nil {
		c.Close()
		t.Error("client with an untrusted certificate connected")
	} else if !errors.Is(err, ErrUnreachable) {
		t.Errorf("untrusted client: err = %v, want ErrUnreachable", err)
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted client: err = %v, want the TLS cause named", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	p := newTestPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := p.clientConfig("https://"+addr, UserRemote)
	cfg.DialTimeout = time.Second
	c, err := New(context.Background(), cfg)
	if err == nil {
		c.Close()
		t.Fatal("connected to a closed port")
	}
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want ErrUnreachable naming %s and the refused connection", err, addr)
	}
}

// TestServerWildcardListen listens on every address (the apiserver's
// default) and checks that Endpoint is a URL a local client can use.
func TestServerWildcardListen(t *testing.T) {
	p := newTestPKI(t)
	srv := startServer(t, p.serverConfig(t.TempDir(), "https://0.0.0.0:0"))
	if !strings.HasPrefix(srv.Endpoint(), "https://127.0.0.1:") {
		t.Fatalf("endpoint %s, want the loopback address", srv.Endpoint())
	}
	c := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	if _, err := c.cli.Put(context.Background(), api.NodeKey("c1", "n1"), "x"); err != nil {
		t.Fatal(err)
	}
}

// TestServerEndpoints checks where the store serves what: its client URL
// speaks gRPC only (etcd's HTTP endpoints would make it serve gRPC through
// net/http's slower HTTP/2 server); the HTTP endpoints are on a Unix
// socket in the server's private directory, under the same client
// certificate rule; the directory goes with the server.
func TestServerEndpoints(t *testing.T) {
	p := newTestPKI(t)
	srv, err := StartServer(context.Background(), p.serverConfig(t.TempDir(), ""))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := p.clientConfig(srv.Endpoint(), UserAdmin)
	tlsCfg, err := clientTLS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	get := func(tlsCfg *tls.Config, dial func(ctx context.Context, _, _ string) (net.Conn, error), url string) (string, error) {
		tr := &http.Transport{TLSClientConfig: tlsCfg, DialContext: dial, ForceAttemptHTTP2: false}
		defer tr.CloseIdleConnections()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, body), nil
	}
	if got, err := get(tlsCfg, nil, srv.Endpoint()+"/version"); err == nil && strings.HasPrefix(got, "200") {
		t.Errorf("client URL answers HTTP: %s", got)
	}
	sock := srv.owner.httpSocket()
	unix := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}
	if got, err := get(tlsCfg, unix, "https://127.0.0.1/version"); err != nil || !strings.HasPrefix(got, "200") {
		t.Errorf("HTTP socket /version: %q, %v", got, err)
	}
	noCert := tlsCfg.Clone()
	noCert.Certificates, noCert.GetClientCertificate = nil, nil
	if got, err := get(noCert, unix, "https://127.0.0.1/version"); err == nil {
		t.Errorf("HTTP socket answered a client without a certificate: %s", got)
	}
	dir := srv.owner.dir
	srv.Close()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("server directory %s left behind: %v", dir, err)
	}
}
