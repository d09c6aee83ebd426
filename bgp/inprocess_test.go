package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/internal/poll"
)

func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.Addr().(*net.TCPAddr).Port)
}

// loopbackPair returns the configs of two speakers without kernel routes:
// a (AS 65001) listens on lo:port, b (AS 65002) only dials.
func loopbackPair(t *testing.T) (a, b Config, lo netip.Addr, port uint16) {
	t.Helper()
	lo = netip.MustParseAddr("127.0.0.1")
	port = freePort(t)
	base := DefaultKindConfig()
	base.InstallRoutes = false
	a = base
	a.Name, a.ASN, a.RouterID = "a", 65001, netip.MustParseAddr("10.255.0.1")
	a.ListenAddresses, a.ListenPort = []netip.Addr{lo}, int32(port)
	a.NodeIPs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	b = base
	b.Name, b.ASN, b.RouterID = "b", 65002, netip.MustParseAddr("10.255.0.2")
	b.ListenPort = -1
	b.NodeIPs = []netip.Addr{netip.MustParseAddr("192.0.2.2")}
	return a, b, lo, port
}

// TestInProcessSession runs two speakers in this process over loopback,
// without kernel routes (no root needed): the listener learns the dialer's
// announcement, a withdrawal is seen, and Stop leaves no goroutine behind
// except GoBGP's unstoppable Serve loop. The dialer's import policy does not
// know its own cluster yet (an agent whose registry lags its node): its own
// announcement still goes out, since import rules judge only what peers
// send.
func TestInProcessSession(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/osrg/gobgp/v3/pkg/server.(*BgpServer).Serve"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, lo, port := loopbackPair(t)
	b.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("10.2.1.0/24")}
	b.StaticPeers = []Peer{{Name: "a", Address: lo, Port: port, ASN: 65001}}

	sa, err := NewSpeaker(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := sa.SetPeers(ctx, []Peer{{Name: "b", Address: lo, ASN: 65002, Passive: true}}); err != nil {
		t.Fatal(err)
	}
	if err := sa.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sa.Stop(ctx)
	sb, err := NewSpeaker(b)
	if err != nil {
		t.Fatal(err)
	}
	onlyA := []ImportRule{{Cluster: "a", PodCIDRs: []ImportPrefix{{Prefix: netip.MustParsePrefix("10.1.0.0/16"), MaxLen: 24}}, NextHops: a.NodeIPs}}
	if err := sb.SetImportPolicy(ctx, onlyA); err != nil {
		t.Fatal(err)
	}
	if err := sb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(ctx)

	installed := func(want ...string) func() (bool, string) {
		return func() (bool, string) {
			st, err := sa.Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			if len(st.Installed) != len(want) {
				return false, fmt.Sprintf("%+v", st)
			}
			for i, w := range want {
				if st.Installed[i].Prefix.String() != w || st.Installed[i].NextHop != b.NodeIPs[0] {
					return false, fmt.Sprintf("%+v", st)
				}
			}
			return true, ""
		}
	}
	poll.Eventually(t, 30*time.Second, "a to learn b's prefixes", installed("10.2.0.0/24", "10.2.1.0/24"))
	if err := sb.Announce(ctx, b.PodCIDRs[1:]); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, 30*time.Second, "a to see the withdrawal", installed("10.2.1.0/24"))
	if err := sb.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("fd00::/64")}); err == nil {
		t.Error("announcing an IPv6 prefix without an IPv6 node IP succeeded")
	}
	st, err := sb.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || !st.Peers[0].Established || st.Peers[0].PrefixesAdvertised != 1 {
		t.Errorf("b status: %+v", st)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Status(ctx); err != ErrNotStarted {
		t.Errorf("status after stop: %v", err)
	}
	if err := sb.Start(ctx); err != ErrAlreadyStarted {
		t.Errorf("second start: %v", err)
	}
}

// TestInProcessPackedUpdates checks that an announcement of many prefixes,
// and its withdrawal, leave packed, many prefixes per UPDATE (the GoBGP
// patches in third_party/gobgp; unpatched GoBGP sends one UPDATE per
// prefix), and that every prefix arrives and leaves.
func TestInProcessPackedUpdates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, b, lo, port := loopbackPair(t)
	a.StaticPeers = []Peer{{Name: "b", Address: lo, ASN: 65002, Passive: true}}
	b.StaticPeers = []Peer{{Name: "a", Address: lo, Port: port, ASN: 65001}}
	var speakers []*Speaker
	for _, cfg := range []Config{a, b} {
		s, err := NewSpeaker(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer s.Stop(ctx)
		speakers = append(speakers, s)
	}
	sa, sb := speakers[0], speakers[1]
	sent := func() (uint64, bool) {
		st, err := sb.Status(ctx)
		if err != nil || len(st.Peers) != 1 {
			return 0, false
		}
		return st.Peers[0].UpdatesSent, st.Peers[0].Established
	}
	installed := func(n int) func() (bool, string) {
		return func() (bool, string) {
			st, err := sa.Status(ctx)
			if err != nil {
				return false, err.Error()
			}
			return len(st.Installed) == n, fmt.Sprintf("%d routes installed, want %d", len(st.Installed), n)
		}
	}
	poll.Eventually(t, 30*time.Second, "session", func() (bool, string) {
		_, up := sent()
		return up, "not established"
	})
	// One UPDATE holds about 800 IPv4 prefixes with these attributes.
	const n, maxUpdates = 2000, 10
	for _, step := range []struct {
		name     string
		prefixes []netip.Prefix
		changes  int
	}{
		{"announce", benchPrefixes(n), n},
		{"withdraw", benchPrefixes(1), n - 1},
	} {
		before, _ := sent()
		if err := sb.Announce(ctx, step.prefixes); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, 30*time.Second, step.name, installed(len(step.prefixes)))
		after, _ := sent()
		if d := after - before; d > maxUpdates {
			t.Errorf("%s: %d UPDATEs for %d prefix changes, want at most %d (packed)", step.name, d, step.changes, maxUpdates)
		}
	}
}
