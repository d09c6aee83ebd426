package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/clustermesh/clustermesh/agent/admit"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/kvstore"
)

// scanDir connects, reconnects or disconnects clusters to match the
// connection files in the config directory.
func (a *Agent) scanDir(ctx context.Context) {
	wanted, err := kvstore.ReadConnectionDir(a.cfg.ClustersDir)
	if err != nil {
		// A transient failure (a Secret volume being swapped) must not
		// disconnect everything: keep the current clusters.
		a.log.Error("cannot read clusters directory", "dir", a.cfg.ClustersDir, "error", err)
		return
	}

	local, haveLocal := wanted[a.cfg.ClusterName]
	if a.cfg.PeersViaLocalStore {
		for name, w := range wanted {
			if name == a.cfg.ClusterName {
				continue
			}
			if !haveLocal {
				w.Err = fmt.Errorf("%w: cluster %s is followed through the local store (the mesh cache), and the local cluster %s has no connection file", ErrConfig, name, a.cfg.ClusterName)
			} else {
				// The peer's own file still pins its cluster ID.
				id := w.Config.ClusterID
				w.Config, w.Err = local.Config, errors.Join(w.Err, local.Err)
				w.Config.ClusterID = id
			}
			w.Digest += local.Digest
			wanted[name] = w
		}
	}
	if !haveLocal && !a.warnedNoLocal {
		a.log.Warn("no connection file for the own cluster: nothing will be programmed until it appears",
			"dir", a.cfg.ClustersDir, "file", a.cfg.ClusterName)
	}
	a.warnedNoLocal = !haveLocal

	a.mu.Lock()
	var gone []*clusterRun
	for name, r := range a.clusters {
		if _, ok := wanted[name]; !ok {
			gone = append(gone, r)
		}
	}
	a.mu.Unlock()
	for _, r := range gone {
		a.log.Info("connection file removed: disconnecting cluster", "cluster", r.c.Name())
		r.cancel()
		<-r.done
		r.c.Drain()
		// Removed from the status only once drained.
		a.mu.Lock()
		delete(a.clusters, r.c.Name())
		a.mu.Unlock()
	}

	for name, w := range wanted {
		a.mu.Lock()
		r := a.clusters[name]
		a.mu.Unlock()
		switch {
		case r == nil:
			a.log.Info("connection file added: connecting cluster", "cluster", name)
			c := remote.New(remote.Options{
				Name:             name,
				Local:            name == a.cfg.ClusterName,
				Config:           w.Config,
				ConfigErr:        w.Err,
				Registry:         a.registry,
				Shared:           a.shared,
				Delegate:         delegate{a},
				Policy:           &admit.Policy{Protected: a.cfg.ProtectedCIDRs},
				Limits:           a.cfg.PeerLimits,
				Metrics:          a.rmetrics,
				Logger:           a.cfg.Logger,
				ProbeInterval:    a.cfg.ProbeInterval,
				MaxRetryInterval: a.cfg.MaxRetryInterval,
				OnConnected:      a.onConnected(name),
			})
			r = &clusterRun{c: c, digest: w.Digest}
			a.mu.Lock()
			a.clusters[name] = r
			a.mu.Unlock()
			a.start(ctx, r)
		case r.digest != w.Digest:
			a.log.Info("connection file changed: reconnecting cluster", "cluster", name)
			r.cancel()
			<-r.done
			r.c.SetConfig(w.Config, w.Err)
			r.digest = w.Digest
			a.start(ctx, r)
		}
	}
}

func (a *Agent) start(ctx context.Context, r *clusterRun) {
	cctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.c.Run(cctx)
	}()
}

func (a *Agent) onConnected(name string) func(*kvstore.Client) {
	if name != a.cfg.ClusterName {
		return nil
	}
	return func(cli *kvstore.Client) {
		a.mu.Lock()
		a.localClient = cli
		a.mu.Unlock()
	}
}
