// Package flows turns the datapath's flow events into named flows: which
// pod reached which service and backend in which cluster, which connection
// a policy refused. The agent keeps the most recent ones in a bounded ring,
// serves them (replay and follow, filtered) and counts them in metrics per
// service and per cluster pair.
//
// Events are sampled by the kernel (a per-CPU rate per kind, see
// bpf.SetEventRates): the flows are a faithful sample, the kernel counters
// (clustermesh_flow_events_total) are exact, and a loss is always counted,
// never silent. Nothing here can slow the datapath: a slow reader of the
// ring loses flows (counted), the kernel never waits.
package flows

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
	"github.com/clustermesh/clustermesh/observe"
)

// Source is the datapath the events come from; *bpf.Datapath implements it.
type Source interface {
	Events() (*bpf.EventReader, error)
	Backend(id uint32) (loadbalancer.Backend, bool)
	EventCounts() (map[bpf.EventKind]bpf.EventCounts, error)
}

// Resolver names what events carry as numbers and addresses. The agent
// and the policy engine implement it (see agent/daemon).
type Resolver interface {
	ServiceOf(fe loadbalancer.Frontend) (string, bool)
	ClusterName(id uint32) string
	PodOf(ip netip.Addr) (*api.IPCacheEntry, bool)
	PodOfNetns(cookie uint64) (*api.IPCacheEntry, bool)
	Identity(id uint32) (*api.Identity, bool)
}

// Config configures an Observer.
type Config struct {
	Cluster, Node string
	Source        Source
	Resolver      Resolver
	// Capacity is how many flows the ring keeps; zero means 16384.
	Capacity int
	// Registerer receives clustermesh_flow_* metrics; nil: none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Observer reads the datapath's events into the ring. Create with New, run
// with Run.
type Observer struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu   sync.Mutex
	ring []observe.Flow
	next int // where the next flow goes
	full bool
	subs map[*subscriber]struct{}
}

type subscriber struct {
	ch      chan observe.Flow
	dropped int
}

// New returns an observer; nothing is read until Run.
func New(cfg Config) (*Observer, error) {
	if cfg.Source == nil || cfg.Resolver == nil {
		return nil, errors.New("flows: config needs a Source and a Resolver")
	}
	if cfg.Capacity <= 0 {
		cfg.Capacity = 16384
	}
	m, err := newMetrics(cfg.Registerer, cfg.Source)
	if err != nil {
		return nil, err
	}
	return &Observer{
		cfg: cfg, log: logging.OrDiscard(cfg.Logger).With("node", cfg.Node), metrics: m,
		ring: make([]observe.Flow, cfg.Capacity), subs: map[*subscriber]struct{}{},
	}, nil
}

// Run reads events until ctx ends.
func (o *Observer) Run(ctx context.Context) error {
	r, err := o.cfg.Source.Events()
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	for {
		ev, err := r.Read()
		if errors.Is(err, bpf.ErrEventsClosed) {
			return nil
		}
		if err != nil {
			o.log.Warn("flow event unreadable", "error", err)
			continue
		}
		o.add(o.enrich(ev))
	}
}

// add puts a flow into the ring and hands it to the followers; a follower
// whose buffer is full loses it (counted), the reader never waits.
func (o *Observer) add(f observe.Flow) {
	o.metrics.flow(&f)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ring[o.next] = f
	o.next = (o.next + 1) % len(o.ring)
	if o.next == 0 {
		o.full = true
	}
	for s := range o.subs {
		select {
		case s.ch <- f:
		default:
			s.dropped++
			o.metrics.subscriberDrop()
		}
	}
}

// Recent returns the flows in the ring that match, oldest first.
func (o *Observer) Recent(match func(*observe.Flow) bool) []observe.Flow {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []observe.Flow
	add := func(fs []observe.Flow) {
		for i := range fs {
			if match == nil || match(&fs[i]) {
				out = append(out, fs[i])
			}
		}
	}
	if o.full {
		add(o.ring[o.next:])
	}
	add(o.ring[:o.next])
	return out
}

// Follow returns a channel of the flows from now on, and a function that
// ends the subscription (and closes the channel).
func (o *Observer) Follow(buffer int) (<-chan observe.Flow, func()) {
	s := &subscriber{ch: make(chan observe.Flow, buffer)}
	o.mu.Lock()
	o.subs[s] = struct{}{}
	o.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			o.mu.Lock()
			delete(o.subs, s)
			o.mu.Unlock()
			close(s.ch)
		})
	}
}

var protoNames = map[uint8]string{6: "TCP", 17: "UDP", 132: "SCTP"}

func protoName(p uint8) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return fmt.Sprint(p)
}

// enrich names an event's parts.
func (o *Observer) enrich(ev bpf.Event) observe.Flow {
	rs := o.cfg.Resolver
	f := observe.Flow{Time: ev.Time, Cluster: o.cfg.Cluster, Node: o.cfg.Node, Kind: ev.Kind.String(), Proto: protoName(ev.Proto)}
	pod := func(e *observe.Endpoint, en *api.IPCacheEntry) {
		if en == nil {
			return
		}
		e.Cluster, e.Node, e.Namespace, e.Pod, e.Identity = en.Cluster, en.Node, en.Namespace, en.Pod, en.Identity
		if !e.IP.IsValid() {
			e.IP = en.IP
		}
	}
	byAddr := func(e *observe.Endpoint, ap netip.AddrPort) {
		e.IP, e.Port = ap.Addr(), ap.Port()
		if en, ok := rs.PodOf(ap.Addr()); ok {
			pod(e, en)
		}
	}
	switch ev.Kind {
	case bpf.EventTranslate, bpf.EventNoBackend:
		f.Verdict = "forwarded"
		if ev.Kind == bpf.EventNoBackend {
			f.Verdict = "dropped"
		}
		fe := loadbalancer.Frontend{Addr: ev.Addr, Protocol: loadbalancer.Protocol(ev.Proto)}
		f.Service, _ = rs.ServiceOf(fe)
		if en, ok := rs.PodOfNetns(ev.NetnsCookie); ok {
			pod(&f.Source, en)
		} else {
			f.Source.Cluster, f.Source.Node = o.cfg.Cluster, o.cfg.Node
		}
		if ev.Kind == bpf.EventNoBackend {
			f.Destination.IP, f.Destination.Port = ev.Addr.Addr(), ev.Addr.Port()
			break
		}
		f.Tier = "preferred"
		switch {
		case ev.Affinity:
			f.Tier = "affinity"
		case ev.Fallback:
			f.Tier = "fallback"
		}
		byAddr(&f.Destination, ev.Peer)
		if be, ok := o.cfg.Source.Backend(ev.BackendID); ok {
			if f.Destination.Cluster == "" {
				f.Destination.Cluster = rs.ClusterName(be.Node.ClusterID)
			}
			if f.Destination.Node == "" {
				f.Destination.Node = be.Node.Name
			}
		}
	case bpf.EventPolicyDeny:
		f.Verdict = "dropped"
		local, peer := &f.Source, &f.Destination
		f.Direction = "egress"
		if !ev.Egress {
			f.Direction = "ingress"
			local, peer = &f.Destination, &f.Source
		}
		byAddr(local, ev.Addr)
		byAddr(peer, ev.Peer)
		local.Identity, peer.Identity = ev.Identity, ev.PeerIdentity
		if id, ok := rs.Identity(ev.PeerIdentity); ok {
			if peer.Cluster == "" {
				peer.Cluster = id.Cluster
			}
			if peer.Namespace == "" {
				peer.Namespace = id.Namespace
			}
		}
	}
	return f
}
