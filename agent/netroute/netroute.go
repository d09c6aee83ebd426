package netroute

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/clustermesh/clustermesh/agent"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol is the rtnetlink protocol number of the agent's static
// routes (BGP-learned routes use 0xc3).
const RouteProtocol = 0xc4

// Writer implements agent.RouteWriter and agent.RouteLister with netlink.
type Writer struct {
	h     *netlink.Handle
	table int
}

var (
	_ agent.RouteWriter = (*Writer)(nil)
	_ agent.RouteLister = (*Writer)(nil)
)

// New returns a writer using h (nil: a new handle in the current network
// namespace) and routing table table (0: the main table).
func New(h *netlink.Handle, table int) (*Writer, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
	}
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	return &Writer{h: h, table: table}, nil
}

// Close releases the netlink handle; installed routes stay.
func (w *Writer) Close() { w.h.Close() }

func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Upsert installs or replaces the route to r.Prefix via r.NextHop.
func (w *Writer) Upsert(_ context.Context, r agent.Route) error {
	if !r.Prefix.IsValid() || !r.NextHop.IsValid() || r.Prefix.Addr().Is4() != r.NextHop.Unmap().Is4() {
		return fmt.Errorf("route %s via %s (cluster %s node %s): invalid prefix or next hop", r.Prefix, r.NextHop, r.Cluster, r.Node)
	}
	err := w.h.RouteReplace(&netlink.Route{
		Dst: ipNet(r.Prefix), Gw: r.NextHop.Unmap().AsSlice(),
		Protocol: RouteProtocol, Table: w.table,
	})
	if err != nil {
		return fmt.Errorf("route %s via %s (cluster %s node %s): %w", r.Prefix, r.NextHop, r.Cluster, r.Node, err)
	}
	return nil
}

// Delete removes the route to r.Prefix installed by a Writer; a missing
// route is not an error.
func (w *Writer) Delete(_ context.Context, r agent.Route) error {
	err := w.h.RouteDel(&netlink.Route{Dst: ipNet(r.Prefix), Protocol: RouteProtocol, Table: w.table})
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s (cluster %s node %s): %w", r.Prefix, r.Cluster, r.Node, err)
	}
	return nil
}

// List returns the routes of RouteProtocol in the writer's table.
func (w *Writer) List(_ context.Context) ([]agent.Route, error) {
	var out []agent.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := w.h.RouteListFiltered(family, &netlink.Route{Protocol: RouteProtocol, Table: w.table}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes of protocol %d: %w", RouteProtocol, err)
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			addr, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			gw, _ := netip.AddrFromSlice(r.Gw)
			out = append(out, agent.Route{Prefix: netip.PrefixFrom(addr.Unmap(), ones), NextHop: gw.Unmap()})
		}
	}
	return out, nil
}
