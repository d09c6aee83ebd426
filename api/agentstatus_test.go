package api

import (
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestAgentStatusValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(a *AgentStatus)
		want   string
	}{
		{"schema version", func(a *AgentStatus) { a.SchemaVersion = 0 }, "schema version 0"},
		{"cluster name", func(a *AgentStatus) { a.Cluster = "C1" }, "cluster name"},
		{"node name", func(a *AgentStatus) { a.Node = "a/b" }, "agent node name"},
		{"too many clusters", func(a *AgentStatus) { a.Clusters = make([]AgentCluster, MaxAgentClusters+1) }, "clusters: 513, at most 512"},
		{"unnamed cluster", func(a *AgentStatus) { a.Clusters[0].Name = "" }, "name is empty"},
		{"long error", func(a *AgentStatus) { a.Clusters[1].LastError = strings.Repeat("x", MaxAgentError+1) }, "last error: 513 bytes"},
		{"negative count", func(a *AgentStatus) { a.Clusters[0].Objects["nodes"] = -1 }, "negative count"},
		{"too many kinds", func(a *AgentStatus) { a.Clusters[0].SyncedKinds = make([]string, MaxAgentKinds+1) }, "synced kinds"},
		{"time out of range", func(a *AgentStatus) { a.Updated = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }, "updated"},
		{"announced host bits", func(a *AgentStatus) { a.BGP.Announced[0] = netip.PrefixFrom(a.BGP.Announced[0].Addr().Next(), 24) }, "announced #0"},
		{"too many refusals", func(a *AgentStatus) { a.BGP.Refused = make([]AgentBGPRefusal, MaxAgentBGPRefusals+1) }, "bgp: refused: 17"},
		{"negative session count", func(a *AgentStatus) { a.BGP.Sessions[0].Received = -1 }, "bgp: session #0"},
		{"NaN detection", func(a *AgentStatus) { a.Health.LastDetectionSeconds = math.NaN() }, "not a duration"},
		{"too many members", func(a *AgentStatus) { a.Health.MemberList = make([]AgentHealthMember, MaxAgentHealthMembers+1) }, "health: members"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := sampleAgentStatus()
			tt.change(a)
			err := a.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalid containing %q", err, tt.want)
			}
			if _, err := a.Marshal(); err == nil {
				t.Fatal("Marshal accepted an invalid status")
			}
		})
	}
}

// TestAgentStatusCompact checks the published form always passes
// validation, whatever the agent's local status holds.
func TestAgentStatusCompact(t *testing.T) {
	a := sampleAgentStatus()
	a.Clusters[1].LastError = strings.Repeat("é", MaxAgentError) // 2 bytes each
	a.Clusters[1].LastRefusal = "bad \xff byte"
	a.BGP.Error = strings.Repeat("e", 10*MaxAgentError)
	for range 40 {
		a.BGP.Refused = append(a.BGP.Refused, a.BGP.Refused[0])
	}
	a.BGP.Refused[0].Reason = strings.Repeat("r", 1000)
	for range MaxAgentHealthMembers {
		a.Health.MemberList = append(a.Health.MemberList, a.Health.MemberList[0])
	}
	if err := a.Validate(); err == nil {
		t.Fatal("the local status was expected to exceed the bounds")
	}
	c := a.Compact()
	if err := c.Validate(); err != nil {
		t.Fatalf("compact status: %v", err)
	}
	if c.Health.MemberList != nil || c.Health.Members != a.Health.Members || len(c.BGP.Refused) != MaxAgentBGPRefusals {
		t.Errorf("compact: %d members listed, %d refusals", len(c.Health.MemberList), len(c.BGP.Refused))
	}
	if e := c.Clusters[1].LastError; len(e) > MaxAgentError || !utf8.ValidString(e) || !strings.HasSuffix(e, "...") {
		t.Errorf("cut error: %d bytes, valid UTF-8 %t: %q", len(e), utf8.ValidString(e), e[len(e)-10:])
	}
	// The receiver is untouched.
	if len(a.Health.MemberList) != MaxAgentHealthMembers+2 || len(a.BGP.Refused) != 41 || len(a.BGP.Refused[0].Reason) != 1000 ||
		!strings.HasPrefix(a.Clusters[1].LastRefusal, "bad \xff") {
		t.Error("Compact changed its receiver")
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(c.Key(), b)
	if err != nil {
		t.Fatal(err)
	}
	if got.(*AgentStatus).BGP.Error != c.BGP.Error {
		t.Error("compact status does not round-trip")
	}
}
