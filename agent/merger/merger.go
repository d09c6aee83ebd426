package merger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// ErrDatapath wraps every error returned by the datapath during Sync.
var ErrDatapath = errors.New("datapath")

// Name identifies a service across clusters: namespace and name.
type Name struct {
	Namespace string
	Name      string
}

func (n Name) String() string { return n.Namespace + "/" + n.Name }

// Merger holds every cluster's services and slices and the last state pushed
// to the datapath. The zero value is not usable; call New.
type Merger struct {
	local string
	dp    loadbalancer.Datapath
	log   *slog.Logger

	// syncMu serialises Sync so datapath calls of one frontend never race.
	syncMu sync.Mutex

	mu sync.Mutex
	// node and zone are the agent's node and its zone, for services with
	// internalTrafficPolicy Local and trafficDistribution PreferClose.
	node, zone string
	clusterIDs map[string]uint32
	// services: per service, each cluster's service and slices.
	services   map[Name]perCluster
	unhealthy  map[loadbalancer.NodeRef]struct{}
	programmed map[Name]programmedSet
	// byNode indexes programmed services by the nodes of their backends, so
	// a health change recomputes only the services it can affect. It holds
	// one entry per (node, service) pair, i.e. about one per backend: the
	// service is its interned number (ids), 4 bytes rather than a Name, in
	// a sorted slice per node (a map costs several times that per entry,
	// and a few hundred bytes for a node with one service).
	byNode map[loadbalancer.NodeRef][]uint32
	ids    serviceIDs
	// byFrontend names the service of each programmed frontend (flow
	// events name services by frontend).
	byFrontend map[loadbalancer.Frontend]Name
	dirty      map[Name]struct{}
	// cands is computeLocked's scratch list of candidates, reused from one
	// frontend to the next (guarded by mu): a list per frontend was a
	// third of a first Sync's allocations.
	cands []candidate
	// out and backends are computeLocked's scratch for a service's merged
	// frontends and one backend list: what it returns is a copy of its
	// own size, or the programmed value when that is equal, so a resync
	// that changes nothing allocates nothing for its services.
	out      programmedSet
	backends []loadbalancer.Backend
}

// New returns a merger for the cluster named local, programming dp. A nil log
// discards logs.
func New(local string, dp loadbalancer.Datapath, log *slog.Logger) *Merger {
	log = logging.OrDiscard(log)
	return &Merger{
		local:      local,
		dp:         dp,
		log:        log.With("local_cluster", local),
		clusterIDs: map[string]uint32{},
		services:   map[Name]perCluster{},
		unhealthy:  map[loadbalancer.NodeRef]struct{}{},
		programmed: map[Name]programmedSet{},
		byNode:     map[loadbalancer.NodeRef][]uint32{},
		ids:        serviceIDs{byName: map[Name]uint32{}},
		byFrontend: map[loadbalancer.Frontend]Name{},
		dirty:      map[Name]struct{}{},
	}
}

// SetNode tells the merger which node its datapath serves and the node's
// zone: internalTrafficPolicy Local keeps to the node's backends,
// trafficDistribution PreferClose prefers the zone's. Services that depend on
// them are recomputed when they change.
func (m *Merger) SetNode(name, zone string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.node == name && m.zone == zone {
		return
	}
	m.node, m.zone = name, zone
	for n, pc := range m.services {
		for _, cs := range pc {
			if s := cs.svc; s != nil && (s.InternalTrafficLocal || s.PreferClose) {
				m.dirty[n] = struct{}{}
			}
		}
	}
}

// SetCluster records the numeric ID of a cluster, used in the NodeRef of its
// backends. Until it is known, the ID carried by the cluster's services is
// used.
func (m *Merger) SetCluster(name string, id uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.clusterIDs[name] == id {
		return
	}
	m.clusterIDs[name] = id
	m.markClusterLocked(name)
}

// DeleteCluster forgets everything of a cluster: its ID, services and slices.
func (m *Merger) DeleteCluster(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.clusterIDs, name)
	for n, pc := range m.services {
		if i, ok := pc.find(name); ok {
			m.setLocked(n, slices.Delete(pc, i, i+1))
			m.dirty[n] = struct{}{}
		}
	}
}

func (m *Merger) markClusterLocked(cluster string) {
	for n, pc := range m.services {
		if cs := pc.get(cluster); cs != nil && len(cs.slices) > 0 {
			m.dirty[n] = struct{}{}
		}
	}
}

// clusterState is one cluster's part of a service: its service object (nil
// until known) and its slices.
type clusterState struct {
	cluster string
	svc     *api.Service
	slices  sliceSet
}

// perCluster is a service's state in every cluster that has it, sorted by
// cluster name. A service has a state in a handful to a few hundred
// clusters: a sorted slice costs 48 bytes each, where the two maps it
// replaces (services, slices) took about 1.6 KB per service at 10 clusters
// (tens of bytes per endpoint).
type perCluster []clusterState

func (p perCluster) find(cluster string) (int, bool) {
	return slices.BinarySearchFunc(p, cluster, func(cs clusterState, c string) int { return strings.Compare(cs.cluster, c) })
}

// get returns the cluster's state, or nil. The pointer is valid until p
// changes.
func (p perCluster) get(cluster string) *clusterState {
	if i, ok := p.find(cluster); ok {
		return &p[i]
	}
	return nil
}

// svc returns the cluster's service, or nil.
func (p perCluster) svc(cluster string) *api.Service {
	if cs := p.get(cluster); cs != nil {
		return cs.svc
	}
	return nil
}

// with returns p with the cluster's state, added empty if missing, and
// its index.
func (p perCluster) with(cluster string) (perCluster, int) {
	i, ok := p.find(cluster)
	if !ok {
		if len(p) == cap(p) {
			// Grown by an eighth rather than doubled: a service gains
			// clusters one by one and keeps them.
			p = append(make(perCluster, 0, len(p)+1+len(p)/8), p...)
		}
		p = slices.Insert(p, i, clusterState{cluster: cluster})
	}
	return p, i
}

// setLocked stores a service's states, dropping those left with neither a
// service nor a slice, and the service when none is left.
func (m *Merger) setLocked(n Name, p perCluster) {
	p = slices.DeleteFunc(p, func(cs clusterState) bool { return cs.svc == nil && len(cs.slices) == 0 })
	if len(p) == 0 {
		delete(m.services, n)
		return
	}
	m.services[n] = p
}

// UpsertService records a cluster's service. The merger keeps the pointer:
// callers must not modify svc afterwards.
func (m *Merger) UpsertService(svc *api.Service) {
	n := Name{svc.Namespace, svc.Name}
	m.mu.Lock()
	defer m.mu.Unlock()
	p, i := m.services[n].with(svc.Cluster)
	p[i].svc = svc
	m.services[n] = p
	m.dirty[n] = struct{}{}
}

// DeleteService forgets a cluster's service.
func (m *Merger) DeleteService(cluster, namespace, name string) {
	n := Name{namespace, name}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.services[n]
	cs := p.get(cluster)
	if cs == nil || cs.svc == nil {
		return
	}
	cs.svc = nil
	m.setLocked(n, p)
	m.dirty[n] = struct{}{}
}

// UpsertEndpointSlice records a cluster's endpoint slice. The merger keeps
// the pointer: callers must not modify es afterwards.
func (m *Merger) UpsertEndpointSlice(es *api.EndpointSlice) {
	n := Name{es.Namespace, es.Service}
	m.mu.Lock()
	defer m.mu.Unlock()
	p, i := m.services[n].with(es.Cluster)
	p[i].slices = p[i].slices.upsert(es)
	m.services[n] = p
	m.dirty[n] = struct{}{}
}

// sliceSet is a cluster's slices of one service, sorted by name. A service
// has one slice per 100 endpoints or so in each cluster: a sorted slice of
// pointers costs 8 bytes each where a map costs a few hundred bytes even
// for one entry (one per service and cluster: tens of bytes per endpoint).
type sliceSet []*api.EndpointSlice

func (s sliceSet) find(name string) (int, bool) {
	return slices.BinarySearchFunc(s, name, func(es *api.EndpointSlice, name string) int { return strings.Compare(es.Name, name) })
}

// upsert returns the set with es in place of its namesake, or added.
func (s sliceSet) upsert(es *api.EndpointSlice) sliceSet {
	i, ok := s.find(es.Name)
	if ok {
		s[i] = es
		return s
	}
	return slices.Insert(s, i, es)
}

// delete returns the set without the slice named name, and whether it was
// there.
func (s sliceSet) delete(name string) (sliceSet, bool) {
	i, ok := s.find(name)
	if !ok {
		return s, false
	}
	return slices.Delete(s, i, i+1), true
}

// DeleteEndpointSlice forgets one slice of a cluster's service.
func (m *Merger) DeleteEndpointSlice(cluster, namespace, service, slice string) {
	n := Name{namespace, service}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.services[n]
	cs := p.get(cluster)
	if cs == nil {
		return
	}
	bySlice, ok := cs.slices.delete(slice)
	if !ok {
		return
	}
	cs.slices = bySlice
	m.setLocked(n, p)
	m.dirty[n] = struct{}{}
}

// SetNodeHealth passes a node's health to the datapath at once (so the
// kernel skips its backends without waiting for a recompute) and marks the
// services with backends on it for recomputation: affinity thresholds count
// only backends on healthy nodes. Call Sync afterwards.
func (m *Merger) SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error {
	m.mu.Lock()
	_, wasUnhealthy := m.unhealthy[node]
	changed := wasUnhealthy == healthy
	if healthy {
		delete(m.unhealthy, node)
	} else {
		m.unhealthy[node] = struct{}{}
	}
	if changed {
		for _, id := range m.byNode[node] {
			m.dirty[m.ids.names[id]] = struct{}{}
		}
	}
	m.mu.Unlock()
	if err := m.dp.SetNodeHealth(ctx, node, healthy); err != nil {
		return fmt.Errorf("%w: node %s: set health %t: %w", ErrDatapath, node, healthy, err)
	}
	return nil
}

// Dirty reports how many services wait for the next Sync.
func (m *Merger) Dirty() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.dirty)
}

// Programmed returns a copy of what was last pushed to the datapath, for
// status output and tests.
func (m *Merger) Programmed() []loadbalancer.Service {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []loadbalancer.Service
	for _, fes := range m.programmed {
		for _, s := range fes {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b loadbalancer.Service) int { return compareFrontend(a.Frontend, b.Frontend) })
	return out
}

// ServiceOf names the service of a programmed frontend.
func (m *Merger) ServiceOf(fe loadbalancer.Frontend) (Name, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.byFrontend[fe]
	return n, ok
}

// Frontends is the number of frontends last pushed to the datapath.
func (m *Merger) Frontends() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, fes := range m.programmed {
		n += len(fes)
	}
	return n
}

// SyncResult counts what one Sync pushed.
type SyncResult struct {
	Services int // services recomputed
	Upserts  int
	Deletes  int
}

// work is one dirty service of a Sync: its desired and programmed
// frontends.
type work struct {
	name    Name
	desired programmedSet
	old     programmedSet
}

// programmedSet is what was pushed for one service's frontends, sorted by
// frontend. A service has a handful of frontends (ports × virtual IPs): a
// slice holds them in their own size where a map would take a group of 8
// entries (over a kilobyte) for each service.
type programmedSet []loadbalancer.Service

func (p programmedSet) get(fe loadbalancer.Frontend) (loadbalancer.Service, bool) {
	if i, ok := slices.BinarySearchFunc(p, fe, func(s loadbalancer.Service, fe loadbalancer.Frontend) int { return compareFrontend(s.Frontend, fe) }); ok {
		return p[i], true
	}
	return loadbalancer.Service{}, false
}

// sortSet sorts p by frontend.
func sortSet(p programmedSet) {
	slices.SortFunc(p, func(a, b loadbalancer.Service) int { return compareFrontend(a.Frontend, b.Frontend) })
}

// equalSet reports whether a and b hold equal services: at once when they
// are the same list (computeLocked returns what is programmed when it
// found the same).
func equalSet(a, b programmedSet) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.EqualFunc(a, b, equalService)
}

// bulkThreshold is how many upserts make a Sync use the datapath's bulk
// path (a start from empty maps, a full resync).
const bulkThreshold = 64

// bulkUpsert programs the changed frontends of todo in one call when the
// datapath has a bulk path and there are many. When it did (used), every
// changed frontend of todo was programmed but those in refused; the rest
// (refused, or all when not used) go one by one. The answer is the bulk
// call's own error map rather than a set of the frontends programmed,
// which cost a map of every frontend (about 10 MB at 100,000).
func (m *Merger) bulkUpsert(ctx context.Context, todo []work) (used bool, refused map[loadbalancer.Frontend]error) {
	bdp, ok := m.dp.(loadbalancer.BulkDatapath)
	if !ok {
		return false, nil
	}
	// Counted first and sized once: growing it by doubling copied and
	// collected about 100 ms worth of services at 100,000, and a resync
	// that changes nothing makes none.
	changed := func(w work, yield func(loadbalancer.Service)) {
		if equalSet(w.desired, w.old) {
			return
		}
		for _, svc := range w.desired {
			if old, ok := w.old.get(svc.Frontend); !ok || !equalService(old, svc) {
				yield(svc)
			}
		}
	}
	n := 0
	for _, w := range todo {
		changed(w, func(loadbalancer.Service) { n++ })
	}
	if n < bulkThreshold {
		return false, nil
	}
	svcs := make([]loadbalancer.Service, 0, n)
	for _, w := range todo {
		changed(w, func(svc loadbalancer.Service) { svcs = append(svcs, svc) })
	}
	errs := bdp.UpsertServices(ctx, svcs)
	programmed := len(svcs)
	if len(errs) > 0 {
		programmed = 0
		for _, s := range svcs {
			if errs[s.Frontend] == nil {
				programmed++
			}
		}
	}
	m.log.Info("bulk programmed", "services", programmed, "refused", len(errs))
	return true, errs
}

// Sync recomputes every dirty service and pushes upserts and deletes of the
// frontends whose merged value changed. Errors of individual frontends are
// joined; those services stay dirty and are retried by the next Sync.
func (m *Merger) Sync(ctx context.Context) (SyncResult, error) {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()

	m.mu.Lock()
	todo := make([]work, 0, len(m.dirty))
	for n := range m.dirty {
		old := m.programmed[n]
		todo = append(todo, work{name: n, desired: m.computeLocked(n, old), old: old})
	}
	clear(m.dirty)
	m.clearScratchLocked()
	m.presizeLocked(todo)
	m.mu.Unlock()

	var res SyncResult
	var errs []error
	bulkUsed, bulkRefused := m.bulkUpsert(ctx, todo)
	for _, w := range todo {
		res.Services++
		if equalSet(w.desired, w.old) {
			continue // nothing to program, nor to record
		}
		// done is what ends up programmed, sorted by frontend. It is
		// built in place of desired, which it never outruns: each
		// desired frontend leaves at most one entry, under the same
		// frontend; those dropped (refused, nothing programmed before)
		// are not in old, so the deletes below, which look up old
		// frontends in desired, find the same in what is left.
		done := w.desired[:0]
		failed := false
		// Upserts first, then deletes: a frontend never disappears before
		// its replacement exists.
		for _, svc := range w.desired {
			fe := svc.Frontend
			if old, ok := w.old.get(fe); ok && equalService(old, svc) {
				done = append(done, old)
				continue
			}
			if bulkUsed && bulkRefused[fe] == nil {
				res.Upserts++
				done = append(done, svc)
				continue
			}
			if err := m.dp.UpsertService(ctx, svc); err != nil {
				errs = append(errs, fmt.Errorf("%w: service %s: upsert frontend %s: %w", ErrDatapath, w.name, fe, err))
				failed = true
				// What peers contribute must never keep local changes
				// from the datapath: program the local backends alone
				// until the merged set goes in (the service stays dirty).
				if local, ok := m.localOnly(w.name, svc); ok {
					if old, ok := w.old.get(fe); ok && equalService(old, local) {
						done = append(done, old) // local alone is already programmed
						continue
					}
					if lerr := m.dp.UpsertService(ctx, local); lerr == nil {
						m.log.Warn("programmed local backends only: the merged set was refused", "service", w.name, "frontend", fe, "error", err)
						res.Upserts++
						done = append(done, local)
						continue
					}
				}
				if old, ok := w.old.get(fe); ok {
					done = append(done, old)
				}
				continue
			}
			res.Upserts++
			done = append(done, svc)
		}
		kept := len(done)
		for _, old := range w.old {
			fe := old.Frontend
			if _, ok := done[:kept].get(fe); ok {
				continue
			}
			if err := m.dp.DeleteService(ctx, fe); err != nil {
				errs = append(errs, fmt.Errorf("%w: service %s: delete frontend %s: %w", ErrDatapath, w.name, fe, err))
				failed = true
				done = append(done, old)
				continue
			}
			res.Deletes++
		}
		if len(done) > kept {
			sortSet(done)
		}
		if len(done) == 0 {
			done = nil
		}
		m.mu.Lock()
		// Nothing changed (a resync): what is programmed, and the
		// indexes built from it, stay as they are.
		if !equalSet(done, w.old) {
			m.setProgrammedLocked(w.name, w.old, done)
		}
		if failed {
			m.dirty[w.name] = struct{}{}
		}
		m.mu.Unlock()
	}
	return res, errors.Join(errs...)
}

// presizeLocked makes the indexes that are empty, as at a start, with
// room for what todo may program: grown entry by entry to 100,000
// services, they rehashed their way there and cost a fifth of the Sync.
func (m *Merger) presizeLocked(todo []work) {
	if len(todo) < bulkThreshold {
		return
	}
	if len(m.programmed) == 0 {
		m.programmed = make(map[Name]programmedSet, len(todo))
	}
	if len(m.ids.byName) == 0 {
		m.ids.byName = make(map[Name]uint32, len(todo))
		m.ids.names = make([]Name, 0, len(todo))
		m.ids.free = nil
	}
	if len(m.byFrontend) == 0 {
		n := 0
		for _, w := range todo {
			n += len(w.desired)
		}
		m.byFrontend = make(map[loadbalancer.Frontend]Name, n)
	}
}

func (m *Merger) setProgrammedLocked(n Name, old, now programmedSet) {
	for _, s := range old {
		delete(m.byFrontend, s.Frontend)
	}
	for _, s := range now {
		m.byFrontend[s.Frontend] = n
	}
	id, known := m.ids.byName[n]
	if known {
		for _, s := range old {
			m.indexNodesLocked(s, id, false)
		}
	}
	if len(now) == 0 {
		delete(m.programmed, n)
		if known {
			m.ids.release(n)
		}
		return
	}
	m.programmed[n] = now
	id = m.ids.get(n)
	for _, s := range now {
		m.indexNodesLocked(s, id, true)
	}
}

// serviceIDs interns the names of programmed services as small numbers
// for the byNode index; a number is reused once its service is gone.
type serviceIDs struct {
	byName map[Name]uint32
	names  []Name
	free   []uint32
}

func (s *serviceIDs) get(n Name) uint32 {
	if id, ok := s.byName[n]; ok {
		return id
	}
	var id uint32
	if k := len(s.free); k > 0 {
		id, s.free = s.free[k-1], s.free[:k-1]
		s.names[id] = n
	} else {
		id = uint32(len(s.names))
		s.names = append(s.names, n)
	}
	s.byName[n] = id
	return id
}

func (s *serviceIDs) release(n Name) {
	id, ok := s.byName[n]
	if !ok {
		return
	}
	delete(s.byName, n)
	s.names[id] = Name{}
	s.free = append(s.free, id)
}

// indexNodesLocked adds (or removes) service id under the nodes of the
// backends of s in byNode. It ranges over the backends in place: a list of
// their nodes built for every service was a tenth of a first Sync's
// allocations.
func (m *Merger) indexNodesLocked(s loadbalancer.Service, id uint32, add bool) {
	for _, bs := range [2][]loadbalancer.Backend{s.Preferred, s.Fallback} {
		for _, b := range bs {
			node := b.Node
			if node.Name == "" {
				continue
			}
			set := m.byNode[node]
			i, ok := slices.BinarySearch(set, id)
			switch {
			case add && !ok:
				m.byNode[node] = slices.Insert(set, i, id)
			case !add && ok:
				if set = slices.Delete(set, i, i+1); len(set) == 0 {
					delete(m.byNode, node)
				} else {
					m.byNode[node] = set
				}
			}
		}
	}
}

// candidate is one endpoint × port considered for a frontend.
type candidate struct {
	be      loadbalancer.Backend
	local   bool
	ready   bool
	serving bool
	zone    string
}

// computeLocked returns the desired merged service of every local frontend
// of n, sorted by frontend. old is what is programmed for n: its name
// string is reused.
func (m *Merger) computeLocked(n Name, old programmedSet) programmedSet {
	p := m.services[n]
	localSvc := p.svc(m.local)
	if localSvc == nil || !localSvc.Global {
		return nil
	}
	ips := frontendIPs(localSvc)
	out := m.out[:0]
	name := serviceName(localSvc, old)
	for _, sp := range localSvc.Ports {
		proto, ok := protocolOf(sp.Protocol)
		if !ok {
			m.log.Debug("skipping unsupported protocol", "service", n, "port", sp.Name, "protocol", sp.Protocol)
			continue
		}
		for _, vip := range ips {
			fe := loadbalancer.Frontend{Addr: netip.AddrPortFrom(vip, sp.Port), Protocol: proto}
			m.cands = m.candidatesLocked(m.cands[:0], p, sp, vip.Is4())
			prev, _ := old.get(fe)
			out = append(out, m.choose(localSvc, fe, name, m.cands, prev))
		}
	}
	m.out = out[:0]
	if len(out) == 0 {
		return nil
	}
	// Two ports or addresses may give the same frontend: the last one
	// wins, as it did when this was a map.
	slices.SortStableFunc(out, func(a, b loadbalancer.Service) int { return compareFrontend(a.Frontend, b.Frontend) })
	k := 0
	for i := range out {
		if i+1 < len(out) && out[i+1].Frontend == out[i].Frontend {
			continue
		}
		out[k] = out[i]
		k++
	}
	if out = out[:k]; equalSet(out, old) {
		return old
	}
	return append(make(programmedSet, 0, len(out)), out...)
}

// clearScratchLocked empties computeLocked's scratch lists, so that they
// keep no strings alive between Syncs.
func (m *Merger) clearScratchLocked() {
	clear(m.cands[:cap(m.cands)])
	clear(m.out[:cap(m.out)])
	clear(m.backends[:cap(m.backends)])
}

// serviceName is "namespace/name" of s, the string of old when it is the
// same: one string per service kept across Syncs, not one per frontend
// and Sync.
func serviceName(s *api.Service, old programmedSet) string {
	if len(old) > 0 {
		if o := old[0].Name; len(o) == len(s.Namespace)+1+len(s.Name) &&
			strings.HasPrefix(o, s.Namespace) && o[len(s.Namespace)] == '/' && strings.HasSuffix(o, s.Name) {
			return o
		}
	}
	return s.Namespace + "/" + s.Name
}

// frontendIPs are a local service's virtual IPs: its cluster IPs and, for
// a service imported through the Multi-Cluster Services API, the clusterset
// IPs of its derived Service, balanced over the same backends.
func frontendIPs(s *api.Service) []netip.Addr {
	if len(s.ClusterSetIPs) == 0 {
		return s.ClusterIPs
	}
	out := slices.Clone(s.ClusterIPs)
	for _, a := range s.ClusterSetIPs {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// dedupMap is how many candidates make candidatesLocked find duplicates
// with a map rather than by scanning those already listed.
const dedupMap = 32

// candidatesLocked appends to cands the endpoints of a service's clusters
// (p) for one port and family.
func (m *Merger) candidatesLocked(cands []candidate, p perCluster, sp api.ServicePort, v4 bool) []candidate {
	// Duplicates are found by a scan of cands while they are few: a map
	// per frontend was the largest cost of computing a service of a few
	// backends.
	var seen map[netip.AddrPort]struct{}
	dup := func(ap netip.AddrPort) bool {
		if seen == nil && len(cands) >= dedupMap {
			seen = make(map[netip.AddrPort]struct{}, 2*len(cands))
			for _, c := range cands {
				seen[c.be.Addr] = struct{}{}
			}
		}
		if seen != nil {
			if _, ok := seen[ap]; ok {
				return true
			}
			seen[ap] = struct{}{}
			return false
		}
		for _, c := range cands {
			if c.be.Addr == ap {
				return true
			}
		}
		return false
	}
	// The local cluster goes first so that, should two clusters claim the
	// same address, the local backend wins the dedup; the others follow in
	// name order.
	li, hasLocal := p.find(m.local)
	for k := -1; k < len(p); k++ {
		var cs *clusterState
		switch {
		case k < 0 && hasLocal:
			cs = &p[li]
		case k < 0, hasLocal && k == li:
			continue
		default:
			cs = &p[k]
		}
		c, svc := cs.cluster, cs.svc
		local := c == m.local
		if svc == nil || (!local && (!svc.Global || !svc.Shared)) {
			continue
		}
		id := m.clusterIDs[c]
		if id == 0 {
			id = svc.ClusterID
		}
		for _, es := range cs.slices {
			port, ok := portOf(es, sp)
			if !ok {
				continue
			}
			for _, ep := range es.Endpoints {
				if !ep.Ready && !ep.Serving {
					continue
				}
				addr, ok := addrOf(ep, v4)
				if !ok {
					continue
				}
				ap := netip.AddrPortFrom(addr, port)
				if dup(ap) {
					continue
				}
				cands = append(cands, candidate{
					be:      loadbalancer.Backend{Addr: ap, Node: loadbalancer.NodeRef{ClusterID: id, Name: ep.NodeName}},
					local:   local,
					ready:   ep.Ready,
					serving: ep.Serving || ep.Ready,
					zone:    ep.Zone,
				})
			}
		}
	}
	return cands
}

func (m *Merger) healthy(node loadbalancer.NodeRef) bool {
	_, bad := m.unhealthy[node]
	return !bad
}

// choose applies readiness and affinity to the candidates of one frontend.
// name is svc's "namespace/name"; prev is what is programmed for fe, whose
// backend lists are reused when equal. The backend lists it returns are
// sized to what they hold and share nothing with cands.
func (m *Merger) choose(svc *api.Service, fe loadbalancer.Frontend, name string, cands []candidate, prev loadbalancer.Service) loadbalancer.Service {
	if svc.InternalTrafficLocal {
		// Only the node's own backends, as kube-proxy does: none means
		// no backend, never another node's.
		mine := cands[:0:0]
		for _, c := range cands {
			if c.local && m.node != "" && c.be.Node.Name == m.node {
				mine = append(mine, c)
			}
		}
		cands = mine
	}
	useReady := false
	for _, c := range cands {
		if c.ready && m.healthy(c.be.Node) {
			useReady = true
			break
		}
	}
	usable := func(c candidate) bool { return !(useReady && !c.ready || !useReady && !c.serving) }
	out := loadbalancer.Service{Frontend: fe, Name: name}
	// list returns the usable backends, local ones (where), remote ones,
	// or all, sorted, in a list of their own size.
	list := func(local, remote bool) []loadbalancer.Backend {
		k := 0
		for _, c := range cands {
			if usable(c) && (c.local && local || !c.local && remote) {
				k++
			}
		}
		if k == 0 {
			return nil
		}
		a := m.backends[:0]
		for _, c := range cands {
			if usable(c) && (c.local && local || !c.local && remote) {
				a = append(a, c.be)
			}
		}
		m.backends = a[:0]
		sortBackends(a)
		switch {
		case slices.Equal(a, prev.Preferred):
			return prev.Preferred
		case slices.Equal(a, prev.Fallback):
			return prev.Fallback
		}
		return append(make([]loadbalancer.Backend, 0, k), a...)
	}
	all := func() []loadbalancer.Backend { return list(true, true) }
	switch svc.Affinity {
	case api.AffinityLocal:
		minLocal := int(svc.MinLocalBackends)
		if minLocal == 0 {
			minLocal = 1
		}
		if m.up(cands, usable, true) >= minLocal {
			out.Preferred, out.Fallback = list(true, false), list(false, true)
		} else {
			out.Preferred = all()
		}
	case api.AffinityRemote:
		if m.up(cands, usable, false) >= 1 {
			out.Preferred, out.Fallback = list(false, true), list(true, false)
		} else {
			out.Preferred = all()
		}
	default:
		if svc.PreferClose {
			out.Preferred, out.Fallback = m.closest(cands, useReady)
		} else {
			out.Preferred = all()
		}
	}
	if svc.SessionAffinityTimeout > 0 {
		out.AffinityTimeout = time.Duration(svc.SessionAffinityTimeout) * time.Second
	}
	if len(out.Preferred) == 0 {
		out.Preferred = nil
	}
	if len(out.Fallback) == 0 {
		out.Fallback = nil
	}
	return out
}

// up counts the usable candidates, local or remote ones, on healthy nodes.
func (m *Merger) up(cands []candidate, usable func(candidate) bool, local bool) int {
	k := 0
	for _, c := range cands {
		if c.local == local && usable(c) && m.healthy(c.be.Node) {
			k++
		}
	}
	return k
}

// closest splits usable candidates into tiers by distance from this node:
// the node's zone in its cluster, the rest of its cluster, other clusters.
// The first tier with a healthy backend is preferred and the next non-empty
// one is the fallback the datapath turns to at once when a node dies; the
// merger recomputes on every readiness or health change, so a tier that
// empties hands over to the next.
func (m *Merger) closest(cands []candidate, useReady bool) (preferred, fallback []loadbalancer.Backend) {
	var tiers [3][]loadbalancer.Backend
	var up [3]int
	for _, c := range cands {
		if useReady && !c.ready || !useReady && !c.serving {
			continue
		}
		t := 2
		if c.local {
			t = 1
			if m.zone != "" && c.zone == m.zone {
				t = 0
			}
		}
		tiers[t] = append(tiers[t], c.be)
		if m.healthy(c.be.Node) {
			up[t]++
		}
	}
	first := -1
	for t := range tiers {
		sortBackends(tiers[t])
		if first < 0 && up[t] > 0 {
			first = t
		}
	}
	if first < 0 {
		// Nothing healthy: offer everything, the datapath skips what is
		// down.
		all := append(append(append([]loadbalancer.Backend(nil), tiers[0]...), tiers[1]...), tiers[2]...)
		sortBackends(all)
		return all, nil
	}
	for t := first + 1; t < len(tiers); t++ {
		if len(tiers[t]) > 0 {
			return tiers[first], tiers[t]
		}
	}
	return tiers[first], nil
}

func portOf(es *api.EndpointSlice, sp api.ServicePort) (uint16, bool) {
	for _, p := range es.Ports {
		if p.Name == sp.Name && p.Protocol == sp.Protocol {
			return p.Port, true
		}
	}
	return 0, false
}

// addrOf returns the endpoint's address in the frontend's family. Kubernetes
// slices hold one family; the first matching address is the endpoint's.
func addrOf(ep api.Endpoint, v4 bool) (netip.Addr, bool) {
	for _, a := range ep.Addresses {
		a = a.Unmap()
		if a.Is4() == v4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func protocolOf(p api.Protocol) (loadbalancer.Protocol, bool) {
	switch p {
	case api.ProtocolTCP, "":
		return loadbalancer.TCP, true
	case api.ProtocolUDP:
		return loadbalancer.UDP, true
	}
	return 0, false
}

func sortBackends(b []loadbalancer.Backend) {
	slices.SortFunc(b, func(x, y loadbalancer.Backend) int {
		if c := x.Addr.Compare(y.Addr); c != 0 {
			return c
		}
		return cmp.Compare(x.Node.String(), y.Node.String())
	})
}

func compareFrontend(a, b loadbalancer.Frontend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Protocol, b.Protocol)
}

func equalService(a, b loadbalancer.Service) bool {
	return a.Frontend == b.Frontend && a.Name == b.Name && a.AffinityTimeout == b.AffinityTimeout &&
		slices.Equal(a.Preferred, b.Preferred) && slices.Equal(a.Fallback, b.Fallback)
}

// localOnly is svc with the local cluster's backends alone; ok is false
// when svc has no remote backend (nothing to drop).
func (m *Merger) localOnly(n Name, svc loadbalancer.Service) (loadbalancer.Service, bool) {
	m.mu.Lock()
	localID := m.clusterIDs[m.local]
	if s := m.services[n].svc(m.local); localID == 0 && s != nil {
		localID = s.ClusterID // as candidatesLocked does
	}
	m.mu.Unlock()
	keep := func(bs []loadbalancer.Backend) []loadbalancer.Backend {
		return slices.DeleteFunc(slices.Clone(bs), func(b loadbalancer.Backend) bool { return b.Node.ClusterID != localID })
	}
	out := svc
	out.Preferred, out.Fallback = keep(svc.Preferred), keep(svc.Fallback)
	dropped := len(svc.Preferred)+len(svc.Fallback) != len(out.Preferred)+len(out.Fallback)
	if len(out.Preferred) == 0 {
		out.Preferred, out.Fallback = out.Fallback, nil
	}
	return out, dropped
}
