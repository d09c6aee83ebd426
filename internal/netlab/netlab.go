// Package netlab builds throw-away network labs for root tests: network
// namespaces joined by one fabric bridge, each host with eth0 on the fabric,
// pods behind a veth of their host. Everything is named with a per-run
// prefix ("cm" and four hex digits, so runs of different packages can share
// a machine) and deleted in the test's Cleanup, even when the test fails.
//
// A Lab lives as long as the test that created it; its methods fail the
// test on error and must be called from the test's goroutine.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Lab is a set of network namespaces on one fabric bridge.
type Lab struct {
	TB testing.TB
	// Prefix starts every namespace name of the lab.
	Prefix string
	// Fabric is the namespace holding the bridge br0 every host hangs off.
	Fabric string
	// Dir is a temporary directory for the lab's files.
	Dir string
}

// New creates the fabric namespace and its bridge. It skips the test when not
// root or when ip or nsenter is missing.
func New(tb testing.TB) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces (CI runs as root)")
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Skipf("needs %s: %v", bin, err)
		}
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	l := &Lab{TB: tb, Prefix: "cm" + hex.EncodeToString(b), Dir: tb.TempDir()}
	l.Fabric = l.Prefix + "-fab"
	tb.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			name, _, _ := strings.Cut(line, " ")
			if strings.HasPrefix(name, l.Prefix+"-") {
				_ = exec.Command("ip", "netns", "del", name).Run()
			}
		}
	})
	l.Run("ip", "netns", "add", l.Fabric)
	l.Run("ip", "-n", l.Fabric, "link", "add", "br0", "type", "bridge")
	l.Run("ip", "-n", l.Fabric, "link", "set", "br0", "up")
	return l
}

// Run runs a command and returns its combined output; it fails the test when
// the command fails.
func (l *Lab) Run(args ...string) string {
	l.TB.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		l.TB.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NS is the full name of the lab's namespace short.
func (l *Lab) NS(short string) string { return l.Prefix + "-" + short }

// Host adds a namespace with eth0 on the fabric at ip/24 and lo up, and
// returns its name.
func (l *Lab) Host(short, ip string) string {
	l.TB.Helper()
	ns := l.NS(short)
	l.Run("ip", "netns", "add", ns)
	l.Run("ip", "-n", l.Fabric, "link", "add", "v"+short, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.Run("ip", "-n", l.Fabric, "link", "set", "v"+short, "master", "br0", "up")
	l.Run("ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
	l.Run("ip", "-n", ns, "link", "set", "eth0", "up")
	l.Run("ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

// Pod adds a pod namespace behind a veth of host node: the node side gets
// gw/24, the pod podIP/24 with a default route via gw; the node forwards.
func (l *Lab) Pod(node, short, gw, podIP string) string {
	l.TB.Helper()
	ns := l.NS(short)
	nodeNS := l.NS(node)
	l.Run("ip", "netns", "add", ns)
	l.Run("ip", "-n", nodeNS, "link", "add", "p"+short, "type", "veth", "peer", "name", "eth0", "netns", ns)
	l.Run("ip", "-n", nodeNS, "addr", "add", gw+"/24", "dev", "p"+short)
	l.Run("ip", "-n", nodeNS, "link", "set", "p"+short, "up")
	l.Run("ip", "-n", ns, "addr", "add", podIP+"/24", "dev", "eth0")
	l.Run("ip", "-n", ns, "link", "set", "eth0", "up")
	l.Run("ip", "-n", ns, "link", "set", "lo", "up")
	l.Run("ip", "-n", ns, "route", "add", "default", "via", gw)
	l.Run("nsenter", "--net=/run/netns/"+nodeNS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return ns
}
