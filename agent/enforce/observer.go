package enforce

import (
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/policy"
)

// The engine is fed by the agent's store connections (agent.ObjectObserver).

// ObjectUpserted takes an identity or ipcache entry of any cluster, or a
// policy of the local cluster (a policy from elsewhere is ignored: peers
// cannot write this cluster's policy).
func (e *Engine) ObjectUpserted(cluster string, obj api.Object) {
	switch o := obj.(type) {
	case *api.Identity:
		e.UpsertIdentity(o)
	case *api.IPCacheEntry:
		e.UpsertIPCache(o)
	case *api.Policy:
		if cluster != e.cfg.Cluster || o.Cluster != e.cfg.Cluster {
			return
		}
		parsed, err := policy.Parse(o.Kind, o.Spec)
		e.SetPolicy(o.Key(), policyName(o), parsed, err)
	}
}

func policyName(p *api.Policy) string {
	if p.Namespace == "" {
		return p.Kind + " " + p.Name
	}
	return p.Kind + " " + p.Namespace + "/" + p.Name
}

// ObjectDeleted forgets the object at key.
func (e *Engine) ObjectDeleted(cluster string, key api.ParsedKey) {
	switch key.Kind {
	case api.KindIdentity:
		if r, err := api.ParseIdentityKey(key.Key); err == nil {
			e.DeleteIdentity(cluster, r.ID)
		}
	case api.KindIPCache:
		if r, err := api.ParseIPCacheKey(key.Key); err == nil {
			e.DeleteIPCache(cluster, r.IP)
		}
	case api.KindPolicy:
		if cluster == e.cfg.Cluster {
			e.DeletePolicy(key.Key)
		}
	}
}

// ObjectsSynced ends the wait for the local policies.
func (e *Engine) ObjectsSynced(cluster string, kind api.Kind) {
	if cluster == e.cfg.Cluster && kind == api.KindPolicy {
		e.PoliciesSynced()
	}
}

// ClusterDrained forgets a cluster's identities and addresses.
func (e *Engine) ClusterDrained(cluster string) { e.DrainCluster(cluster) }
