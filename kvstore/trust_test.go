package kvstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/poll"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

// TestCARotationWithoutRestart replaces the store's CA while clients stay
// connected: leaves of the new CA (sent with its cross-signed certificate)
// work before the store trusts the new CA; a watch opened with the old
// certificate keeps receiving events while both CAs are trusted; once the
// CA file holds the new CA only, the old certificate is refused on new
// requests and its open watch ends, with no restart of the store, while the
// new certificate and the store owner's in-memory credential keep working.
func TestCARotationWithoutRestart(t *testing.T) {
	p := newTestPKI(t)
	cfg := p.serverConfig(t.TempDir(), "")
	cfg.Logger = testLogger(t)
	cfg.CAFile = p.Write("server/ca.crt", p.CA.CertPEM())
	srv := startServer(t, cfg)
	ctx := context.Background()

	oldCli := newClient(t, p.clientConfig(srv.Endpoint(), UserAdmin))
	owner, err := srv.OwnerClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	watchCtx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	oldWatch := oldCli.cli.Watch(watchCtx, "rot/", clientv3.WithPrefix())

	next := pkitest.CA(t, "next")
	cross, err := p.CA.CrossSign(next)
	if err != nil {
		t.Fatal(err)
	}
	newCert, newKey := pkitest.ClientPEM(t, next.WithChain(cross), UserAdmin)
	newCfg := p.clientConfig(srv.Endpoint(), UserAdmin)
	newCfg.CertFile = p.Write("next/admin.crt", newCert)
	newCfg.KeyFile = p.Write("next/admin.key", newKey)
	// The client still trusts only the old CA: the server certificate has
	// not changed, and the new leaf verifies through the cross certificate.
	newCli := newClient(t, newCfg)

	// Start of the rotation: the store trusts both CAs.
	p.Write("server/ca.crt", append(append([]byte{}, next.CertPEM()...), p.CA.CertPEM()...))
	for i, c := range []*Client{oldCli, newCli} {
		if err := c.Put(ctx, fmt.Sprintf("rot/%d", i), []byte("v")); err != nil {
			t.Fatalf("put with certificate %d while both CAs are trusted: %v", i, err)
		}
	}
	for seen := 0; seen < 2; {
		select {
		case wr := <-oldWatch:
			if err := wr.Err(); err != nil {
				t.Fatalf("old watch during rotation: %v", err)
			}
			seen += len(wr.Events)
		case <-time.After(30 * time.Second):
			t.Fatal("old watch saw no event during rotation")
		}
	}

	// End of the rotation: the store trusts the new CA only.
	p.Write("server/ca.crt", next.CertPEM())
	poll.Eventually(t, 30*time.Second, "the old certificate refused", func(ctx context.Context) error {
		_, _, err := oldCli.Get(ctx, "rot/0")
		if err == nil {
			return fmt.Errorf("old certificate still accepted")
		}
		if !strings.Contains(err.Error(), "no longer trusts") {
			t.Fatalf("old certificate refused with %v, want a message naming the rotation", err)
		}
		return nil
	})
	if err := newCli.Put(ctx, "rot/after", []byte("v")); err != nil {
		t.Fatalf("new certificate after rotation: %v", err)
	}
	// The store's owner writes on, on the connection it had.
	if err := owner.Put(ctx, "rot/owner", []byte("v")); err != nil {
		t.Fatalf("owner client after rotation: %v", err)
	}
	// The old watch ends at its next message (an event or a progress
	// notification) instead of reading on.
	poll.Eventually(t, 30*time.Second, "the old watch ended", func(context.Context) error {
		select {
		case wr, ok := <-oldWatch:
			if !ok || wr.Err() != nil || wr.Canceled {
				return nil
			}
			for _, ev := range wr.Events {
				if string(ev.Kv.Key) == "rot/after" {
					t.Fatal("the old watch received an event written after its CA was dropped")
				}
			}
			return fmt.Errorf("still open")
		case <-time.After(time.Second):
			return fmt.Errorf("still open")
		}
	})
	// A certificate of an unrelated CA was never accepted.
	ucfg := p.clientConfig(srv.Endpoint(), "untrusted")
	if c, err := New(ctx, ucfg); err == nil {
		c.Close()
		t.Fatal("a certificate of an unrelated CA was accepted")
	}
}
