package emulator

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/clustermesh/clustermesh/internal/netlab"
)

// Fabric is the run's shared L2 segment: a Linux bridge in a namespace of
// its own. It stands for the data-centre network between nodes; pod traffic
// crosses it unencapsulated, routed by each node's kernel.
//
// Nothing of the run forwards in the root namespace: frames are bridged
// inside the fabric namespace and routed inside node namespaces, whose
// netfilter tables are their own. The host's firewall (FORWARD policy DROP
// and bridge netfilter on, as dockerd leaves them) therefore does not apply
// to the run, and the run changes nothing in it.
type Fabric struct {
	// Netns holds the bridge and every port of it.
	Netns string
	// Bridge is the bridge's name inside Netns.
	Bridge string
	Subnet netip.Prefix
	// Gateway is the root namespace's address on the fabric, through which
	// the harness reaches control planes: traffic to and from it is the
	// root namespace's own (input and output), never forwarded there.
	Gateway netip.Addr
	// GatewayLink is the root namespace's veth into the fabric.
	GatewayLink string

	mu   sync.Mutex
	next netip.Addr
}

func newFabric(ctx context.Context, r *Run) (*Fabric, error) {
	subnet, err := freeSubnet()
	if err != nil {
		return nil, fmt.Errorf("run %s: fabric: %w", r.Prefix, err)
	}
	f := &Fabric{
		Netns:       r.Prefix + "-fabric",
		Bridge:      "br0",
		Subnet:      subnet,
		Gateway:     subnet.Addr().Next(),
		GatewayLink: r.Prefix + "gw",
	}
	f.next = f.Gateway.Next()
	// Deleting the namespace deletes the bridge, its ports and their peers
	// (the gateway link too).
	r.onClose("fabric netns "+f.Netns, func(ctx context.Context) error { return netlab.DelNetns(ctx, f.Netns) })
	if err := netlab.AddBridgeNetns(ctx, f.Netns, f.Bridge); err != nil {
		return nil, fmt.Errorf("run %s: fabric: %w", r.Prefix, err)
	}
	steps := []struct {
		netns string
		args  []string
	}{
		{"", []string{"link", "add", f.GatewayLink, "type", "veth", "peer", "name", "gw", "netns", f.Netns}},
		{f.Netns, []string{"link", "set", "gw", "master", f.Bridge}},
		{f.Netns, []string{"link", "set", "gw", "up"}},
		{"", []string{"addr", "add", netip.PrefixFrom(f.Gateway, subnet.Bits()).String(), "dev", f.GatewayLink}},
		{"", []string{"link", "set", f.GatewayLink, "up"}},
	}
	for _, s := range steps {
		if err := netlab.IP(ctx, s.netns, s.args...); err != nil {
			return nil, fmt.Errorf("run %s: fabric gateway: %w", r.Prefix, err)
		}
	}
	return f, nil
}

// freeSubnet picks a /24 in 172.30.0.0/16 that no address of the root
// namespace is in, starting at a random one so parallel runs rarely race.
func freeSubnet() (netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list addresses: %w", err)
	}
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		return netip.Prefix{}, err
	}
	for i := range 256 {
		third := byte(int(b[0]) + i)
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, third, 0}), 24)
		used := false
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if ok && (cand.Contains(ip) || mustPrefix(a).Contains(cand.Addr())) {
				used = true
				break
			}
		}
		if !used {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /24 in 172.30.0.0/16")
}

func mustPrefix(a netlink.Addr) netip.Prefix {
	ip, _ := netip.AddrFromSlice(a.IP.To4())
	ones, _ := a.Mask.Size()
	p, err := ip.Prefix(ones)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

func (f *Fabric) allocate() (netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.next
	if !f.Subnet.Contains(a.Next()) {
		return netip.Addr{}, fmt.Errorf("fabric %s: addresses exhausted", f.Subnet)
	}
	f.next = a.Next()
	return a, nil
}

// attach connects netns to the fabric: a veth whose fabric end (port) is a
// bridge port and whose other end becomes eth0 in netns with a fresh fabric
// address.
func (f *Fabric) attach(ctx context.Context, netns, port string) (netip.Addr, error) {
	addr, err := f.allocate()
	if err != nil {
		return netip.Addr{}, err
	}
	steps := []struct {
		netns string
		args  []string
	}{
		{f.Netns, []string{"link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns}},
		{f.Netns, []string{"link", "set", port, "master", f.Bridge}},
		{f.Netns, []string{"link", "set", port, "up"}},
		{netns, []string{"addr", "add", netip.PrefixFrom(addr, f.Subnet.Bits()).String(), "dev", "eth0"}},
		{netns, []string{"link", "set", "eth0", "up"}},
	}
	for _, s := range steps {
		if err := netlab.IP(ctx, s.netns, s.args...); err != nil {
			return netip.Addr{}, fmt.Errorf("fabric: attach %s: %w", netns, err)
		}
	}
	return addr, nil
}

// setPort sets a fabric port up or down.
func (f *Fabric) setPort(ctx context.Context, port string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return netlab.IP(ctx, f.Netns, "link", "set", port, state)
}
