package route

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// labWriter returns a writer of protocol proto in a fresh namespace of a
// netlab lab whose eth0 is 192.168.50.1/24, and the namespace's name.
func labWriter(t *testing.T, proto netlink.RouteProtocol, reg prometheus.Registerer) (*Writer, *netlab.Lab, string) {
	t.Helper()
	l := netlab.New(t)
	ns := l.Host("h", "192.168.50.1")
	l.Run("ip", "-n", ns, "addr", "add", "fd00:50::1/64", "dev", "eth0", "nodad")
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Handle: nh, Protocol: proto, Owner: "static", Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w, l, ns
}

func listed(t *testing.T, w *Writer) []string {
	t.Helper()
	rs, err := w.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Prefix.String()+" via "+r.NextHop.String())
	}
	slices.Sort(out)
	return out
}

// TestWriterInNetns installs, lists, replaces and deletes routes in a
// throw-away network namespace.
func TestWriterInNetns(t *testing.T) {
	w, l, ns := labWriter(t, ProtocolStatic, nil)
	ctx := context.Background()
	r1 := Route{Prefix: netip.MustParsePrefix("10.2.0.0/24"), NextHop: netip.MustParseAddr("192.168.50.2"), Cluster: "c2", Node: "a"}
	r2 := Route{Prefix: netip.MustParsePrefix("10.3.0.0/24"), NextHop: netip.MustParseAddr("192.168.50.3"), Cluster: "c3", Node: "b"}
	for _, r := range []Route{r1, r2} {
		if err := w.Upsert(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := listed(t, w), []string{"10.2.0.0/24 via 192.168.50.2", "10.3.0.0/24 via 192.168.50.3"}; !slices.Equal(got, want) {
		t.Errorf("after upsert: %q, want %q", got, want)
	}
	r1.NextHop = netip.MustParseAddr("192.168.50.9")
	if err := w.Upsert(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if err := w.Delete(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if err := w.Delete(ctx, r2); err != nil {
		t.Errorf("deleting a missing route: %v", err)
	}
	if got, want := listed(t, w), []string{"10.2.0.0/24 via 192.168.50.9"}; !slices.Equal(got, want) {
		t.Errorf("after replace and delete: %q, want %q", got, want)
	}
	// A route of another protocol is neither listed nor touched.
	l.Run("ip", "-n", ns, "route", "add", "10.4.0.0/24", "via", "192.168.50.4")
	if got := listed(t, w); len(got) != 1 {
		t.Errorf("foreign route listed: %q", got)
	}
	if err := w.Upsert(ctx, Route{Prefix: netip.MustParsePrefix("10.5.0.0/24"), NextHop: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Errorf("mixed-family route accepted")
	}
	n, err := w.Flush()
	if err != nil || n != 1 {
		t.Errorf("flush: removed %d, %v; want 1", n, err)
	}
	if out := l.Run("ip", "-n", ns, "route", "show", "10.4.0.0/24"); !strings.Contains(out, "via 192.168.50.4") {
		t.Errorf("flush touched the foreign route: %q", out)
	}
}

// TestForeignRouteIsNeverReplaced: a prefix routed by another owner (the
// CNI, the administrator, the other of static and BGP) is refused, reported
// once and left intact, in both families; the writer's own route is updated
// in place.
func TestForeignRouteIsNeverReplaced(t *testing.T) {
	reg := prometheus.NewRegistry()
	w, l, ns := labWriter(t, ProtocolStatic, reg)
	ctx := context.Background()
	conflicts := func() float64 {
		return testutil.ToFloat64(w.conflicts)
	}
	tests := []struct {
		name, prefix, foreignVia, ourVia, ourNewVia, proto string
	}{
		{"ipv4 admin route", "10.9.0.0/24", "192.168.50.77", "192.168.50.2", "192.168.50.3", "static"},
		{"ipv4 bgp route", "10.9.1.0/24", "192.168.50.78", "192.168.50.2", "192.168.50.3", "195"},
		{"ipv6 cni route", "fd10:9::/64", "fd00:50::77", "fd00:50::2", "fd00:50::3", "boot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.prefix)
			fam := "-4"
			if p.Addr().Is6() {
				fam = "-6"
			}
			l.Run("ip", fam, "-n", ns, "route", "add", tt.prefix, "via", tt.foreignVia, "proto", tt.proto)
			before := conflicts()
			r := Route{Prefix: p, NextHop: netip.MustParseAddr(tt.ourVia), Cluster: "c2", Node: "n7"}
			for range 3 { // a caller retrying is reported once
				err := w.Upsert(ctx, r)
				var ce *ConflictError
				if !errors.Is(err, ErrConflict) || !errors.As(err, &ce) || ce.Protocol == ProtocolStatic {
					t.Fatalf("install over a foreign route: %v, want a conflict with its protocol", err)
				}
			}
			if got := conflicts() - before; got != 1 {
				t.Errorf("conflicts counted %v, want 1", got)
			}
			out := l.Run("ip", fam, "-n", ns, "route", "show", tt.prefix)
			if !strings.Contains(out, "via "+tt.foreignVia) || strings.Contains(out, tt.ourVia) {
				t.Errorf("foreign route not intact: %q", out)
			}
			if err := w.Delete(ctx, r); err != nil {
				t.Fatal(err)
			}
			if out := l.Run("ip", fam, "-n", ns, "route", "show", tt.prefix); !strings.Contains(out, "via "+tt.foreignVia) {
				t.Errorf("our delete removed the foreign route: %q", out)
			}

			// Once the foreign route is gone the prefix is ours, and our
			// own route is moved in place.
			l.Run("ip", fam, "-n", ns, "route", "del", tt.prefix, "proto", tt.proto)
			if err := w.Upsert(ctx, r); err != nil {
				t.Fatal(err)
			}
			r.NextHop = netip.MustParseAddr(tt.ourNewVia)
			if err := w.Upsert(ctx, r); err != nil {
				t.Fatalf("updating our own route: %v", err)
			}
			out = l.Run("ip", fam, "-n", ns, "route", "show", tt.prefix, "proto", "196")
			if !strings.Contains(out, "via "+tt.ourNewVia) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Errorf("own route after update: %q, want one route via %s", out, tt.ourNewVia)
			}
		})
	}
	if got := testutil.ToFloat64(w.conflicts); got != float64(len(tests)) {
		t.Errorf("clustermesh_route_conflicts_total = %v, want %d", got, len(tests))
	}
	if n, err := testutil.GatherAndCount(reg, "clustermesh_route_conflicts_total"); err != nil || n != 1 {
		t.Errorf("registry has %d conflict series (%v), want 1", n, err)
	}
	// A second writer of the process shares the counter.
	nh, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	w2, err := New(Config{Handle: nh, Protocol: ProtocolBGP, Owner: "static", Registerer: reg})
	if err != nil {
		t.Fatalf("second writer on one registry: %v", err)
	}
	w2.Close()
}

// TestFlushOwned removes the project's routes of both protocols from every
// table, in both families, and nothing else; a second flush finds nothing.
func TestFlushOwned(t *testing.T) {
	w, l, ns := labWriter(t, ProtocolStatic, nil)
	ctx := context.Background()
	if err := w.Upsert(ctx, Route{Prefix: netip.MustParsePrefix("10.2.0.0/24"), NextHop: netip.MustParseAddr("192.168.50.2")}); err != nil {
		t.Fatal(err)
	}
	// BGP routes, one in a table of its own (--bgp-route-table).
	l.Run("ip", "-n", ns, "route", "add", "10.3.0.0/24", "via", "192.168.50.3", "proto", "195")
	l.Run("ip", "-n", ns, "route", "add", "10.3.1.0/24", "via", "192.168.50.3", "proto", "195", "table", "4242")
	l.Run("ip", "-6", "-n", ns, "route", "add", "fd10:3::/64", "via", "fd00:50::3", "proto", "196")
	// Others' routes: the administrator's, the CNI's, in main and another table.
	l.Run("ip", "-n", ns, "route", "add", "10.4.0.0/24", "via", "192.168.50.4")
	l.Run("ip", "-n", ns, "route", "add", "10.4.1.0/24", "via", "192.168.50.4", "proto", "boot", "table", "4242")

	owned, err := Owned(w.h, Protocols()...)
	if err != nil {
		t.Fatal(err)
	}
	if len(owned) != 4 {
		t.Fatalf("owned before flush: %d routes, want 4: %v", len(owned), owned)
	}
	deleted, err := FlushOwned(w.h, Protocols()...)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range deleted {
		got = append(got, Describe(r))
	}
	slices.Sort(got)
	want := []string{
		"10.2.0.0/24 via 192.168.50.2 proto 196 table 254",
		"10.3.0.0/24 via 192.168.50.3 proto 195 table 254",
		"10.3.1.0/24 via 192.168.50.3 proto 195 table 4242",
		"fd10:3::/64 via fd00:50::3 proto 196 table 254",
	}
	if !slices.Equal(got, want) {
		t.Errorf("deleted %q, want %q", got, want)
	}
	if owned, err := Owned(w.h, Protocols()...); err != nil || len(owned) != 0 {
		t.Errorf("owned after flush: %v, %v; want none", owned, err)
	}
	for _, args := range [][]string{{"10.4.0.0/24"}, {"10.4.1.0/24", "table", "4242"}} {
		if out := l.Run(append([]string{"ip", "-n", ns, "route", "show"}, args...)...); !strings.Contains(out, "via 192.168.50.4") {
			t.Errorf("flush touched a foreign route %v: %q", args, out)
		}
	}
	if again, err := FlushOwned(w.h, Protocols()...); err != nil || len(again) != 0 {
		t.Errorf("second flush: deleted %v, %v; want nothing", again, err)
	}
}
