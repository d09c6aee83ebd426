package emulator

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// TestFabricIgnoresHostFirewall sets the host's firewall as dockerd leaves
// it (FORWARD policy DROP, bridge netfilter on) and checks that a run's
// traffic still flows: pod to pod across clusters, node to pod, and node to
// the harness's own address on the fabric. A control bridge in the root
// namespace (the emulator's former layout) shows that the host really drops
// forwarded frames meanwhile. The DROP window covers only the dials: other
// tests on the machine may forward through the host.
func TestFabricIgnoresHostFirewall(t *testing.T) {
	needRoot(t)
	r := newRun(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var pods []*Pod
	for _, cn := range []string{"c1", "c2"} {
		c, err := r.AddCluster(ctx, cn)
		if err != nil {
			t.Fatal(err)
		}
		n, err := c.AddNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p, err := n.AddPod(ctx, "default", "echo-"+cn)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	if err := r.InstallStaticRoutes(ctx); err != nil {
		t.Fatal(err)
	}
	// The harness's end: a listener on the root namespace's fabric address,
	// where control planes listen.
	gw := serveName(t, "", netip.AddrPortFrom(r.Fabric.Gateway, 0), "harness")

	// The control: two namespaces on a bridge of the root namespace, on a
	// subnet the host has no address in (bridge netfilter drops frames from
	// an address of the host itself anyway).
	subnet, err := freeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	ctlIP := [2]netip.Addr{subnet.Addr().Next(), subnet.Addr().Next().Next()}
	l := netlab.New(t)
	br := l.NS("cb")
	l.Run("ip", "link", "add", br, "type", "bridge")
	l.Up("", br)
	var ctl [2]string
	for i := range ctl {
		ctl[i] = l.Netns(fmt.Sprintf("c%d", i))
		port := l.NS(fmt.Sprintf("p%d", i))
		l.Veth("", port, ctl[i], "eth0")
		l.Run("ip", "link", "set", port, "master", br)
		l.Addr(ctl[i], "eth0", netip.PrefixFrom(ctlIP[i], subnet.Bits()).String())
	}
	ctlAddr := serveName(t, ctl[1], netip.AddrPortFrom(ctlIP[1], 0), "control")
	if got, err := dial(ctl[0], "tcp", ctlAddr, 2*time.Second); err != nil || got != "control" {
		// On a host where dockerd ran (CI, once Docker is installed for
		// kind) the root namespace's bridges drop already.
		if !netlab.HostDropsForwarded() {
			t.Fatalf("control before the firewall change: reply %q, %v", got, err)
		}
		t.Logf("the host already drops forwarded bridge frames (as after dockerd): control fails before the change too (%v)", err)
	}

	type path struct {
		what, netns, proto string
		to                 netip.AddrPort
		want               string
	}
	from, to := pods[0], pods[1]
	paths := []path{
		{"pod to pod across clusters", from.Netns, "tcp", netip.AddrPortFrom(to.IP, EchoPort), to.Name},
		{"pod to pod across clusters", from.Netns, "udp", netip.AddrPortFrom(to.IP, EchoPort), to.Name},
		{"node to remote pod", from.Node.Netns, "tcp", netip.AddrPortFrom(to.IP, EchoPort), to.Name},
		{"node to the harness", to.Node.Netns, "tcp", gw, "harness"},
	}
	restore, bridged := netlab.HostFirewallDrop(t)
	type result struct {
		got string
		err error
	}
	results := make([]result, len(paths))
	for i, p := range paths {
		results[i].got, results[i].err = dial(p.netns, p.proto, p.to, 2*time.Second)
	}
	var ctlErr error
	if bridged {
		_, ctlErr = dial(ctl[0], "tcp", ctlAddr, time.Second)
	}
	restore()

	for i, p := range paths {
		if res := results[i]; res.err != nil || res.got != p.want {
			t.Errorf("%s (%s %s) with the host's FORWARD policy DROP: reply %q, %v; want %q", p.what, p.proto, p.to, res.got, res.err, p.want)
		}
	}
	if !bridged {
		t.Log("no bridge netfilter on this host: the control bridge is not filtered, so it proves nothing")
	} else if ctlErr == nil {
		t.Errorf("control: a bridge of the root namespace still forwarded with FORWARD policy DROP and bridge netfilter on; the test does not reproduce a host where dockerd ran")
	}
}

// serveName listens on TCP at addr in netns (empty: the root namespace)
// and answers every connection with name; it returns the address bound.
func serveName(t *testing.T, netns string, addr netip.AddrPort, name string) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}
	var err error
	if netns == "" {
		err = listen()
	} else {
		err = netlab.InNetns(netns, listen)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name + "\n"))
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
