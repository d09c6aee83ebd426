package mesh

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/pki"
	"github.com/clustermesh/clustermesh/pki/pkitest"
)

func TestAgentProblems(t *testing.T) {
	c := &Cluster{Context: "ctx1", Namespace: "clustermesh-system"}
	local := ClusterStatus{Name: "c1", Local: true, Agents: 3, Connected: 3, Synced: 3}
	for _, tc := range []struct {
		name     string
		st       Status
		want     error
		mentions []string
	}{
		{"all good", Status{AgentsReporting: 3, AgentsExpected: 3, Clusters: []ClusterStatus{local, {Name: "c2", Agents: 3, Connected: 3, Synced: 3}}}, nil, nil},
		{"no agent", Status{AgentsExpected: 3, Clusters: []ClusterStatus{{Name: "c1", Local: true}}}, ErrNotReady, []string{"no agent", "daemonset clustermesh-agent"}},
		{"missing agents", Status{AgentsReporting: 2, AgentsExpected: 3, Clusters: []ClusterStatus{{Name: "c1", Local: true, Agents: 2, Connected: 2, Synced: 2}}}, ErrNotReady, []string{"2 of 3 agents"}},
		{"peer not followed yet", Status{AgentsReporting: 3, Clusters: []ClusterStatus{local, {Name: "c2", Agents: 1, Connected: 1, Synced: 1}}}, ErrNotReady, []string{"2 of 3 agents do not follow cluster c2"}},
		{"peer unreachable", Status{AgentsReporting: 3, Clusters: []ClusterStatus{local, {Name: "c2", Endpoint: "https://10.0.0.2:2379", Agents: 3, Connected: 1, Synced: 3, Errors: []string{"unreachable: dial tcp: i/o timeout"}}}}, ErrUnreachable, []string{"2 of 3 agents are not connected to cluster c2", "i/o timeout", "https://10.0.0.2:2379"}},
		{"peer refused", Status{AgentsReporting: 1, Clusters: []ClusterStatus{{Name: "c1", Local: true, Agents: 1, Connected: 1, Synced: 1}, {Name: "c2", Agents: 1, Errors: []string{"refused: cluster ID 1 already used by c1"}}}}, ErrRefused, []string{"1 of 1 agents refuse cluster c2", "refused: cluster ID 1", "clustermesh connect --context ctx1"}},
		{"local not synced", Status{AgentsReporting: 3, Clusters: []ClusterStatus{{Name: "c1", Local: true, Agents: 3, Connected: 3, Synced: 2}}}, ErrNotReady, []string{"1 of 3 agents have not finished syncing the local store"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ps []Problem
			tc.st.Cluster = "c1"
			tc.st.agentProblems(c, func(p Problem) { ps = append(ps, p) })
			if tc.want == nil {
				if len(ps) != 0 {
					t.Fatalf("problems = %v, want none", ps)
				}
				return
			}
			if len(ps) != 1 || !errors.Is(ps[0].Err, tc.want) {
				t.Fatalf("problems = %v, want one %v", ps, tc.want)
			}
			text := ps[0].Reason + " " + ps[0].Fix
			for _, m := range tc.mentions {
				if !strings.Contains(text, m) {
					t.Errorf("problem %q lacks %q", text, m)
				}
			}
		})
	}
}

func TestEntryProblems(t *testing.T) {
	c := &Cluster{Context: "ctx1"}
	ca, other := pkitest.CA(t, "test-ca"), pkitest.CA(t, "other-ca")
	issue := func(ca *pki.CA, lifetime time.Duration) []byte {
		cert, _ := pkitest.Issue(t, ca, pki.IssueOptions{CommonName: UserRemote, Client: true, Lifetime: lifetime})
		return cert
	}
	now := time.Now()
	for _, tc := range []struct {
		name    string
		e       Entry
		want    error
		mention string
	}{
		{"good", Entry{Name: "c2", CA: ca.CertPEM(), Cert: issue(ca, 0)}, nil, ""},
		{"peer with its own CA", Entry{Name: "c2", CA: other.CertPEM(), Cert: issue(other, 0)}, nil, ""},
		{"own entry trusts another CA", Entry{Name: "c1", CA: other.CertPEM(), Cert: issue(other, 0)}, ErrUntrusted, "trusts another CA"},
		{"own entry with a foreign cert", Entry{Name: "c1", CA: ca.CertPEM(), Cert: issue(other, 0)}, ErrUntrusted, "not issued by this cluster's CA"},
		{"peer cert not from the pinned CA", Entry{Name: "c2", CA: other.CertPEM(), Cert: issue(ca, 0)}, ErrUntrusted, "not issued by the peer's CA"},
		{"expiring client cert", Entry{Name: "c2", CA: ca.CertPEM(), Cert: issue(ca, 10*24*time.Hour)}, ErrExpiring, "expires"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := entryProblems(c, "c1", []Entry{tc.e}, ca.Certificate(), now)
			if tc.want == nil {
				if len(ps) != 0 {
					t.Fatalf("problems = %v", ps)
				}
				return
			}
			if len(ps) != 1 || !errors.Is(ps[0].Err, tc.want) || !strings.Contains(ps[0].Reason, tc.mention) || !strings.Contains(ps[0].Reason, tc.e.Name) {
				t.Fatalf("problems = %v, want one %v mentioning %q", ps, tc.want, tc.mention)
			}
		})
	}
}

// TestBGPProblems: with BGP the cluster is ready only once every speaker's
// session is up and every agent has a route to each connected, synced
// cluster's pods; refused routes warn.
func TestBGPProblems(t *testing.T) {
	c := &Cluster{Context: "ctx1", Namespace: "clustermesh-system"}
	local := ClusterStatus{Name: "c1", Local: true, Agents: 2, Connected: 2, Synced: 2}
	peer := func(routed, synced int) ClusterStatus {
		return ClusterStatus{Name: "c2", Agents: 2, Connected: 2, Synced: synced, Routed: routed}
	}
	for _, tc := range []struct {
		name      string
		bgp       *BGPStatus
		peer      ClusterStatus
		want      []error
		mentions  []string
		wantWarns int
	}{
		{"no bgp", nil, peer(0, 2), nil, nil, 0},
		{"all good", &BGPStatus{Agents: 2, Established: 2}, peer(2, 2), nil, nil, 0},
		{"speaker stopped", &BGPStatus{Agents: 2, Established: 1, Failed: []string{"n2: listen tcp :179: address in use"}}, peer(2, 2), []error{ErrNotReady}, []string{"1 of 2 agents' BGP speakers stopped", "address in use", "logs daemonset/clustermesh-agent"}, 0},
		{"session down", &BGPStatus{Agents: 2, Established: 1, Sessions: []string{"172.18.0.2: active"}}, peer(2, 2), []error{ErrNotReady}, []string{"1 of 2 agents have no established BGP session", "172.18.0.2: active", "port 1790"}, 0},
		{"no route to the peer yet", &BGPStatus{Agents: 2, Established: 2}, peer(1, 2), []error{ErrNotReady}, []string{"1 of 2 agents have no BGP route to cluster c2's pods", "c1 and c2 peer"}, 0},
		{"peer not synced: its routes are not judged yet", &BGPStatus{Agents: 2, Established: 2}, peer(0, 1), nil, nil, 0},
		{"refused routes warn", &BGPStatus{Agents: 2, Established: 2, Refused: 1, Refusals: []string{"n1 refused 10.9.0.0/24 via 172.18.0.9 from c1/reflector: not owned"}}, peer(2, 2), nil, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := Status{Cluster: "c1", AgentsReporting: 2, Clusters: []ClusterStatus{local, tc.peer}, BGP: tc.bgp}
			var ps, ws []Problem
			st.bgpProblems(c, func(p Problem) { ps = append(ps, p) }, func(p Problem) { ws = append(ws, p) })
			if len(ps) != len(tc.want) {
				t.Fatalf("problems = %v, want %v", ps, tc.want)
			}
			for i, p := range ps {
				if !errors.Is(p.Err, tc.want[i]) {
					t.Errorf("problem %v, want %v", p, tc.want[i])
				}
				for _, m := range tc.mentions {
					if !strings.Contains(p.Reason+" "+p.Fix, m) {
						t.Errorf("problem %q lacks %q", p.Reason+" "+p.Fix, m)
					}
				}
			}
			if len(ws) != tc.wantWarns {
				t.Errorf("warnings = %v, want %d", ws, tc.wantWarns)
			}
		})
	}
}
