package status

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

func sectionsDoc(members int) *Agent {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := &Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1", Datapath: "none", Updated: since,
		BGP: &BGP{
			State: SectionRunning, ASN: 65001, RouterID: netip.MustParseAddr("10.0.0.1"),
			Announced: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")},
			Installed: 3,
			Sessions: []BGPSession{{
				Peer: "c1/reflector", Address: netip.MustParseAddr("10.0.0.250"), ASN: 65001,
				State: "established", Established: true, Since: since,
				Received: 4, Accepted: 4, Installed: 3, Refused: 1, Advertised: 1,
			}},
			Refused: []BGPRefusal{{Prefix: netip.MustParsePrefix("10.1.1.0/25"), Peer: "10.0.0.250", Reason: "overlaps-local-pod-cidr", Conflict: netip.MustParsePrefix("10.1.1.0/24")}},
		},
		Health: &Health{State: SectionRunning, Self: "c1/n1", Members: members, Alive: members - 1, Dead: 1, Unhealthy: 1,
			LastDetectionSeconds: 0.4123, MaxDetectionSeconds: 0.9,
			Refused: []HealthRefusal{{Cluster: "c1", Node: "n2", Address: netip.MustParseAddrPort("10.9.0.1:7946"),
				Field: "address", Reason: "address_mismatch", Count: 3}}},
	}
	for i := range members {
		m := HealthMember{Name: fmt.Sprintf("c2/n%03d", i), State: "alive", Healthy: true, Since: since}
		if i == 0 {
			m.State, m.Healthy = "dead", false
		}
		a.Health.MemberList = append(a.Health.MemberList, m)
	}
	return a
}

func TestPrintSections(t *testing.T) {
	tests := []struct {
		name    string
		doc     *Agent
		want    []string
		notWant []string
	}{
		{
			name: "bgp and health",
			doc:  sectionsDoc(3),
			want: []string{
				"BGP  state=running  asn=65001  router-id=10.0.0.1  announced=10.1.1.0/24  installed=3",
				"c1/reflector", "10.0.0.250", "established",
				"refused 10.1.1.0/25 from 10.0.0.250: overlaps-local-pod-cidr (10.1.1.0/24)",
				"Health  state=running  self=c1/n1  members=3  alive=2  suspect=0  dead=1  unhealthy=1  isolated=false  last-detection=412ms  max-detection=900ms",
				"c2/n000", "c2/n002",
				"refused c1/n2 at 10.9.0.1:7946: address address_mismatch x3",
			},
		},
		{
			name:    "large pool lists only members not alive",
			doc:     sectionsDoc(100),
			want:    []string{"members=100", "c2/n000", "99 members alive and healthy not listed"},
			notWant: []string{"c2/n050"},
		},
		{
			name:    "subsystems off",
			doc:     &Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1"},
			notWant: []string{"BGP", "Health"},
		},
		{
			name: "starting and failed",
			doc: &Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1",
				BGP:    &BGP{State: SectionStarting},
				Health: &Health{State: SectionFailed, Error: "health: bind 0.0.0.0:7946: address in use"}},
			want: []string{"BGP  state=starting", "Health  state=failed", "error: health: bind 0.0.0.0:7946: address in use"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			if err := Print(&out, tt.doc); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestSectionsJSON(t *testing.T) {
	// Off subsystems leave no key: documents read by older CLIs are
	// unchanged.
	b, err := Encode(&Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"bgp"`) || strings.Contains(s, `"health"`) {
		t.Errorf("sections of subsystems that are off are in the JSON: %s", s)
	}

	doc := sectionsDoc(3)
	b, err = Encode(doc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.BGP == nil || len(got.BGP.Sessions) != 1 || got.BGP.Sessions[0].Received != 4 || got.BGP.Sessions[0].Address != doc.BGP.Sessions[0].Address {
		t.Errorf("BGP section lost in the round trip: %+v", got.BGP)
	}
	if got.Health == nil || got.Health.Dead != 1 || len(got.Health.MemberList) != 3 || got.Health.LastDetectionSeconds != 0.4123 {
		t.Errorf("health section lost in the round trip: %+v", got.Health)
	}
	var raw struct {
		Health map[string]any `json:"health"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"members", "alive", "suspect", "dead", "isolated", "lastDetectionSeconds"} {
		if _, ok := raw.Health[k]; !ok {
			t.Errorf("health JSON lacks %q: %s", k, b)
		}
	}
}

func TestCompact(t *testing.T) {
	doc := sectionsDoc(100)
	for range 40 {
		doc.BGP.Refused = append(doc.BGP.Refused, doc.BGP.Refused[0])
	}
	c := doc.Compact()
	if c.Health.MemberList != nil || c.Health.Members != 100 || c.Health.Dead != 1 {
		t.Errorf("compact health: %+v", c.Health)
	}
	if len(c.BGP.Refused) != api.MaxAgentBGPRefusals || len(c.BGP.Sessions) != 1 {
		t.Errorf("compact BGP: %d refusals, %d sessions", len(c.BGP.Refused), len(c.BGP.Sessions))
	}
	// The original is untouched.
	if len(doc.Health.MemberList) != 100 || len(doc.BGP.Refused) != 41 {
		t.Errorf("Compact changed its receiver: %d members, %d refusals", len(doc.Health.MemberList), len(doc.BGP.Refused))
	}
	if (Agent{}).Compact().BGP != nil {
		t.Errorf("Compact invented a BGP section")
	}
}
