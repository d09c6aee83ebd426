// Package kvstoretest gives tests and benchmarks what package kvstore keeps
// to itself on purpose.
package kvstoretest

import (
	"context"
	"testing"

	"github.com/clustermesh/clustermesh/kvstore"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// RawClient is a bare etcd client with cfg's identity, closed when tb ends.
// Benchmarks use it as the baseline a user would pick instead of the mesh's
// Reader (a plain etcd watch); production code goes through kvstore.Client,
// which has no such escape hatch.
func RawClient(tb testing.TB, cfg kvstore.Config) *clientv3.Client {
	tb.Helper()
	tlsCfg, err := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}.ClientConfig()
	if err != nil {
		tb.Fatalf("TLS from %s: %v", cfg.CertFile, err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, TLS: tlsCfg, DialTimeout: kvstore.DefaultDialTimeout,
		Context: context.Background(), Logger: zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("etcd %v: %v", cfg.Endpoints, err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}
