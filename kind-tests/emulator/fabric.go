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

// Fabric is the run's shared L2 segment: a Linux bridge in the root network
// namespace. It stands for the data-centre network between nodes; pod traffic
// crosses it unencapsulated, routed by each node's kernel.
type Fabric struct {
	Bridge string
	Subnet netip.Prefix
	// Gateway is the root namespace's address on the fabric, through which
	// the harness reaches control planes.
	Gateway netip.Addr

	mu   sync.Mutex
	next netip.Addr
}

func newFabric(ctx context.Context, r *Run) (*Fabric, error) {
	subnet, err := freeSubnet()
	if err != nil {
		return nil, fmt.Errorf("run %s: fabric: %w", r.Prefix, err)
	}
	f := &Fabric{Bridge: r.Prefix + "br", Subnet: subnet, Gateway: subnet.Addr().Next()}
	f.next = f.Gateway.Next()
	if err := netlab.IP(ctx, "", "link", "add", f.Bridge, "type", "bridge"); err != nil {
		return nil, fmt.Errorf("run %s: fabric bridge: %w", r.Prefix, err)
	}
	r.onClose("fabric bridge "+f.Bridge, func(ctx context.Context) error { return netlab.DelLink(ctx, f.Bridge) })
	if err := netlab.IP(ctx, "", "addr", "add", netip.PrefixFrom(f.Gateway, subnet.Bits()).String(), "dev", f.Bridge); err != nil {
		return nil, fmt.Errorf("run %s: fabric address: %w", r.Prefix, err)
	}
	if err := netlab.IP(ctx, "", "link", "set", f.Bridge, "up"); err != nil {
		return nil, fmt.Errorf("run %s: fabric up: %w", r.Prefix, err)
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

// attach connects netns to the fabric: a veth whose root end (hostName) is a
// bridge port and whose other end becomes eth0 in netns with a fresh fabric
// address.
func (f *Fabric) attach(ctx context.Context, netns, hostName string) (netip.Addr, error) {
	addr, err := f.allocate()
	if err != nil {
		return netip.Addr{}, err
	}
	peer := hostName + "x"
	steps := [][]string{
		{"link", "add", hostName, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", netns},
		{"link", "set", hostName, "master", f.Bridge},
		{"link", "set", hostName, "up"},
	}
	for _, s := range steps {
		if err := netlab.IP(ctx, "", s...); err != nil {
			return netip.Addr{}, fmt.Errorf("fabric: attach %s: %w", netns, err)
		}
	}
	for _, s := range [][]string{
		{"link", "set", peer, "name", "eth0"},
		{"addr", "add", netip.PrefixFrom(addr, f.Subnet.Bits()).String(), "dev", "eth0"},
		{"link", "set", "eth0", "up"},
	} {
		if err := netlab.IP(ctx, netns, s...); err != nil {
			return netip.Addr{}, fmt.Errorf("fabric: attach %s: %w", netns, err)
		}
	}
	return addr, nil
}
