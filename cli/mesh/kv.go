package mesh

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
)

// KV is one decoded key of a store.
type KV struct {
	Key string `json:"key"`
	// Kind is the Go type of Value ("Service", "AgentStatus", "raw").
	Kind  string `json:"kind"`
	Value any    `json:"value,omitempty"`
	// Error says why the value could not be decoded; the raw bytes are then
	// in Value as a string (or base64 when not UTF-8).
	Error   string `json:"error,omitempty"`
	ModRev  int64  `json:"modRevision"`
	LeaseID int64  `json:"lease,omitempty"`
}

// decodeKV decodes a store value for humans: store objects through
// api.Decode, agent statuses through agent/status, anything else raw.
func decodeKV(key string, value []byte) KV {
	kv := KV{Key: key}
	raw := func() any {
		if utf8.Valid(value) {
			return string(value)
		}
		return value
	}
	pk, err := api.ParseKey(key)
	if err != nil {
		kv.Kind, kv.Value, kv.Error = "raw", raw(), err.Error()
		return kv
	}
	switch pk.Kind {
	case api.KindSynced:
		kv.Kind, kv.Value = "SyncedCanary", raw()
	case api.KindAgents:
		a, err := status.Decode(value)
		if err != nil {
			kv.Kind, kv.Value, kv.Error = "raw", raw(), err.Error()
		} else {
			kv.Kind, kv.Value = "AgentStatus", a
		}
	default:
		obj, err := api.Decode(key, value)
		if err != nil {
			kv.Kind, kv.Value, kv.Error = "raw", raw(), err.Error()
		} else {
			kv.Kind = fmt.Sprintf("%T", obj)[len("*api."):]
			kv.Value = obj
		}
	}
	return kv
}

// KVOptions select which store kv reads.
type KVOptions struct {
	StoreOptions
	// Peer reads the store of a connected peer (by cluster name) through
	// its entry in the clusters Secret instead of the cluster's own store.
	Peer string
	// KeysOnly lists keys without values.
	KeysOnly bool
}

func (c *Cluster) kvClient(ctx context.Context, opts KVOptions) (*clientv3.Client, error) {
	if opts.Peer == "" {
		cli, _, err := c.OpenStore(ctx, opts.StoreOptions)
		return cli, err
	}
	s, err := c.ClustersSecret(ctx)
	if err != nil {
		return nil, err
	}
	// A bad entry of another cluster does not prevent reading this one.
	entries, badEntries := Entries(s)
	for _, e := range entries {
		if e.Name == opts.Peer {
			ep := e.Endpoint
			if opts.Endpoint != "" {
				ep = opts.Endpoint
			}
			return openStore(ctx, ep, Credentials{CA: e.CA, Cert: e.Cert, Key: e.Key})
		}
	}
	if badEntries != nil {
		return nil, fmt.Errorf("context %s: cluster %s: %w", c.Context, opts.Peer, badEntries)
	}
	return nil, fmt.Errorf("context %s: %w: cluster %s is not connected (no entry in secret %s/%s)", c.Context, ErrInvalidArgument, opts.Peer, c.Namespace, SecretClusters)
}

// KVList lists and decodes every key under prefix (relative prefixes are
// taken under api.KeyPrefix).
func KVList(ctx context.Context, c *Cluster, prefix string, opts KVOptions) ([]KV, error) {
	cli, err := c.kvClient(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	full := absKey(prefix)
	rctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	ops := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if opts.KeysOnly {
		ops = append(ops, clientv3.WithKeysOnly())
	}
	resp, err := cli.Get(rctx, full, ops...)
	if err != nil {
		return nil, fmt.Errorf("context %s: list %s: %w", c.Context, full, err)
	}
	out := make([]KV, 0, len(resp.Kvs))
	for _, item := range resp.Kvs {
		var kv KV
		if opts.KeysOnly {
			kv = KV{Key: string(item.Key)}
		} else {
			kv = decodeKV(string(item.Key), item.Value)
		}
		kv.ModRev, kv.LeaseID = item.ModRevision, item.Lease
		out = append(out, kv)
	}
	return out, nil
}

// KVGet reads and decodes one key.
func KVGet(ctx context.Context, c *Cluster, key string, opts KVOptions) (*KV, error) {
	cli, err := c.kvClient(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	full := absKey(key)
	rctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	resp, err := cli.Get(rctx, full)
	if err != nil {
		return nil, fmt.Errorf("context %s: get %s: %w", c.Context, full, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("context %s: key %s: %w", c.Context, full, ErrKeyNotFound)
	}
	kv := decodeKV(full, resp.Kvs[0].Value)
	kv.ModRev, kv.LeaseID = resp.Kvs[0].ModRevision, resp.Kvs[0].Lease
	return &kv, nil
}

func absKey(k string) string {
	if strings.HasPrefix(k, api.KeyPrefix) {
		return k
	}
	return api.KeyPrefix + k
}
