package bgp

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/spf13/pflag"
)

func TestReflectorPeers(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := netip.MustParseAddr
	c1 := api.Cluster{Name: "c1", ASN: 65001, RouteReflector: ap("192.0.2.1:179")}
	c2 := api.Cluster{Name: "c2", ASN: 65002, RouteReflector: ap("192.0.2.2:1790")}
	tests := []struct {
		name    string
		local   api.Cluster
		nodes   []api.Node
		remotes []api.Cluster
		want    []Peer
		wantErr bool
	}{
		{
			name:    "nodes and a remote reflector; lower name dials",
			local:   c1,
			nodes:   []api.Node{{Cluster: "c1", Name: "n1", BGPAddress: a("192.0.2.11")}, {Cluster: "c1", Name: "n2", BGPAddress: a("192.0.2.12"), ASN: 65001}},
			remotes: []api.Cluster{c1, c2},
			want: []Peer{
				{Name: "c2/reflector", Address: a("192.0.2.2"), Port: 1790, ASN: 65002, NextHopUnchanged: true, Multihop: true},
				{Name: "c1/n1", Address: a("192.0.2.11"), ASN: 65001, Passive: true, RouteReflectorClient: true},
				{Name: "c1/n2", Address: a("192.0.2.12"), ASN: 65001, Passive: true, RouteReflectorClient: true},
			},
		},
		{
			name:    "higher name waits",
			local:   c2,
			remotes: []api.Cluster{c1},
			want:    []Peer{{Name: "c1/reflector", Address: a("192.0.2.1"), Port: 179, ASN: 65001, Passive: true, NextHopUnchanged: true, Multihop: true}},
		},
		{
			name:  "bad values are skipped and reported, good ones kept",
			local: c1,
			nodes: []api.Node{
				{Cluster: "c2", Name: "x", BGPAddress: a("192.0.2.30")},
				{Cluster: "c1", Name: "asn", BGPAddress: a("192.0.2.31"), ASN: 64999},
				{Cluster: "c1", Name: "nobgp"},
				{Cluster: "c1", Name: "ok", BGPAddress: a("192.0.2.32")},
			},
			remotes: []api.Cluster{{Name: "same", ASN: 65001, RouteReflector: ap("192.0.2.5:179")}, {Name: "off"}},
			want:    []Peer{{Name: "c1/ok", Address: a("192.0.2.32"), ASN: 65001, Passive: true, RouteReflectorClient: true}},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReflectorPeers(tt.local, tt.nodes, tt.remotes)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrTopology) {
				t.Errorf("err %v is not ErrTopology", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("peer %d: got %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestNodeConfigAndPeers(t *testing.T) {
	a := netip.MustParseAddr
	cl := api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.MustParseAddrPort("192.0.2.1:179")}
	n := api.Node{Cluster: "c1", Name: "n1", Addresses: []netip.Addr{a("192.0.2.11")}, BGPAddress: a("192.0.2.11"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}}
	cfg, err := NodeConfig(DefaultConfig(), n, cl)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ASN != 65001 || cfg.RouterID != a("192.0.2.11") || cfg.nextHopFor(n.PodCIDRs[0]) != a("192.0.2.11") {
		t.Errorf("config %+v", cfg)
	}
	peers, err := NodePeers(cl)
	if err != nil || len(peers) != 1 || peers[0].Address != a("192.0.2.1") || peers[0].Passive {
		t.Errorf("peers %+v err %v", peers, err)
	}
	if _, err := NodePeers(api.Cluster{Name: "off"}); !errors.Is(err, ErrTopology) {
		t.Errorf("cluster without reflector: err %v", err)
	}
	n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix("fd00::/64"))
	if _, err := NodeConfig(DefaultConfig(), n, cl); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("v6 pod CIDR without v6 node IP: err %v", err)
	}
}

func TestConfigFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	cfg.Flags(fs)
	if err := fs.Parse([]string{"--bgp-session-loss-grace=5s", "--bgp-max-prefixes=7", "--bgp-listen-port=-1",
		"--bgp-graceful-restart-time=30s", "--bgp-llgr-stale-time=1h"}); err != nil {
		t.Fatal(err)
	}
	if cfg.SessionLossGrace != 5*time.Second || cfg.MaxPrefixes != 7 || cfg.ListenPort != -1 || cfg.HoldTime != DefaultConfig().HoldTime ||
		cfg.GracefulRestartTime != 30*time.Second || cfg.LLGRStaleTime != time.Hour {
		t.Errorf("config after flags: %+v", cfg)
	}
}

func TestGracefulRestartConfig(t *testing.T) {
	tests := []struct {
		name      string
		restart   time.Duration
		stale     time.Duration
		valid     bool
		graceful  bool
		longLived bool
	}{
		{name: "defaults", restart: DefaultConfig().GracefulRestartTime, stale: DefaultConfig().LLGRStaleTime, valid: true, graceful: true, longLived: true},
		{name: "kind keeps LLGR long", restart: DefaultKindConfig().GracefulRestartTime, stale: DefaultKindConfig().LLGRStaleTime, valid: true, graceful: true, longLived: true},
		{name: "off", valid: true},
		{name: "LLGR needs graceful restart", stale: time.Hour, valid: true},
		{name: "graceful restart without LLGR", restart: time.Minute, valid: true, graceful: true},
		{name: "restart time beyond 12 bits", restart: 4096 * time.Second},
		{name: "stale time beyond 24 bits", restart: time.Minute, stale: 1 << 24 * time.Second},
		{name: "negative", restart: -time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Name: "n", ASN: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), GracefulRestartTime: tt.restart, LLGRStaleTime: tt.stale}
			err := c.validate()
			if (err == nil) != tt.valid {
				t.Fatalf("validate: %v, want valid %v", err, tt.valid)
			}
			if err == nil && (c.gracefulRestart() != tt.graceful || c.llgr() != tt.longLived) {
				t.Errorf("graceful %v llgr %v, want %v %v", c.gracefulRestart(), c.llgr(), tt.graceful, tt.longLived)
			}
		})
	}
	if k := DefaultKindConfig(); k.LLGRStaleTime < 5*time.Minute {
		t.Errorf("DefaultKindConfig's LLGR stale time %s cannot carry routes through a drill's control-plane outage", k.LLGRStaleTime)
	}
}

func TestReflectorConfig(t *testing.T) {
	cl := api.Cluster{Name: "c1", ASN: 65001, RouteReflector: netip.MustParseAddrPort("192.0.2.1:1790")}
	cfg, err := ReflectorConfig(DefaultConfig(), cl)
	if err != nil {
		t.Fatal(err)
	}
	// Not the reflector's address: a node speaker on the same host has it.
	if cfg.ASN != 65001 || cfg.ListenPort != 1790 || cfg.RouterID != netip.MustParseAddr("0.0.253.233") || cfg.InstallRoutes {
		t.Errorf("config %+v", cfg)
	}
	if _, err := ReflectorConfig(DefaultConfig(), api.Cluster{Name: "off"}); !errors.Is(err, ErrTopology) {
		t.Errorf("cluster without reflector: %v", err)
	}
	v6 := api.Cluster{Name: "c6", ASN: 65006, RouteReflector: netip.MustParseAddrPort("[fd00::1]:179")}
	if cfg, err := ReflectorConfig(DefaultConfig(), v6); err != nil || cfg.RouterID != netip.MustParseAddr("0.0.253.238") {
		t.Errorf("IPv6 reflector: %v, router ID %v", err, cfg.RouterID)
	}
	for asn, want := range map[uint32]string{64513: "0.0.252.1", 4200000001: "250.86.234.1"} {
		if got := ReflectorRouterID(asn).String(); got != want {
			t.Errorf("ReflectorRouterID(%d) = %s, want %s", asn, got, want)
		}
	}
}
