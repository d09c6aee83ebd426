package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/internal/proc"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// TestBinary builds the command, checks that --help explains every flag,
// runs it against a real kube-apiserver with its embedded etcd until
// /readyz answers, and checks that SIGTERM stops it cleanly.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "clustermesh-apiserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, help)
	}
	for _, flag := range []string{"--cluster-name", "--cluster-id", "--max-cluster-id", "--kubeconfig", "--cluster-pod-cidrs",
		"--etcd-data-dir", "--etcd-listen-client-url", "--etcd-ca", "--etcd-cert", "--etcd-key", "--kvstore-config", "--health-addr", "--leader-elect", "--workers", "--lease-ttl", "--log-level", "--log-format",
		"--bgp-reflector-address", "--bgp-asn", "--bgp-short-timers", "--clusters-dir", "--clusters-dir-poll"} {
		if !strings.Contains(string(help), flag+" ") {
			t.Errorf("--help does not explain %s", flag)
		}
	}
	if out, err := exec.Command(bin, "--cluster-name", "c1", "--cluster-id", "0").CombinedOutput(); err == nil || !strings.Contains(string(out), "--cluster-id") {
		t.Errorf("bad --cluster-id: exit %v, output %q; want a failure naming the flag", err, out)
	}

	kube := kubetest.Start(t, nil)
	certs := pkitest.New(t, "c1")
	adminCert, adminKey := certs.Client(kvstore.UserAdmin)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	health := l.Addr().String()
	l.Close()
	p := proc.StartT(t, proc.Spec{Name: "clustermesh-apiserver", Path: bin, LogDir: dir, Args: []string{
		"--cluster-name=c1", "--cluster-id=1", "--kubeconfig=" + kube.Kubeconfig,
		"--etcd-data-dir=" + filepath.Join(dir, "etcd"), "--etcd-listen-client-url=https://0.0.0.0:0",
		"--etcd-ca=" + certs.CAFile, "--etcd-cert=" + certs.ServerCert, "--etcd-key=" + certs.ServerKey,
		"--etcd-admin-cert=" + adminCert, "--etcd-admin-key=" + adminKey,
		"--etcd-unsafe-no-fsync", "--health-addr=" + health, "--log-format=json"}})
	logs := func() string { b, _ := os.ReadFile(p.LogPath); return string(b) }

	poll.Eventually(t, 2*time.Minute, "/readyz", func(ctx context.Context) error {
		if p.Exited() {
			t.Fatalf("exited before ready: %v\n%s", p.Err(), logs())
		}
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	})
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, logs())
	}
	// --log-format=json: the daemon's own lines are JSON objects.
	exported := false
	for _, line := range strings.Split(logs(), "\n") {
		var rec struct{ Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "initial export complete" {
			exported = true
		}
	}
	if !exported {
		t.Errorf("log lacks the initial export as a JSON line:\n%s", logs())
	}
}
