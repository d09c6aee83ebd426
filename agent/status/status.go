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

// SchemaVersion is the schema of the status document: the store's
// (api.SchemaVersion), for the JSON document of the status endpoint too.
const SchemaVersion = api.SchemaVersion

// ErrSchema is returned by Decode for a document of an unknown schema.
var ErrSchema = errors.New("unsupported agent status schema")

// The status types are the store schema's (api.AgentStatus and its parts):
// the status endpoint serves them as JSON, the store holds them in the
// schema's encoding.
type (
	Agent         = api.AgentStatus
	Cluster       = api.AgentCluster
	State         = api.AgentState
	SectionState  = api.SectionState
	BGP           = api.AgentBGP
	BGPSession    = api.AgentBGPSession
	BGPRefusal    = api.AgentBGPRefusal
	Health        = api.AgentHealth
	HealthMember  = api.AgentHealthMember
	HealthRefusal = api.AgentHealthRefusal
)

const (
	StateConnecting    = api.AgentStateConnecting
	StateConnected     = api.AgentStateConnected
	StateUnreachable   = api.AgentStateUnreachable
	StateRefused       = api.AgentStateRefused
	StateInvalidConfig = api.AgentStateInvalidConfig

	SectionStarting = api.SectionStarting
	SectionRunning  = api.SectionRunning
	SectionFailed   = api.SectionFailed
)

// Encode encodes the status as the JSON document of the status endpoint.
func Encode(a *Agent) ([]byte, error) { return json.MarshalIndent(a, "", "  ") }

// Decode parses a JSON status document, refusing unknown schema versions.
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

// DecodeStored decodes and validates a status read from the store at key
// (api.AgentStatusKey).
func DecodeStored(key string, value []byte) (*Agent, error) {
	obj, err := api.Decode(key, value)
	if err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	a, ok := obj.(*Agent)
	if !ok {
		return nil, fmt.Errorf("agent status: key %q holds a %T", key, obj)
	}
	return a, nil
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
	fmt.Fprintln(tw, "CLUSTER\tID\tSTATE\tCONNECTED\tSYNCED\tROUTES\tNODES\tSERVICES\tSLICES\tIDENTITIES\tIPCACHE\tINVALID\tLAST ERROR")
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
		fmt.Fprintf(tw, "%s\t%d\t%s\t%t\t%t\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n",
			name, c.ID, c.State, c.Connected, c.Synced, c.Routes,
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
