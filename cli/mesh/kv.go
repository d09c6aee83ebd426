package mesh

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
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

// decodeKV decodes a store value for humans: store objects and agent
// statuses through api.Decode, anything else raw.
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

func (c *Cluster) kvClient(ctx context.Context, opts KVOptions) (*kvstore.Client, error) {
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
	if opts.Peer != "" {
		full = peerScope(full, opts.Peer)
	}
	items, err := cli.List(ctx, full, kvstore.ListOptions{KeysOnly: opts.KeysOnly})
	if err != nil {
		if opts.Peer != "" {
			return nil, fmt.Errorf("context %s: list %s of peer %s (a peer reads only what it exports: %s...): %w", c.Context, full, opts.Peer, api.ClusterPrefix("<kind>", opts.Peer), err)
		}
		return nil, fmt.Errorf("context %s: list %s: %w", c.Context, full, err)
	}
	out := make([]KV, 0, len(items))
	for _, item := range items {
		var kv KV
		if opts.KeysOnly {
			kv = KV{Key: item.Key}
		} else {
			kv = decodeKV(item.Key, item.Value)
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
	item, found, err := cli.Get(ctx, full)
	if err != nil {
		return nil, fmt.Errorf("context %s: get %s: %w", c.Context, full, err)
	}
	if !found {
		return nil, fmt.Errorf("context %s: key %s: %w", c.Context, full, ErrKeyNotFound)
	}
	kv := decodeKV(full, item.Value)
	kv.ModRev, kv.LeaseID = item.ModRevision, item.Lease
	return &kv, nil
}

// peerScope narrows a whole-kind prefix ("clustermesh/v1/services/") to the
// peer's own objects of that kind: the peer's store lets this cluster's
// user read only what the peer exports (kvstore.ExportedKeys).
func peerScope(full, peer string) string {
	rest, _ := strings.CutPrefix(full, api.KeyPrefix)
	kind, after, _ := strings.Cut(rest, "/")
	if kind != "" && after == "" && api.Kind(kind) != api.KindCluster {
		return api.ClusterPrefix(api.Kind(kind), peer)
	}
	return full
}

func absKey(k string) string {
	if strings.HasPrefix(k, api.KeyPrefix) {
		return k
	}
	return api.KeyPrefix + k
}
