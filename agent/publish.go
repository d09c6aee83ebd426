package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/kvstore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// publishLoop keeps the agent's status in its own cluster's store, at
// status.Key, attached to a lease of three StatusIntervals. It publishes
// every StatusInterval and within a second of a change of any cluster's
// state or sync. The lease is revoked when ctx ends, so a stopped agent
// disappears at once and a crashed one within the TTL.
func (a *Agent) publishLoop(ctx context.Context) {
	var (
		cli      *kvstore.Client
		lease    clientv3.LeaseID
		last     time.Time
		lastSumm string
	)
	key := status.Key(a.cfg.ClusterName, a.cfg.NodeName)
	ttl := int64(3 * a.cfg.StatusInterval / time.Second)
	if ttl < 5 {
		ttl = 5
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if cli != nil && lease != 0 {
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, _ = cli.Etcd().Revoke(rctx, lease)
				cancel()
			}
			return
		case <-t.C:
		}
		a.mu.Lock()
		cur := a.localClient
		a.mu.Unlock()
		if cur == nil {
			continue
		}
		st := a.Status().Compact()
		summ := summary(st)
		if cur == cli && summ == lastSumm && time.Since(last) < a.cfg.StatusInterval {
			continue
		}
		if cur != cli {
			cli, lease = cur, 0
		}
		err := func() error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if lease != 0 {
				if _, err := cli.Etcd().KeepAliveOnce(rctx, lease); err != nil {
					lease = 0
				}
			}
			if lease == 0 {
				resp, err := cli.Etcd().Grant(rctx, ttl)
				if err != nil {
					return fmt.Errorf("grant lease: %w", err)
				}
				lease = resp.ID
			}
			b, err := st.Marshal()
			if err != nil {
				return err
			}
			if _, err := cli.Etcd().Put(rctx, key, string(b), clientv3.WithLease(lease)); err != nil {
				return fmt.Errorf("put %s: %w", key, err)
			}
			return nil
		}()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot publish agent status", "key", key, "error", err)
			}
			continue
		}
		last, lastSumm = time.Now(), summ
	}
}

// summary is the part of the status whose change triggers a publication.
func summary(st status.Agent) string {
	s := ""
	for _, c := range st.Clusters {
		s += fmt.Sprintf("%s:%s:%t:%t;", c.Name, c.State, c.Connected, c.Synced)
	}
	if b := st.BGP; b != nil {
		s += fmt.Sprintf("bgp:%s", b.State)
		for _, p := range b.Sessions {
			s += fmt.Sprintf(":%s=%t", p.Address, p.Established)
		}
		s += ";"
	}
	if h := st.Health; h != nil {
		s += fmt.Sprintf("health:%s:%d:%d:%t;", h.State, h.Alive, h.Dead, h.Isolated)
	}
	return s
}
