package kvstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/api"
)

// PeerUserPrefix starts the name of the etcd user (and role) a peer
// cluster's agents read this store as: "remote-<peer>". One user per peer,
// in the spirit of Cilium's authMode=cluster-strict, so that disconnecting
// a peer removes exactly its access and nobody else's.
const PeerUserPrefix = "remote-"

// PeerUser is the etcd user (and role) of peer cluster name on a store.
func PeerUser(peer string) string { return PeerUserPrefix + peer }

// ExportedKeys are the keys and prefixes of cluster local's store that its
// peers may read: its cluster config (a single key) and its own objects and
// synced canaries. Everything else (agent status, other clusters' keys a
// store may hold, the allocator's and leader election's keys) stays
// unreadable to peers. An empty end means the single key. The bare
// api.KeyPrefix key, which nothing writes, is readable so that New's probe
// (a count of that key) tells a refused identity from a permitted one.
func ExportedKeys(local string) []KeyRange {
	out := []KeyRange{{Key: api.KeyPrefix}, {Key: api.ClusterKey(local)}}
	for _, k := range append([]api.Kind{api.KindSynced}, api.SyncedKinds...) {
		p := api.ClusterPrefix(k, local)
		out = append(out, KeyRange{Key: p, End: clientv3.GetPrefixRangeEnd(p)})
	}
	return out
}

// KeyRange is a key (End empty) or the half-open range [Key, End).
type KeyRange struct{ Key, End string }

// GrantPeer creates (or resets) the user and role of peer on the store of
// cluster local: the role reads ExportedKeys(local) and nothing else, and
// writes nothing. The client must act as the admin user. Granting twice
// converges to the same state.
func (c *Client) GrantPeer(ctx context.Context, local, peer string) error {
	if err := api.ValidateClusterName(peer); err != nil {
		return fmt.Errorf("grant peer: %w", err)
	}
	if peer == local {
		return fmt.Errorf("grant peer %s: a cluster is not its own peer", peer)
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	name := PeerUser(peer)
	// Start from an empty role so that a grant from an older version (or a
	// hand edit) never survives a reconnect.
	if _, err := c.cli.RoleDelete(ctx, name); err != nil && !isNotFound(err) {
		return fmt.Errorf("grant peer %s: reset role: %w", peer, err)
	}
	if _, err := c.cli.RoleAdd(ctx, name); err != nil {
		return fmt.Errorf("grant peer %s: add role: %w", peer, err)
	}
	for _, r := range ExportedKeys(local) {
		if _, err := c.cli.RoleGrantPermission(ctx, name, r.Key, r.End, clientv3.PermissionType(authpb.READ)); err != nil {
			return fmt.Errorf("grant peer %s: read %s: %w", peer, r.Key, err)
		}
	}
	if _, err := c.cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("grant peer %s: add user: %w", peer, err)
	}
	if _, err := c.cli.UserGrantRole(ctx, name, name); err != nil {
		return fmt.Errorf("grant peer %s: grant role: %w", peer, err)
	}
	return nil
}

// RevokePeer removes the user and role of peer from the store: from the
// next request on, the peer's certificate (whose common name is
// PeerUser(peer)) is refused, including on watches it already has open
// (etcd checks permissions when a watch is created and on every range).
// Revoking a peer that has no user is a no-op.
func (c *Client) RevokePeer(ctx context.Context, peer string) error {
	if err := api.ValidateClusterName(peer); err != nil {
		return fmt.Errorf("revoke peer: %w", err)
	}
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	name := PeerUser(peer)
	if _, err := c.cli.UserDelete(ctx, name); err != nil && !isNotFound(err) {
		return fmt.Errorf("revoke peer %s: delete user: %w", peer, err)
	}
	if _, err := c.cli.RoleDelete(ctx, name); err != nil && !isNotFound(err) {
		return fmt.Errorf("revoke peer %s: delete role: %w", peer, err)
	}
	return nil
}

// Peers lists the peers that have a user on the store.
func (c *Client) Peers(ctx context.Context) ([]string, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	resp, err := c.cli.UserList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list peer users: %w", err)
	}
	var out []string
	for _, u := range resp.Users {
		if p, ok := strings.CutPrefix(u, PeerUserPrefix); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func isNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrUserNotFound) || errors.Is(err, rpctypes.ErrRoleNotFound)
}
