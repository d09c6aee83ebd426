package daemon

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/health"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Host checks of nodes the gossip pool reports dead: how often, and how long
// one TCP dial may take.
const (
	hostCheckInterval = 500 * time.Millisecond
	hostCheckTimeout  = 300 * time.Millisecond
)

// healthVerdicts is the gossip pool's health sink. It passes every verdict
// to the agent (the datapath stops balancing to a dead node's backends at
// once) and tells the BGP speaker which nodes are gone, whose routes it
// then withholds: BGP alone keeps a dead node's routes for the graceful
// restart timers (minutes to hours, so that a control-plane outage
// withdraws nothing).
//
// Gossip says an agent stopped answering, which is also what a restarting
// agent looks like (a rolling update, a crash). Withdrawing that node's pod
// CIDR would cut every connection to its pods, which are fine. So a node the
// pool reports dead is gone for routing only once its host stops answering
// too: a TCP dial to its gossip address that is refused (RST: the kernel is
// up, the agent is not) or accepted keeps its routes; one that times out or
// finds no route withdraws them. The check repeats while the node stays
// dead, so a host that dies after its agent is caught as well.
type healthVerdicts struct {
	a nodeRegistry
	// port is the gossip port of a node whose store entry names none
	// (health.GossipAddr).
	port uint16
	// hostUp reports whether a node's host answers at addr; replaced in
	// tests.
	hostUp func(ctx context.Context, addr netip.AddrPort) bool
	// kick has room for one signal: the set of gone nodes changed.
	kick chan struct{}
	// checkNow has room for one signal: a node was reported dead.
	checkNow chan struct{}

	mu   sync.Mutex
	dead map[loadbalancer.NodeRef]bool // the pool's verdicts
	gone map[loadbalancer.NodeRef]bool // dead, and the host does not answer
}

// nodeRegistry is what healthVerdicts needs of the agent.
type nodeRegistry interface {
	health.HealthSink
	Nodes() []*api.Node
	NodeRef(cluster, node string) (loadbalancer.NodeRef, bool)
}

func newHealthVerdicts(a nodeRegistry, port uint16) *healthVerdicts {
	return &healthVerdicts{
		a: a, port: port, hostUp: hostAnswers,
		kick: make(chan struct{}, 1), checkNow: make(chan struct{}, 1),
		dead: map[loadbalancer.NodeRef]bool{}, gone: map[loadbalancer.NodeRef]bool{},
	}
}

// SetNodeHealth implements health.HealthSink.
func (h *healthVerdicts) SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error {
	h.mu.Lock()
	if healthy {
		delete(h.dead, node)
	} else {
		h.dead[node] = true
	}
	cameBack := healthy && h.gone[node]
	if healthy {
		delete(h.gone, node)
	}
	h.mu.Unlock()
	if cameBack {
		signal(h.kick)
	}
	if !healthy {
		signal(h.checkNow)
	}
	return h.a.SetNodeHealth(ctx, node, healthy)
}

// run checks the hosts of dead nodes until ctx ends: at once when a node is
// reported dead, then every hostCheckInterval while any is.
func (h *healthVerdicts) run(ctx context.Context) {
	t := time.NewTicker(hostCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.checkNow:
		case <-t.C:
		}
		h.check(ctx)
	}
}

// check dials the host of every dead node (at once, each bounded by
// hostCheckTimeout) and updates the gone set.
func (h *healthVerdicts) check(ctx context.Context) {
	h.mu.Lock()
	dead := maps.Clone(h.dead)
	h.mu.Unlock()
	if len(dead) == 0 {
		return
	}
	addrs := map[loadbalancer.NodeRef]netip.AddrPort{}
	for _, n := range h.a.Nodes() {
		if ref, ok := h.a.NodeRef(n.Cluster, n.Name); ok && dead[ref] {
			addrs[ref] = health.GossipAddr(*n, h.port)
		}
	}
	var mu sync.Mutex
	up := map[loadbalancer.NodeRef]bool{}
	var wg sync.WaitGroup
	for ref, addr := range addrs {
		if !addr.IsValid() {
			// No address to ask: the pool's verdict stands.
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := h.hostUp(ctx, addr)
			mu.Lock()
			up[ref] = ok
			mu.Unlock()
		}()
	}
	wg.Wait()
	changed := false
	h.mu.Lock()
	for ref := range addrs {
		gone := h.dead[ref] && !up[ref]
		if gone != h.gone[ref] {
			changed = true
			if gone {
				h.gone[ref] = true
			} else {
				delete(h.gone, ref)
			}
		}
	}
	h.mu.Unlock()
	if changed {
		signal(h.kick)
	}
}

// deadNextHops returns the addresses of the gone nodes the registry knows,
// sorted: their BGP address and every internal address (a pod CIDR's next
// hop is the node's address of its family).
func (h *healthVerdicts) deadNextHops() []netip.Addr {
	h.mu.Lock()
	gone := maps.Clone(h.gone)
	h.mu.Unlock()
	if len(gone) == 0 {
		return nil
	}
	var out []netip.Addr
	for _, n := range h.a.Nodes() {
		ref, ok := h.a.NodeRef(n.Cluster, n.Name)
		if !ok || !gone[ref] {
			continue
		}
		if n.BGPAddress.IsValid() {
			out = append(out, n.BGPAddress)
		}
		out = append(out, n.Addresses...)
	}
	slices.SortFunc(out, func(x, y netip.Addr) int { return x.Compare(y) })
	return slices.Compact(out)
}

// hostAnswers dials addr over TCP: a connection or a refusal (RST) means
// the host's kernel is up; a timeout or an unreachable network means it is
// gone (or cut off, which for routing is the same).
func hostAnswers(ctx context.Context, addr netip.AddrPort) bool {
	d := net.Dialer{Timeout: hostCheckTimeout}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
