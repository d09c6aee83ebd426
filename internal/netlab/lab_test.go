package netlab_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/netlab"
	"github.com/clustermesh/clustermesh/internal/proc"
)

// TestLabCleanupAfterStop builds one of everything in a subtest that stops
// half-way (SkipNow, as a Fatal would) and checks that nothing is left.
func TestLabCleanupAfterStop(t *testing.T) {
	var ns, link, cg, pin string
	var sleeper *proc.Process
	t.Run("lab", func(t *testing.T) {
		l := netlab.New(t)
		ns = l.Netns("a")
		link = l.NS("v")
		l.Veth("", link, ns, "eth0")
		l.Addr(ns, "eth0", "10.250.0.1/24", "fd00:250::1/64")
		var names []string
		err := netlab.InNetns(ns, func() error {
			ifs, err := net.Interfaces()
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"eth0", "lo"}) {
			t.Errorf("interfaces in %s: %v, want eth0 and lo", ns, names)
		}
		h, err := netlab.Handle(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if addrs, err := h.AddrList(eth0, netlink.FAMILY_ALL); err != nil || len(addrs) < 2 {
			t.Errorf("eth0 addresses %v (%v), want both added", addrs, err)
		}
		cg = l.Cgroup("cg")
		// Not stopped by the test: the cgroup's removal must kill it.
		sleeper, err = proc.Start(proc.Spec{Name: "sleeper", Path: "sleep", Args: []string{"600"}, LogDir: t.TempDir(), Cgroup: cg})
		if err != nil {
			t.Fatal(err)
		}
		pin = l.BPFFS()
		t.SkipNow()
	})
	if _, err := os.Stat(netlab.NetnsPath(ns)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s left: %v", ns, err)
	}
	if _, err := netlink.LinkByName(link); err == nil {
		t.Errorf("link %s left", link)
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s left: %v", cg, err)
	}
	if !sleeper.Exited() {
		t.Errorf("process %d in the cgroup outlived the lab", sleeper.Pid())
		_ = sleeper.Kill()
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(pin), &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		t.Errorf("bpffs at %s still mounted", filepath.Dir(pin))
	}
}

func TestHostsOnFabric(t *testing.T) {
	l := netlab.New(t)
	a := l.Host("a", "192.0.2.1")
	b := l.Host("b", "192.0.2.2")
	var ln net.Listener
	if err := netlab.InNetns(b, func() (err error) { ln, err = net.Listen("tcp", "192.0.2.2:0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// a reaches b over the fabric bridge.
	err := netlab.InNetns(a, func() error {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Errorf("a to b: %v", err)
	}
	// Bridge netfilter is off where the bridge is, whatever the host's.
	err = netlab.InNetns(l.Fabric, func() error {
		b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables")
		if errors.Is(err, os.ErrNotExist) {
			t.Log("no bridge netfilter in this kernel or namespace")
			return nil
		}
		if err == nil && string(b) != "0\n" {
			t.Errorf("bridge-nf-call-iptables in the fabric namespace: %q, want 0", b)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}
