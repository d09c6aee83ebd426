// Package enforce turns network policies and the identities every cluster
// exports into the node's eBPF policy maps.
//
// Its inputs come from the agent's store connections: every cluster's
// identities and ipcache entries (already checked against what each peer was
// accepted with), and the local cluster's policies (which only the local
// cluster's agents can read). Its output is what package bpf enforces: the
// identity of every known address, the network namespace and host interface
// of every pod on this node, and per local identity the peers and ports it
// may reach or be reached from.
//
// Computation is a pure function (policy.Compute) run for every local
// identity on each change, debounced; programming is a difference against
// what the maps hold, so an unchanged identity costs no map write and a
// changed one only the entries that differ. Until the local cluster's
// policies are synced, the policies adopted from the pinned maps stay in
// force (a restarted agent never opens a window of default-allow).
package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/podnet"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/policy"
)

// Datapath is what the engine programs; *bpf.Datapath implements it.
type Datapath interface {
	SetIPCache(addr netip.Addr, identity uint32) error
	DeleteIPCache(addr netip.Addr) error
	IPCache() map[netip.Addr]uint32
	SetPolicyEndpoint(ep bpf.PolicyEndpoint) error
	DeletePolicyEndpoint(cookie uint64) error
	PolicyEndpoints() []bpf.PolicyEndpoint
	SetIdentityPolicy(identity uint32, p bpf.IdentityPolicy) error
	DeleteIdentityPolicy(identity uint32) error
	IdentityPolicies() map[uint32]bpf.IdentityPolicy
	AttachIngress(ifindex int) error
	DetachIngress(ifindex int) error
	IngressInterfaces() []int
	PolicyStats() (map[string]uint64, error)
}

var _ Datapath = (*bpf.Datapath)(nil)

// Config configures an Engine.
type Config struct {
	// Cluster and Node name the agent's cluster and node: local endpoints
	// are the local cluster's ipcache entries on Node.
	Cluster, Node string
	// AllClusters makes selectors that name no cluster select every
	// cluster's identities (see policy.Options).
	AllClusters bool
	// NetnsDir is where pods' network namespaces are bind-mounted; empty
	// means /var/run/netns.
	NetnsDir string
	// HostAddrs are the node's own addresses, given IdentityHost.
	HostAddrs []netip.Addr
	// Resync is how often everything is recomputed even without a change
	// (pods whose namespace appeared after their address was exported are
	// found this way); zero means 5s.
	Resync time.Duration
	// Debounce groups changes arriving together; zero means 20ms.
	Debounce time.Duration
	Datapath Datapath
	// Registerer receives clustermesh_policy_* metrics; nil: none.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Engine computes and programs the node's policy. Create with New, feed it
// with the Upsert/Delete methods (from any goroutine), run with Run.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	kick    chan struct{}
	metrics *metrics
	// scanner is used by Reconcile only, which is not run concurrently.
	scanner *podnet.Scanner

	mu         sync.Mutex
	identities map[uint32]*api.Identity
	ipcache    map[netip.Addr]*api.IPCacheEntry
	policies   map[string]storedPolicy
	synced     bool
	status     Status
	// netnsPod maps the network namespace cookies found by the last
	// reconcile to their pod's address.
	netnsPod map[uint64]netip.Addr
}

// storedPolicy is one policy object of the local store, parsed (a Cilium
// object may hold several rules).
type storedPolicy struct {
	name   string
	parsed []*policy.Policy
	err    error
}

// New returns an engine; nothing is programmed until Run.
func New(cfg Config) (*Engine, error) {
	if cfg.Datapath == nil {
		return nil, errors.New("enforce: config needs a Datapath")
	}
	if cfg.Cluster == "" || cfg.Node == "" {
		return nil, errors.New("enforce: config needs Cluster and Node")
	}
	if cfg.NetnsDir == "" {
		cfg.NetnsDir = "/var/run/netns"
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 5 * time.Second
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 20 * time.Millisecond
	}
	m, err := newMetrics(cfg.Registerer, cfg.Datapath)
	if err != nil {
		return nil, err
	}
	return &Engine{
		cfg:        cfg,
		log:        logging.OrDiscard(cfg.Logger).With("node", cfg.Node),
		kick:       make(chan struct{}, 1),
		metrics:    m,
		scanner:    podnet.NewScanner(cfg.NetnsDir),
		identities: map[uint32]*api.Identity{},
		ipcache:    map[netip.Addr]*api.IPCacheEntry{},
		policies:   map[string]storedPolicy{},
	}, nil
}

func (e *Engine) poke() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// UpsertIdentity adds or replaces an identity of any cluster.
func (e *Engine) UpsertIdentity(id *api.Identity) {
	e.mu.Lock()
	e.identities[id.ID] = id
	e.mu.Unlock()
	e.poke()
}

// DeleteIdentity forgets an identity of cluster.
func (e *Engine) DeleteIdentity(cluster string, id uint32) {
	e.mu.Lock()
	if cur, ok := e.identities[id]; ok && cur.Cluster == cluster {
		delete(e.identities, id)
	}
	e.mu.Unlock()
	e.poke()
}

// UpsertIPCache adds or replaces the identity of an address.
func (e *Engine) UpsertIPCache(en *api.IPCacheEntry) {
	e.mu.Lock()
	e.ipcache[en.IP.Unmap()] = en
	e.mu.Unlock()
	e.poke()
}

// DeleteIPCache forgets an address of cluster.
func (e *Engine) DeleteIPCache(cluster string, ip netip.Addr) {
	e.mu.Lock()
	if cur, ok := e.ipcache[ip.Unmap()]; ok && cur.Cluster == cluster {
		delete(e.ipcache, ip.Unmap())
	}
	e.mu.Unlock()
	e.poke()
}

// DrainCluster forgets every identity and address of a cluster (it was
// disconnected or refused).
func (e *Engine) DrainCluster(cluster string) {
	e.mu.Lock()
	for id, i := range e.identities {
		if i.Cluster == cluster {
			delete(e.identities, id)
		}
	}
	for ip, en := range e.ipcache {
		if en.Cluster == cluster {
			delete(e.ipcache, ip)
		}
	}
	e.mu.Unlock()
	e.poke()
}

// SetPolicy stores one policy object of the local cluster under its store
// key: its parsed rules, or the error that refused it. A refused update
// keeps the previous rules of that key in force: a policy that fails to
// compile never silently widens or narrows what is enforced.
func (e *Engine) SetPolicy(key, name string, parsed []*policy.Policy, err error) {
	e.mu.Lock()
	prev := e.policies[key]
	sp := storedPolicy{name: name, parsed: parsed, err: err}
	if err != nil {
		sp.parsed = prev.parsed
		e.log.Warn("policy refused, previous version stays in force", "policy", name, "key", key, "error", err)
	}
	e.policies[key] = sp
	e.mu.Unlock()
	e.poke()
}

// DeletePolicy forgets a policy object.
func (e *Engine) DeletePolicy(key string) {
	e.mu.Lock()
	delete(e.policies, key)
	e.mu.Unlock()
	e.poke()
}

// PoliciesSynced says the local store's policies have all been listed:
// from then on the computed policies replace what the maps held.
func (e *Engine) PoliciesSynced() {
	e.mu.Lock()
	e.synced = true
	e.mu.Unlock()
	e.poke()
}

// Run programs the datapath on every change until ctx ends.
func (e *Engine) Run(ctx context.Context) {
	resync := time.NewTicker(e.cfg.Resync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.kick:
			// Let a burst of changes land before computing.
			select {
			case <-ctx.Done():
				return
			case <-time.After(e.cfg.Debounce):
			}
			select {
			case <-e.kick:
			default:
			}
		case <-resync.C:
		}
		e.Reconcile()
	}
}

// snapshot is what one reconcile computes from, copied under the lock.
type snapshot struct {
	identities []*api.Identity
	byID       map[uint32]*api.Identity
	ipcache    map[netip.Addr]uint32
	local      map[netip.Addr]*api.IPCacheEntry
	policies   []*policy.Policy
	refused    map[string]string
	synced     bool
}

func (e *Engine) snapshot() snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := snapshot{
		byID:    make(map[uint32]*api.Identity, len(e.identities)),
		ipcache: make(map[netip.Addr]uint32, len(e.ipcache)+len(e.cfg.HostAddrs)),
		local:   map[netip.Addr]*api.IPCacheEntry{},
		refused: map[string]string{},
		synced:  e.synced,
	}
	for id, i := range e.identities {
		s.identities = append(s.identities, i)
		s.byID[id] = i
	}
	slices.SortFunc(s.identities, func(a, b *api.Identity) int { return int(a.ID) - int(b.ID) })
	for ip, en := range e.ipcache {
		s.ipcache[ip] = en.Identity
		if en.Cluster == e.cfg.Cluster && en.Node == e.cfg.Node {
			s.local[ip] = en
		}
	}
	for _, a := range e.cfg.HostAddrs {
		s.ipcache[a.Unmap()] = bpf.IdentityHost
	}
	keys := make([]string, 0, len(e.policies))
	for k := range e.policies {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		sp := e.policies[k]
		s.policies = append(s.policies, sp.parsed...)
		if sp.err != nil {
			s.refused[sp.name] = sp.err.Error()
		}
	}
	return s
}

// Reconcile computes and programs everything once; Run calls it on every
// change, and it must not be called concurrently. Errors are logged, counted and reported in Status; the next
// change or resync retries.
func (e *Engine) Reconcile() {
	start := time.Now()
	s := e.snapshot()
	var errs []error
	errs = append(errs, e.programIPCache(s)...)
	endpoints, epErrs := e.programEndpoints(s)
	errs = append(errs, epErrs...)
	st := Status{Synced: s.synced, Refused: s.refused, Endpoints: endpoints}
	if s.synced {
		ids, perr := e.programPolicies(s, &st)
		errs = append(errs, perr...)
		st.Identities = ids
	}
	for _, err := range errs {
		st.Errors = append(st.Errors, err.Error())
	}
	if len(errs) > 0 {
		e.log.Warn("policy programming incomplete, retrying on the next change", "errors", len(errs), "error", errs[0])
	}
	e.metrics.observe(&st, time.Since(start))
	pods := make(map[uint64]netip.Addr, len(endpoints))
	for _, ep := range endpoints {
		if ep.NetnsCookie != 0 {
			pods[ep.NetnsCookie] = ep.IP
		}
	}
	e.mu.Lock()
	e.status = st
	e.netnsPod = pods
	e.mu.Unlock()
}

// Identity returns an identity of any cluster, as last received.
func (e *Engine) Identity(id uint32) (*api.Identity, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.identities[id]
	return i, ok
}

// PodOf returns the ipcache entry (cluster, node, namespace, pod) of an
// address of any cluster.
func (e *Engine) PodOf(ip netip.Addr) (*api.IPCacheEntry, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	en, ok := e.ipcache[ip.Unmap()]
	return en, ok
}

// PodOfNetns returns the local pod of a network namespace cookie, as the
// last reconcile found it.
func (e *Engine) PodOfNetns(cookie uint64) (*api.IPCacheEntry, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ip, ok := e.netnsPod[cookie]
	if !ok {
		return nil, false
	}
	en, ok := e.ipcache[ip]
	return en, ok
}

// programIPCache makes the datapath's address map equal to every cluster's
// ipcache plus the node's addresses.
func (e *Engine) programIPCache(s snapshot) []error {
	var errs []error
	have := e.cfg.Datapath.IPCache()
	for ip, id := range s.ipcache {
		if cur, ok := have[ip]; ok && cur == id {
			continue
		}
		if err := e.cfg.Datapath.SetIPCache(ip, id); err != nil {
			errs = append(errs, err)
		}
	}
	for ip := range have {
		if _, ok := s.ipcache[ip]; !ok {
			if err := e.cfg.Datapath.DeleteIPCache(ip); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// programEndpoints maps the network namespace and host interface of every
// local pod, and unmaps those of pods gone.
func (e *Engine) programEndpoints(s snapshot) ([]EndpointStatus, []error) {
	var errs []error
	nss, err := e.scanner.Scan(func(a netip.Addr) bool { _, ok := s.local[a]; return ok })
	if err != nil {
		errs = append(errs, err)
	}
	want := map[uint64]bpf.PolicyEndpoint{}
	found := map[netip.Addr]uint64{}
	for _, ns := range nss {
		var ep bpf.PolicyEndpoint
		for _, a := range ns.Addrs {
			en, ok := s.local[a]
			if !ok {
				continue
			}
			if ep.Identity != 0 && ep.Identity != en.Identity {
				errs = append(errs, fmt.Errorf("netns %s: addresses of two identities (%d, %d)", ns.Path, ep.Identity, en.Identity))
				ep = bpf.PolicyEndpoint{}
				break
			}
			ep.Identity, ep.NetnsCookie = en.Identity, ns.Cookie
			if a.Is4() {
				ep.IPv4 = a
			} else {
				ep.IPv6 = a
			}
			found[a] = ns.Cookie
		}
		if ep.NetnsCookie != 0 {
			want[ep.NetnsCookie] = ep
		}
	}
	for _, ep := range want {
		if err := e.cfg.Datapath.SetPolicyEndpoint(ep); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ep := range e.cfg.Datapath.PolicyEndpoints() {
		if _, ok := want[ep.NetnsCookie]; !ok {
			if err := e.cfg.Datapath.DeletePolicyEndpoint(ep.NetnsCookie); err != nil {
				errs = append(errs, err)
			}
		}
	}

	ifaces := map[int]bool{}
	var out []EndpointStatus
	for a, en := range s.local {
		es := EndpointStatus{IP: a, Namespace: en.Namespace, Pod: en.Pod, Identity: en.Identity, NetnsCookie: found[a]}
		if ifindex, err := podnet.HostInterface(a); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s (%s): %w", en.Namespace, en.Pod, a, err))
		} else if err := e.cfg.Datapath.AttachIngress(ifindex); err != nil {
			errs = append(errs, fmt.Errorf("pod %s/%s (%s): %w", en.Namespace, en.Pod, a, err))
		} else {
			ifaces[ifindex] = true
			es.Ifindex = ifindex
		}
		out = append(out, es)
	}
	for _, i := range e.cfg.Datapath.IngressInterfaces() {
		if !ifaces[i] {
			if err := e.cfg.Datapath.DetachIngress(i); err != nil {
				errs = append(errs, err)
			}
		}
	}
	slices.SortFunc(out, func(a, b EndpointStatus) int { return a.IP.Compare(b.IP) })
	return out, errs
}

// programPolicies computes the policy of every local identity and writes
// the differences.
func (e *Engine) programPolicies(s snapshot, st *Status) ([]IdentityStatus, []error) {
	var errs []error
	opts := policy.Options{LocalCluster: e.cfg.Cluster, AllClusters: e.cfg.AllClusters}
	local := map[uint32]bool{}
	for _, en := range s.local {
		local[en.Identity] = true
	}
	var out []IdentityStatus
	programmed := e.cfg.Datapath.IdentityPolicies()
	comp := policy.NewComputer(s.identities, opts)
	for id := range local {
		ident, ok := s.byID[id]
		if !ok {
			errs = append(errs, fmt.Errorf("identity %d of a local pod: not in the store yet", id))
			continue
		}
		ep := comp.Compute(ident, s.policies)
		compiled, warnings := Compile(ep, s.ipcache)
		is := IdentityStatus{Identity: id, Namespace: ident.Namespace, Labels: ident.Labels, Warnings: warnings,
			Ingress: describe(ep.Ingress, s.byID), Egress: describe(ep.Egress, s.byID),
			IngressEnforced: compiled.Ingress, EgressEnforced: compiled.Egress, Entries: len(compiled.Entries)}
		out = append(out, is)
		if !compiled.Ingress && !compiled.Egress {
			if _, ok := programmed[id]; ok {
				if err := e.cfg.Datapath.DeleteIdentityPolicy(id); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if err := e.cfg.Datapath.SetIdentityPolicy(id, compiled); err != nil {
			errs = append(errs, fmt.Errorf("identity %d (%s): %w", id, ident.Namespace, err))
		}
	}
	for id := range programmed {
		if !local[id] {
			if err := e.cfg.Datapath.DeleteIdentityPolicy(id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	slices.SortFunc(out, func(a, b IdentityStatus) int { return int(a.Identity) - int(b.Identity) })
	return out, errs
}
