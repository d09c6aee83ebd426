package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/netlab"
)

// TestAgentCommandCleanup leaves a node as a stopped agent does (eBPF
// programs attached through pinned links, pinned maps, static and BGP
// routes) and runs `clustermesh-agent cleanup` in the node's namespace:
// --check lists what is left and fails, cleanup removes it and says so,
// --check then passes, a second cleanup removes nothing, and a route of
// another owner survives.
func TestAgentCommandCleanup(t *testing.T) {
	l := netlab.New(t)
	cg, pins := l.Cgroup("cg"), l.BPFFS()
	ns := l.Host("n", "192.168.60.1")

	cfg := bpf.DefaultConfig()
	cfg.CgroupPath, cfg.PinDir = cg, pins
	cfg.MaxServices, cfg.MaxBackends, cfg.MaxSlots, cfg.MaxNodes, cfg.MaxRevNAT = 16, 16, 64, 8, 64
	dp, err := bpf.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = bpf.Purge(cg, pins) })
	if err := dp.Close(); err != nil { // the agent exits; pins stay
		t.Fatal(err)
	}
	l.Run("ip", "-n", ns, "route", "add", "10.2.1.0/24", "via", "192.168.60.2", "proto", "196")
	l.Run("ip", "-n", ns, "route", "add", "10.3.1.0/24", "via", "192.168.60.3", "proto", "195", "table", "4242")
	l.Run("ip", "-n", ns, "route", "add", "10.4.1.0/24", "via", "192.168.60.4")
	// A node-local store's data, as the apiserver leaves it.
	store := filepath.Join(t.TempDir(), "clustermesh-system", "store")
	if err := os.MkdirAll(filepath.Join(store, "member", "wal"), 0o700); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) (string, error) {
		var out string
		err := netlab.InNetns(ns, func() error {
			var err error
			out, err = runCLI(t, append([]string{"cleanup", "--bpf-cgroup", cg, "--bpf-pin-dir", pins, "--store-dir", store}, args...)...)
			return err
		})
		return out, err
	}
	out, err := run("--check")
	if err == nil || !strings.Contains(out, "left: program cm_connect4") || !strings.Contains(out, "left: map pin") ||
		!strings.Contains(out, "left: route 10.3.1.0/24 via 192.168.60.3 proto 195 table 4242") || !strings.Contains(out, "left: store data "+store) {
		t.Fatalf("cleanup --check on a dirty node: %v\n%s", err, out)
	}
	out, err = run()
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	for _, want := range []string{"removed link pin", "removed map pin", "removed route 10.2.1.0/24 via 192.168.60.2 proto 196 table 254",
		"removed route 10.3.1.0/24", "removed pin directory " + pins, "removed store data " + store, "clean: no clustermesh program attached to " + cg} {
		if !strings.Contains(out, want) {
			t.Errorf("cleanup output lacks %q:\n%s", want, out)
		}
	}
	if out, err := run("--check"); err != nil || !strings.HasPrefix(out, "clean:") {
		t.Errorf("cleanup --check after cleanup: %v\n%s", err, out)
	}
	if out, err := run(); err != nil || strings.Contains(out, "removed") {
		t.Errorf("second cleanup: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Dir(store)); !os.IsNotExist(err) {
		t.Errorf("the store's emptied parent %s is still there: %v", filepath.Dir(store), err)
	}
	if out := l.Run("ip", "-n", ns, "route", "show", "10.4.1.0/24"); !strings.Contains(out, "via 192.168.60.4") {
		t.Errorf("cleanup removed a foreign route: %q", out)
	}
}
