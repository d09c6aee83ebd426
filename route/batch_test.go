package route

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// batchWriters returns a writer that batches (its own socket in the
// namespace) and one that cannot (a foreign Handle, no Namespace), both of
// ProtocolStatic in one fresh namespace whose eth0 is 192.168.50.1/24 and
// fd00:50::1/64.
func batchWriters(t *testing.T) (batching, oneByOne *Writer, l *netlab.Lab, ns string) {
	t.Helper()
	l = netlab.New(t)
	ns = l.Host("h", "192.168.50.1")
	l.Run("ip", "-n", ns, "addr", "add", "fd00:50::1/64", "dev", "eth0", "nodad")
	batching, err := New(Config{Namespace: "/run/netns/" + ns, Protocol: ProtocolStatic, Owner: "static"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(batching.Close)
	if batching.batch == nil {
		t.Fatal("writer with a Namespace has no batch socket")
	}
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	oneByOne, err = New(Config{Handle: nh, Protocol: ProtocolStatic, Owner: "static"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(oneByOne.Close)
	if oneByOne.batch != nil {
		t.Fatal("writer with a foreign Handle batches")
	}
	return batching, oneByOne, l, ns
}

// TestApply: a batch installs, moves and removes routes like Upsert and
// Delete do, more than one kernel message's worth of them, refuses prefixes
// of other owners and invalid routes per change, in both families; with and
// without the writer's own socket.
func TestApply(t *testing.T) {
	batching, oneByOne, l, ns := batchWriters(t)
	ctx := context.Background()
	v4 := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/256), byte(i % 256), 0}), 24)
	}
	gw := netip.MustParseAddr("192.168.50.2")
	gw2 := netip.MustParseAddr("192.168.50.3")
	l.Run("ip", "-n", ns, "route", "add", "10.99.0.0/24", "via", "192.168.50.4")

	for _, w := range []struct {
		name string
		w    *Writer
	}{{"batching", batching}, {"one-by-one", oneByOne}} {
		t.Run(w.name, func(t *testing.T) {
			steps := []struct {
				name    string
				changes []Change
				errs    map[int]string // index -> error substring
				want    []string       // listed afterwards
			}{{
				name: "install 300 and a v6",
				changes: func() []Change {
					var cs []Change
					for i := range 300 {
						cs = append(cs, Change{Route: Route{Prefix: v4(i), NextHop: gw}})
					}
					return append(cs, Change{Route: Route{Prefix: netip.MustParsePrefix("fd00:77::/64"), NextHop: netip.MustParseAddr("fd00:50::2")}})
				}(),
				want: append(want(v4, 0, 300, gw), "fd00:77::/64 via fd00:50::2"),
			}, {
				name: "move, remove, refuse, invalid, missing",
				changes: []Change{
					{Route: Route{Prefix: v4(0), NextHop: gw2}},                                 // moved (ours)
					{Route: Route{Prefix: v4(1)}, Delete: true},                                 // removed
					{Route: Route{Prefix: netip.MustParsePrefix("10.99.0.0/24"), NextHop: gw}},  // another owner's
					{Route: Route{Prefix: netip.MustParsePrefix("10.97.0.0/24")}, Delete: true}, // not there
					{Route: Route{Prefix: netip.MustParsePrefix("fd00:77::/64")}, Delete: true},
					{Route: Route{Prefix: v4(2), NextHop: gw}}, // already so
					// Mixed families, last: the batch's answer comes from
					// the request before.
					{Route: Route{Prefix: netip.MustParsePrefix("10.98.0.0/24"), NextHop: netip.MustParseAddr("fd00::1")}},
				},
				errs: map[int]string{2: ErrConflict.Error(), 6: "invalid prefix or next hop"},
				want: append([]string{v4(0).String() + " via " + gw2.String()}, want(v4, 2, 300, gw)...),
			}, {
				name: "remove all",
				changes: func() []Change {
					var cs []Change
					for i := range 300 {
						cs = append(cs, Change{Route: Route{Prefix: v4(i)}, Delete: true})
					}
					return cs
				}(),
			}}
			for _, s := range steps {
				errs := w.w.Apply(ctx, s.changes)
				if len(s.errs) == 0 && errs != nil {
					t.Errorf("%s: errors %v", s.name, errs)
				}
				for i := range s.changes {
					var err error
					if errs != nil {
						err = errs[i]
					}
					if want, ok := s.errs[i]; ok != (err != nil) || ok && !strings.Contains(err.Error(), want) {
						t.Errorf("%s: change %d (%+v): error %v, want %q", s.name, i, s.changes[i], err, want)
					}
				}
				if s.errs[2] == ErrConflict.Error() && !errors.Is(errs[2], ErrConflict) {
					t.Errorf("%s: conflict error %v is not ErrConflict", s.name, errs[2])
				}
				got := listed(t, w.w)
				slices.Sort(s.want)
				if !slices.Equal(got, s.want) {
					t.Errorf("%s: %d routes listed, want %d; first diff: %q", s.name, len(got), len(s.want), firstDiff(got, s.want))
				}
			}
			if out := l.Run("ip", "-n", ns, "route", "show", "10.99.0.0/24"); !strings.Contains(out, "via 192.168.50.4") {
				t.Errorf("batch touched the foreign route: %q", out)
			}
		})
	}
}

func want(pfx func(int) netip.Prefix, from, to int, gw netip.Addr) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, pfx(i).String()+" via "+gw.String())
	}
	return out
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("%s / %s", a[i], b[i])
		}
	}
	return "length"
}
