package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// Writer defaults.
const (
	// DefaultLeaseTTL is how long a writer's keys outlive the writer when
	// nobody keeps its leases alive (an external etcd whose apiserver died).
	// An embedded etcd dies with its apiserver and renews every lease when it
	// starts again.
	DefaultLeaseTTL = 5 * time.Minute
	// DefaultMaxKeysPerLease bounds the keys attached to one lease: etcd
	// slows down every write to a lease holding very many keys, and a lost
	// lease takes all of its keys with it.
	DefaultMaxKeysPerLease = 1000
)

// maxRefreshInterval bounds how long a lost lease goes unnoticed.
const maxRefreshInterval = 5 * time.Second

// WriterOptions tune a Writer. A nil *WriterOptions means all defaults.
type WriterOptions struct {
	// LeaseTTL is the TTL of the writer's leases; zero means DefaultLeaseTTL.
	// etcd raises TTLs below its minimum (about 2s).
	LeaseTTL time.Duration
	// MaxKeysPerLease is the number of keys attached to one lease; zero
	// means DefaultMaxKeysPerLease.
	MaxKeysPerLease int
	// Logger receives the writer's logs; nil discards them.
	Logger *slog.Logger
	// Metrics records the writer's activity; nil records nothing.
	Metrics *Metrics
}

// Writer owns one cluster's prefix in a store: it is the only one writing
// there. It remembers what it wrote, so that an unchanged value is not
// written again and a lost lease can be rewritten.
//
// Methods are safe for concurrent use. Run must be running for the leases to
// be kept alive.
type Writer struct {
	c       *Client
	cluster string
	ttl     time.Duration
	perLse  int
	log     *slog.Logger
	metrics *Metrics
	// canaryValue is written to every synced canary of this writer.
	canaryValue []byte

	// keyLocks serialise writes of one key (striped by hash). A lock is held
	// across the etcd round trip, so there are enough stripes that
	// concurrent writers rarely wait for an unrelated key.
	seed     maphash.Seed
	keyLocks [4096]sync.Mutex
	// rw is held shared by every write and exclusively while a lost lease is
	// replaced and its keys rewritten, so that a rewrite never overwrites a
	// newer value.
	rw sync.RWMutex

	mu     sync.Mutex
	keys   map[string]*ownedKey
	leases []*leaseSlot
	closed bool
	done   chan struct{}
	kick   chan struct{}

	canaryMu sync.Mutex
	// canaryReset records the kinds whose canary left by an earlier writer
	// has been deleted: until this writer calls MarkSynced for a kind, readers
	// must not take the store as complete.
	canaryReset map[api.Kind]bool
}

type ownedKey struct {
	value []byte
	lease *leaseSlot
}

type leaseSlot struct {
	id    clientv3.LeaseID
	ttl   time.Duration
	count int
	// canary marks the lease holding the synced canaries. Its TTL is half
	// the others', so that when the writer dies the canaries expire before
	// any other key: readers then hold back the deletes of the expiring keys
	// and keep the cluster's last state until a new writer has re-exported
	// it.
	canary bool
	// rewrite is set when the lease was replaced and not every key could be
	// written under the new one yet.
	rewrite bool
}

// NewWriter returns a writer for cluster's prefix. It writes nothing until
// the first Upsert, Delete or MarkSynced.
func NewWriter(c *Client, cluster string, opts *WriterOptions) (*Writer, error) {
	if err := api.ValidateClusterName(cluster); err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	var o WriterOptions
	if opts != nil {
		o = *opts
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.MaxKeysPerLease <= 0 {
		o.MaxKeysPerLease = DefaultMaxKeysPerLease
	}
	o.Logger = logging.OrDiscard(o.Logger)
	return &Writer{
		c:           c,
		cluster:     cluster,
		ttl:         o.LeaseTTL,
		perLse:      o.MaxKeysPerLease,
		log:         o.Logger.With("cluster", cluster),
		metrics:     o.Metrics,
		canaryValue: []byte(time.Now().UTC().Format(time.RFC3339Nano)),
		seed:        maphash.MakeSeed(),
		keys:        make(map[string]*ownedKey),
		done:        make(chan struct{}),
		kick:        make(chan struct{}, 1),
		canaryReset: make(map[api.Kind]bool),
	}, nil
}

// owned checks that key is under the writer's cluster and returns its kind.
func (w *Writer) owned(key string) (api.Kind, error) {
	pk, err := api.ParseKey(key)
	if err != nil {
		return "", fmt.Errorf("cluster %s: %w: %w", w.cluster, ErrNotOwned, err)
	}
	if pk.Cluster != w.cluster || pk.Kind == api.KindSynced {
		return "", fmt.Errorf("cluster %s: key %q: %w", w.cluster, key, ErrNotOwned)
	}
	return pk.Kind, nil
}

func (w *Writer) keyLock(key string) *sync.Mutex {
	return &w.keyLocks[w.keyStripe(key)]
}

// keyStripe is the index of key's lock in w.keyLocks.
func (w *Writer) keyStripe(key string) int {
	return int(maphash.String(w.seed, key) % uint64(len(w.keyLocks)))
}

// encode checks that obj may be written (it belongs to the writer's
// cluster, not a canary, and validates) and encodes it.
func (w *Writer) encode(obj api.Object) (key string, kind api.Kind, value []byte, err error) {
	key = obj.Key()
	if kind, err = w.owned(key); err != nil {
		return "", "", nil, err
	}
	if err := obj.Validate(); err != nil {
		return "", "", nil, fmt.Errorf("cluster %s: key %q: %w", w.cluster, key, err)
	}
	if value, err = obj.Marshal(); err != nil {
		return "", "", nil, fmt.Errorf("cluster %s: key %q: encode: %w", w.cluster, key, err)
	}
	return key, kind, value, nil
}

// Upsert writes obj at obj.Key() unless the writer already wrote the same
// encoded value. The object must validate and belong to the writer's
// cluster.
func (w *Writer) Upsert(ctx context.Context, obj api.Object) error {
	key, kind, value, err := w.encode(obj)
	if err != nil {
		return err
	}
	l := w.keyLock(key)
	l.Lock()
	defer l.Unlock()
	if err := w.resetCanary(ctx, kind); err != nil {
		return err
	}
	return w.put(ctx, key, value)
}

// put writes an owned key under a lease; the caller holds the key's lock.
func (w *Writer) put(ctx context.Context, key string, value []byte) error {
	for attempt := 0; ; attempt++ {
		lost, err := w.putOnce(ctx, key, value)
		if err == nil {
			return nil
		}
		if lost == 0 || attempt > 0 {
			return fmt.Errorf("cluster %s: put %q: %w", w.cluster, key, err)
		}
		// The lease expired or was revoked: replace it, rewriting what it
		// held, then try once more.
		if err := w.recoverLease(ctx, lost); err != nil {
			return fmt.Errorf("cluster %s: put %q: %w", w.cluster, key, err)
		}
	}
}

// putOnce returns the lease it used when that lease turned out to be lost.
func (w *Writer) putOnce(ctx context.Context, key string, value []byte) (clientv3.LeaseID, error) {
	w.rw.RLock()
	defer w.rw.RUnlock()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return 0, ErrClosed
	}
	k := w.keys[key]
	if k != nil && bytes.Equal(k.value, value) {
		w.mu.Unlock()
		w.metrics.write(w.cluster, "unchanged")
		return 0, nil
	}
	var slot *leaseSlot
	if k != nil {
		slot = k.lease
	} else {
		var err error
		if slot, err = w.reserveSlot(ctx, isCanary(key)); err != nil {
			w.mu.Unlock()
			return 0, err
		}
	}
	id := slot.id
	w.mu.Unlock()

	rctx, cancel := w.c.withTimeout(ctx)
	_, err := w.c.cli.Put(rctx, key, string(value), clientv3.WithLease(id))
	cancel()

	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if k == nil {
			slot.count--
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return id, err
		}
		return 0, err
	}
	if k == nil {
		w.keys[key] = &ownedKey{value: value, lease: slot}
	} else {
		k.value = value
	}
	w.metrics.write(w.cluster, "upsert")
	return 0, nil
}

// reserveSlot picks a lease with room for one more key, granting a new one
// when all are full. Called with mu held.
func (w *Writer) reserveSlot(ctx context.Context, canary bool) (*leaseSlot, error) {
	for _, s := range w.leases {
		if s.canary == canary && (canary || s.count < w.perLse) {
			s.count++
			return s, nil
		}
	}
	ttl := w.ttl
	if canary {
		ttl /= 2
	}
	id, err := w.grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	s := &leaseSlot{id: id, ttl: ttl, count: 1, canary: canary}
	w.leases = append(w.leases, s)
	w.signal()
	return s, nil
}

// isCanary tells the synced canaries from objects.
func isCanary(key string) bool {
	pk, err := api.ParseKey(key)
	return err == nil && pk.Kind == api.KindSynced
}

func (w *Writer) grant(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	rctx, cancel := w.c.withTimeout(ctx)
	defer cancel()
	resp, err := w.c.cli.Grant(rctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	return resp.ID, nil
}

func (w *Writer) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// resetCanary deletes the synced canary of kind left by an earlier writer,
// once, before this writer's first write of that kind.
func (w *Writer) resetCanary(ctx context.Context, kind api.Kind) error {
	if !isSyncedKind(kind) {
		return nil
	}
	w.canaryMu.Lock()
	defer w.canaryMu.Unlock()
	if w.canaryReset[kind] {
		return nil
	}
	rctx, cancel := w.c.withTimeout(ctx)
	defer cancel()
	if _, err := w.c.cli.Delete(rctx, api.SyncedKey(w.cluster, kind)); err != nil {
		return fmt.Errorf("cluster %s: reset synced canary of %s: %w", w.cluster, kind, err)
	}
	w.canaryReset[kind] = true
	return nil
}

// isSyncedKind tells the kinds exported with a synced canary: those peers
// read (api.SyncedKinds) and those kept for the cluster's own agents
// (api.LocalKinds).
func isSyncedKind(kind api.Kind) bool { return api.HasSyncedCanary(kind) }

// Delete removes key from the store, whether or not this writer wrote it.
func (w *Writer) Delete(ctx context.Context, key string) error {
	kind, err := w.owned(key)
	if err != nil {
		return err
	}
	l := w.keyLock(key)
	l.Lock()
	defer l.Unlock()
	if err := w.resetCanary(ctx, kind); err != nil {
		return err
	}
	return w.delete(ctx, key)
}

// delete removes an owned key; the caller holds the key's lock.
func (w *Writer) delete(ctx context.Context, key string) error {
	w.rw.RLock()
	defer w.rw.RUnlock()
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return ErrClosed
	}
	rctx, cancel := w.c.withTimeout(ctx)
	_, err := w.c.cli.Delete(rctx, key)
	cancel()
	if err != nil {
		return fmt.Errorf("cluster %s: delete %q: %w", w.cluster, key, err)
	}
	w.mu.Lock()
	if k := w.keys[key]; k != nil {
		k.lease.count--
		delete(w.keys, key)
	}
	w.mu.Unlock()
	w.metrics.write(w.cluster, "delete")
	return nil
}

// Change is one write of a batch (Writer.Apply): Object is upserted at
// its key or, when nil, DeleteKey is deleted.
type Change struct {
	Object    api.Object
	DeleteKey string
}

// Apply makes changes, each as Upsert or Delete would, in one etcd
// transaction: one request and one raft entry for all of them. The changes
// must name distinct keys, at most etcd's limit of operations per
// transaction (128 by default). When it fails (a change refused, a lease
// lost, the store unreachable, the request too large) nothing of it was
// written: the caller writes the changes one by one instead, which reports
// the change at fault and repairs a lost lease.
func (w *Writer) Apply(ctx context.Context, changes []Change) error {
	type change struct {
		key   string
		value []byte // nil: delete
	}
	cs := make([]change, 0, len(changes))
	kinds := map[api.Kind]bool{}
	keys := make(map[string]bool, len(changes))
	stripes := make([]int, 0, len(changes))
	for _, c := range changes {
		var (
			ch   = change{key: c.DeleteKey}
			kind api.Kind
			err  error
		)
		if c.Object != nil {
			ch.key, kind, ch.value, err = w.encode(c.Object)
		} else {
			kind, err = w.owned(ch.key)
		}
		if err != nil {
			return err
		}
		if keys[ch.key] {
			return fmt.Errorf("cluster %s: key %q: twice in one batch", w.cluster, ch.key)
		}
		keys[ch.key] = true
		kinds[kind] = true
		cs = append(cs, ch)
		stripes = append(stripes, w.keyStripe(ch.key))
	}
	// The keys' locks, each stripe once and in order: a single write holds
	// one stripe at a time, so no order of locking can deadlock. The
	// canaries are reset under them, as Upsert and Delete do.
	slices.Sort(stripes)
	for _, i := range slices.Compact(stripes) {
		w.keyLocks[i].Lock()
		defer w.keyLocks[i].Unlock()
	}
	for kind := range kinds {
		if err := w.resetCanary(ctx, kind); err != nil {
			return err
		}
	}
	w.rw.RLock()
	defer w.rw.RUnlock()

	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrClosed
	}
	ops := make([]clientv3.Op, 0, len(cs))
	var written []change
	// reserved are the slots taken for new keys: released if the
	// transaction fails.
	reserved := map[string]*leaseSlot{}
	release := func() {
		for _, s := range reserved {
			s.count--
		}
	}
	unchanged := 0
	for _, c := range cs {
		k := w.keys[c.key]
		switch {
		case c.value == nil:
			ops = append(ops, clientv3.OpDelete(c.key))
		case k != nil && bytes.Equal(k.value, c.value):
			unchanged++
			continue
		case k != nil:
			ops = append(ops, clientv3.OpPut(c.key, string(c.value), clientv3.WithLease(k.lease.id)))
		default:
			slot, err := w.reserveSlot(ctx, isCanary(c.key))
			if err != nil {
				release()
				w.mu.Unlock()
				return fmt.Errorf("cluster %s: batch: %w", w.cluster, err)
			}
			reserved[c.key] = slot
			ops = append(ops, clientv3.OpPut(c.key, string(c.value), clientv3.WithLease(slot.id)))
		}
		written = append(written, c)
	}
	w.mu.Unlock()

	var err error
	if len(ops) > 0 {
		rctx, cancel := w.c.withTimeout(ctx)
		_, err = w.c.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		release()
		return fmt.Errorf("cluster %s: batch of %d writes: %w", w.cluster, len(ops), err)
	}
	for range unchanged {
		w.metrics.write(w.cluster, "unchanged")
	}
	for _, c := range written {
		k := w.keys[c.key]
		switch {
		case c.value == nil:
			if k != nil {
				k.lease.count--
				delete(w.keys, c.key)
			}
			w.metrics.write(w.cluster, "delete")
			continue
		case k == nil:
			w.keys[c.key] = &ownedKey{value: c.value, lease: reserved[c.key]}
		default:
			k.value = c.value
		}
		w.metrics.write(w.cluster, "upsert")
	}
	return nil
}

// MarkSynced ends the initial full export of kind: it deletes every key of
// the writer's cluster and kind that this writer has not upserted since it
// was created (leftovers of an earlier writer), then writes the kind's synced
// canary (api.SyncedKey). Readers prune nothing of that kind before the
// canary is present.
func (w *Writer) MarkSynced(ctx context.Context, kind api.Kind) error {
	if !isSyncedKind(kind) {
		return fmt.Errorf("cluster %s: mark synced %q: %w", w.cluster, kind, ErrInvalidKind)
	}
	if err := w.resetCanary(ctx, kind); err != nil {
		return err
	}
	prefix := api.ClusterPrefix(kind, w.cluster)
	rctx, cancel := w.c.withTimeout(ctx)
	resp, err := w.c.cli.Get(rctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("cluster %s: mark %s synced: list: %w", w.cluster, kind, err)
	}
	pruned := 0
	for _, kv := range resp.Kvs {
		deleted, err := w.deleteIfNotOwned(ctx, string(kv.Key))
		if err != nil {
			return fmt.Errorf("cluster %s: mark %s synced: %w", w.cluster, kind, err)
		}
		if deleted {
			pruned++
		}
	}
	canary := api.SyncedKey(w.cluster, kind)
	l := w.keyLock(canary)
	l.Lock()
	defer l.Unlock()
	if err := w.put(ctx, canary, w.canaryValue); err != nil {
		return fmt.Errorf("mark %s synced: %w", kind, err)
	}
	w.log.Info("initial export complete", "kind", kind, "pruned", pruned)
	return nil
}

func (w *Writer) deleteIfNotOwned(ctx context.Context, key string) (bool, error) {
	l := w.keyLock(key)
	l.Lock()
	defer l.Unlock()
	w.mu.Lock()
	_, ok := w.keys[key]
	w.mu.Unlock()
	if ok {
		return false, nil
	}
	w.log.Info("pruning key left by an earlier writer", "key", key)
	return true, w.delete(ctx, key)
}

// Run keeps the writer's leases alive until ctx is done or the writer is
// closed. A lease found lost (expired while the writer could not reach the
// store, or revoked) is replaced by a new one and every key it held is
// written again. It returns nil when ctx ends.
func (w *Writer) Run(ctx context.Context) error {
	// Every lease is refreshed several times within the canary lease's TTL
	// (half of LeaseTTL), so one failed refresh loses nothing; and at least
	// every maxRefreshInterval, so that a lease lost while the store was
	// unreachable (or revoked) is noticed and its keys rewritten soon after.
	interval := min(w.ttl/6, maxRefreshInterval)
	if interval < 200*time.Millisecond {
		interval = 200 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		w.maintain(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-w.done:
			return nil
		case <-t.C:
		case <-w.kick:
		}
	}
}

// maintain refreshes every lease once and repairs the lost ones.
//
// The canary leases come last, and a lost canary is rewritten only once no
// other lease's keys are still waiting to be rewritten: readers prune keys
// missing from a listing once the canary is present, so a canary back
// before the keys (after a store restart that dropped every lease) would
// make them delete live objects.
func (w *Writer) maintain(ctx context.Context) {
	w.mu.Lock()
	slots := make([]leaseSlot, len(w.leases))
	for i, s := range w.leases {
		slots[i] = *s
	}
	w.mu.Unlock()
	slices.SortStableFunc(slots, func(a, b leaseSlot) int {
		switch {
		case a.canary == b.canary:
			return 0
		case a.canary:
			return 1
		default:
			return -1
		}
	})
	keysPending := false
	repair := func(id clientv3.LeaseID, canary bool) {
		if canary && keysPending {
			w.log.Info("synced canary waits for the keys of a lost lease to be rewritten", "lease", id)
			return
		}
		if err := w.recoverLease(ctx, id); err != nil {
			w.log.Warn("re-creating lost lease", "lease", id, "error", err)
			keysPending = keysPending || !canary
		}
	}
	for _, s := range slots {
		if ctx.Err() != nil {
			return
		}
		if s.rewrite {
			repair(s.id, s.canary)
			continue
		}
		rctx, cancel := w.c.withTimeout(ctx)
		_, err := w.c.cli.KeepAliveOnce(rctx, s.id)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			w.log.Warn("lease lost, re-creating it and rewriting its keys", "lease", s.id, "keys", s.count)
			repair(s.id, s.canary)
		default:
			if ctx.Err() == nil {
				w.log.Warn("keeping lease alive", "lease", s.id, "error", err)
			}
		}
	}
}

// recoverLease replaces the lease lost (if a slot still uses it) with a new
// one and writes every key of that slot again under it. Writes are held off
// meanwhile.
func (w *Writer) recoverLease(ctx context.Context, lost clientv3.LeaseID) error {
	w.rw.Lock()
	defer w.rw.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	var slot *leaseSlot
	for _, s := range w.leases {
		if s.id == lost {
			slot = s
		}
	}
	if slot == nil {
		return nil // replaced already
	}
	if !slot.rewrite {
		id, err := w.grant(ctx, slot.ttl)
		if err != nil {
			return err
		}
		slot.id = id
		slot.rewrite = true
		w.metrics.leaseRecovery(w.cluster)
	}
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		rctx, cancel := w.c.withTimeout(ctx)
		defer cancel()
		_, err := w.c.cli.Txn(rctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	for key, k := range w.keys {
		if k.lease != slot {
			continue
		}
		ops = append(ops, clientv3.OpPut(key, string(k.value), clientv3.WithLease(slot.id)))
		if len(ops) == 100 {
			if err := flush(); err != nil {
				return fmt.Errorf("rewrite keys of lease %x: %w", slot.id, err)
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("rewrite keys of lease %x: %w", slot.id, err)
	}
	slot.rewrite = false
	return nil
}

// Purge removes everything of the writer's cluster from the store and
// closes the writer: the synced canaries first (so that no reader takes
// what follows for a complete listing), then every kind's objects, the
// cluster config last. It is how a cache forgets a peer that was
// disconnected; an exporting apiserver never purges.
func (w *Writer) Purge(ctx context.Context) error {
	w.Close()
	w.rw.Lock()
	defer w.rw.Unlock()
	prefixes := []string{api.ClusterPrefix(api.KindSynced, w.cluster)}
	for _, k := range append(slices.Clone(api.SyncedKinds), api.LocalKinds...) {
		prefixes = append(prefixes, api.ClusterPrefix(k, w.cluster))
	}
	for _, p := range prefixes {
		rctx, cancel := w.c.withTimeout(ctx)
		_, err := w.c.cli.Delete(rctx, p, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return fmt.Errorf("cluster %s: purge %s: %w", w.cluster, p, err)
		}
	}
	rctx, cancel := w.c.withTimeout(ctx)
	defer cancel()
	if _, err := w.c.cli.Delete(rctx, api.ClusterKey(w.cluster)); err != nil {
		return fmt.Errorf("cluster %s: purge config: %w", w.cluster, err)
	}
	w.mu.Lock()
	w.keys = map[string]*ownedKey{}
	w.mu.Unlock()
	w.log.Info("purged every key of the cluster")
	return nil
}

// Close stops Run and makes further writes fail with ErrClosed. It leaves
// the writer's keys and leases in place: a restarting apiserver's new writer
// takes them over, and until then peers keep seeing the cluster.
func (w *Writer) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.done)
	}
}
