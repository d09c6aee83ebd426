package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cleanupTimeout bounds the removal of a lab's objects at the end of a test.
const cleanupTimeout = time.Minute

// Lab is a set of kernel objects of one test, all named with Prefix.
type Lab struct {
	TB testing.TB
	// Prefix is "cm" and four hex digits. Every namespace, root-namespace
	// link and cgroup of the lab is named NS(short), Prefix-short, which is
	// what cleanup removes.
	Prefix string
	// Fabric is the namespace holding the bridge br0 hosts hang off; it is
	// created by the first Host or FabricNetns.
	Fabric string
	// Dir is a temporary directory for the lab's files.
	Dir string
}

// New returns an empty lab and registers its cleanup. It skips the test when
// not root or when ip or nsenter is missing.
func New(tb testing.TB) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces, cgroups and bpffs (CI runs as root)")
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Skipf("needs %s: %v", bin, err)
		}
	}
	l := &Lab{TB: tb, Prefix: NewPrefix(), Dir: tb.TempDir()}
	tb.Cleanup(l.cleanup)
	return l
}

// NewPrefix returns a fresh lab prefix: "cm" and four random hex digits. With
// the dash of NS it takes seven characters of an interface name, leaving
// eight.
func NewPrefix() string {
	var b [2]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on Linux
	return "cm" + hex.EncodeToString(b[:])
}

// cleanup removes every object named with the prefix, whether or not the
// test got to record it: cgroups first (killing what runs in them), then
// namespaces, then root-namespace links.
func (l *Lab) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if root, err := CgroupRoot(); err == nil {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), l.Prefix+"-") {
				if err := RemoveCgroupTree(ctx, filepath.Join(root, e.Name())); err != nil {
					l.TB.Errorf("netlab cleanup: %v", err)
				}
			}
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.Prefix+"-") {
			if err := DelNetns(ctx, e.Name()); err != nil {
				l.TB.Errorf("netlab cleanup: %v", err)
			}
		}
	}
	links, _ := netlink.LinkList()
	for _, link := range links {
		if name := link.Attrs().Name; strings.HasPrefix(name, l.Prefix+"-") {
			if err := DelLink(ctx, name); err != nil {
				l.TB.Errorf("netlab cleanup: %v", err)
			}
		}
	}
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

// NS is the full name of the lab's namespace (or root-namespace link, or
// cgroup) short.
func (l *Lab) NS(short string) string { return l.Prefix + "-" + short }

// Netns adds the namespace NS(short) with loopback up and returns its name.
func (l *Lab) Netns(short string) string {
	l.TB.Helper()
	ns := l.NS(short)
	if err := AddNetns(context.Background(), ns); err != nil {
		l.TB.Fatal(err)
	}
	return ns
}

// Veth joins namespaces nsA and nsB by a veth pair, devA in nsA and devB in
// nsB, both up. An empty namespace is the test's own (root) namespace; a
// device there must be named with the prefix (NS) to be cleaned up.
func (l *Lab) Veth(nsA, devA, nsB, devB string) {
	l.TB.Helper()
	args := []string{"ip"}
	if nsA != "" {
		args = append(args, "-n", nsA)
	}
	args = append(args, "link", "add", devA, "type", "veth", "peer", "name", devB)
	if nsB != "" {
		args = append(args, "netns", nsB)
	}
	l.Run(args...)
	l.Up(nsA, devA)
	l.Up(nsB, devB)
}

// Up sets device dev of namespace ns (empty: the root namespace) up.
func (l *Lab) Up(ns, dev string) {
	l.TB.Helper()
	if err := IP(context.Background(), ns, "link", "set", dev, "up"); err != nil {
		l.TB.Fatal(err)
	}
}

// Addr adds addresses (CIDR notation) to device dev of namespace ns; IPv6
// addresses skip duplicate address detection, so they are usable at once.
func (l *Lab) Addr(ns, dev string, cidrs ...string) {
	l.TB.Helper()
	for _, c := range cidrs {
		args := []string{"addr", "add", c, "dev", dev}
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is6() {
			args = append(args, "nodad")
		}
		if err := IP(context.Background(), ns, args...); err != nil {
			l.TB.Fatal(err)
		}
	}
}

// Sysctl sets kernel parameters ("key=value") in namespace ns.
func (l *Lab) Sysctl(ns string, kv ...string) {
	l.TB.Helper()
	if err := Sysctl(context.Background(), ns, kv...); err != nil {
		l.TB.Fatal(err)
	}
}

// Routes lists the routes of protocol proto in ns's main table, by
// destination, with their gateways.
func (l *Lab) Routes(ns string, proto netlink.RouteProtocol) map[netip.Prefix]netip.Addr {
	l.TB.Helper()
	h, err := Handle(ns)
	if err != nil {
		l.TB.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: proto}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		l.TB.Fatalf("list routes in %s: %v", ns, err)
	}
	out := map[netip.Prefix]netip.Addr{}
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw)
		out[netip.PrefixFrom(a.Unmap(), ones)] = gw.Unmap()
	}
	return out
}

// FabricNetns returns the lab's fabric namespace, creating it on first use:
// it holds the bridge br0 that hosts (and tests' own bridges) hang off.
// Frames cross it there, not in the root namespace, so the host's FORWARD
// policy and bridge netfilter do not matter (see AddBridgeNetns).
func (l *Lab) FabricNetns() string {
	l.TB.Helper()
	if l.Fabric == "" {
		ns := l.NS("fab")
		if err := AddBridgeNetns(context.Background(), ns, "br0"); err != nil {
			l.TB.Fatal(err)
		}
		l.Fabric = ns
	}
	return l.Fabric
}

// Host adds a namespace with eth0 on the fabric at ip/24 and lo up, and
// returns its name.
func (l *Lab) Host(short, ip string) string {
	l.TB.Helper()
	fab := l.FabricNetns()
	ns := l.Netns(short)
	l.Veth(fab, "v"+short, ns, "eth0")
	l.Run("ip", "-n", fab, "link", "set", "v"+short, "master", "br0")
	l.Addr(ns, "eth0", ip+"/24")
	return ns
}

// Pod adds a pod namespace behind a veth of host node: the node side gets
// gw/24, the pod podIP/24 with a default route via gw; the node forwards.
func (l *Lab) Pod(node, short, gw, podIP string) string {
	l.TB.Helper()
	ns := l.Netns(short)
	nodeNS := l.NS(node)
	l.Veth(nodeNS, "p"+short, ns, "eth0")
	l.Addr(nodeNS, "p"+short, gw+"/24")
	l.Addr(ns, "eth0", podIP+"/24")
	l.Run("ip", "-n", ns, "route", "add", "default", "via", gw)
	l.Sysctl(nodeNS, "net.ipv4.ip_forward=1")
	return ns
}

// Cgroup creates the cgroup v2 directory NS(short) and returns its path. At
// cleanup the processes in it are killed and it is removed.
func (l *Lab) Cgroup(short string) string {
	l.TB.Helper()
	root, err := CgroupRoot()
	if err != nil {
		l.TB.Skipf("needs cgroup v2: %v", err)
	}
	dir := filepath.Join(root, l.NS(short))
	if err := os.Mkdir(dir, 0o755); err != nil {
		l.TB.Fatalf("create cgroup: %v", err)
	}
	return dir
}

// BPFFS mounts a private bpffs for the test and returns a pin directory
// path inside it (not yet created). At cleanup it is unmounted, which frees
// everything pinned in it.
func (l *Lab) BPFFS() string {
	l.TB.Helper()
	dir := l.TB.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		l.TB.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	l.TB.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			l.TB.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "cm")
}
