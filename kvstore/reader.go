package kvstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/logging"
)

// EventType says what an Event reports.
type EventType int

const (
	// EventUpsert: Object is the new or changed value at Key.
	EventUpsert EventType = iota
	// EventDelete: the object at Key is gone; Object is nil.
	EventDelete
	// EventSynced: the consumer has been sent the writer's complete initial
	// export of Kind. Sent once per Watch, after the writer's synced canary
	// was seen.
	EventSynced
	// EventError: the value at Key could not be decoded or failed
	// validation (Err says why). It was skipped; the consumer keeps what it
	// had for Key, and every other key continues to flow.
	EventError
)

func (t EventType) String() string {
	switch t {
	case EventUpsert:
		return "upsert"
	case EventDelete:
		return "delete"
	case EventSynced:
		return "synced"
	case EventError:
		return "error"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of a cluster's store, as seen by a Reader.
type Event struct {
	Type EventType
	Kind api.Kind
	// Key is the store key; empty for EventSynced.
	Key string
	// Object is the decoded and validated value for EventUpsert, nil
	// otherwise.
	Object api.Object
	// Err is set for EventError.
	Err error
}

// listPageSize is the number of keys read per request when listing, so that
// a large store is not read in one response.
const listPageSize = 1000

// Reader defaults.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
)

// ReaderOptions tune a Reader. A nil *ReaderOptions means all defaults.
type ReaderOptions struct {
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts to list an unreachable store; zero means the defaults.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives the reader's logs; nil discards them.
	Logger *slog.Logger
	// Metrics records the reader's activity; nil records nothing.
	Metrics *Metrics
	// MaxKeys bounds, per kind, the keys the reader holds and emits (zero
	// or absent: no bound); MaxBytes bounds the total size of the values
	// emitted across kinds (zero: no bound). A new key beyond a bound, or a
	// value that would exceed MaxBytes, is not emitted: an EventError
	// wrapping ErrQuota says so, and what was emitted stays. They keep a
	// peer's store from making the reader and its consumer hold without
	// limit.
	MaxKeys  map[api.Kind]int
	MaxBytes int64
}

// Status is a Reader's view of its connection, for status output.
type Status struct {
	// Connected is true while the connection to the store is up and the
	// last attempt to list succeeded.
	Connected bool
	// LastError is the most recent failure to reach or read the store;
	// nil once a later attempt succeeded.
	LastError error
	// LastErrorTime is when LastError happened.
	LastErrorTime time.Time
	// Relists counts full re-listings after the first (compaction,
	// reconnection, a writer's canary appearing).
	Relists int
	// Synced lists the kinds whose EventSynced was sent.
	Synced []api.Kind
}

// Reader follows one cluster's store. It is safe for concurrent use; each
// Watch runs independently.
type Reader struct {
	c       *Client
	cluster string
	opts    ReaderOptions
	log     *slog.Logger
	// pageSize is listPageSize, smaller in tests.
	pageSize int64

	// bytes is the size of the values emitted and not deleted, across
	// kinds (see MaxBytes).
	bytes atomic.Int64

	mu     sync.Mutex
	status Status
	// downs counts the watches that currently fail to reach the store.
	downs map[api.Kind]bool
}

// NewReader returns a reader of cluster's objects in the store c connects
// to (the cluster's own store, possibly a remote one).
func NewReader(c *Client, cluster string, opts *ReaderOptions) *Reader {
	var o ReaderOptions
	if opts != nil {
		o = *opts
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	o.Logger = logging.OrDiscard(o.Logger)
	return &Reader{
		c:       c,
		cluster: cluster,
		opts:    o,
		log:     o.Logger.With("cluster", cluster),
		downs:   make(map[api.Kind]bool),

		pageSize: listPageSize,
	}
}

// Status reports the reader's connection state.
func (r *Reader) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Connected = len(r.downs) == 0 && s.LastError == nil && r.connReady()
	s.Synced = append([]api.Kind(nil), s.Synced...)
	return s
}

// Err is the most recent failure to reach or read the store, or nil if the
// last attempt succeeded.
func (r *Reader) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.LastError
}

func (r *Reader) connReady() bool {
	if r.c.inProcess {
		return true // no connection: the store is in this process
	}
	conn := r.c.cli.ActiveConnection()
	return conn != nil && conn.GetState() == connectivity.Ready
}

func (r *Reader) setErr(kind api.Kind, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastError = fmt.Errorf("cluster %s: %s: %w", r.cluster, kind, err)
	r.status.LastErrorTime = time.Now()
	r.downs[kind] = true
}

func (r *Reader) setOK(kind api.Kind, relist bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.downs, kind)
	if len(r.downs) == 0 {
		r.status.LastError = nil
	}
	if relist {
		r.status.Relists++
		r.opts.Metrics.relist(r.cluster, string(kind))
	}
}

func (r *Reader) setSynced(kind api.Kind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !slices.Contains(r.status.Synced, kind) {
		r.status.Synced = append(r.status.Synced, kind)
	}
}

// Watch streams the cluster's objects of kind: first an EventUpsert per
// object present, then changes as they happen, with EventSynced once the
// writer's initial export of kind is complete (for kinds in
// api.SyncedKinds or api.LocalKinds, when its canary is present; for others,
// after the first listing). The channel closes when ctx is done; the
// consumer must keep receiving until then.
func (r *Reader) Watch(ctx context.Context, kind api.Kind) <-chan Event {
	out := make(chan Event)
	r.start(ctx, kind, out, nil)
	return out
}

// WatchTo is Watch sending into out, which several watches may share: a
// consumer of many kinds (every kind of a peer) then receives their events
// from one channel, with no goroutine per kind between them and it. out is
// never closed; the returned channel is, once the watch has stopped
// sending (after ctx is done; the consumer need not receive meanwhile).
func (r *Reader) WatchTo(ctx context.Context, kind api.Kind, out chan<- Event) <-chan struct{} {
	done := make(chan struct{})
	r.start(ctx, kind, out, done)
	return done
}

// start runs one watch of kind into out. When it returns, done is
// closed, or out when done is nil (Watch: out is the watch's own).
func (r *Reader) start(ctx context.Context, kind api.Kind, out chan<- Event, done chan<- struct{}) {
	w := &kindWatch{
		r:       r,
		kind:    kind,
		out:     out,
		done:    done,
		canary:  isSyncedKind(kind),
		seed:    maphash.MakeSeed(),
		emitted: make(map[string]held),
		bad:     make(map[string]uint64),
	}
	if kind == api.KindCluster {
		w.key = api.ClusterKey(r.cluster)
	} else {
		w.key = api.ClusterPrefix(kind, r.cluster)
		w.prefix = true
	}
	go w.run(ctx)
}

// kindWatch is the state of one Watch: what was sent to the consumer.
type kindWatch struct {
	r    *Reader
	kind api.Kind
	out  chan<- Event
	// done, when not nil, is closed when the watch stops; otherwise out
	// is.
	done   chan<- struct{}
	key    string
	prefix bool
	canary bool

	// emitted holds a hash of the value of every key the consumer was last
	// sent an EventUpsert for; bad holds hashes of values reported as
	// EventError, so they are not reported again on every re-list. Hashes
	// (64-bit, randomly seeded) rather than values keep a reader of a large
	// store from holding a second copy of it.
	seed    maphash.Seed
	emitted map[string]held
	bad     map[string]uint64
	// quotaHit is set while new keys are being refused, so that the
	// refusal is logged once, not per key.
	quotaHit bool
	// canaryPresent is whether the writer's canary is in the store as of
	// the last listing and the watch since.
	canaryPresent bool
	synced        bool
}

// held is what a reader keeps of an emitted value.
type held struct {
	sum  uint64
	size int64
}

// forget drops an emitted key.
func (w *kindWatch) forget(key string) {
	if h, ok := w.emitted[key]; ok {
		w.r.bytes.Add(-h.size)
		delete(w.emitted, key)
	}
}

// relistReason says why a watch ended and the store is listed again.
type relistReason string

// run lists and watches until ctx is done; every return is on ctx done.
func (w *kindWatch) run(ctx context.Context) {
	defer func() {
		if w.done != nil {
			close(w.done)
		} else {
			close(w.out)
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	retry := backoff.New(w.r.opts.MinBackoff, w.r.opts.MaxBackoff)
	reconnected := w.watchConn(ctx, &wg)
	lists := 0
	for {
		rev, err := w.list(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.r.setErr(w.kind, err)
			delay := retry.Next()
			w.r.log.Debug("listing store", "kind", w.kind, "error", err, "retry_in", delay)
			if backoff.Sleep(ctx, delay) != nil {
				return
			}
			continue
		}
		retry.Reset()
		w.r.setOK(w.kind, lists > 0)
		lists++
		reason, err := w.watch(ctx, rev, reconnected)
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
			w.r.setErr(w.kind, err)
		}
		w.r.log.Debug("re-listing store", "kind", w.kind, "reason", string(reason), "error", err)
	}
}

// watchConn reports, by a send on the returned channel, every time the
// client's connection becomes ready again after having been down. Its
// goroutine, counted in wg, ends with ctx.
func (w *kindWatch) watchConn(ctx context.Context, wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{}, 1)
	conn := w.r.c.cli.ActiveConnection()
	if conn == nil {
		return ch
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		state := conn.GetState()
		down := false
		for conn.WaitForStateChange(ctx, state) {
			state = conn.GetState()
			switch {
			case state == connectivity.Ready && down:
				down = false
				select {
				case ch <- struct{}{}:
				default:
				}
			case state == connectivity.TransientFailure || state == connectivity.Shutdown:
				down = true
				w.r.setErr(w.kind, fmt.Errorf("connection %s", state))
			case state != connectivity.Ready:
				down = true
			}
		}
	}()
	return ch
}

func (w *kindWatch) send(ctx context.Context, ev Event) bool {
	ev.Kind = w.kind
	select {
	case w.out <- ev:
		w.r.opts.Metrics.event(w.r.cluster, string(w.kind), ev.Type)
		return true
	case <-ctx.Done():
		return false
	}
}

// list reads the kind's keys and the canary at one revision and sends the
// difference to what the consumer has.
func (w *kindWatch) list(ctx context.Context) (int64, error) {
	cli := w.r.c.cli
	// The first page and the canary are read in one transaction, which
	// fixes the revision; further pages are read at that revision.
	opts := []clientv3.OpOption{clientv3.WithLimit(w.r.pageSize)}
	if w.prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	ops := []clientv3.Op{clientv3.OpGet(w.key, opts...)}
	if w.canary {
		ops = append(ops, clientv3.OpGet(api.SyncedKey(w.r.cluster, w.kind), clientv3.WithCountOnly()))
	}
	rctx, cancel := w.r.c.withTimeout(ctx)
	resp, err := cli.Txn(rctx).Then(ops...).Commit()
	cancel()
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", w.key, err)
	}
	rev := resp.Header.Revision
	w.canaryPresent = !w.canary || resp.Responses[1].GetResponseRange().Count > 0
	page := resp.Responses[0].GetResponseRange()
	listed := make(map[string]struct{}, len(page.Kvs))
	for {
		for _, kv := range page.Kvs {
			key := string(kv.Key)
			if !w.update(ctx, key, kv.Value) {
				return 0, ctx.Err()
			}
			// Only keys held matter to the diff below; keys refused by a
			// quota are not remembered, so listing stays bounded too.
			_, emitted := w.emitted[key]
			_, bad := w.bad[key]
			if emitted || bad {
				listed[key] = struct{}{}
			}
		}
		if !page.More || len(page.Kvs) == 0 {
			break
		}
		next := string(page.Kvs[len(page.Kvs)-1].Key) + "\x00"
		rctx, cancel := w.r.c.withTimeout(ctx)
		resp, err := cli.Get(rctx, next, clientv3.WithRange(clientv3.GetPrefixRangeEnd(w.key)), clientv3.WithRev(rev), clientv3.WithLimit(w.r.pageSize))
		cancel()
		if err != nil {
			return 0, fmt.Errorf("list %s from %q at revision %d: %w", w.key, next, rev, err)
		}
		page = (*etcdserverpb.RangeResponse)(resp)
	}
	for key := range w.bad {
		if _, ok := listed[key]; !ok {
			delete(w.bad, key)
		}
	}
	if w.canaryPresent {
		for key := range w.emitted {
			if _, ok := listed[key]; ok {
				continue
			}
			w.forget(key)
			if !w.send(ctx, Event{Type: EventDelete, Key: key}) {
				return 0, ctx.Err()
			}
		}
		if !w.synced {
			if !w.send(ctx, Event{Type: EventSynced}) {
				return 0, ctx.Err()
			}
			w.synced = true
			w.r.setSynced(w.kind)
		}
	}
	return rev, nil
}

// update sends what a new value at key means to the consumer. It returns
// false when ctx ended.
func (w *kindWatch) update(ctx context.Context, key string, value []byte) bool {
	sum := maphash.Bytes(w.seed, value)
	old, known := w.emitted[key]
	if known && old.sum == sum {
		return true
	}
	if old, ok := w.bad[key]; ok && old == sum {
		return true
	}
	obj, err := api.Decode(key, value)
	if err != nil {
		w.bad[key] = sum
		w.r.log.Warn("skipping malformed value", "key", key, "error", err)
		return w.send(ctx, Event{Type: EventError, Key: key, Err: fmt.Errorf("cluster %s: %w", w.r.cluster, err)})
	}
	if err := w.quota(key, known, int64(len(value))-old.size); err != nil {
		return w.send(ctx, Event{Type: EventError, Key: key, Err: err})
	}
	if !known {
		// A new key got in: there is room again, so the next refusal is
		// news worth a log line.
		w.quotaHit = false
	}
	delete(w.bad, key)
	w.emitted[key] = held{sum: sum, size: int64(len(value))}
	w.r.bytes.Add(int64(len(value)) - old.size)
	return w.send(ctx, Event{Type: EventUpsert, Key: key, Object: obj})
}

// watch follows changes from rev+1 until a re-list is needed. It returns
// why, and the error that caused it if any.
func (w *kindWatch) watch(ctx context.Context, rev int64, reconnected <-chan struct{}) (relistReason, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cli := w.r.c.cli
	opts := []clientv3.OpOption{clientv3.WithRev(rev + 1), clientv3.WithProgressNotify()}
	if w.prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	// Requiring a leader makes a member cut off from its cluster (external
	// etcd) end the watch instead of serving it stale.
	data := cli.Watch(clientv3.WithRequireLeader(wctx), w.key, opts...)
	var canary clientv3.WatchChan
	if w.canary {
		canary = cli.Watch(wctx, api.SyncedKey(w.r.cluster, w.kind), clientv3.WithRev(rev+1))
	}
	// A reconnection reported while listing is not drained: the status it
	// left (disconnected) is cleared only by the re-listing it triggers.
	for {
		select {
		case <-ctx.Done():
			return "", nil
		case <-reconnected:
			return "reconnected", nil
		case wr, ok := <-data:
			if !ok {
				return "watch closed", nil
			}
			if err := wr.Err(); err != nil {
				return "watch failed", err
			}
			// A delete is passed on only if the writer's canary was in
			// place when it happened: a writer that is re-exporting (or a
			// dead writer's keys expiring) must not prune the consumer's
			// state. Deferred deletes are applied by the re-listing that the
			// canary's return triggers.
			deferDeletes := false
			if lo, hi, ok := deleteRange(wr.Events); ok && w.canary {
				if !w.canaryPresent {
					deferDeletes = true
				} else {
					held, err := w.canaryHeld(ctx, lo, hi)
					if err != nil {
						return "checking canary", err
					}
					if !held {
						return "deletes while the writer was not synced", nil
					}
				}
			}
			for _, ev := range wr.Events {
				key := string(ev.Kv.Key)
				if !w.prefix && key != w.key {
					continue
				}
				switch ev.Type {
				case mvccpb.PUT:
					if !w.update(ctx, key, ev.Kv.Value) {
						return "", nil
					}
				case mvccpb.DELETE:
					delete(w.bad, key)
					if _, ok := w.emitted[key]; ok && !deferDeletes {
						w.forget(key)
						if !w.send(ctx, Event{Type: EventDelete, Key: key}) {
							return "", nil
						}
					}
				}
			}
		case wr, ok := <-canary:
			if !ok {
				return "canary watch closed", nil
			}
			if err := wr.Err(); err != nil {
				return "canary watch failed", err
			}
			for _, ev := range wr.Events {
				switch ev.Type {
				case mvccpb.PUT:
					if !w.canaryPresent {
						// The writer finished its export: list again, so that
						// keys that vanished before are pruned against one
						// consistent snapshot.
						return "synced canary written", nil
					}
				case mvccpb.DELETE:
					w.canaryPresent = false
				}
			}
		}
	}
}

// deleteRange returns the lowest and highest revision of the delete events.
func deleteRange(evs []*clientv3.Event) (lo, hi int64, ok bool) {
	for _, ev := range evs {
		if ev.Type != mvccpb.DELETE {
			continue
		}
		rev := ev.Kv.ModRevision
		if !ok || rev < lo {
			lo = rev
		}
		if !ok || rev > hi {
			hi = rev
		}
		ok = true
	}
	return lo, hi, ok
}

// canaryHeld reports whether the writer's canary existed throughout the
// revisions lo..hi: present at hi and created no later than lo.
func (w *kindWatch) canaryHeld(ctx context.Context, lo, hi int64) (bool, error) {
	rctx, cancel := w.r.c.withTimeout(ctx)
	defer cancel()
	resp, err := w.r.c.cli.Get(rctx, api.SyncedKey(w.r.cluster, w.kind), clientv3.WithRev(hi))
	if err != nil {
		return false, fmt.Errorf("get synced canary at revision %d: %w", hi, err)
	}
	return len(resp.Kvs) == 1 && resp.Kvs[0].CreateRevision <= lo, nil
}

// quota checks a value about to be emitted at key (known: the key was
// emitted before; grow: the change in size) against MaxKeys and MaxBytes.
func (w *kindWatch) quota(key string, known bool, grow int64) error {
	var err error
	if max := w.r.opts.MaxKeys[w.kind]; max > 0 && !known && len(w.emitted)+len(w.bad) >= max {
		err = fmt.Errorf("cluster %s: key %s: %w: %d %s keys held, limit %d", w.r.cluster, key, ErrQuota, len(w.emitted), w.kind, max)
	} else if max := w.r.opts.MaxBytes; max > 0 && grow > 0 && w.r.bytes.Load()+grow > max {
		err = fmt.Errorf("cluster %s: key %s: %w: %d bytes of values held, limit %d", w.r.cluster, key, ErrQuota, w.r.bytes.Load(), max)
	}
	if err != nil && !w.quotaHit {
		w.quotaHit = true
		w.r.log.Warn("store quota reached: refusing new keys", "kind", w.kind, "key", key, "error", err)
	}
	return err
}
