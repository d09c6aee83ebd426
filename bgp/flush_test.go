package bgp

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

func TestFlushRoutes(t *testing.T) {
	l := newLab(t)
	ns := l.Host("n1", "192.0.2.11")
	l.Run("ip", "-n", ns, "route", "add", "10.7.0.0/24", "via", "192.0.2.1", "proto", "195")
	l.Run("ip", "-n", ns, "route", "add", "10.7.1.0/24", "via", "192.0.2.1", "proto", "195")
	l.Run("ip", "-n", ns, "route", "add", "10.8.0.0/24", "via", "192.0.2.1", "proto", "static")
	var n int
	if err := netlab.InNetns(ns, func() (err error) { n, err = FlushRoutes(0); return err }); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("removed %d routes, want 2", n)
	}
	if got := l.Routes(ns, RouteProtocol); len(got) != 0 {
		t.Errorf("routes of protocol %d left: %v", RouteProtocol, got)
	}
	if got := l.Routes(ns, 4 /* static */); got[netip.MustParsePrefix("10.8.0.0/24")] != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("static route touched: %v", got)
	}
}
