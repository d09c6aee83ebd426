package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/agent/admit"
	"github.com/clustermesh/clustermesh/agent/status"
	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
	"github.com/clustermesh/clustermesh/kvstore"
)

// Delegate receives the objects of accepted clusters. Calls for one cluster
// are sequential; calls for different clusters may be concurrent. Methods
// must not block for long: they hold up the cluster's event stream.
type Delegate interface {
	// ClusterAccepted is called once the cluster's config passed validation,
	// before any of its objects, and again when the config changes.
	ClusterAccepted(cfg *api.Cluster)
	// Upsert delivers a new or changed object of the cluster.
	Upsert(cluster string, obj api.Object)
	// Delete reports that the object at key is gone.
	Delete(cluster string, key api.ParsedKey)
	// Synced reports that every object of one kind has been delivered
	// since the connection started (what was not is gone).
	Synced(cluster string, kind api.Kind)
	// Drain asks to forget every object of the cluster: it was removed, or
	// its config stopped passing validation.
	Drain(cluster string)
}

// Kinds are the kinds a Cluster follows.
var Kinds = []api.Kind{api.KindNode, api.KindService, api.KindEndpoints, api.KindIdentity, api.KindIPCache}

// eventBuffer is the capacity of the channel between a cluster's watches
// and its event loop (see runOnce).
const eventBuffer = 128

// Options configure a Cluster.
type Options struct {
	// Name is the cluster's name, the name of its connection file.
	Name string
	// Local marks the agent's own cluster.
	Local bool
	// Config is how to reach the cluster's store.
	Config kvstore.Config
	// ConfigErr, when set, is the error of loading the connection file: the
	// cluster then only reports it (StateInvalidConfig).
	ConfigErr error
	Registry  *Registry
	Delegate  Delegate
	// Metrics may be nil.
	Metrics *Metrics
	// Logger may be nil.
	Logger *slog.Logger
	// ProbeInterval is how often the store's reachability and the cluster
	// config are checked; zero means 2s.
	ProbeInterval time.Duration
	// MaxRetryInterval caps the backoff between connection attempts; zero
	// means 10s.
	MaxRetryInterval time.Duration
	// Policy says what a peer may not claim; nil means the defaults with no
	// protected ranges. The local cluster is not checked.
	Policy *admit.Policy
	// Limits bound what a peer's store can make the agent hold; the zero
	// value means DefaultLimits. The local cluster is not bounded.
	Limits Limits
	// Shared, if set, provides the store client: clusters followed through
	// the same store with the same credentials share one connection (see
	// kvstore.Shared). Nil: a client of the cluster's own.
	Shared *kvstore.Shared
	// OnConnected, if set, is called with the client of each new
	// connection once the cluster is accepted (the agent publishes its
	// status with the local cluster's client). The client is closed when the
	// connection ends.
	OnConnected func(*kvstore.Client)
}

// Cluster is the agent's connection to one cluster. Create with New, run
// with Run; after Run returns, Drain forgets the cluster's state.
type Cluster struct {
	opts Options
	name string
	log  *slog.Logger

	// kinds are the kinds followed: Kinds, and for the local cluster also
	// api.LocalKinds (what its apiserver writes for its own agents only).
	kinds []api.Kind
	// Owned by the Run goroutine.
	known map[api.Kind]map[string]struct{}

	// evicted receives the reason when the local cluster's claim takes
	// this cluster's place in the registry.
	evicted chan error

	// scope is what the cluster was accepted with; nodeAddrs maps each
	// address of its admitted nodes to the node keys that have it (for
	// host-network backends). Owned by the Run goroutine.
	scope     admit.Scope
	nodeAddrs map[netip.Addr]map[string]struct{}
	// ports shares the port lists of the cluster's slices and services
	// (see compact). Owned by the Run goroutine.
	ports portLists

	mu          sync.Mutex
	st          status.Cluster
	acceptedRaw []byte
	accepted    bool
}

// New returns a cluster connection; nothing happens until Run.
func New(opts Options) *Cluster {
	opts.Logger = logging.OrDiscard(opts.Logger)
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 2 * time.Second
	}
	if opts.MaxRetryInterval <= 0 {
		opts.MaxRetryInterval = 10 * time.Second
	}
	c := &Cluster{
		opts:      opts,
		name:      opts.Name,
		log:       opts.Logger.With("cluster", opts.Name),
		known:     map[api.Kind]map[string]struct{}{},
		nodeAddrs: map[netip.Addr]map[string]struct{}{},
		evicted:   make(chan error, 1),
		st: status.Cluster{
			Name: opts.Name, Local: opts.Local, State: status.StateConnecting,
			Since: time.Now(), Objects: map[string]int{},
		},
	}
	c.kinds = Kinds
	if opts.Local {
		c.kinds = append(slices.Clone(Kinds), api.LocalKinds...)
	}
	for _, k := range c.kinds {
		c.known[k] = map[string]struct{}{}
	}
	return c
}

// SetConfig replaces the connection settings; the next Run uses them. It
// must not be called while Run is running. Objects already known are kept
// and reconciled by the next connection's listing.
func (c *Cluster) SetConfig(cfg kvstore.Config, cfgErr error) {
	c.opts.Config = cfg
	c.opts.ConfigErr = cfgErr
	c.setState(status.StateConnecting, nil)
}

// Name is the cluster's name.
func (c *Cluster) Name() string { return c.name }

// Status returns a snapshot of the connection's status.
func (c *Cluster) Status() status.Cluster {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.st
	s.Objects = maps.Clone(c.st.Objects)
	s.SyncedKinds = slices.Clone(c.st.SyncedKinds)
	return s
}

func (c *Cluster) setState(st status.State, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.State != st {
		c.st.State = st
		c.st.Since = time.Now()
	}
	c.st.Connected = st == status.StateConnected
	if err != nil {
		c.recordErrorLocked(err)
	}
	c.opts.Metrics.setState(c.name, st)
}

func (c *Cluster) recordErrorLocked(err error) {
	now := time.Now()
	c.st.LastError = err.Error()
	c.st.LastErrorTime = &now
}

// Run connects and follows the cluster until ctx is cancelled, reconnecting
// with backoff. It keeps the cluster's objects across reconnections.
func (c *Cluster) Run(ctx context.Context) {
	if c.opts.ConfigErr != nil {
		c.setState(status.StateInvalidConfig, c.opts.ConfigErr)
		c.log.Error("invalid connection file", "error", c.opts.ConfigErr)
		<-ctx.Done()
		return
	}
	retry := backoff.New(100*time.Millisecond, c.opts.MaxRetryInterval)
	for {
		connected, err := c.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			retry.Reset()
		}
		delay := retry.Next()
		c.log.Warn("cluster connection ended, retrying", "error", err, "retry_in", delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case reason := <-c.evicted:
			c.refuse(reason)
		case <-timer.C:
		}
		timer.Stop()
	}
}

// Drain forgets the cluster: its claim in the registry and, through the
// delegate, all its objects. Call after Run returned.
func (c *Cluster) Drain() {
	c.opts.Registry.Release(c.name)
	c.opts.Delegate.Drain(c.name)
	for _, k := range c.kinds {
		clear(c.known[k])
	}
	clear(c.nodeAddrs)
	c.ports = portLists{}
	c.mu.Lock()
	c.accepted = false
	clear(c.st.Objects)
	c.mu.Unlock()
	c.opts.Metrics.forget(c.name)
}

// fetchConfig reads and validates the cluster's config.
func (c *Cluster) fetchConfig(ctx context.Context, cli *kvstore.Client) (*api.Cluster, []byte, error) {
	rctx, cancel := context.WithTimeout(ctx, c.opts.ProbeInterval+5*time.Second)
	defer cancel()
	return cli.ClusterConfigPinned(rctx, c.name, c.opts.Config.ClusterID)
}

// awaitConfigFor bounds how long awaitConfig waits on one connection
// before the usual retry takes over.
const awaitConfigFor = time.Minute

// awaitConfig waits for a cluster config the store does not hold yet
// (missing, the error fetchConfig returned), and reads it once it is
// written. A store is empty of it while its cluster is being set up, and
// a mesh cache's copy of a new peer lags the peer's connection file (the
// agent and the cache notice the file at different moments): on a watch
// the agent takes the config as soon as it is written, where the retry's
// backoff, grown meanwhile, could leave it waiting up to
// MaxRetryInterval. The cluster shows refused, with why, while it waits.
func (c *Cluster) awaitConfig(ctx context.Context, cli *kvstore.Client, missing error) (*api.Cluster, []byte, error) {
	c.refuse(missing)
	wctx, cancel := context.WithTimeout(ctx, awaitConfigFor)
	err := cli.AwaitKey(wctx, api.ClusterKey(c.name))
	cancel()
	if err != nil {
		return nil, nil, missing
	}
	c.log.Info("cluster config written")
	return c.fetchConfig(ctx, cli)
}

// refuse marks the cluster refused; if it had been accepted, everything it
// contributed is drained.
func (c *Cluster) refuse(err error) {
	c.mu.Lock()
	wasAccepted := c.accepted
	c.accepted = false
	c.acceptedRaw = nil
	c.mu.Unlock()
	c.setState(status.StateRefused, err)
	c.log.Error("cluster refused", "error", err)
	if wasAccepted {
		c.opts.Registry.Release(c.name)
		c.opts.Delegate.Drain(c.name)
		for _, k := range c.kinds {
			clear(c.known[k])
		}
		clear(c.nodeAddrs)
		c.ports = portLists{}
		c.mu.Lock()
		clear(c.st.Objects)
		c.mu.Unlock()
	}
}

func (c *Cluster) accept(cfg *api.Cluster, raw []byte) error {
	if !c.opts.Local {
		// Overlaps with the local cluster and other peers are the
		// registry's to report; this is the configured local ranges and
		// the breadth bound.
		base := c.opts.Policy
		if base == nil {
			base = &admit.Policy{}
		}
		if err := base.Cluster(cfg); err != nil {
			err = fmt.Errorf("cluster %s: %w: %w", c.name, ErrConflict, err)
			c.refuse(err)
			return err
		}
	}
	c.scope = admit.ScopeOf(cfg)
	if err := c.opts.Registry.Claim(cfg, c.opts.Local, c.evict); err != nil {
		c.refuse(err)
		return err
	}
	c.mu.Lock()
	same := c.accepted && bytes.Equal(c.acceptedRaw, raw)
	c.accepted = true
	c.acceptedRaw = raw
	c.st.ID = cfg.ID
	c.mu.Unlock()
	if !same {
		c.opts.Delegate.ClusterAccepted(cfg)
		c.log.Info("cluster accepted", "id", cfg.ID, "pod_cidrs", cfg.PodCIDRs)
	}
	return nil
}

func (c *Cluster) evict(reason error) {
	select {
	case c.evicted <- reason:
	default:
	}
}

// runOnce is one connection: connect, validate, follow until an error or
// ctx ends. It reports whether the cluster was accepted.
func (c *Cluster) runOnce(ctx context.Context) (bool, error) {
	var (
		cli *kvstore.Client
		err error
	)
	if c.opts.Shared != nil {
		var release func()
		cli, release, err = c.opts.Shared.Get(ctx, c.opts.Config)
		if err == nil {
			defer release()
		}
	} else if cli, err = kvstore.New(ctx, c.opts.Config); err == nil {
		defer cli.Close()
	}
	if err != nil {
		err = fmt.Errorf("cluster %s: connect: %w", c.name, err)
		c.markUnreachable(err)
		return false, err
	}

	cfg, raw, err := c.fetchConfig(ctx, cli)
	if errors.Is(err, kvstore.ErrNoClusterConfig) {
		cfg, raw, err = c.awaitConfig(ctx, cli, err)
	}
	if err != nil {
		if errors.Is(err, kvstore.ErrUnreachable) {
			c.markUnreachable(err)
		} else {
			c.refuse(err)
		}
		return false, err
	}
	if err := c.accept(cfg, raw); err != nil {
		return false, err
	}
	c.setState(status.StateConnected, nil)

	cctx, cancel := context.WithCancel(ctx)
	var (
		wg      sync.WaitGroup
		watches []<-chan struct{}
	)
	defer func() {
		// Stop the watches and the probe before the client closes.
		cancel()
		wg.Wait()
		for _, done := range watches {
			<-done
		}
	}()
	if c.opts.OnConnected != nil {
		c.opts.OnConnected(cli)
	}

	// Every kind's watch sends into one channel, read by this loop: no
	// goroutine per kind between them (one hop less for every event, one
	// stack less per kind and cluster). Its buffer only smooths bursts (a
	// watch waits when it is full, nothing is lost): an event takes 72
	// bytes, and an agent has one for every cluster, so it is kept small
	// (the per-kind channels and this one held 166 KB per cluster before,
	// 42 MB at 255 clusters).
	events := make(chan kvstore.Event, eventBuffer)
	ropts := &kvstore.ReaderOptions{Logger: c.opts.Logger, Metrics: c.opts.Metrics.storeMetrics()}
	if !c.opts.Local {
		ropts.MaxKeys, ropts.MaxBytes = c.opts.Limits.readerLimits()
	}
	reader := kvstore.NewReader(cli, c.name, ropts)
	for _, kind := range c.kinds {
		// A watch stops once cctx is done, with or without a receiver.
		watches = append(watches, reader.WatchTo(cctx, kind, events))
	}
	configChanged := make(chan struct{}, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.probe(cctx, cli, raw, configChanged)
	}()

	// seen holds, per kind, the keys listed since this connection started;
	// it is dropped at the kind's synced canary, after pruning the known
	// keys that were not listed again.
	seen := map[api.Kind]map[string]struct{}{}
	for _, k := range c.kinds {
		seen[k] = map[string]struct{}{}
	}
	c.mu.Lock()
	c.st.SyncedKinds = nil
	c.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-configChanged:
			cfg, raw, err := c.fetchConfig(ctx, cli)
			if err != nil {
				if errors.Is(err, kvstore.ErrUnreachable) {
					continue
				}
				c.refuse(err)
				return true, err
			}
			if err := c.accept(cfg, raw); err != nil {
				return true, err
			}
			// A new probe compares against the new config.
			return true, fmt.Errorf("cluster %s: config changed, reconnecting", c.name)
		case reason := <-c.evicted:
			c.refuse(reason)
			return true, reason
		case ev := <-events:
			c.handle(ev, seen)
		}
	}
}

func (c *Cluster) markUnreachable(err error) {
	c.mu.Lock()
	st := c.st.State
	c.mu.Unlock()
	if st == status.StateRefused {
		c.mu.Lock()
		c.recordErrorLocked(err)
		c.mu.Unlock()
		return
	}
	c.setState(status.StateUnreachable, err)
}

// probe checks reachability and the cluster config every ProbeInterval. It
// signals changed when the stored config differs from raw.
func (c *Cluster) probe(ctx context.Context, cli *kvstore.Client, raw []byte, changed chan<- struct{}) {
	t := time.NewTicker(c.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, c.opts.ProbeInterval)
		kv, found, err := cli.Get(rctx, api.ClusterKey(c.name))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.markUnreachable(fmt.Errorf("cluster %s: %w: %w", c.name, kvstore.ErrUnreachable, err))
			continue
		}
		c.mu.Lock()
		wasUnreachable := c.st.State == status.StateUnreachable
		c.mu.Unlock()
		if wasUnreachable {
			c.setState(status.StateConnected, nil)
			c.log.Info("cluster reachable again")
		}
		if !found || !bytes.Equal(kv.Value, raw) {
			select {
			case changed <- struct{}{}:
			default:
			}
		}
	}
}

func (c *Cluster) handle(ev kvstore.Event, seen map[api.Kind]map[string]struct{}) {
	kind := ev.Kind
	known := c.known[kind]
	if known == nil {
		return
	}
	c.opts.Metrics.event(c.name, kind, ev.Type)
	switch ev.Type {
	case kvstore.EventUpsert:
		pk, err := api.ParseKey(ev.Key)
		if err != nil || pk.Cluster != c.name || pk.Kind != kind || ev.Object == nil {
			c.invalid(kind, ev.Key, fmt.Errorf("cluster %s: key %q: not an object of this cluster's %s", c.name, ev.Key, kind))
			return
		}
		obj := ev.Object
		if !c.opts.Local {
			var refusals []admit.Refusal
			obj, refusals = c.policy().Object(&c.scope, obj, c.isNodeAddr)
			for _, r := range refusals {
				c.refused(kind, r)
			}
			if obj == nil {
				// Nothing of the new value may be taken: the object is
				// gone as far as this agent is concerned.
				c.delete(kind, ev.Key)
				return
			}
		}
		if seen[kind] != nil {
			seen[kind][ev.Key] = struct{}{}
		}
		known[ev.Key] = struct{}{}
		if n, ok := obj.(*api.Node); ok {
			c.trackNode(ev.Key, n)
		}
		c.compact(obj)
		c.opts.Delegate.Upsert(c.name, obj)
		c.count(kind, len(known))
	case kvstore.EventDelete:
		c.delete(kind, ev.Key)
	case kvstore.EventSynced:
		if s := seen[kind]; s != nil {
			for key := range known {
				if _, ok := s[key]; !ok {
					c.log.Info("pruning object gone while away", "kind", kind, "key", key)
					c.delete(kind, key)
				}
			}
			seen[kind] = nil
		}
		c.mu.Lock()
		if !slices.Contains(c.st.SyncedKinds, string(kind)) {
			c.st.SyncedKinds = append(c.st.SyncedKinds, string(kind))
			slices.Sort(c.st.SyncedKinds)
		}
		// Readiness waits for the kinds every cluster exports; a local
		// kind (policies) is the concern of its observer alone, so that an
		// apiserver that does not export it yet does not hold the agent
		// unready.
		c.st.Synced = !slices.ContainsFunc(Kinds, func(k api.Kind) bool { return !slices.Contains(c.st.SyncedKinds, string(k)) })
		synced := c.st.Synced
		c.mu.Unlock()
		c.opts.Delegate.Synced(c.name, kind)
		if synced {
			c.opts.Metrics.setSynced(c.name, true)
			c.log.Info("cluster synced")
		}
	case kvstore.EventError:
		if errors.Is(ev.Err, kvstore.ErrQuota) {
			c.refused(kind, admit.Refusal{Cluster: c.name, Key: ev.Key, Reason: admit.ReasonQuota, Detail: ev.Err.Error()})
			return
		}
		if ev.Key != "" {
			// A value that fails to decode or validate: keep whatever we had
			// for that key (the last good value) and do not prune it.
			if seen[kind] != nil {
				if _, ok := known[ev.Key]; ok {
					seen[kind][ev.Key] = struct{}{}
				}
			}
			c.invalid(kind, ev.Key, ev.Err)
			return
		}
		c.mu.Lock()
		c.recordErrorLocked(fmt.Errorf("cluster %s: watch %s: %w", c.name, kind, ev.Err))
		c.mu.Unlock()
		c.log.Warn("watch error", "kind", kind, "error", ev.Err)
	}
	c.mu.Lock()
	c.st.Events++
	c.mu.Unlock()
}

func (c *Cluster) delete(kind api.Kind, key string) {
	known := c.known[kind]
	if _, ok := known[key]; !ok {
		return
	}
	pk, err := api.ParseKey(key)
	if err != nil {
		return
	}
	delete(known, key)
	if kind == api.KindNode {
		c.trackNode(key, nil)
	}
	c.opts.Delegate.Delete(c.name, pk)
	c.count(kind, len(known))
}

func (c *Cluster) count(kind api.Kind, n int) {
	c.mu.Lock()
	c.st.Objects[string(kind)] = n
	c.mu.Unlock()
	c.opts.Metrics.objects(c.name, kind, n)
}

func (c *Cluster) invalid(kind api.Kind, key string, err error) {
	if err == nil {
		err = errors.New("invalid value")
	}
	c.mu.Lock()
	c.st.InvalidObjects++
	c.recordErrorLocked(fmt.Errorf("skipped invalid %s %q: %w", kind, key, err))
	c.mu.Unlock()
	c.opts.Metrics.invalid(c.name, kind)
	c.log.Warn("skipping invalid object", "kind", kind, "key", key, "error", err)
}

// policy is the admission policy of peers: the configured one, with the
// local cluster's pod CIDRs protected too.
func (c *Cluster) policy() *admit.Policy {
	var p admit.Policy
	if c.opts.Policy != nil {
		p = *c.opts.Policy
	}
	if local := c.opts.Registry.LocalPodCIDRs(); len(local) > 0 {
		p.Protected = append(slices.Clip(p.Protected), local...)
	}
	return &p
}

// trackNode records the addresses of the admitted node at key (nil: the
// node is gone).
func (c *Cluster) trackNode(key string, n *api.Node) {
	for a, keys := range c.nodeAddrs {
		delete(keys, key)
		if len(keys) == 0 {
			delete(c.nodeAddrs, a)
		}
	}
	if n == nil {
		return
	}
	for _, a := range n.Addresses {
		a = a.Unmap()
		if c.nodeAddrs[a] == nil {
			c.nodeAddrs[a] = map[string]struct{}{}
		}
		c.nodeAddrs[a][key] = struct{}{}
	}
}

// isNodeAddr reports whether a is an address of one of the cluster's
// admitted nodes.
func (c *Cluster) isNodeAddr(a netip.Addr) bool {
	_, ok := c.nodeAddrs[a.Unmap()]
	return ok
}

// refused reports one refusal of a peer's object or field: status, metric
// and a log line naming cluster, key, field and reason.
func (c *Cluster) refused(kind api.Kind, r admit.Refusal) {
	c.mu.Lock()
	c.st.RefusedObjects++
	c.st.LastRefusal = r.Error()
	c.mu.Unlock()
	c.opts.Metrics.refusal(c.name, kind, r.Reason)
	if r.Reason == admit.ReasonQuota {
		return // the reader logs the first refusal of a quota
	}
	c.log.Warn("refused peer object", "kind", kind, "key", r.Key, "field", r.Field, "reason", r.Reason, "detail", r.Detail)
}
