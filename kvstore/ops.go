package kvstore

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KV is one key as stored.
type KV struct {
	Key   string
	Value []byte
	// ModRevision is the store revision of the key's last change; a guard of
	// a later CompareAndSwap (ModRevisionIs) uses it to act only on the value
	// that was read.
	ModRevision int64
	// Lease is the ID of the lease the key is attached to, 0 if none.
	Lease int64
}

func kvOf(kv *mvccpb.KeyValue) KV {
	return KV{Key: string(kv.Key), Value: kv.Value, ModRevision: kv.ModRevision, Lease: kv.Lease}
}

// Get reads one key. ok is false when the key does not exist.
func (c *Client) Get(ctx context.Context, key string) (kv KV, ok bool, err error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, key)
	if err != nil {
		return KV{}, false, fmt.Errorf("etcd %v: get %s: %w", c.cfg.Endpoints, key, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, false, nil
	}
	return kvOf(resp.Kvs[0]), true, nil
}

// AwaitKey returns once key exists, or with ctx's error. It reads the key,
// then watches it from that read's revision, so a key written in between
// is not missed. It serves a reader waiting for a key another process is
// about to write (a peer's config that a cache has not copied yet), which
// a retry with backoff would see only when its delay is up.
func (c *Client) AwaitKey(ctx context.Context, key string) error {
	rctx, cancel := c.withTimeout(ctx)
	resp, err := c.cli.Get(rctx, key, clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("etcd %v: get %s: %w", c.cfg.Endpoints, key, err)
	}
	if len(resp.Kvs) > 0 {
		return nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Requiring a leader ends the watch of a member cut off from its
	// cluster instead of leaving it waiting on a stale view.
	for wr := range c.cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("etcd %v: watch %s: %w", c.cfg.Endpoints, key, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("etcd %v: watch %s: closed", c.cfg.Endpoints, key)
}

// ListOptions tune List.
type ListOptions struct {
	// KeysOnly leaves Value empty.
	KeysOnly bool
}

// List reads every key under prefix, in key order, at one revision.
func (c *Client) List(ctx context.Context, prefix string, opts ListOptions) ([]KV, error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	ops := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if opts.KeysOnly {
		ops = append(ops, clientv3.WithKeysOnly())
	}
	resp, err := c.cli.Get(rctx, prefix, ops...)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: list %s: %w", c.cfg.Endpoints, prefix, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, kvOf(kv))
	}
	return out, nil
}

// Count is the number of keys under prefix.
func (c *Client) Count(ctx context.Context, prefix string) (int64, error) {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("etcd %v: count %s: %w", c.cfg.Endpoints, prefix, err)
	}
	return resp.Count, nil
}

// Put writes one key without a lease and outside any Writer. It is for keys
// no Writer owns (a cluster's private bookkeeping) and for tools and tests
// that must write a value a Writer would refuse; a cluster's exported objects
// are written by its Writer.
func (c *Client) Put(ctx context.Context, key string, value []byte) error {
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	if _, err := c.cli.Put(rctx, key, string(value)); err != nil {
		return fmt.Errorf("etcd %v: put %s: %w", c.cfg.Endpoints, key, err)
	}
	return nil
}

// Cond is one precondition of a CompareAndSwap.
type Cond struct{ cmp clientv3.Cmp }

// Absent holds when key does not exist.
func Absent(key string) Cond {
	return Cond{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}
}

// ValueIs holds when key exists with exactly value.
func ValueIs(key string, value []byte) Cond {
	return Cond{clientv3.Compare(clientv3.Value(key), "=", string(value))}
}

// ModRevisionIs holds when key was last changed at rev (see KV.ModRevision).
func ModRevisionIs(key string, rev int64) Cond {
	return Cond{clientv3.Compare(clientv3.ModRevision(key), "=", rev)}
}

// Op is one change of a CompareAndSwap.
type Op struct{ op clientv3.Op }

// PutOp writes key (without a lease).
func PutOp(key string, value []byte) Op { return Op{clientv3.OpPut(key, string(value))} }

// DeleteOp deletes key.
func DeleteOp(key string) Op { return Op{clientv3.OpDelete(key)} }

// CompareAndSwap applies ops in one transaction if every cond holds and
// reports whether they held. It is how several writers (apiserver replicas)
// hand out unique values without a lock: the loser sees false and re-reads.
func (c *Client) CompareAndSwap(ctx context.Context, conds []Cond, ops ...Op) (bool, error) {
	cmps := make([]clientv3.Cmp, len(conds))
	for i, cd := range conds {
		cmps[i] = cd.cmp
	}
	then := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		then[i] = o.op
	}
	rctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.Txn(rctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcd %v: transaction: %w", c.cfg.Endpoints, err)
	}
	return resp.Succeeded, nil
}
