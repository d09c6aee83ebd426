package apiserver

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/clustermesh/clustermesh/kvstore"
)

// peerGrants keeps a read-only user on the store for every connected peer
// (one connection file per cluster in --clusters-dir, the clusters Secret the
// agents mount), so that a store that lost its data (an emptyDir, a replaced
// volume) grants its peers again without a new `connect`. It only grants:
// revoking is `disconnect`'s explicit act, and the mounted directory lags
// the Secret by the kubelet's refresh, so a peer just connected may not be
// in it yet.
type peerGrants struct {
	dir     string
	cluster string
	client  *kvstore.Client
	every   time.Duration
	log     *slog.Logger
}

// peers lists the peers named by the directory's connection files (only
// the names: nothing of the files is read).
func (p *peerGrants) peers() ([]string, error) {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !kvstore.IsConnectionFile(name) || name == p.cluster {
			continue
		}
		out = append(out, name)
	}
	return out, nil
}

// reconcile grants every listed peer that has no user on the store.
func (p *peerGrants) reconcile(ctx context.Context) error {
	want, err := p.peers()
	if err != nil {
		return err
	}
	have, err := p.client.Peers(ctx)
	if err != nil {
		return err
	}
	for _, peer := range want {
		if slices.Contains(have, peer) {
			continue
		}
		if err := p.client.GrantPeer(ctx, p.cluster, peer); err != nil {
			p.log.Warn("granting a connected peer its store user", "cluster", p.cluster, "peer", peer, "error", err)
			continue
		}
		p.log.Info("granted a connected peer its store user again", "cluster", p.cluster, "peer", peer, "user", kvstore.PeerUser(peer))
	}
	return nil
}

// run reconciles until ctx ends.
func (p *peerGrants) run(ctx context.Context) {
	t := time.NewTicker(p.every)
	defer t.Stop()
	for {
		if err := p.reconcile(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("reading the connected peers", "cluster", p.cluster, "clusters_dir", p.dir, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
