package apiserver

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/api"
)

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		c := DefaultConfig()
		c.ClusterName, c.ClusterID = "c1", 1
		c.EtcdCA, c.EtcdCert, c.EtcdKey = "ca", "crt", "key"
		return c
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string // substring naming the flag; "" means valid
	}{
		{"valid", func(*Config) {}, ""},
		{"external store needs no etcd flags", func(c *Config) {
			*c = DefaultConfig()
			c.ClusterName, c.ClusterID, c.KVStoreConfig = "c1", 1, "kv.yaml"
		}, ""},
		{"no name", func(c *Config) { c.ClusterName = "" }, "--cluster-name"},
		{"bad name", func(c *Config) { c.ClusterName = "C_1" }, "--cluster-name"},
		{"id 0", func(c *Config) { c.ClusterID = 0 }, "--cluster-id"},
		{"id above max", func(c *Config) { c.ClusterID = 300 }, "--cluster-id"},
		{"id with 511", func(c *Config) { c.ClusterID, c.MaxClusterID = 300, 511 }, ""},
		{"bad max", func(c *Config) { c.MaxClusterID = 1000 }, "--max-cluster-id"},
		{"bad cidr", func(c *Config) { c.PodCIDRs = []string{"10.0.0.0/8", "nope"} }, "--cluster-pod-cidrs"},
		{"no server key", func(c *Config) { c.EtcdKey = "" }, "--etcd-key"},
		{"http listen", func(c *Config) { c.EtcdListenClientURL = "http://0.0.0.0:2379" }, "--etcd-listen-client-url"},
		{"no workers", func(c *Config) { c.Workers = 0 }, "--workers"},
		{"bgp on", func(c *Config) { c.BGPReflectorAddress, c.BGPASN = "192.0.2.1:1790", 65001 }, ""},
		{"bgp without asn", func(c *Config) { c.BGPReflectorAddress = "192.0.2.1:1790" }, "--bgp-asn"},
		{"asn without reflector", func(c *Config) { c.BGPASN = 65001 }, "--bgp-reflector-address"},
		{"reflector not ip:port", func(c *Config) { c.BGPReflectorAddress, c.BGPASN = "192.0.2.1", 65001 }, "--bgp-reflector-address"},
		{"reflector unspecified", func(c *Config) { c.BGPReflectorAddress, c.BGPASN = "0.0.0.0:179", 65001 }, "--bgp-reflector-address"},
		{"reflector port 0", func(c *Config) { c.BGPReflectorAddress, c.BGPASN = "192.0.2.1:0", 65001 }, "--bgp-reflector-address"},
		{"dir poll 0", func(c *Config) { c.ClustersDir, c.ClustersDirPoll = "/d", 0 }, "--clusters-dir-poll"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.mod(&c)
			err := c.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v: want ErrConfig naming %s", err, tt.wantErr)
			}
		})
	}
}

// TestFlags checks that every Config field has a documented flag.
func TestFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	c.Flags(fs)
	err := fs.Parse([]string{"--cluster-name=c2", "--cluster-id=9", "--cluster-pod-cidrs=10.1.0.0/16,10.2.0.0/16",
		"--kvstore-config=/etc/kv.yaml", "--workers=2", "--lease-ttl=30s",
		"--bgp-reflector-address=192.0.2.1:1790", "--bgp-asn=65002", "--clusters-dir=/etc/clustermesh/clusters"})
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterName != "c2" || c.ClusterID != 9 || len(c.PodCIDRs) != 2 || c.KVStoreConfig != "/etc/kv.yaml" || c.Workers != 2 || c.LeaseTTL.Seconds() != 30 ||
		c.BGPReflectorAddress != "192.0.2.1:1790" || c.BGPASN != 65002 || c.ClustersDir != "/etc/clustermesh/clusters" {
		t.Errorf("parsed config %+v", c)
	}
	n := 0
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Deprecated != "" {
			return // accepted for older manifests, bound to no field
		}
		n++
		if len(f.Usage) < 20 {
			t.Errorf("flag --%s: usage %q does not explain it", f.Name, f.Usage)
		}
	})
	if want := reflect.TypeOf(Config{}).NumField(); n != want {
		t.Errorf("%d flags, want %d (one per Config field)", n, want)
	}
}

func TestReadyzBeforeExport(t *testing.T) {
	s := &Server{}
	rec := httptest.NewRecorder()
	s.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || s.Ready() {
		t.Errorf("readyz before the store is open: %d, Ready()=%v; want 503, false", rec.Code, s.Ready())
	}
	c := &controller{synced: map[api.Kind]bool{api.KindNode: true}}
	s.ctrl = c
	rec = httptest.NewRecorder()
	s.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), string(api.KindIPCache)) {
		t.Errorf("readyz with only nodes synced: %d %q; want 503 naming the missing kinds", rec.Code, rec.Body.String())
	}
	for _, k := range api.SyncedKinds {
		c.synced[k] = true
	}
	rec = httptest.NewRecorder()
	s.serveReadyz(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusOK || !s.Ready() {
		t.Errorf("readyz with every kind synced: %d", rec.Code)
	}
}
