package kvstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeasedKey keeps one value in the store attached to a lease of its own, so
// that the value disappears within the TTL of its owner's last Put (a crashed
// agent) or at once on Revoke (a stopped one). It is the shape of a liveness
// report; a cluster's exported objects go through a Writer instead.
//
// Each Put renews the lease, or grants a new one when it expired, and then
// writes the value: callers put at least once per TTL. Methods are safe for
// concurrent use.
type LeasedKey struct {
	c   *Client
	key string
	ttl int64

	mu    sync.Mutex
	lease clientv3.LeaseID
}

// NewLeasedKey returns a LeasedKey for key with lease TTL ttl (rounded up to
// whole seconds; etcd raises TTLs below its minimum).
func (c *Client) NewLeasedKey(key string, ttl time.Duration) *LeasedKey {
	secs := int64((ttl + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	return &LeasedKey{c: c, key: key, ttl: secs}
}

// Key is the key the value is kept at.
func (l *LeasedKey) Key() string { return l.key }

// Put writes value under a live lease.
func (l *LeasedKey) Put(ctx context.Context, value []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	rctx, cancel := l.c.withTimeout(ctx)
	defer cancel()
	if l.lease != 0 {
		if _, err := l.c.cli.KeepAliveOnce(rctx, l.lease); err != nil {
			l.lease = 0 // expired or the store restarted: grant anew
		}
	}
	if l.lease == 0 {
		resp, err := l.c.cli.Grant(rctx, l.ttl)
		if err != nil {
			return fmt.Errorf("etcd %v: %s: grant lease: %w", l.c.cfg.Endpoints, l.key, err)
		}
		l.lease = resp.ID
	}
	if _, err := l.c.cli.Put(rctx, l.key, string(value), clientv3.WithLease(l.lease)); err != nil {
		return fmt.Errorf("etcd %v: put %s: %w", l.c.cfg.Endpoints, l.key, err)
	}
	return nil
}

// Revoke deletes the value by revoking its lease. A later Put writes it
// again under a new lease.
func (l *LeasedKey) Revoke(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lease == 0 {
		return nil
	}
	rctx, cancel := l.c.withTimeout(ctx)
	defer cancel()
	_, err := l.c.cli.Revoke(rctx, l.lease)
	l.lease = 0
	if err != nil {
		return fmt.Errorf("etcd %v: %s: revoke lease: %w", l.c.cfg.Endpoints, l.key, err)
	}
	return nil
}
