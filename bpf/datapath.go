package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// Config says where the datapath attaches and pins and how large its maps
// are. Sizes are fixed when the maps are first created; a later Open with
// other sizes fails with ErrIncompatiblePin until the pins are removed.
type Config struct {
	// CgroupPath is the cgroup v2 directory the programs attach to; every
	// socket created by a process in it or below is balanced.
	CgroupPath string
	// PinDir is a directory on a bpffs (created if missing) holding the
	// pinned maps and links. Two datapaths must not share one.
	PinDir string

	// MaxServices bounds frontends (VIP, port, protocol).
	MaxServices int
	// MaxBackends bounds distinct backends (address and node) over all
	// services; a backend shared by several services counts once.
	MaxBackends int
	// MaxSlots bounds the sum over services of preferred+fallback backends,
	// plus room for the largest service once more (an update writes the new
	// set before it drops the old one).
	MaxSlots int
	// MaxNodes bounds the nodes backends live on or health was set for.
	MaxNodes int
	// MaxRevNAT bounds remembered UDP translations (socket, backend); the
	// map is an LRU, so the oldest are evicted.
	MaxRevNAT int
	// TCPVIPSlots sizes the ring of TCP sockets' dialled service addresses
	// that getpeername() returns (rounded up to a power of two, 48 bytes
	// each): a socket's entry is overwritten once about this many later
	// sockets have been translated, after which getpeername() shows it
	// the backend.
	TCPVIPSlots int

	// Policy map sizes (see policy.h). MaxIPCache bounds addresses with a
	// known identity (every cluster's pods and the node's own addresses);
	// MaxPolicyEndpoints the local pods' network namespaces;
	// MaxIdentityPolicies the local identities a policy selects;
	// MaxPolicyEntries the entries over all of them (port ranges count one
	// per port); MaxPolicyCT the remembered UDP exchanges (an LRU).
	MaxIPCache          int
	MaxPolicyEndpoints  int
	MaxIdentityPolicies int
	MaxPolicyEntries    int
	MaxPolicyCT         int
	// MaxAffinity bounds remembered (service, client) backends of
	// services with session affinity (an LRU).
	MaxAffinity int

	// ReclaimInterval is how often slot sets replaced or deleted by updates
	// are freed, each batch after one RCU grace period (so no program still
	// reads them). Default 100ms.
	ReclaimInterval time.Duration

	// Logger receives the datapath's logs; nil discards them.
	Logger *slog.Logger
	// Registerer, if set, receives clustermesh_bpf_* metrics.
	Registerer prometheus.Registerer
}

// DefaultConfig returns sizes for a mesh of a few thousand global services.
// CgroupPath is left empty: the caller must choose.
func DefaultConfig() Config {
	return Config{
		PinDir:      "/sys/fs/bpf/clustermesh",
		MaxServices: 65536,
		MaxBackends: 65536,
		MaxSlots:    262144,
		MaxNodes:    8192,
		MaxRevNAT:   131072,
		TCPVIPSlots: 262144,

		MaxIPCache:          131072,
		MaxPolicyEndpoints:  4096,
		MaxIdentityPolicies: 4096,
		MaxPolicyEntries:    65536,
		MaxPolicyCT:         65536,
		MaxAffinity:         65536,
	}
}

// Flags registers the settings on fs, with c's current values as defaults.
func (c *Config) Flags(fs *pflag.FlagSet) {
	fs.StringVar(&c.CgroupPath, "bpf-cgroup", c.CgroupPath, "cgroup v2 directory whose sockets are balanced (e.g. /sys/fs/cgroup/unified, or the pods' parent cgroup)")
	fs.StringVar(&c.PinDir, "bpf-pin-dir", c.PinDir, "directory on a bpffs holding the pinned maps and links")
	fs.IntVar(&c.MaxServices, "bpf-max-services", c.MaxServices, "frontends the service table holds (it has the next power of two ≥ twice as many entries of 64 bytes); fixed once pinned")
	fs.IntVar(&c.MaxBackends, "bpf-max-backends", c.MaxBackends, "size of the backend map (distinct backends); fixed once pinned")
	fs.IntVar(&c.MaxSlots, "bpf-max-slots", c.MaxSlots, "size of the slot map (sum of backends per service, plus the largest service once more); fixed once pinned")
	fs.IntVar(&c.MaxNodes, "bpf-max-nodes", c.MaxNodes, "size of the node map; fixed once pinned")
	fs.IntVar(&c.MaxRevNAT, "bpf-max-revnat", c.MaxRevNAT, "size of the UDP reverse-translation LRU; fixed once pinned")
	fs.IntVar(&c.TCPVIPSlots, "bpf-tcp-vip-slots", c.TCPVIPSlots, "TCP sockets whose getpeername() returns the service address dialled, a ring overwritten in socket order (rounded up to a power of two); fixed once pinned")
	fs.IntVar(&c.MaxIPCache, "bpf-max-ipcache", c.MaxIPCache, "size of the address-to-identity map (pods of every cluster); fixed once pinned")
	fs.IntVar(&c.MaxPolicyEndpoints, "bpf-max-policy-endpoints", c.MaxPolicyEndpoints, "size of the local pods' network namespace map; fixed once pinned")
	fs.IntVar(&c.MaxIdentityPolicies, "bpf-max-identity-policies", c.MaxIdentityPolicies, "local identities a policy may select; fixed once pinned")
	fs.IntVar(&c.MaxPolicyEntries, "bpf-max-policy-entries", c.MaxPolicyEntries, "policy entries over all local identities (a port range counts one per port); fixed once pinned")
	fs.IntVar(&c.MaxAffinity, "bpf-max-affinity", c.MaxAffinity, "remembered client backends of services with session affinity (an LRU); fixed once pinned")
	fs.IntVar(&c.MaxPolicyCT, "bpf-max-policy-ct", c.MaxPolicyCT, "remembered UDP exchanges for policy replies (an LRU); fixed once pinned")
}

// attachments lists each program with its cgroup hook.
var attachments = []struct {
	prog   string
	attach ebpf.AttachType
}{
	{"cm_connect4", ebpf.AttachCGroupInet4Connect},
	{"cm_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg},
	{"cm_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg},
	{"cm_getpeername4", ebpf.AttachCgroupInet4GetPeername},
	{"cm_connect6", ebpf.AttachCGroupInet6Connect},
	{"cm_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg},
	{"cm_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg},
	{"cm_getpeername6", ebpf.AttachCgroupInet6GetPeername},
}

func linkPinPath(dir, prog string) string { return filepath.Join(dir, "link_"+prog) }

// Datapath programs merged services into the pinned maps. Create it with
// Open; it is safe for concurrent use.
type Datapath struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	closed   bool
	coll     *ebpf.Collection
	table    *svcTable // cm_services, and the copy of what was written to it
	slots    *ebpf.Map
	backends *ebpf.Map
	nodes    *ebpf.Map
	links    []link.Link
	// syncOuter is a one-slot map-in-map used only for its side effect:
	// updating it waits for an RCU grace period (synchronize_rcu), after
	// which no program still runs with a service entry read before.
	syncOuter *ebpf.Map
	syncInner *ebpf.Map

	// Userspace mirror of the maps, rebuilt from them on Open.
	svcs          map[svcKey]*svcState
	backendsByKey map[backendKey]*backendState
	backendsByID  map[uint32]*backendState
	nodesByRef    map[loadbalancer.NodeRef]*nodeState
	nodesByID     map[uint32]*nodeState
	setIDs        *idAllocator
	backendIDs    *idAllocator
	nodeIDs       *idAllocator
	// slotsUsed counts slots in the map: active and retired sets.
	slotsUsed int
	// retired are slot sets no service entry points at any more, freed
	// after a grace period; seq orders them.
	retired []retiredSet
	seq     uint64

	stopReclaim func()
	reclaimDone chan struct{}
	stopOnce    sync.Once

	metrics *metrics

	// pol mirrors the policy maps and holds the pod interface links.
	pol *policyState
	// affinity mirrors cm_svc_affinity: timeout (s) by service.
	affinity map[svcKey]uint32
	// batch queues the map writes of a bulk load (UpsertServices); nil
	// otherwise.
	batch *pendingWrites
	// all is upsertLocked's scratch list of a service's backends, ids
	// that of their backend IDs.
	all []loadbalancer.Backend
	ids []uint32
	// recentNodes are the nodes nodeOf found last, recentNext the one to
	// replace next: a service's backends come in runs of a node or
	// alternate between a few, and comparing a NodeRef costs less than
	// hashing its name (a third of a bulk load's backend bookkeeping).
	recentNodes [4]*nodeState
	recentNext  int
}

// retiredSet is a slot set waiting for readers to be done with it. Its
// backend references are held until it is freed.
type retiredSet struct {
	seq   uint64
	set   uint32
	slots []uint32
}

var _ loadbalancer.Datapath = (*Datapath)(nil)

type svcState struct {
	value svcValue
	// slots holds the backend ID of every slot of the active set,
	// preferred first; 0 where adoption found a slot missing. It may point
	// into value.Head (see keepSlots): value is never changed in place.
	slots []uint32
}

type backendKey struct {
	addr [16]byte
	port [2]byte
	node uint32
}

type backendState struct {
	id    uint32
	key   backendKey
	value backendValue
	refs  int // slots pointing at it, over all services
}

type nodeState struct {
	id   uint32
	ref  loadbalancer.NodeRef
	down bool
	refs int // backends on it
}

// Open loads the programs, creates or adopts the pinned maps, attaches the
// programs to cfg.CgroupPath (replacing the programs of pinned links in
// place) and rebuilds its bookkeeping from the maps' contents. ctx bounds
// nothing after Open returns.
func Open(ctx context.Context, cfg Config) (*Datapath, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.CgroupPath == "" || cfg.PinDir == "" {
		return nil, errors.New("bpf: config needs CgroupPath and PinDir")
	}
	for name, v := range map[string]int{"MaxServices": cfg.MaxServices, "MaxBackends": cfg.MaxBackends,
		"MaxSlots": cfg.MaxSlots, "MaxNodes": cfg.MaxNodes, "MaxRevNAT": cfg.MaxRevNAT, "TCPVIPSlots": cfg.TCPVIPSlots,
		"MaxIPCache": cfg.MaxIPCache, "MaxPolicyEndpoints": cfg.MaxPolicyEndpoints, "MaxIdentityPolicies": cfg.MaxIdentityPolicies,
		"MaxPolicyEntries": cfg.MaxPolicyEntries, "MaxPolicyCT": cfg.MaxPolicyCT, "MaxAffinity": cfg.MaxAffinity} {
		if v <= 0 || v > math.MaxInt32 {
			return nil, fmt.Errorf("bpf: config %s=%d out of range", name, v)
		}
	}
	if cfg.ReclaimInterval <= 0 {
		cfg.ReclaimInterval = 100 * time.Millisecond
	}
	log := logging.OrDiscard(cfg.Logger)
	log = log.With("pindir", cfg.PinDir, "cgroup", cfg.CgroupPath)

	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("bpf: pin directory %s: %w", cfg.PinDir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.PinDir, &st); err != nil {
		return nil, fmt.Errorf("bpf: pin directory %s: %w", cfg.PinDir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("bpf: %s: %w", cfg.PinDir, ErrNotBPFFS)
	}

	cg, err := Cgroup2(cfg.CgroupPath)
	if err != nil {
		return nil, err
	}
	if cg != cfg.CgroupPath {
		log.Info("using the cgroup v2 mount beneath the given cgroup path", "cgroup_v2", cg)
		cfg.CgroupPath = cg
	}
	if err := probeKernel(); err != nil {
		return nil, err
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, fmt.Errorf("bpf: load embedded object: %w", err)
	}
	for name, size := range map[string]int{mapSlots: cfg.MaxSlots,
		mapBackends: cfg.MaxBackends, mapNodes: cfg.MaxNodes, mapRevNAT: cfg.MaxRevNAT,
		mapIPCache: cfg.MaxIPCache, mapPolNetns: cfg.MaxPolicyEndpoints, mapPolState: cfg.MaxIdentityPolicies,
		mapPolicy: cfg.MaxPolicyEntries, mapPolCT: cfg.MaxPolicyCT,
		mapSvcAffinity: cfg.MaxServices, mapAffinity: cfg.MaxAffinity} {
		spec.Maps[name].MaxEntries = uint32(size)
	}
	freshTCPVIP, err := sizeTCPVIP(spec, cfg.PinDir, tcpVIPSlots(cfg.TCPVIPSlots))
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := migrateSlots(cfg.PinDir, spec.Maps[mapSlots], log); err != nil {
		return nil, fmt.Errorf("bpf: maps pinned in %s: %w", cfg.PinDir, err)
	}
	if err := sizeSvcTable(spec, svcTableSize(cfg.MaxServices)); err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if err := migrateServices(cfg.PinDir, spec.Maps[mapServices], log); err != nil {
		return nil, fmt.Errorf("bpf: maps pinned in %s: %w", cfg.PinDir, err)
	}
	freshTable, err := freshPin(cfg.PinDir, mapServices)
	if err != nil {
		return nil, fmt.Errorf("bpf: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: cfg.PinDir},
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("bpf: maps pinned in %s (remove them to resize): %w: %w", cfg.PinDir, ErrIncompatiblePin, err)
		}
		return nil, fmt.Errorf("bpf: load programs: %w", err)
	}

	d := &Datapath{
		cfg:           cfg,
		log:           log,
		coll:          coll,
		slots:         coll.Maps[mapSlots],
		backends:      coll.Maps[mapBackends],
		nodes:         coll.Maps[mapNodes],
		svcs:          make(map[svcKey]*svcState),
		backendsByKey: make(map[backendKey]*backendState),
		backendsByID:  make(map[uint32]*backendState),
		nodesByRef:    make(map[loadbalancer.NodeRef]*nodeState),
		nodesByID:     make(map[uint32]*nodeState),
		setIDs:        newIDAllocator(math.MaxInt32),
		backendIDs:    newIDAllocator(uint32(cfg.MaxBackends)),
		nodeIDs:       newIDAllocator(uint32(cfg.MaxNodes)),
	}
	if err := checkLayout(coll.Maps); err != nil {
		coll.Close()
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if d.table, err = openSvcTable(coll.Maps[mapServices]); err != nil {
		coll.Close()
		return nil, fmt.Errorf("bpf: %w", err)
	}
	if freshTable {
		if err := d.table.fill(); err != nil {
			d.table.close()
			coll.Close()
			return nil, fmt.Errorf("bpf: %w", err)
		}
	}
	if freshTCPVIP {
		if err := fillTCPVIP(coll.Maps[mapTCPVIP]); err != nil {
			d.table.close()
			coll.Close()
			return nil, fmt.Errorf("bpf: map %s: %w", mapTCPVIP, err)
		}
	}
	if d.metrics, err = newMetrics(cfg.Registerer); err != nil {
		d.table.close()
		coll.Close()
		return nil, err
	}
	if err := d.newSyncMap(); err != nil {
		d.closeLocked()
		return nil, err
	}
	if err := d.adopt(); err != nil {
		d.closeLocked()
		return nil, fmt.Errorf("bpf: adopt pinned maps in %s: %w", cfg.PinDir, err)
	}
	if err := d.adoptAffinity(); err != nil {
		d.closeLocked()
		return nil, fmt.Errorf("bpf: adopt pinned affinity in %s: %w", cfg.PinDir, err)
	}
	if err := d.adoptPolicy(); err != nil {
		d.closeLocked()
		return nil, fmt.Errorf("bpf: adopt pinned policy in %s: %w", cfg.PinDir, err)
	}
	if err := d.attach(); err != nil {
		d.closeLocked()
		return nil, err
	}
	removeStaleSkVIP(cfg.PinDir, log)
	d.updateGauges()
	d.metrics.setCapacity(map[string]int{mapServices: cfg.MaxServices, mapSlots: cfg.MaxSlots, mapBackends: cfg.MaxBackends,
		mapNodes: cfg.MaxNodes, mapRevNAT: cfg.MaxRevNAT, mapIPCache: cfg.MaxIPCache, mapPolNetns: cfg.MaxPolicyEndpoints,
		mapPolState: cfg.MaxIdentityPolicies, mapPolicy: cfg.MaxPolicyEntries, mapPolCT: cfg.MaxPolicyCT, mapAffinity: cfg.MaxAffinity})
	ctx, cancel := context.WithCancel(context.Background())
	d.stopReclaim, d.reclaimDone = cancel, make(chan struct{})
	go d.reclaimLoop(ctx)
	log.Info("eBPF datapath ready", "services", len(d.svcs), "backends", len(d.backendsByID), "nodes", len(d.nodesByID))
	return d, nil
}

// probeKernel checks the kernel features the programs use, so an old kernel
// yields ErrNotSupported naming the feature instead of a verifier log.
func probeKernel() error {
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		return fmt.Errorf("bpf: cgroup sock_addr programs: %w", err)
	}
	for _, h := range []asm.BuiltinFunc{asm.FnLoop, asm.FnGetSocketCookie, asm.FnGetPrandomU32, asm.FnGetNetnsCookie} {
		if err := features.HaveProgramHelper(ebpf.CGroupSockAddr, h); err != nil {
			return fmt.Errorf("bpf: helper %s in cgroup sock_addr programs: %w", h, err)
		}
	}
	return nil
}

// attach attaches every program to the cgroup. A link pinned by an earlier
// run on the same cgroup gets the new program swapped in atomically
// (BPF_LINK_UPDATE), so the hook is never empty; a pinned link on another
// cgroup is detached first.
func (d *Datapath) attach() error {
	var st unix.Stat_t
	if err := unix.Stat(d.cfg.CgroupPath, &st); err != nil {
		return fmt.Errorf("bpf: cgroup %s: %w", d.cfg.CgroupPath, err)
	}
	cgroupID := st.Ino
	for _, a := range attachments {
		prog := d.coll.Programs[a.prog]
		pin := linkPinPath(d.cfg.PinDir, a.prog)
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			info, ierr := l.Info()
			if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == cgroupID {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("bpf: program %s: replace in pinned link %s: %w", a.prog, pin, err)
				}
				d.links = append(d.links, l)
				d.log.Debug("replaced program in pinned link", "program", a.prog)
				continue
			}
			d.log.Info("pinned link is on another cgroup, detaching it", "program", a.prog)
			if err := l.Unpin(); err != nil {
				l.Close()
				return fmt.Errorf("bpf: unpin stale link %s: %w", pin, err)
			}
			l.Close()
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("bpf: load pinned link %s: %w", pin, err)
		}
		l, err = link.AttachCgroup(link.CgroupOptions{Path: d.cfg.CgroupPath, Attach: a.attach, Program: prog})
		if err != nil {
			return fmt.Errorf("bpf: program %s: attach to cgroup %s: %w", a.prog, d.cfg.CgroupPath, err)
		}
		if err := l.Pin(pin); err != nil {
			// Before Linux 5.7 the attachment is no BPF link and cannot be
			// pinned: ErrNotSupported.
			l.Close()
			return fmt.Errorf("bpf: program %s: pin link %s: %w", a.prog, pin, err)
		}
		d.links = append(d.links, l)
	}
	return nil
}

// Close releases the process's handles. Pinned maps and links stay, so the
// kernel keeps balancing with the last programmed state.
func (d *Datapath) Close() error {
	d.stopLoop()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	// Leave no retired sets behind (the next Open would sweep them anyway).
	err := d.reclaimLocked()
	d.closeLocked()
	return err
}

func (d *Datapath) stopLoop() {
	d.stopOnce.Do(func() {
		if d.stopReclaim != nil {
			d.stopReclaim()
			<-d.reclaimDone
		}
	})
}

func (d *Datapath) closeLocked() {
	if d.closed {
		return
	}
	d.closed = true
	for _, l := range d.links {
		l.Close()
	}
	d.links = nil
	if d.pol != nil {
		for _, l := range d.pol.ingress {
			l.Close()
		}
	}
	d.table.close()
	d.coll.Close()
	if d.syncOuter != nil {
		d.syncOuter.Close()
		d.syncInner.Close()
	}
	d.metrics.unregister()
}

// Remove detaches the programs, unpins maps and links and closes the
// datapath: balancing stops and the programmed state is gone.
func (d *Datapath) Remove() error {
	d.stopLoop()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	var errs []error
	for _, l := range d.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
	}
	for ifindex, l := range d.pol.ingress {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("ingress link of interface %d: %w", ifindex, err))
		}
	}
	for name, m := range d.coll.Maps {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("map %s: %w", name, err))
		}
	}
	d.closeLocked()
	// Only removes the directory if nothing else was put there.
	_ = os.Remove(d.cfg.PinDir)
	return errors.Join(errs...)
}

// Frontends lists the programmed frontends. After a restart the agent
// re-upserts what it wants and deletes the rest of this list.
func (d *Datapath) Frontends() []loadbalancer.Frontend {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]loadbalancer.Frontend, 0, len(d.svcs))
	for k := range d.svcs {
		out = append(out, k.frontend())
	}
	return out
}

// validate checks what the maps can hold and returns the service's key.
func validate(svc loadbalancer.Service) (svcKey, error) {
	fe := svc.Frontend
	bad := func(format string, args ...any) (svcKey, error) {
		return svcKey{}, fmt.Errorf("service %s (%s): %s: %w", fe, svc.Name, fmt.Sprintf(format, args...), ErrInvalidService)
	}
	if !fe.Addr.Addr().IsValid() || fe.Addr.Port() == 0 {
		return bad("frontend needs an address and a port")
	}
	if fe.Protocol != loadbalancer.TCP && fe.Protocol != loadbalancer.UDP {
		return bad("protocol %s not supported", fe.Protocol)
	}
	if len(svc.Preferred) > math.MaxUint16 || len(svc.Fallback) > math.MaxUint16 {
		return bad("%d preferred and %d fallback backends, at most %d each", len(svc.Preferred), len(svc.Fallback), math.MaxUint16)
	}
	v4 := fe.Addr.Addr().Unmap().Is4()
	for _, set := range [][]loadbalancer.Backend{svc.Preferred, svc.Fallback} {
		for _, b := range set {
			if !b.Addr.Addr().IsValid() || b.Addr.Port() == 0 {
				return bad("backend %s needs an address and a port", b.Addr)
			}
			if b.Addr.Addr().Unmap().Is4() != v4 {
				return bad("backend %s is not of the frontend's address family", b.Addr)
			}
			if len(b.Node.Name) >= nodeNameLen {
				return bad("backend %s: node name longer than %d bytes", b.Addr, nodeNameLen-1)
			}
		}
	}
	return frontendKey(fe), nil
}

// UpsertService programs svc. Order of writes: nodes and backends, then the
// slots of a fresh slot set past its head, then the service entry (set,
// head and counts in one update); the old set is retired and freed, with the backends only it used,
// after a grace period (see reclaim.go). A reader therefore sees the old set
// or the new one, each complete.
func (d *Datapath) UpsertService(ctx context.Context, svc loadbalancer.Service) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := validate(svc)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	return d.upsertLocked(key, svc)
}

// upsertLocked programs one validated service; d.mu is held. In a bulk
// load (d.batch set) its map writes are queued and written by flushBatch.
func (d *Datapath) upsertLocked(key svcKey, svc loadbalancer.Service) error {
	fe := svc.Frontend
	if b := d.batch; b != nil {
		// A load that failed writes nothing more (see startFlusher).
		if err := b.failure(); err != nil {
			return fmt.Errorf("service %s: %w", fe, err)
		}
	}
	old := d.svcs[key]
	// d.all is scratch space reused by every upsert (d.mu is held).
	all := append(append(d.all[:0], svc.Preferred...), svc.Fallback...)
	d.all = all

	affSecs := affinitySeconds(svc.AffinityTimeout)
	var flags uint16
	if affSecs > 0 {
		flags |= svcFlagAffinity
	}
	// Re-upserting what is programmed (the agent's resync after a restart)
	// writes nothing.
	if old != nil && d.unchanged(old, svc, all) && old.value.Flags == flags && d.affinity[key] == affSecs {
		return nil
	}

	// Check room before touching anything, so a full map loses nothing.
	// Retired sets hold slots and backends; if room is short, free them
	// now (one grace period) before giving up.
	mapName, err := d.room(old, all)
	if err != nil && len(d.retired) > 0 {
		if rerr := d.reclaimNow(); rerr != nil {
			return fmt.Errorf("service %s: %w", fe, rerr)
		}
		mapName, err = d.room(old, all)
	}
	if err != nil {
		return d.full(mapName, fmt.Errorf("service %s (%s): %w", fe, svc.Name, err))
	}

	// 1. Nodes and backends. Each slot takes a reference, released on error.
	// ids is scratch space too: the state keeps a copy (see keepSlots).
	ids := d.ids[:0]
	undo := func() {
		for _, id := range ids {
			d.unrefBackend(id)
		}
	}
	for _, b := range all {
		be, err := d.refBackend(b)
		if err != nil {
			undo()
			return fmt.Errorf("service %s: %w", fe, err)
		}
		ids = append(ids, be.id)
	}
	d.ids = ids

	// 2. A fresh slot set, invisible until the entry points at it.
	set, ok := d.setIDs.alloc()
	if !ok {
		undo()
		return d.full(mapSlots, fmt.Errorf("service %s: no free slot set ID", fe))
	}
	undoSlots := func(groups int) {
		for g := 1; g < groups; g++ {
			_ = remove(d.slots, &slotKey{Set: set, Group: uint32(g)})
		}
		d.setIDs.release(set)
		undo()
	}
	groups := slotGroups(len(ids))
	for g := 1; g < groups; g++ {
		var v slotValue
		copy(v[:], ids[g*slotGroup:])
		if err := d.writeSlots(slotKey{Set: set, Group: uint32(g)}, &v); err != nil {
			undoSlots(g)
			return d.mapErr(mapSlots, fmt.Sprintf("service %s: write slots from %d", fe, g*slotGroup), err)
		}
	}

	// 3. The service entry: set and counts switch in one update.
	var rev uint32
	if old != nil {
		rev = old.value.Rev + 1
	}
	val := svcValue{Set: set, Preferred: uint16(len(svc.Preferred)), Fallback: uint16(len(svc.Fallback)), Flags: flags, Rev: rev}
	copy(val.Head[:], ids)
	idx, err := d.reserveEntry(key)
	if err != nil {
		undoSlots(groups)
		if errors.Is(err, errProbeWindowFull) {
			return d.full(mapServices, fmt.Errorf("service %s (%s): %w (%d of %d services programmed)", fe, svc.Name, err, len(d.svcs), d.cfg.MaxServices))
		}
		return fmt.Errorf("service %s: %w", fe, err)
	}
	undoEntry := func() {
		if err := d.table.unreserve(idx); err != nil {
			d.log.Warn("entry reserved for a failed update left taken", "service", fe.String(), "map", mapServices, "error", err)
		}
		undoSlots(groups)
	}
	if err := d.setAffinity(key, affSecs); err != nil {
		undoEntry()
		return err
	}
	if err := d.writeService(svcWrite{idx: idx, replaces: old != nil, key: key, val: val}); err != nil {
		undoEntry()
		return d.mapErr(mapServices, fmt.Sprintf("service %s: write entry", fe), err)
	}
	if affSecs == 0 {
		if err := d.clearAffinity(key); err != nil {
			d.log.Warn("stale affinity timeout left", "service", fe.String(), "error", err)
		}
	}
	d.slotsUsed += len(ids)
	var st *svcState
	if b := d.batch; b != nil {
		st = b.newState()
	} else {
		st = &svcState{}
	}
	*st = svcState{value: val}
	d.keepSlots(st, ids)
	d.svcs[key] = st

	// 4. The old set is unreachable for new readers; free it once the
	// readers already running are done.
	if old != nil {
		d.retire(old)
	}
	if d.batch == nil {
		d.updateGauges()
	}
	return nil
}

// reclaimNow frees, after one grace period, every retired set and dead
// entry, for an update short of room. In a bulk load it first writes what
// the load has queued: queued entries may still point at sets retired
// meanwhile, and their commits kill the entries they replace. If that
// write fails, the load has failed: nothing is freed and no flusher is
// started again, so no later chunk commits past entries never written.
func (d *Datapath) reclaimNow() error {
	if b := d.batch; b != nil {
		if err := b.drain(); err != nil {
			return err
		}
		d.startFlusher(b)
	}
	return d.reclaimLocked()
}

// reserveEntry takes a free entry of key's probe window in cm_services for
// its next value. If the window is full of entries waiting for a grace
// period, it frees them first (one grace period), as room does for slots;
// in a bulk load, after writing the queued entries, which kill the ones
// they replace (a load replacing every service needs room for both).
func (d *Datapath) reserveEntry(key svcKey) (uint32, error) {
	idx, err := d.table.reserve(&key)
	if !errors.Is(err, errProbeWindowFull) {
		return idx, err
	}
	if err := d.reclaimNow(); err != nil {
		return 0, err
	}
	return d.table.reserve(&key)
}

// keepSlots records ids as the slots of st, whose value is set. A set of up
// to slotGroup slots is the head of the value already: the state points
// there instead of holding a copy. A larger one is copied, in a bulk load
// into the load's slab.
func (d *Datapath) keepSlots(st *svcState, ids []uint32) {
	if len(ids) <= slotGroup {
		st.slots = st.value.Head[:len(ids):len(ids)]
		return
	}
	var dst []uint32
	if b := d.batch; b != nil {
		dst = b.slab(len(ids))
	} else {
		dst = make([]uint32, len(ids))
	}
	copy(dst, ids)
	st.slots = dst
}

// room checks that the maps can take svc; it returns the map that is short.
func (d *Datapath) room(old *svcState, all []loadbalancer.Backend) (string, error) {
	if old == nil && len(d.svcs) >= d.cfg.MaxServices {
		return mapServices, fmt.Errorf("%d of %d services programmed", len(d.svcs), d.cfg.MaxServices)
	}
	if d.slotsUsed+len(all) > d.cfg.MaxSlots {
		return mapSlots, fmt.Errorf("%d slots needed, %d of %d used (%d sets waiting to be freed)", len(all), d.slotsUsed, d.cfg.MaxSlots, len(d.retired))
	}
	// Even if every backend and node were new there is room: no need to
	// count them.
	if len(all) <= d.nodeIDs.free() && len(all) <= d.backendIDs.free() {
		return "", nil
	}
	newNodes := map[loadbalancer.NodeRef]bool{}
	newBackends := map[backendKey]bool{}
	for _, b := range all {
		k := backendKey{addr: addrBytes(b.Addr.Addr()), port: portBytes(b.Addr.Port())}
		if n, ok := d.nodesByRef[b.Node]; ok {
			k.node = n.id
			if _, ok := d.backendsByKey[k]; ok {
				continue
			}
		} else {
			newNodes[b.Node] = true
		}
		// For a new node the key's node is 0: an estimate only, the
		// writes still fail cleanly (and roll back) on a full map.
		newBackends[k] = true
	}
	if len(newNodes) > d.nodeIDs.free() {
		return mapNodes, fmt.Errorf("%d new nodes, %d of %d used", len(newNodes), len(d.nodesByID), d.cfg.MaxNodes)
	}
	if len(newBackends) > d.backendIDs.free() {
		return mapBackends, fmt.Errorf("%d new backends, %d of %d used", len(newBackends), len(d.backendsByID), d.cfg.MaxBackends)
	}
	return "", nil
}

// unchanged reports whether old already holds exactly these slots.
func (d *Datapath) unchanged(old *svcState, svc loadbalancer.Service, all []loadbalancer.Backend) bool {
	if int(old.value.Preferred) != len(svc.Preferred) || int(old.value.Fallback) != len(svc.Fallback) || len(old.slots) != len(all) {
		return false
	}
	for i, b := range all {
		n, ok := d.nodeOf(b.Node)
		if !ok {
			return false
		}
		be, ok := d.backendsByID[old.slots[i]]
		if !ok || be.key != (backendKey{addr: addrBytes(b.Addr.Addr()), port: portBytes(b.Addr.Port()), node: n.id}) {
			return false
		}
	}
	return true
}

// DeleteService removes the frontend: the entry at once; its slots, then
// the backends no other service uses, after a grace period. Deleting an
// unknown frontend is not an error.
func (d *Datapath) DeleteService(ctx context.Context, fe loadbalancer.Frontend) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	key := frontendKey(fe)
	old, ok := d.svcs[key]
	if !ok {
		return nil
	}
	if _, err := d.table.remove(&key); err != nil {
		return fmt.Errorf("service %s: delete entry: %w", fe, err)
	}
	delete(d.svcs, key)
	if err := d.clearAffinity(key); err != nil {
		d.log.Warn("stale affinity timeout left", "service", fe.String(), "error", err)
	}
	d.retire(old)
	d.updateGauges()
	return nil
}

// SetNodeHealth sets or clears the down flag of node. The flag lives in
// cm_nodes, which every backend refers to by node ID, so it applies at once
// to every backend on the node, including ones programmed later.
func (d *Datapath) SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	n, ok := d.nodesByRef[node]
	if !ok {
		if healthy {
			return nil // nodes are healthy until said otherwise
		}
		if _, err := d.newNode(node, true); err != nil {
			return err
		}
		d.updateGauges()
		return nil
	}
	if n.down == !healthy {
		return nil
	}
	v, err := newNodeValue(node, !healthy)
	if err != nil {
		return err
	}
	if err := update(d.nodes, &n.id, &v); err != nil {
		return d.mapErr(mapNodes, fmt.Sprintf("node %s: set health", node), err)
	}
	n.down = !healthy
	d.maybeFreeNode(n)
	d.updateGauges()
	return nil
}

func (d *Datapath) newNode(ref loadbalancer.NodeRef, down bool) (*nodeState, error) {
	v, err := newNodeValue(ref, down)
	if err != nil {
		return nil, err
	}
	id, ok := d.nodeIDs.alloc()
	if !ok {
		return nil, d.full(mapNodes, fmt.Errorf("node %s: %d of %d used", ref, len(d.nodesByID), d.cfg.MaxNodes))
	}
	if err := d.writeNode(id, v); err != nil {
		d.nodeIDs.release(id)
		return nil, d.mapErr(mapNodes, fmt.Sprintf("node %s: write", ref), err)
	}
	n := &nodeState{id: id, ref: ref, down: down}
	d.nodesByRef[ref] = n
	d.nodesByID[id] = n
	return n, nil
}

// maybeFreeNode forgets a node no backend is on and that is not down.
func (d *Datapath) maybeFreeNode(n *nodeState) {
	if n.refs > 0 || n.down {
		return
	}
	if err := remove(d.nodes, &n.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		d.log.Warn("delete unused node", "node", n.ref.String(), "error", err)
		return
	}
	delete(d.nodesByRef, n.ref)
	delete(d.nodesByID, n.id)
	for i, r := range d.recentNodes {
		if r == n {
			d.recentNodes[i] = nil
		}
	}
	d.nodeIDs.release(n.id)
}

// nodeOf returns the state of node ref, if known.
func (d *Datapath) nodeOf(ref loadbalancer.NodeRef) (*nodeState, bool) {
	for _, n := range d.recentNodes {
		if n != nil && n.ref == ref {
			return n, true
		}
	}
	n, ok := d.nodesByRef[ref]
	if ok {
		d.rememberNode(n)
	}
	return n, ok
}

// rememberNode puts n in the cache of nodeOf, in place of the oldest.
func (d *Datapath) rememberNode(n *nodeState) {
	d.recentNodes[d.recentNext] = n
	d.recentNext = (d.recentNext + 1) % len(d.recentNodes)
}

// refBackend returns the backend for b, writing it (and its node) to the maps
// first if it is new, and takes one reference on it.
func (d *Datapath) refBackend(b loadbalancer.Backend) (*backendState, error) {
	n, ok := d.nodeOf(b.Node)
	if !ok {
		var err error
		if n, err = d.newNode(b.Node, false); err != nil {
			return nil, err
		}
		d.rememberNode(n)
	}
	k := backendKey{addr: addrBytes(b.Addr.Addr()), port: portBytes(b.Addr.Port()), node: n.id}
	if be, ok := d.backendsByKey[k]; ok {
		be.refs++
		return be, nil
	}
	id, ok := d.backendIDs.alloc()
	if !ok {
		d.maybeFreeNode(n)
		return nil, d.full(mapBackends, fmt.Errorf("backend %s: %d of %d used", b.Addr, len(d.backendsByID), d.cfg.MaxBackends))
	}
	v := backendValue{Addr: k.addr, Port: k.port, Family: afInet6, ClusterID: b.Node.ClusterID, NodeID: n.id}
	if b.Addr.Addr().Unmap().Is4() {
		v.Family = afInet
	}
	if err := d.writeBackend(id, v); err != nil {
		d.backendIDs.release(id)
		d.maybeFreeNode(n)
		return nil, d.mapErr(mapBackends, fmt.Sprintf("backend %s: write", b.Addr), err)
	}
	be := &backendState{id: id, key: k, value: v, refs: 1}
	d.backendsByKey[k] = be
	d.backendsByID[id] = be
	n.refs++
	return be, nil
}

// unrefBackend drops one reference and deletes the backend when none is
// left. Callers have already removed every slot that pointed at it.
func (d *Datapath) unrefBackend(id uint32) {
	be, ok := d.backendsByID[id]
	if !ok {
		return
	}
	be.refs--
	if be.refs > 0 {
		return
	}
	if err := remove(d.backends, &id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		d.log.Warn("delete unused backend", "backend_id", id, "error", err)
		be.refs = 0
		return
	}
	delete(d.backendsByID, id)
	delete(d.backendsByKey, be.key)
	d.backendIDs.release(id)
	if n, ok := d.nodesByID[be.key.node]; ok {
		n.refs--
		d.maybeFreeNode(n)
	}
}

// full counts and wraps an out-of-room error.
func (d *Datapath) full(mapName string, err error) error {
	d.metrics.mapFull(mapName)
	return fmt.Errorf("map %s: %w: %w", mapName, ErrMapFull, err)
}

// mapErr wraps a kernel error of a map write; E2BIG/ENOSPC mean the map is
// full even though the bookkeeping thought otherwise.
func (d *Datapath) mapErr(mapName, what string, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return d.full(mapName, fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: map %s: %w", what, mapName, err)
}

func (d *Datapath) updateGauges() {
	d.metrics.set(len(d.svcs), len(d.backendsByID), len(d.nodesByID), d.slotsUsed)
}
