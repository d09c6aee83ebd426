// Package status defines the status an agent reports about itself and every
// cluster it follows, in two places:
//
//   - its local status endpoint (loopback HTTP, GET /status), read by
//     `clustermesh-agent status` through Fetch;
//   - its own cluster's store, at api.AgentStatusKey(cluster, node), so the
//     clustermesh CLI can count, per peer, how many agents of a cluster are
//     connected and synced. The value is Agent.Compact() in the store's
//     versioned schema (Agent is api.AgentStatus, message AgentStatus of
//     api/schema.proto), read back with DecodeStored; the agent keeps it
//     attached to a lease, so an agent that dies disappears from the store
//     within the lease TTL.
//
// The types are plain values, safe to copy; the package holds no state.
package status
