package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/merger"
	"github.com/clustermesh/clustermesh/agent/remote"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/loadbalancer"
)

// ErrConfig is wrapped by errors about the agent's configuration.
var ErrConfig = errors.New("invalid agent configuration")

// NodeObserver learns the nodes of every connected cluster (the local one
// included). Calls are never concurrent and must not block: an observer
// that does slow work queues it. NodeUpserted may repeat for an unchanged
// node; NodeDeleted is also called for every node of a cluster that is
// drained (its connection file removed, or its config refused).
type NodeObserver interface {
	NodeUpserted(n *api.Node)
	NodeDeleted(cluster, name string)
}

// DrainObserver is a NodeObserver told when a whole cluster is drained
// (disconnected, or its config refused), before the NodeDeleted calls for its
// nodes: routes may then outlive the nodes for a while, since the peer may
// still send traffic whose replies need them (AddNodeObserver detects it).
type DrainObserver interface {
	NodeObserver
	ClusterDrained(cluster string)
}

// ClusterObserver is a NodeObserver that also learns every accepted cluster
// config, again whenever it changes (the BGP speaker follows its cluster's
// route reflector this way). AddNodeObserver detects it; calls share the
// node calls' rules.
type ClusterObserver interface {
	NodeObserver
	ClusterAccepted(c *api.Cluster)
}

// ObjectObserver learns what policy enforcement needs: the identities and
// ipcache entries of every connected cluster (already checked against what
// each peer was accepted with) and the local cluster's policies. Calls may
// come from several clusters' goroutines at once and must not block.
type ObjectObserver interface {
	// ObjectUpserted delivers an *api.Identity, *api.IPCacheEntry or
	// *api.Policy.
	ObjectUpserted(cluster string, obj api.Object)
	// ObjectDeleted reports that the object at key is gone.
	ObjectDeleted(cluster string, key api.ParsedKey)
	// ObjectsSynced reports that a cluster's objects of kind were all
	// delivered.
	ObjectsSynced(cluster string, kind api.Kind)
	// ClusterDrained asks to forget everything of the cluster.
	ClusterDrained(cluster string)
}

// Config configures an Agent.
type Config struct {
	// ClusterName is the agent's own cluster; its connection file must be in
	// ClustersDir like every peer's.
	ClusterName string
	// ProtectedCIDRs are local ranges no peer may claim an address or
	// prefix in (the service range, the node network); the local cluster's
	// pod CIDRs are protected without being listed. See package admit.
	ProtectedCIDRs []netip.Prefix
	// PeerLimits bound what each peer's store can make the agent hold; the
	// zero value means remote.DefaultLimits.
	PeerLimits remote.Limits
	// NodeName is the node the agent runs on.
	NodeName string
	// ClustersDir holds one connection file per cluster, named for the
	// cluster; names containing a '.' (certificates, keys) are not
	// connection files.
	ClustersDir string
	// PeersViaLocalStore follows every peer through the local cluster's
	// store, where the cluster's mesh cache (package meshcache) keeps a
	// checked copy of each peer's exports: the local connection file's
	// endpoint and credentials are used for every cluster, each peer's file
	// still pins the cluster ID. Peers' stores then serve one client per
	// cluster instead of one per node.
	PeersViaLocalStore bool
	// ObjectObservers receive identities, ipcache entries and the local
	// cluster's policies (the policy engine).
	ObjectObservers []ObjectObserver
	// Datapath receives the merged services. Required.
	Datapath loadbalancer.Datapath
	// DatapathName is reported in status ("bpf", "none").
	DatapathName string
	// Registerer receives the agent's metrics; nil means none are exported.
	Registerer prometheus.Registerer
	// Logger; nil discards logs.
	Logger *slog.Logger
	// DirPollInterval is how often ClustersDir is scanned; zero means 1s.
	DirPollInterval time.Duration
	// ProbeInterval is how often each store's reachability is checked; zero
	// means 2s.
	ProbeInterval time.Duration
	// MaxRetryInterval caps the backoff between connection attempts to a
	// store (also for refused clusters); zero means 10s.
	MaxRetryInterval time.Duration
	// StatusInterval is how often the agent publishes its status into its
	// cluster's store; zero means 10s. The value lives on a lease of three
	// intervals.
	StatusInterval time.Duration
	// InitialSyncTimeout bounds how long the first datapath sync waits for
	// every cluster's initial sync, so a restarted agent does not program a
	// partial view over the state it adopted; zero means 30s.
	InitialSyncTimeout time.Duration
}

// Agent follows every cluster of its config directory and keeps the
// datapath programmed with the merged global services. Create with New,
// start with Run.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	merger   *merger.Merger
	registry *remote.Registry
	// shared connects clusters followed through one store (the local one,
	// with PeersViaLocalStore) over one client.
	shared   *kvstore.Shared
	metrics  *metrics
	rmetrics *remote.Metrics

	kick chan struct{}
	// warnedNoLocal is owned by the Run goroutine (scanDir).
	warnedNoLocal bool

	mu sync.Mutex
	// pendingSince is when the oldest event not yet pushed to the datapath
	// arrived; zero when none is pending.
	pendingSince time.Time
	clusters     map[string]*clusterRun
	clusterIDs   map[string]uint32
	nodes        map[string]map[string]*api.Node
	localClient  *kvstore.Client
	started      time.Time
	initialDone  bool
	synced       chan struct{}

	obsMu     sync.Mutex
	observers []NodeObserver

	repMu     sync.Mutex
	reporters []StatusReporter
}

// StatusReporter fills the section of an optional subsystem (BGP, health)
// in the agent's status. It is called on every Status call, from any
// goroutine, and must return quickly.
type StatusReporter func(*status.Agent)

// AddStatusReporter adds a section to the agent's status: the local
// endpoint's and the one published into the store (in its compact form).
func (a *Agent) AddStatusReporter(r StatusReporter) {
	a.repMu.Lock()
	defer a.repMu.Unlock()
	a.reporters = append(a.reporters, r)
}

type clusterRun struct {
	c      *remote.Cluster
	digest string
	cancel context.CancelFunc
	done   chan struct{}
}

// New checks the config and returns an agent; nothing runs until Run.
func New(cfg Config) (*Agent, error) {
	if err := api.ValidateClusterName(cfg.ClusterName); err != nil {
		return nil, fmt.Errorf("%w: --cluster-name: %w", ErrConfig, err)
	}
	if cfg.NodeName == "" {
		return nil, fmt.Errorf("%w: node name is required", ErrConfig)
	}
	if cfg.ClustersDir == "" {
		return nil, fmt.Errorf("%w: clusters directory is required", ErrConfig)
	}
	if cfg.Datapath == nil {
		return nil, fmt.Errorf("%w: a datapath is required", ErrConfig)
	}
	if cfg.DatapathName == "" {
		cfg.DatapathName = "custom"
	}
	cfg.Logger = logging.OrDiscard(cfg.Logger)
	if cfg.DirPollInterval <= 0 {
		cfg.DirPollInterval = time.Second
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 2 * time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.InitialSyncTimeout <= 0 {
		cfg.InitialSyncTimeout = 30 * time.Second
	}
	log := cfg.Logger.With("local_cluster", cfg.ClusterName, "node", cfg.NodeName)
	a := &Agent{
		cfg:        cfg,
		log:        log,
		merger:     merger.New(cfg.ClusterName, cfg.Datapath, log),
		registry:   remote.NewRegistry(),
		shared:     kvstore.NewShared(),
		kick:       make(chan struct{}, 1),
		clusters:   map[string]*clusterRun{},
		clusterIDs: map[string]uint32{},
		nodes:      map[string]map[string]*api.Node{},
		synced:     make(chan struct{}),
	}
	if cfg.Registerer != nil {
		m, err := newMetrics(cfg.Registerer, a)
		if err != nil {
			return nil, fmt.Errorf("agent metrics: %w", err)
		}
		a.metrics = m
		rm, err := remote.NewMetrics(cfg.Registerer)
		if err != nil {
			return nil, fmt.Errorf("agent metrics: %w", err)
		}
		a.rmetrics = rm
	}
	// Until the node's object arrives (with its zone), the node name alone
	// serves internalTrafficPolicy Local.
	a.merger.SetNode(cfg.NodeName, "")
	return a, nil
}

// AddNodeObserver registers an observer of every cluster's nodes (and
// configs, for a ClusterObserver). It may be called at any time: the
// clusters and nodes already known are replayed to it first.
func (a *Agent) AddNodeObserver(o NodeObserver) {
	a.obsMu.Lock()
	defer a.obsMu.Unlock()
	if co, ok := o.(ClusterObserver); ok {
		a.mu.Lock()
		names := slices.Sorted(maps.Keys(a.clusterIDs))
		a.mu.Unlock()
		for _, name := range names {
			if c, ok := a.registry.Lookup(name); ok {
				co.ClusterAccepted(c)
			}
		}
	}
	for _, n := range a.Nodes() {
		o.NodeUpserted(n)
	}
	a.observers = append(a.observers, o)
}

// InitialSync is closed once the own cluster and every cluster that is not
// refused completed its initial sync and the datapath was programmed with
// the result (stale adopted frontends pruned).
func (a *Agent) InitialSync() <-chan struct{} { return a.synced }

// LocalCluster waits until the agent's own cluster config has been read and
// accepted, and returns it.
func (a *Agent) LocalCluster(ctx context.Context) (*api.Cluster, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if c, ok := a.registry.Lookup(a.cfg.ClusterName); ok {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster %s: waiting for the local cluster config: %w", a.cfg.ClusterName, ctx.Err())
		case <-t.C:
		}
	}
}

// Clusters returns the configs the connected clusters (this one included)
// were accepted with, sorted by name: what filters of peer input, such as
// the BGP import policy, check against.
func (a *Agent) Clusters() []api.Cluster { return a.registry.Accepted() }

// Run follows the clusters of the config directory and keeps the datapath
// programmed until ctx is cancelled. The datapath keeps its last state when
// Run returns.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	a.started = time.Now()
	a.mu.Unlock()
	// Cluster connections and the status publisher stop in order when ctx
	// ends: the publisher first, so it can still revoke its lease through
	// the own cluster's connection.
	clusterCtx, stopClusters := context.WithCancel(context.WithoutCancel(ctx))
	defer stopClusters()
	pubCtx, stopPublish := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPublish()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.syncLoop(ctx) }()
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); a.publishLoop(pubCtx) }()

	a.scanDir(clusterCtx)
	t := time.NewTicker(a.cfg.DirPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			stopPublish()
			<-pubDone
			stopClusters()
			a.mu.Lock()
			runs := make([]*clusterRun, 0, len(a.clusters))
			for _, r := range a.clusters {
				runs = append(runs, r)
			}
			a.mu.Unlock()
			for _, r := range runs {
				<-r.done
			}
			wg.Wait()
			return nil
		case <-t.C:
			a.scanDir(clusterCtx)
		}
	}
}

// SetNodeHealth is the health (gossip) seam: it marks every backend on node
// healthy or not in the datapath at once and recomputes the services whose
// affinity threshold depends on that node.
func (a *Agent) SetNodeHealth(ctx context.Context, node loadbalancer.NodeRef, healthy bool) error {
	err := a.merger.SetNodeHealth(ctx, node, healthy)
	a.markPending()
	return err
}

// NodeRef returns the datapath's name for a node of a connected cluster.
func (a *Agent) NodeRef(cluster, node string) (loadbalancer.NodeRef, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.clusterIDs[cluster]
	return loadbalancer.NodeRef{ClusterID: id, Name: node}, ok
}

// Nodes returns every known node of every connected cluster, sorted by
// cluster and name.
func (a *Agent) Nodes() []*api.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*api.Node
	for _, byName := range a.nodes {
		for _, n := range byName {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(x, y *api.Node) int {
		if c := strings.Compare(x.Cluster, y.Cluster); c != 0 {
			return c
		}
		return strings.Compare(x.Name, y.Name)
	})
	return out
}

// ServiceOf names ("namespace/name") the global service of a frontend the
// agent programmed.
func (a *Agent) ServiceOf(fe loadbalancer.Frontend) (string, bool) {
	n, ok := a.merger.ServiceOf(fe)
	return n.String(), ok
}

// ClusterName names the cluster of a numeric cluster ID ("" if unknown).
func (a *Agent) ClusterName(id uint32) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, cid := range a.clusterIDs {
		if cid == id {
			return name
		}
	}
	return ""
}

// Programmed returns the merged services last pushed to the datapath.
func (a *Agent) Programmed() []loadbalancer.Service { return a.merger.Programmed() }

// Status returns the agent's status.
func (a *Agent) Status() status.Agent {
	a.mu.Lock()
	runs := make([]*clusterRun, 0, len(a.clusters))
	for _, r := range a.clusters {
		runs = append(runs, r)
	}
	a.mu.Unlock()
	st := status.Agent{
		SchemaVersion: status.SchemaVersion,
		Cluster:       a.cfg.ClusterName,
		Node:          a.cfg.NodeName,
		Datapath:      a.cfg.DatapathName,
		Frontends:     a.merger.Frontends(),
		Updated:       time.Now().UTC(),
	}
	for _, r := range runs {
		st.Clusters = append(st.Clusters, r.c.Status())
	}
	slices.SortFunc(st.Clusters, func(x, y status.Cluster) int { return strings.Compare(x.Name, y.Name) })
	a.repMu.Lock()
	reps := slices.Clone(a.reporters)
	a.repMu.Unlock()
	for _, r := range reps {
		r(&st)
	}
	return st
}

// markPending records that the datapath is behind and wakes the sync loop.
func (a *Agent) markPending() {
	a.mu.Lock()
	if a.pendingSince.IsZero() {
		a.pendingSince = time.Now()
	}
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// initialSyncDone reports whether every cluster that can sync has synced,
// or the initial sync timeout passed. Once true it stays true.
func (a *Agent) initialSyncDone() bool {
	if a.allSynced() {
		a.mu.Lock()
		a.initialDone = true
		a.mu.Unlock()
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.initialDone {
		return true
	}
	if time.Since(a.started) >= a.cfg.InitialSyncTimeout {
		a.log.Warn("initial sync timeout: programming the datapath before every cluster synced")
		a.initialDone = true
		return true
	}
	return false
}

// allSynced reports whether the own cluster and every other cluster that
// is not refused have completed their initial sync.
func (a *Agent) allSynced() bool {
	a.mu.Lock()
	runs := make([]*clusterRun, 0, len(a.clusters))
	for _, r := range a.clusters {
		runs = append(runs, r)
	}
	a.mu.Unlock()
	localSynced := false
	for _, r := range runs {
		s := r.c.Status()
		if s.Local {
			localSynced = s.Synced
		}
		switch s.State {
		case status.StateRefused, status.StateInvalidConfig:
			continue
		}
		if !s.Synced {
			return false
		}
	}
	return localSynced
}

func (a *Agent) syncLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	adoptedPruned := false
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-retry.C:
		}
		if !a.initialSyncDone() {
			retry.Reset(100 * time.Millisecond)
			continue
		}
		a.mu.Lock()
		since := a.pendingSince
		a.pendingSince = time.Time{}
		a.mu.Unlock()
		start := time.Now()
		res, err := a.merger.Sync(ctx)
		a.metrics.observeSync(start, since, res, err)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Error("datapath sync failed, retrying", "error", err)
			retry.Reset(time.Second)
			continue
		}
		// Frontends adopted from a previous run are pruned only against a
		// complete view: after an initial sync timeout (a store still
		// unreachable), the adopted state is better than a partial one.
		if !adoptedPruned {
			if a.allSynced() {
				adoptedPruned = true
				a.pruneAdopted(ctx)
				close(a.synced)
			} else {
				retry.Reset(200 * time.Millisecond)
			}
		}
		if res.Upserts+res.Deletes > 0 {
			a.log.Debug("datapath synced", "services", res.Services, "upserts", res.Upserts, "deletes", res.Deletes)
		}
	}
}

// FrontendLister is implemented by datapaths that keep state across agent
// restarts (the eBPF datapath adopts its pinned maps): after the first full
// sync, the agent deletes the listed frontends it no longer wants.
type FrontendLister interface {
	Frontends() []loadbalancer.Frontend
}

func (a *Agent) pruneAdopted(ctx context.Context) {
	l, ok := a.cfg.Datapath.(FrontendLister)
	if !ok {
		return
	}
	want := map[loadbalancer.Frontend]bool{}
	for _, s := range a.merger.Programmed() {
		want[s.Frontend] = true
	}
	for _, fe := range l.Frontends() {
		if want[fe] {
			continue
		}
		if err := a.cfg.Datapath.DeleteService(ctx, fe); err != nil {
			a.log.Error("cannot delete stale frontend adopted from a previous run", "frontend", fe, "error", err)
			continue
		}
		a.log.Info("deleted stale frontend adopted from a previous run", "frontend", fe)
	}
}

func (a *Agent) notifyNodes(f func(NodeObserver)) {
	a.obsMu.Lock()
	defer a.obsMu.Unlock()
	for _, o := range a.observers {
		f(o)
	}
}

// delegate receives the objects of every cluster connection.
type delegate struct{ a *Agent }

var _ remote.Delegate = delegate{}

func (d delegate) ClusterAccepted(cfg *api.Cluster) {
	a := d.a
	a.mu.Lock()
	a.clusterIDs[cfg.Name] = cfg.ID
	a.mu.Unlock()
	a.merger.SetCluster(cfg.Name, cfg.ID)
	a.markPending()
	a.notifyNodes(func(o NodeObserver) {
		if co, ok := o.(ClusterObserver); ok {
			co.ClusterAccepted(cfg)
		}
	})
}

func (d delegate) Upsert(cluster string, obj api.Object) {
	a := d.a
	switch o := obj.(type) {
	case *api.Service:
		a.merger.UpsertService(o)
		a.markPending()
	case *api.EndpointSlice:
		a.merger.UpsertEndpointSlice(o)
		a.markPending()
	case *api.Node:
		if cluster == a.cfg.ClusterName && o.Name == a.cfg.NodeName {
			// The node's zone decides trafficDistribution PreferClose.
			a.merger.SetNode(o.Name, o.Zone)
			a.markPending()
		}
		a.mu.Lock()
		if a.nodes[cluster] == nil {
			a.nodes[cluster] = map[string]*api.Node{}
		}
		a.nodes[cluster][o.Name] = o
		a.mu.Unlock()
		a.notifyNodes(func(obs NodeObserver) { obs.NodeUpserted(o) })
	case *api.Identity, *api.IPCacheEntry, *api.Policy:
		for _, obs := range a.cfg.ObjectObservers {
			obs.ObjectUpserted(cluster, obj)
		}
	}
}

func (d delegate) Synced(cluster string, kind api.Kind) {
	for _, obs := range d.a.cfg.ObjectObservers {
		obs.ObjectsSynced(cluster, kind)
	}
}

func (d delegate) Delete(cluster string, key api.ParsedKey) {
	a := d.a
	// Keys that no constructor writes are ignored: nothing was stored under
	// them (Upsert only takes decoded objects, whose key is checked).
	switch key.Kind {
	case api.KindService:
		if r, err := api.ParseServiceKey(key.Key); err == nil {
			a.merger.DeleteService(cluster, r.Namespace, r.Name)
			a.markPending()
		}
	case api.KindEndpoints:
		if r, err := api.ParseEndpointSliceKey(key.Key); err == nil {
			a.merger.DeleteEndpointSlice(cluster, r.Namespace, r.Service, r.Name)
			a.markPending()
		}
	case api.KindNode:
		r, err := api.ParseNodeKey(key.Key)
		if err != nil {
			return
		}
		a.mu.Lock()
		_, ok := a.nodes[cluster][r.Name]
		delete(a.nodes[cluster], r.Name)
		a.mu.Unlock()
		if ok {
			a.notifyNodes(func(obs NodeObserver) { obs.NodeDeleted(cluster, r.Name) })
		}
	case api.KindIdentity, api.KindIPCache, api.KindPolicy:
		for _, obs := range a.cfg.ObjectObservers {
			obs.ObjectDeleted(cluster, key)
		}
	}
}

func (d delegate) Drain(cluster string) {
	a := d.a
	for _, obs := range a.cfg.ObjectObservers {
		obs.ClusterDrained(cluster)
	}
	a.merger.DeleteCluster(cluster)
	a.mu.Lock()
	delete(a.clusterIDs, cluster)
	nodes := a.nodes[cluster]
	delete(a.nodes, cluster)
	a.mu.Unlock()
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	a.notifyNodes(func(obs NodeObserver) {
		if d, ok := obs.(DrainObserver); ok {
			d.ClusterDrained(cluster)
		}
		for _, n := range names {
			obs.NodeDeleted(cluster, n)
		}
	})
	a.markPending()
	a.log.Info("cluster drained", "cluster", cluster, "nodes", len(names))
}
