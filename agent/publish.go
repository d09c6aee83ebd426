package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// publishLoop keeps the agent's status in its own cluster's store, at
// api.AgentStatusKey, attached to a lease of three StatusIntervals. It publishes
// every StatusInterval and within a second of a change of any cluster's
// state or sync. The lease is revoked when ctx ends, so a stopped agent
// disappears at once and a crashed one within the TTL.
func (a *Agent) publishLoop(ctx context.Context) {
	var (
		cli      *kvstore.Client
		pub      *kvstore.LeasedKey
		last     time.Time
		lastSumm string
	)
	key := api.AgentStatusKey(a.cfg.ClusterName, a.cfg.NodeName)
	ttl := 3 * a.cfg.StatusInterval
	if ttl < 5*time.Second {
		ttl = 5 * time.Second
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if pub != nil {
				rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = pub.Revoke(rctx)
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
			cli, pub = cur, cur.NewLeasedKey(key, ttl)
		}
		err := func() error {
			// The schema's encoding (api.AgentStatus); Compact keeps it
			// within the bounds Marshal validates.
			b, err := st.Marshal()
			if err != nil {
				return err
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return pub.Put(rctx, b)
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
		// Routes: whether any, so that status sees routes arrive at once
		// without a publication per route.
		s += fmt.Sprintf("%s:%s:%t:%t:%t;", c.Name, c.State, c.Connected, c.Synced, c.Routes > 0)
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
