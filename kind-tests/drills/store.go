package drills

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/clustermesh/clustermesh/cli/mesh"
	"github.com/clustermesh/clustermesh/kvstore"
)

// canaryPrefix holds the keys drills write into a store to see whether it
// keeps its data. It is outside the mesh's key space (api.KeyPrefix), so
// nothing of the mesh reads, exports or prunes it.
const canaryPrefix = "clustermesh-drills/canary/"

// canary is a key written into a cluster's store, with the revision it was
// written at.
type canary struct {
	key string
	rev int64
}

// openStore opens a cluster's store with its admin credential, as
// `clustermesh kv` does.
func openStore(ctx context.Context, m Mesh, cluster string) (*kvstore.Client, error) {
	c, err := mesh.Open(m.Kubeconfig(cluster), "")
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", cluster, err)
	}
	cli, _, err := c.OpenStore(ctx, mesh.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("cluster %s: open its store: %w", cluster, err)
	}
	return cli, nil
}

// writeCanary writes a new canary key into a cluster's store.
func writeCanary(ctx context.Context, m Mesh, cluster string) (canary, error) {
	cli, err := openStore(ctx, m, cluster)
	if err != nil {
		return canary{}, err
	}
	defer cli.Close()
	key := canaryPrefix + cluster + "/" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := cli.Put(ctx, key, []byte("kept")); err != nil {
		return canary{}, fmt.Errorf("cluster %s: write canary: %w", cluster, err)
	}
	kv, ok, err := cli.Get(ctx, key)
	if err != nil || !ok {
		return canary{}, fmt.Errorf("cluster %s: read back canary %s: found %v, %v", cluster, key, ok, err)
	}
	return canary{key: key, rev: kv.ModRevision}, nil
}

// checkCanary tells whether the store still holds the canary as written:
// a store that lost its data (a new volume) has no such key. The key stays
// (a few bytes per run) so that a failed check can be looked at.
func checkCanary(ctx context.Context, m Mesh, cluster string, c canary) error {
	cli, err := openStore(ctx, m, cluster)
	if err != nil {
		return err
	}
	defer cli.Close()
	kv, ok, err := cli.Get(ctx, c.key)
	switch {
	case err != nil:
		return fmt.Errorf("cluster %s: read canary: %w", cluster, err)
	case !ok:
		return fmt.Errorf("%w: cluster %s's store lost its data across the restart: key %s (written at revision %d) is gone", ErrDrill, cluster, c.key, c.rev)
	case kv.ModRevision != c.rev:
		return fmt.Errorf("%w: cluster %s's store: key %s at revision %d, written at %d", ErrDrill, cluster, c.key, kv.ModRevision, c.rev)
	}
	return nil
}
