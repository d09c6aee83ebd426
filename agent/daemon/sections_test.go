package daemon

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/bgp"
	"github.com/clustermesh/clustermesh/health"
)

func TestBGPStatusSection(t *testing.T) {
	rr := netip.MustParseAddr("10.0.0.250")
	tor := netip.MustParseAddr("10.0.0.254")
	bs := bgp.Status{
		Role: "speaker", ASN: 65001, RouterID: netip.MustParseAddr("10.0.0.1"),
		Announced: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")},
		Peers: []bgp.PeerStatus{
			{Name: "c1/reflector", Address: rr, ASN: 65001, State: "established", Established: true, PrefixesReceived: 3, PrefixesAccepted: 2, PrefixesInstalled: 2, PrefixesAdvertised: 1},
			{Address: tor, ASN: 64512, State: "active", CutOff: "max prefixes 5 exceeded"},
		},
		Installed: []bgp.InstalledRoute{{Prefix: netip.MustParsePrefix("10.2.1.0/24"), Peer: rr.String()}, {Prefix: netip.MustParsePrefix("10.2.2.0/24"), Peer: rr.String()}},
		Refused:   []bgp.Refusal{{Prefix: netip.MustParsePrefix("10.1.1.0/25"), Peer: rr.String(), Reason: bgp.RefusedLocalPodCIDR, Conflict: netip.MustParsePrefix("10.1.1.0/24")}},
	}
	sec := bgpStatus(bs)
	if sec.State != status.SectionRunning || sec.Installed != 2 || len(sec.Refused) != 1 || len(sec.Sessions) != 2 {
		t.Fatalf("section: %+v", sec)
	}
	want := []status.BGPSession{
		{Peer: "c1/reflector", Address: rr, ASN: 65001, State: "established", Established: true, Received: 3, Accepted: 2, Installed: 2, Refused: 1, Advertised: 1},
		{Address: tor, ASN: 64512, State: "active", CutOff: "max prefixes 5 exceeded"},
	}
	for i, w := range want {
		if sec.Sessions[i] != w {
			t.Errorf("session %d: %+v, want %+v", i, sec.Sessions[i], w)
		}
	}
}

func TestHealthStatusSection(t *testing.T) {
	hs := health.Status{
		Self: "c1/n1",
		Members: []health.MemberStatus{
			{Name: "c1/n2", State: health.StateAlive, Healthy: true},
			{Name: "c2/n1", State: health.StateDead, Healthy: false},
			{Name: "c2/n2", State: health.StateDead, Healthy: true, Held: true},
		},
		Alive: 1, Dead: 2, Unhealthy: 1, Held: 1, Isolated: true, IsolationReason: "quorum",
		LastDetection: 420 * time.Millisecond, MaxDetection: time.Second,
	}
	sec := healthStatus(hs)
	if sec.Members != 3 || sec.Alive != 1 || sec.Dead != 2 || sec.Unhealthy != 1 || sec.Held != 1 || !sec.Isolated ||
		sec.LastDetectionSeconds != 0.42 || sec.MaxDetectionSeconds != 1 || sec.State != status.SectionRunning {
		t.Errorf("section: %+v", sec)
	}
	if len(sec.MemberList) != 3 || sec.MemberList[1].State != "dead" || sec.MemberList[1].Healthy || !sec.MemberList[2].Held {
		t.Errorf("members: %+v", sec.MemberList)
	}
}

func TestSectionStates(t *testing.T) {
	var st status.Agent
	b := &bgpSection{}
	b.report(&st)
	if st.BGP == nil || st.BGP.State != status.SectionStarting {
		t.Errorf("BGP before the speaker: %+v", st.BGP)
	}
	h := &healthSection{}
	h.set(nil, errTest)
	h.report(&st)
	if st.Health == nil || st.Health.State != status.SectionFailed || st.Health.Error != errTest.Error() {
		t.Errorf("health after a failure: %+v", st.Health)
	}
}

var errTest = errors.New("health: bind 0.0.0.0:7946: address already in use")
