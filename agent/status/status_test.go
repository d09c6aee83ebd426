package status

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
)

func TestDecode(t *testing.T) {
	good := &Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1", Clusters: []Cluster{{Name: "c2", State: StateConnected, Connected: true, Synced: true}}}
	b, err := Encode(good)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      string
		wantErr error
		check   func(*Agent) bool
	}{
		{"round trip", string(b), nil, func(a *Agent) bool { c, ok := a.ClusterByName("c2"); return ok && c.Synced && a.Node == "n1" }},
		{"newer schema refused", `{"schemaVersion":2,"cluster":"c1","node":"n1"}`, ErrSchema, nil},
		{"missing schema refused", `{"cluster":"c1"}`, ErrSchema, nil},
		{"not JSON", `not json`, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Decode([]byte(tt.in))
			switch {
			case tt.check != nil:
				if err != nil || !tt.check(a) {
					t.Errorf("Decode = %+v, %v", a, err)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Decode error %v, want %v", err, tt.wantErr)
				}
			default:
				if err == nil {
					t.Errorf("Decode accepted %q", tt.in)
				}
			}
		})
	}
}

// TestDecodeStored checks the store form: the schema's encoding, read back
// whole, and refused at a key it does not describe or when malformed.
func TestDecodeStored(t *testing.T) {
	doc := sectionsDoc(3).Compact()
	b, err := doc.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeStored(api.AgentStatusKey("c1", "n1"), b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*got, doc) {
		t.Errorf("stored status:\n got %+v\nwant %+v", got, doc)
	}
	for name, tt := range map[string]struct {
		key   string
		value []byte
	}{
		"other node":    {api.AgentStatusKey("c1", "n2"), b},
		"not an agent":  {api.NodeKey("c1", "n1"), b},
		"json document": {api.AgentStatusKey("c1", "n1"), []byte(`{"schemaVersion":1,"cluster":"c1","node":"n1"}`)},
	} {
		if _, err := DecodeStored(tt.key, tt.value); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestFetchAndPrint(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	doc := &Agent{SchemaVersion: SchemaVersion, Cluster: "c1", Node: "n1", Datapath: "bpf", Frontends: 7, Updated: now,
		Clusters: []Cluster{
			{Name: "c2", ID: 2, State: StateRefused, LastError: "cluster ID 2 is already used by cluster c3"},
			{Name: "c1", ID: 1, Local: true, State: StateConnected, Connected: true, Synced: true, Objects: map[string]int{"services": 3, "endpoints": 4}},
		}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" {
			http.Error(w, "no such page", http.StatusNotFound)
			return
		}
		b, _ := Encode(doc)
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	got, err := Fetch(context.Background(), strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := Print(&out, got); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[3], "c1 (local)") || !strings.HasPrefix(lines[4], "c2") {
		t.Fatalf("table not sorted by cluster or malformed:\n%s", out.String())
	}
	for _, want := range []string{"frontends=7", "connected", "refused", "already used by cluster c3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := Fetch(context.Background(), srv.URL+"/nothing"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Fetch of a wrong URL: %v", err)
	}
}
