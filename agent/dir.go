package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/clustermesh/clustermesh/agent/admit"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// isConnectionFile reports whether a directory entry name is a cluster
// connection file: names containing a '.' are certificates and keys (and
// Kubernetes' ..data links), not clusters.
func isConnectionFile(name string) bool {
	return name != "" && !strings.Contains(name, ".")
}

// loadConnection reads a connection file. The digest covers the file and the
// certificate files it references, so rotating a certificate reconnects.
func loadConnection(path, name string) (kvstore.Config, string, error) {
	h := sha256.New()
	raw, err := os.ReadFile(path)
	if err != nil {
		return kvstore.Config{}, "", fmt.Errorf("%w: cluster %s: %w", ErrConfig, name, err)
	}
	h.Write(raw)
	if err := api.ValidateClusterName(name); err != nil {
		return kvstore.Config{}, hex.EncodeToString(h.Sum(nil)), fmt.Errorf("%w: connection file %s: the file name must be the cluster name: %w", ErrConfig, path, err)
	}
	cfg, err := kvstore.LoadConfig(path)
	for _, f := range []string{cfg.CAFile, cfg.CertFile, cfg.KeyFile} {
		if b, rerr := os.ReadFile(f); rerr == nil {
			h.Write(b)
		}
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if err != nil {
		return cfg, digest, fmt.Errorf("cluster %s: %w", name, err)
	}
	return cfg, digest, nil
}

// scanDir connects, reconnects or disconnects clusters to match the
// connection files in the config directory.
func (a *Agent) scanDir(ctx context.Context) {
	entries, err := os.ReadDir(a.cfg.ClustersDir)
	if err != nil {
		// A transient failure (a Secret volume being swapped) must not
		// disconnect everything: keep the current clusters.
		a.log.Error("cannot read clusters directory", "dir", a.cfg.ClustersDir, "error", err)
		return
	}
	type want struct {
		cfg    kvstore.Config
		err    error
		digest string
	}
	wanted := map[string]want{}
	for _, e := range entries {
		name := e.Name()
		if !isConnectionFile(name) {
			continue
		}
		path := filepath.Join(a.cfg.ClustersDir, name)
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			continue
		}
		cfg, digest, err := loadConnection(path, name)
		wanted[name] = want{cfg, err, digest}
	}

	local, haveLocal := wanted[a.cfg.ClusterName]
	if a.cfg.PeersViaLocalStore {
		for name, w := range wanted {
			if name == a.cfg.ClusterName {
				continue
			}
			if !haveLocal {
				w.err = fmt.Errorf("%w: cluster %s is followed through the local store (the mesh cache), and the local cluster %s has no connection file", ErrConfig, name, a.cfg.ClusterName)
			} else {
				// The peer's own file still pins its cluster ID.
				id := w.cfg.ClusterID
				w.cfg, w.err = local.cfg, errors.Join(w.err, local.err)
				w.cfg.ClusterID = id
			}
			w.digest += local.digest
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
				Config:           w.cfg,
				ConfigErr:        w.err,
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
			r = &clusterRun{c: c, digest: w.digest}
			a.mu.Lock()
			a.clusters[name] = r
			a.mu.Unlock()
			a.start(ctx, r)
		case r.digest != w.digest:
			a.log.Info("connection file changed: reconnecting cluster", "cluster", name)
			r.cancel()
			<-r.done
			r.c.SetConfig(w.cfg, w.err)
			r.digest = w.digest
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
