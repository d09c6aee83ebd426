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
				if err := r.Claim(c); err != nil {
					t.Fatal(err)
				}
			}
			err := r.Claim(tt.claim)
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
			if err := r.Claim(tt.claim); err != nil {
				t.Errorf("claim after the conflicting clusters left: %v", err)
			}
		})
	}
}
