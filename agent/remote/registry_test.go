package remote

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/api"
)

func TestRegistryClaim(t *testing.T) {
	cl := func(name string, id, maxID uint32, cidrs ...string) *api.Cluster {
		c := &api.Cluster{Name: name, ID: id, MaxClusterID: maxID}
		for _, p := range cidrs {
			c.PodCIDRs = append(c.PodCIDRs, netip.MustParsePrefix(p))
		}
		return c
	}
	tests := []struct {
		name    string
		claim   *api.Cluster
		wantErr string
	}{
		{"unique", cl("c3", 3, 255, "10.3.0.0/16"), ""},
		{"same ID", cl("c3", 2, 255, "10.3.0.0/16"), "cluster ID 2 is already used by cluster c2"},
		{"overlapping CIDR", cl("c3", 3, 255, "10.3.0.0/16", "10.1.4.0/24"), "pod CIDR 10.1.4.0/24 overlaps 10.1.0.0/16 of cluster c1"},
		{"enclosing CIDR", cl("c3", 3, 0, "10.0.0.0/8"), "overlaps"},
		{"different max cluster ID", cl("c3", 3, 511, "10.3.0.0/16"), "max cluster ID 511 differs from 255"},
		{"re-claim by the same cluster with a new config", cl("c1", 1, 255, "10.1.0.0/17"), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewRegistry()
			for _, c := range []*api.Cluster{cl("c1", 1, 255, "10.1.0.0/16"), cl("c2", 2, 0, "10.2.0.0/16")} {
				if err := r.Claim(c, false, nil); err != nil {
					t.Fatal(err)
				}
			}
			err := r.Claim(tt.claim, false, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Claim: %v", err)
				}
				if got, _ := r.Lookup(tt.claim.Name); got != tt.claim {
					t.Errorf("Lookup after claim: %v", got)
				}
				return
			}
			if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Claim error %v, want ErrConflict containing %q", err, tt.wantErr)
			}
			if _, ok := r.Lookup(tt.claim.Name); ok {
				t.Errorf("refused cluster is registered")
			}
			r.Release("c1")
			r.Release("c2")
			if err := r.Claim(tt.claim, false, nil); err != nil {
				t.Errorf("claim after the conflicting clusters left: %v", err)
			}
		})
	}
}

func TestRegistryLocalWins(t *testing.T) {
	r := NewRegistry()
	peer := &api.Cluster{Name: "c2", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	other := &api.Cluster{Name: "c3", ID: 3}
	var evicted []error
	if err := r.Claim(peer, false, func(err error) { evicted = append(evicted, err) }); err != nil {
		t.Fatal(err)
	}
	if err := r.Claim(other, false, func(err error) { t.Errorf("c3 evicted: %v", err) }); err != nil {
		t.Fatal(err)
	}
	local := &api.Cluster{Name: "c1", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	if err := r.Claim(local, true, nil); err != nil {
		t.Fatalf("local claim refused: %v", err)
	}
	if len(evicted) != 1 || !errors.Is(evicted[0], ErrConflict) || !strings.Contains(evicted[0].Error(), "cluster ID 2 is already used by cluster c1") {
		t.Fatalf("evictions %v, want c2 evicted naming c1", evicted)
	}
	if _, ok := r.Lookup("c2"); ok {
		t.Errorf("evicted peer still registered")
	}
	if err := r.Claim(peer, false, nil); err == nil || !strings.Contains(err.Error(), "already used by cluster c1") {
		t.Errorf("peer re-claim: %v, want refused by the local cluster", err)
	}
}
