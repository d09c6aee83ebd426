package netroute

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestWriterInNetns installs, lists, replaces and deletes routes in a
// throw-away network namespace.
func TestWriterInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "cm" + hex.EncodeToString(b[:])
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("ip", "-n", name, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	run("ip", "-n", name, "link", "set", "d1", "up")
	run("ip", "-n", name, "addr", "add", "192.168.50.1/24", "dev", "d0")
	run("ip", "-n", name, "link", "set", "d0", "up")

	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(h, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	r1 := agent.Route{Prefix: netip.MustParsePrefix("10.2.0.0/24"), NextHop: netip.MustParseAddr("192.168.50.2"), Cluster: "c2", Node: "a"}
	r2 := agent.Route{Prefix: netip.MustParsePrefix("10.3.0.0/24"), NextHop: netip.MustParseAddr("192.168.50.3"), Cluster: "c3", Node: "b"}
	list := func() []string {
		t.Helper()
		rs, err := w.List(ctx)
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
	for _, r := range []agent.Route{r1, r2} {
		if err := w.Upsert(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := list(), []string{"10.2.0.0/24 via 192.168.50.2", "10.3.0.0/24 via 192.168.50.3"}; !slices.Equal(got, want) {
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
	if got, want := list(), []string{"10.2.0.0/24 via 192.168.50.9"}; !slices.Equal(got, want) {
		t.Errorf("after replace and delete: %q, want %q", got, want)
	}
	// A route of another protocol is neither listed nor touched.
	run("ip", "-n", name, "route", "add", "10.4.0.0/24", "via", "192.168.50.4")
	if got := list(); len(got) != 1 {
		t.Errorf("foreign route listed: %q", got)
	}
	if err := w.Upsert(ctx, agent.Route{Prefix: netip.MustParsePrefix("10.5.0.0/24"), NextHop: netip.MustParseAddr("fd00::1")}); err == nil {
		t.Errorf("mixed-family route accepted")
	}
}
