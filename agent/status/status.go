package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

// SchemaVersion is the version of the Agent JSON document. Readers refuse a
// newer major version.
const SchemaVersion = 1

// ErrSchema is returned by Decode for a document of an unknown schema.
var ErrSchema = errors.New("unsupported agent status schema")

// State is the state of one cluster connection.
type State string

const (
	// StateConnecting: no answer from the cluster's store yet.
	StateConnecting State = "connecting"
	// StateConnected: the cluster config was validated and its kinds are
	// followed (see Cluster.Synced for the initial sync).
	StateConnected State = "connected"
	// StateUnreachable: the store stopped answering; the last known state
	// of the cluster is kept and used.
	StateUnreachable State = "unreachable"
	// StateRefused: the cluster config failed validation (name mismatch,
	// colliding ID, overlapping pod CIDRs); nothing of it is used.
	StateRefused State = "refused"
	// StateInvalidConfig: the connection file could not be loaded.
	StateInvalidConfig State = "invalid-config"
)

// Cluster is the status of the agent's connection to one cluster (its own
// included).
type Cluster struct {
	Name  string `json:"name"`
	ID    uint32 `json:"id,omitempty"`
	Local bool   `json:"local,omitempty"`
	State State  `json:"state"`
	// Connected is true while the cluster's store answers and its config
	// is accepted.
	Connected bool `json:"connected"`
	// Synced is true once every followed kind has been fully listed and its
	// synced canary seen; it stays true across later disconnections.
	Synced bool `json:"synced"`
	// SyncedKinds lists the kinds whose initial sync is complete.
	SyncedKinds []string `json:"syncedKinds,omitempty"`
	// LastError is the latest error of this connection: refusal reason,
	// connection failure, or a malformed object that was skipped.
	LastError     string     `json:"lastError,omitempty"`
	LastErrorTime *time.Time `json:"lastErrorTime,omitempty"`
	// Objects counts the objects currently held, by kind.
	Objects map[string]int `json:"objects,omitempty"`
	// InvalidObjects counts values skipped because they failed to decode or
	// validate.
	InvalidObjects uint64 `json:"invalidObjects,omitempty"`
	// RefusedObjects counts objects and fields of a peer refused because
	// they reach outside what the peer owns, or exceed its quota.
	RefusedObjects uint64 `json:"refusedObjects,omitempty"`
	// LastRefusal names the latest refusal: cluster, key, field, reason.
	LastRefusal string `json:"lastRefusal,omitempty"`
	// Events counts store events applied.
	Events uint64 `json:"events"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
}

// Agent is the whole status of one agent.
type Agent struct {
	SchemaVersion int    `json:"schemaVersion"`
	Cluster       string `json:"cluster"`
	Node          string `json:"node"`
	// Datapath names the datapath in use ("bpf" or "none").
	Datapath string `json:"datapath"`
	// Frontends is the number of service frontends programmed.
	Frontends int       `json:"frontends"`
	Updated   time.Time `json:"updated"`
	Clusters  []Cluster `json:"clusters"`
	// BGP is the node's BGP speaker; absent when the agent runs without
	// --bgp (and from agents older than this field).
	BGP *BGP `json:"bgp,omitempty"`
	// Health is the node health gossip pool; absent without --health.
	Health *Health `json:"health,omitempty"`
}

// Key is where the agent of node in cluster publishes its status, in its own
// cluster's store.
func Key(cluster, node string) string { return api.ClusterPrefix(api.KindAgents, cluster) + node }

// Prefix is where every agent of cluster publishes its status.
func Prefix(cluster string) string { return api.ClusterPrefix(api.KindAgents, cluster) }

// Marshal encodes the status as JSON.
func (a *Agent) Marshal() ([]byte, error) { return json.Marshal(a) }

// Decode parses a status document, refusing unknown schema versions.
func Decode(b []byte) (*Agent, error) {
	var a Agent
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	if a.SchemaVersion != SchemaVersion {
		return nil, fmt.Errorf("%w: agent %s/%s: version %d, want %d", ErrSchema, a.Cluster, a.Node, a.SchemaVersion, SchemaVersion)
	}
	return &a, nil
}

// ClusterByName returns the status of one cluster, if present.
func (a Agent) ClusterByName(name string) (Cluster, bool) {
	for _, c := range a.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}

// Fetch reads an agent's status from its status endpoint (host:port of the
// loopback HTTP server, or a full http:// URL).
func Fetch(ctx context.Context, addr string) (*Agent, error) {
	url := addr
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		url = "http://" + addr
	}
	url = strings.TrimSuffix(url, "/") + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("agent status %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent status %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("agent status %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent status %s: HTTP %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return Decode(body)
}

// Print writes the status as a human-readable table.
func Print(w io.Writer, a *Agent) error {
	fmt.Fprintf(w, "Agent %s/%s  datapath=%s  frontends=%d  updated=%s\n\n",
		a.Cluster, a.Node, a.Datapath, a.Frontends, a.Updated.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLUSTER\tID\tSTATE\tCONNECTED\tSYNCED\tNODES\tSERVICES\tSLICES\tIDENTITIES\tIPCACHE\tINVALID\tLAST ERROR")
	cs := slices.Clone(a.Clusters)
	slices.SortFunc(cs, func(x, y Cluster) int { return strings.Compare(x.Name, y.Name) })
	for _, c := range cs {
		name := c.Name
		if c.Local {
			name += " (local)"
		}
		lastErr := c.LastError
		if lastErr == "" {
			lastErr = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%t\t%t\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n",
			name, c.ID, c.State, c.Connected, c.Synced,
			c.Objects[string(api.KindNode)], c.Objects[string(api.KindService)], c.Objects[string(api.KindEndpoints)],
			c.Objects[string(api.KindIdentity)], c.Objects[string(api.KindIPCache)], c.InvalidObjects, lastErr)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if a.BGP != nil {
		if err := printBGP(w, a.BGP); err != nil {
			return err
		}
	}
	if a.Health != nil {
		return printHealth(w, a.Health)
	}
	return nil
}
