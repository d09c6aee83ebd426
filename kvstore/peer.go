package kvstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/clustermesh/clustermesh/api"
)

var (
	// ErrNoClusterConfig is returned while a store holds no cluster config
	// under the expected name: the cluster's apiserver has not exported yet,
	// or the connection points at another cluster's store.
	ErrNoClusterConfig = errors.New("no cluster config in store")
	// ErrClusterMismatch is wrapped by errors about a cluster config that
	// does not decode or names another cluster than expected.
	ErrClusterMismatch = errors.New("cluster config mismatch")
)

// ClusterConfig reads the cluster config that the store's apiserver exported
// for cluster name, with the checks every reader applies before trusting
// anything else of that store: the value decodes and validates under its key,
// and names the cluster it was read for. raw is the stored value (also on a
// mismatch, for the caller's report), so that a later change can be noticed
// by comparing bytes.
func (c *Client) ClusterConfig(ctx context.Context, name string) (cfg *api.Cluster, raw []byte, err error) {
	return c.ClusterConfigPinned(ctx, name, c.cfg.ClusterID)
}

// ClusterConfigPinned is ClusterConfig with the cluster ID pin given by
// the caller (0: none), for users of a Shared client, whose own config
// carries no pin.
func (c *Client) ClusterConfigPinned(ctx context.Context, name string, pin uint32) (cfg *api.Cluster, raw []byte, err error) {
	key := api.ClusterKey(name)
	kv, ok, err := c.Get(ctx, key)
	if err != nil {
		return nil, nil, fmt.Errorf("cluster %s: read cluster config: %w: %w", name, ErrUnreachable, err)
	}
	if !ok {
		return nil, nil, fmt.Errorf("cluster %s: %w at %s", name, ErrNoClusterConfig, key)
	}
	obj, err := api.Decode(key, kv.Value)
	if err != nil {
		return nil, kv.Value, fmt.Errorf("cluster %s: %w: %w", name, ErrClusterMismatch, err)
	}
	cfg = obj.(*api.Cluster)
	if cfg.Name != name {
		return nil, kv.Value, fmt.Errorf("cluster %s: %w: store's config names cluster %q", name, ErrClusterMismatch, cfg.Name)
	}
	if pin != 0 && cfg.ID != pin {
		return nil, kv.Value, fmt.Errorf("cluster %s: %w: store's config says cluster ID %d, the connection pins %d", name, ErrClusterMismatch, cfg.ID, pin)
	}
	return cfg, kv.Value, nil
}
