package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Flow event maps (events.h).
const (
	mapEvents   = "cm_events"
	mapEvCfg    = "cm_ev_cfg"
	mapEvStats  = "cm_ev_stats"
	evStatCount = 3
)

// EventKind is what a flow event reports.
type EventKind uint8

const (
	// EventTranslate: a connect or send to a service was given a backend.
	EventTranslate EventKind = iota
	// EventNoBackend: a connect or send to a service was refused, no
	// backend being usable.
	EventNoBackend
	// EventPolicyDeny: a policy check refused a connect or send (egress)
	// or dropped a packet (ingress).
	EventPolicyDeny
	eventKinds
)

func (k EventKind) String() string {
	switch k {
	case EventTranslate:
		return "translate"
	case EventNoBackend:
		return "no-backend"
	case EventPolicyDeny:
		return "policy-deny"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// EventKinds lists every kind.
var EventKinds = []EventKind{EventTranslate, EventNoBackend, EventPolicyDeny}

// Event is one flow event as the kernel reported it.
type Event struct {
	Time time.Time
	Kind EventKind
	// NetnsCookie is the socket's network namespace (translate,
	// no-backend, egress denials); 0 for ingress packets.
	NetnsCookie uint64
	// Addr is the service (translate, no-backend) or the local endpoint
	// (policy); Peer the backend (translate) or the peer (policy).
	Addr, Peer netip.AddrPort
	Proto      uint8
	// Fallback: the backend came from the fallback set; Affinity: from
	// session affinity. Egress: a policy denial of the egress direction.
	Fallback, Affinity, Egress bool
	// BackendID is the datapath's ID of the backend (translate).
	BackendID uint32
	// Identity and PeerIdentity are the local endpoint's and the peer's
	// (policy).
	Identity, PeerIdentity uint32
}

// flowEvent mirrors struct flow_event.
type flowEvent struct {
	TS           uint64
	Cookie       uint64
	Addr         [16]byte
	Peer         [16]byte
	Port         [2]byte
	PeerPort     [2]byte
	Kind         uint8
	Proto        uint8
	Flags        uint8
	Pad          uint8
	Backend      uint32
	Identity     uint32
	PeerIdentity uint32
}

const (
	evFlagFallback = 1
	evFlagEgress   = 2
	evFlagAffinity = 4
)

// EventCounts are the kernel's counters of one kind.
type EventCounts struct {
	// Sent reached the ring buffer; RateLimited were over the kind's
	// rate; Lost found the ring buffer full.
	Sent, RateLimited, Lost uint64
}

// SetEventRates sets, per kind, how many events per second each CPU may
// send (0 turns a kind off; kinds not in rates are left as they are). The
// limit keeps a flood of connections from costing more than that.
func (d *Datapath) SetEventRates(rates map[EventKind]uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	for k, r := range rates {
		if k >= eventKinds {
			return fmt.Errorf("event kind %d", k)
		}
		if err := d.coll.Maps[mapEvCfg].Update(uint32(k), r, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("map %s: rate of %s: %w", mapEvCfg, k, err)
		}
	}
	return nil
}

// EventCounts returns the kernel's event counters by kind, summed over
// CPUs.
func (d *Datapath) EventCounts() (map[EventKind]EventCounts, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	out := map[EventKind]EventCounts{}
	for _, k := range EventKinds {
		var c [evStatCount]uint64
		for s := 0; s < evStatCount; s++ {
			var perCPU []uint64
			if err := d.coll.Maps[mapEvStats].Lookup(uint32(int(k)*evStatCount+s), &perCPU); err != nil {
				return nil, fmt.Errorf("map %s: %w", mapEvStats, err)
			}
			for _, v := range perCPU {
				c[s] += v
			}
		}
		out[k] = EventCounts{Sent: c[0], RateLimited: c[1], Lost: c[2]}
	}
	return out, nil
}

// Backend returns the programmed backend with a datapath ID (from an
// event), if it is still programmed.
func (d *Datapath) Backend(id uint32) (loadbalancer.Backend, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	be, ok := d.backendsByID[id]
	if !ok {
		return loadbalancer.Backend{}, false
	}
	n := d.nodesByID[be.key.node]
	b := loadbalancer.Backend{Addr: toAddrPort(be.value.Addr, be.value.Port)}
	if n != nil {
		b.Node = n.ref
	}
	return b, true
}

// EventReader reads flow events; create it with Events. Read blocks until
// an event arrives or Close is called (from another goroutine).
type EventReader struct {
	r *ringbuf.Reader
	// boot converts the kernel's monotonic timestamps to wall time.
	boot time.Time
}

// Events opens a reader of the flow events. One reader at a time: events
// are consumed by whoever reads them.
func (d *Datapath) Events() (*EventReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	r, err := ringbuf.NewReader(d.coll.Maps[mapEvents])
	if err != nil {
		return nil, fmt.Errorf("bpf: events: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		r.Close()
		return nil, fmt.Errorf("bpf: events: monotonic clock: %w", err)
	}
	return &EventReader{r: r, boot: time.Now().Add(-time.Duration(ts.Nano()))}, nil
}

// ErrEventsClosed is returned by Read once the reader is closed.
var ErrEventsClosed = errors.New("event reader closed")

// pollInterval is how often the reader looks at the ring: the programs do
// not wake it per event (a wakeup per connect costs the connect a context
// switch), only when a quarter of the ring is waiting.
const pollInterval = 100 * time.Millisecond

// Read returns the next event.
func (er *EventReader) Read() (Event, error) {
	var (
		rec ringbuf.Record
		err error
	)
	for {
		er.r.SetDeadline(time.Now().Add(pollInterval))
		rec, err = er.r.Read()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	if errors.Is(err, ringbuf.ErrClosed) {
		return Event{}, ErrEventsClosed
	}
	if err != nil {
		return Event{}, fmt.Errorf("bpf: read event: %w", err)
	}
	var fe flowEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.LittleEndian, &fe); err != nil {
		return Event{}, fmt.Errorf("bpf: decode event (%d bytes): %w", len(rec.RawSample), err)
	}
	return Event{
		Time:         er.boot.Add(time.Duration(fe.TS)),
		Kind:         EventKind(fe.Kind),
		NetnsCookie:  fe.Cookie,
		Addr:         toAddrPort(fe.Addr, fe.Port),
		Peer:         toAddrPort(fe.Peer, fe.PeerPort),
		Proto:        fe.Proto,
		Fallback:     fe.Flags&evFlagFallback != 0,
		Affinity:     fe.Flags&evFlagAffinity != 0,
		Egress:       fe.Flags&evFlagEgress != 0,
		BackendID:    fe.Backend,
		Identity:     fe.Identity,
		PeerIdentity: fe.PeerIdentity,
	}, nil
}

// Close ends the reader; a blocked Read returns ErrEventsClosed.
func (er *EventReader) Close() error { return er.r.Close() }
