package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/logging"
)

// The routing protocol numbers of the project's routes (rtnetlink
// rtm_protocol; `ip route show proto 196`). Numbers above 192 are unassigned
// by iproute2's rt_protos.
const (
	// ProtocolBGP marks the routes the BGP speaker learned.
	ProtocolBGP netlink.RouteProtocol = 0xc3
	// ProtocolStatic marks the agent's static routes (--routes=static).
	ProtocolStatic netlink.RouteProtocol = 0xc4
)

// Route is a prefix reached through a next hop.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// Cluster and Node name the node owning Prefix, for logs; empty when
	// unknown (BGP).
	Cluster, Node string
}

// ErrConflict is wrapped by the errors of routes refused because another
// owner's route holds their prefix.
var ErrConflict = errors.New("prefix held by a route of another owner")

// ConflictError is a route refused because a route of another protocol holds
// its prefix in the writer's table.
type ConflictError struct {
	Route Route
	// Protocol is the foreign route's protocol.
	Protocol netlink.RouteProtocol
	Table    int
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("route %s via %s (cluster %s node %s): %s", e.Route.Prefix, e.Route.NextHop, e.Route.Cluster, e.Route.Node, e.Reason())
}

// Reason says which route holds the prefix.
func (e *ConflictError) Reason() string {
	return fmt.Sprintf("%v: protocol %s in table %d", ErrConflict, e.Protocol, e.Table)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Config configures a Writer.
type Config struct {
	// Handle is the netlink socket; nil opens one in Namespace.
	Handle *netlink.Handle
	// Namespace is the path of the network namespace to program
	// (/run/netns/NAME); empty means the calling thread's. Apply batches
	// through a socket of its own opened there, so a writer given a Handle
	// of another namespace must name it here to batch.
	Namespace string
	// Protocol marks the writer's routes; required.
	Protocol netlink.RouteProtocol
	// Table is the routing table; 0 means main.
	Table int
	// Owner labels the conflict counter and logs ("static", "bgp").
	Owner string
	// Registerer receives clustermesh_route_conflicts_total; nil: none.
	Registerer prometheus.Registerer
	// Logger receives conflicts; nil discards them.
	Logger *slog.Logger
}

// Writer installs, lists and removes the routes of one protocol in one
// table.
type Writer struct {
	h         *netlink.Handle
	proto     netlink.RouteProtocol
	table     int
	owner     string
	log       *slog.Logger
	conflicts prometheus.Counter

	// bmu serializes batches on batch, the writer's socket for Apply; nil
	// when the writer cannot know the namespace of its Handle.
	bmu   sync.Mutex
	batch *batchSocket

	mu sync.Mutex
	// refused holds the conflicts already reported, so a route retried
	// every second is logged and counted once.
	refused map[netip.Prefix]netlink.RouteProtocol
}

// New returns a writer of cfg.Protocol routes.
func New(cfg Config) (*Writer, error) {
	if cfg.Protocol == 0 {
		return nil, errors.New("route writer: no protocol")
	}
	ns := netns.None()
	if cfg.Namespace != "" {
		var err error
		if ns, err = netns.GetFromPath(cfg.Namespace); err != nil {
			return nil, fmt.Errorf("route writer: network namespace %s: %w", cfg.Namespace, err)
		}
		defer ns.Close()
	}
	h := cfg.Handle
	if h == nil {
		var err error
		if h, err = netlink.NewHandleAt(ns); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
	}
	var batch *batchSocket
	if cfg.Handle == nil || cfg.Namespace != "" {
		var err error
		if batch, err = openBatchSocket(ns); err != nil {
			if cfg.Handle == nil {
				h.Close()
			}
			return nil, fmt.Errorf("route writer: %w", err)
		}
	}
	if cfg.Table == 0 {
		cfg.Table = unix.RT_TABLE_MAIN
	}
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "clustermesh_route_conflicts_total",
		Help: "Routes refused because a route of another owner (another routing protocol) holds their prefix, by owner of the refused route.",
	}, []string{"owner"})
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(cv); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				if batch != nil {
					batch.close()
				}
				if cfg.Handle == nil {
					h.Close()
				}
				return nil, fmt.Errorf("register route metrics: %w", err)
			}
			// Another writer of the process (a restarted speaker) already
			// registered it.
			cv = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return &Writer{
		h: h, batch: batch, proto: cfg.Protocol, table: cfg.Table, owner: cfg.Owner,
		log:       logging.OrDiscard(cfg.Logger),
		conflicts: cv.WithLabelValues(cfg.Owner),
		refused:   map[netip.Prefix]netlink.RouteProtocol{},
	}, nil
}

// Close releases the netlink sockets; installed routes stay.
func (w *Writer) Close() {
	w.h.Close()
	if w.batch != nil {
		w.batch.close()
	}
}

// IPNet converts p to the netlink form.
func IPNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// PrefixOf converts a netlink destination; false when n is not an address.
func PrefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}

// Upsert installs the route to r.Prefix via r.NextHop, or moves the
// writer's own route for r.Prefix to r.NextHop. A prefix held by a route of
// another protocol is refused with a *ConflictError; that route is left
// as it is.
func (w *Writer) Upsert(_ context.Context, r Route) error {
	if !r.Prefix.IsValid() || !r.NextHop.IsValid() || r.Prefix.Addr().Is4() != r.NextHop.Unmap().Is4() {
		return fmt.Errorf("route %s via %s (cluster %s node %s): invalid prefix or next hop", r.Prefix, r.NextHop, r.Cluster, r.Node)
	}
	nr := &netlink.Route{Dst: IPNet(r.Prefix), Gw: r.NextHop.Unmap().AsSlice(), Protocol: w.proto, Table: w.table}
	// The common case, a prefix nobody routes yet, costs one request:
	// RouteAdd is NLM_F_CREATE|NLM_F_EXCL and fails on any route with the
	// same key (prefix, table, metric), ours or not.
	err := w.h.RouteAdd(nr)
	if errors.Is(err, unix.EEXIST) {
		var foreign netlink.RouteProtocol
		if foreign, err = w.holder(r.Prefix); err == nil {
			if foreign != 0 {
				return w.refuse(r, foreign)
			}
			err = w.h.RouteReplace(nr)
		}
	}
	if err != nil {
		return fmt.Errorf("route %s via %s (cluster %s node %s): %w", r.Prefix, r.NextHop, r.Cluster, r.Node, err)
	}
	w.mu.Lock()
	delete(w.refused, r.Prefix)
	w.mu.Unlock()
	return nil
}

// holder returns the protocol of a foreign route for exactly p in the
// writer's table, or 0 when only the writer's own routes hold it.
func (w *Writer) holder(p netip.Prefix) (netlink.RouteProtocol, error) {
	family := netlink.FAMILY_V4
	if p.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	routes, err := w.h.RouteListFiltered(family, &netlink.Route{Dst: IPNet(p), Table: w.table}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list routes for %s: %w", p, err)
	}
	for _, r := range routes {
		if r.Protocol != w.proto {
			return r.Protocol, nil
		}
	}
	return 0, nil
}

// refuse reports a conflict once per prefix and foreign protocol.
func (w *Writer) refuse(r Route, foreign netlink.RouteProtocol) error {
	e := &ConflictError{Route: r, Protocol: foreign, Table: w.table}
	w.mu.Lock()
	seen, ok := w.refused[r.Prefix]
	w.refused[r.Prefix] = foreign
	w.mu.Unlock()
	if !ok || seen != foreign {
		w.conflicts.Inc()
		args := []any{"owner", w.owner}
		if r.Cluster != "" || r.Node != "" {
			args = append(args, "cluster", r.Cluster, "node", r.Node)
		}
		args = append(args, "pod_cidr", r.Prefix, "next_hop", r.NextHop, "reason", e.Reason())
		w.log.Warn("route refused: another owner's route holds the prefix", args...)
	}
	return e
}

// Delete removes the writer's route to r.Prefix; a missing route is not an
// error. The request names the writer's protocol, so the kernel never
// deletes another owner's route for the prefix.
func (w *Writer) Delete(_ context.Context, r Route) error {
	w.mu.Lock()
	delete(w.refused, r.Prefix)
	w.mu.Unlock()
	err := w.h.RouteDel(&netlink.Route{Dst: IPNet(r.Prefix), Protocol: w.proto, Table: w.table})
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete route %s (cluster %s node %s): %w", r.Prefix, r.Cluster, r.Node, err)
	}
	return nil
}

// List returns the writer's routes (its protocol, its table), e.g. those a
// previous run left.
func (w *Writer) List(_ context.Context) ([]Route, error) {
	routes, err := w.list()
	if err != nil {
		return nil, err
	}
	out := make([]Route, 0, len(routes))
	for _, r := range routes {
		p, ok := PrefixOf(r.Dst)
		if !ok {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		out = append(out, Route{Prefix: p, NextHop: gw.Unmap()})
	}
	return out, nil
}

func (w *Writer) list() ([]netlink.Route, error) {
	routes, err := w.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: w.proto, Table: w.table}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of protocol %d table %d: %w", w.proto, w.table, err)
	}
	return routes, nil
}

// Flush deletes every route of the writer's protocol from its table, for a
// node where the owner is turned off for good, and returns how many it
// removed.
func (w *Writer) Flush() (int, error) {
	routes, err := w.list()
	if err != nil {
		return 0, fmt.Errorf("flush routes: %w", err)
	}
	n := 0
	var errs []error
	for _, r := range routes {
		if err := w.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("route %s: %w", r.Dst, err))
			continue
		}
		n++
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("flush routes: %w", errors.Join(errs...))
	}
	return n, nil
}

// Protocols returns the protocol of every kind of route the project
// installs: what a node that leaves the mesh must be rid of.
func Protocols() []netlink.RouteProtocol {
	return []netlink.RouteProtocol{ProtocolBGP, ProtocolStatic}
}

// Owned returns the routes of protocols in every routing table of h's
// network namespace (nil h: the calling thread's); the BGP speaker may have
// used a table other than main (--bgp-route-table).
func Owned(h *netlink.Handle, protos ...netlink.RouteProtocol) ([]netlink.Route, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
	}
	var out []netlink.Route
	for _, p := range protos {
		// Table RT_TABLE_UNSPEC with RT_FILTER_TABLE: every table.
		rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: p, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes of protocol %d: %w", p, err)
		}
		out = append(out, rs...)
	}
	return out, nil
}

// FlushOwned deletes every route of protocols in every table of h's network
// namespace (nil h: the calling thread's), for a node that leaves the mesh,
// and returns the routes it deleted. Routes of other protocols are never
// touched. A route already gone is not an error.
func FlushOwned(h *netlink.Handle, protos ...netlink.RouteProtocol) ([]netlink.Route, error) {
	if h == nil {
		var err error
		if h, err = netlink.NewHandle(); err != nil {
			return nil, fmt.Errorf("netlink handle: %w", err)
		}
		defer h.Close()
	}
	routes, err := Owned(h, protos...)
	if err != nil {
		return nil, err
	}
	var (
		deleted []netlink.Route
		errs    []error
	)
	for _, r := range routes {
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", Describe(r), err))
			continue
		}
		deleted = append(deleted, r)
	}
	return deleted, errors.Join(errs...)
}

// Describe renders a route as `ip route` would name it: destination, next
// hop, protocol and table.
func Describe(r netlink.Route) string {
	dst := "default"
	if p, ok := PrefixOf(r.Dst); ok {
		dst = p.String()
	}
	s := dst
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	return fmt.Sprintf("%s proto %d table %d", s, r.Protocol, r.Table)
}
