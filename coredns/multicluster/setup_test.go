package multicluster

import (
	"slices"
	"testing"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	tests := []struct {
		input   string
		wantErr bool
		want    config
	}{
		{"multicluster clusterset.local", false, config{zones: []string{"clusterset.local."}}},
		{"multicluster clusterset.local {\n kubeconfig /k ctx\n noendpoints\n fallthrough\n}", false,
			config{zones: []string{"clusterset.local."}, kubeconfig: "/k", context: "ctx", noEndpoints: true, fallSet: true, fall: []string{}}},
		{"multicluster clusterset.local {\n fallthrough in-addr.arpa\n}", false,
			config{zones: []string{"clusterset.local."}, fallSet: true, fall: []string{"in-addr.arpa"}}},
		{"multicluster clusterset.local {\n kubeconfig\n}", true, config{}},
		{"multicluster clusterset.local {\n noendpoints x\n}", true, config{}},
		{"multicluster clusterset.local {\n pods insecure\n}", true, config{}},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			got, err := parse(caddy.NewTestController("dns", tt.input))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if !slices.Equal(got.zones, tt.want.zones) || got.kubeconfig != tt.want.kubeconfig || got.context != tt.want.context ||
				got.noEndpoints != tt.want.noEndpoints || got.fallSet != tt.want.fallSet || len(got.fall) != len(tt.want.fall) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
