package meshcache

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
)

// errInvalidObject marks an object that fails validation: never retried.
var errInvalidObject = errors.New("invalid object")

// lanes is how many writes of one peer's copy run at once. Writes of one
// key always take the same lane, so they land in the order they came.
const lanes = 16

// maxBatch bounds the writes of a lane that go as one transaction: etcd
// takes at most 128 operations in one (its default).
const maxBatch = 64

// mirror is the follower's delegate for one peer: it writes what the
// follower accepted into the local store. Objects are written on lanes (a
// key's writes in order, different keys in parallel, so that a large
// initial listing is not copied one round trip at a time); the config, a
// kind's synced canary and a purge first wait until every write before
// them landed, so a canary is never written ahead of the objects it vouches
// for. A write that fails is retried (jittered backoff) until it succeeds
// or the cache stops; a full lane makes the follower wait, so the copy
// never skips an event. What queued up in a lane while its last write was
// in flight goes as one transaction (kvstore.Writer.Apply): the initial
// copy and bursts of changes cost the local store one request per batch
// instead of one per object, while a lone change is written at once.
type mirror struct {
	// ctx ends with the cache or with close: the lanes and the writer stop.
	ctx    context.Context
	cancel context.CancelFunc
	cache  *Cache
	name   string
	log    *slog.Logger

	lanesOnce sync.Once
	lanes     [lanes]chan laneOp
	seed      maphash.Seed // spreads keys over lanes
	pending   sync.WaitGroup

	mu sync.Mutex
	w  *kvstore.Writer
	// stop ends the current writer's Run.
	stop context.CancelFunc
}

type laneOp struct {
	what, key string
	fn        func(context.Context, *kvstore.Writer) error
	// change is the same write, for a batch.
	change kvstore.Change
}

// enqueue hands a write of key to its lane.
func (m *mirror) enqueue(what, key string, change kvstore.Change, fn func(context.Context, *kvstore.Writer) error) {
	m.lanesOnce.Do(func() {
		for i := range m.lanes {
			ch := make(chan laneOp, 256)
			m.lanes[i] = ch
			go m.runLane(ch)
		}
	})
	m.pending.Add(1)
	select {
	case m.lanes[maphash.String(m.seed, key)%lanes] <- laneOp{what, key, fn, change}:
	case <-m.ctx.Done():
		m.pending.Done()
	}
}

// runLane writes one lane's operations until the cache stops, then drops
// what is left (the copy stays as it was: a restarted cache reconciles it).
func (m *mirror) runLane(ch chan laneOp) {
	batch := make([]laneOp, 0, maxBatch)
	for {
		select {
		case op := <-ch:
			batch = append(batch[:0], op)
		queued:
			for len(batch) < maxBatch {
				select {
				case op := <-ch:
					batch = append(batch, op)
				default:
					break queued
				}
			}
			m.doBatch(batch)
			for range batch {
				m.pending.Done()
			}
		case <-m.ctx.Done():
			for {
				select {
				case <-ch:
					m.pending.Done()
				default:
					return
				}
			}
		}
	}
}

// barrier waits until every write enqueued so far has landed (or the cache
// stopped).
func (m *mirror) barrier() { m.pending.Wait() }

func newMirror(ctx context.Context, c *Cache, name string) *mirror {
	ctx, cancel := context.WithCancel(ctx)
	return &mirror{ctx: ctx, cancel: cancel, cache: c, name: name, log: c.log.With("cluster", name), seed: maphash.MakeSeed()}
}

// writer returns the peer's writer, creating (and running) it if needed.
func (m *mirror) writer() (*kvstore.Writer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.w != nil {
		return m.w, nil
	}
	w, err := kvstore.NewWriter(m.cache.cfg.Local, m.name, &kvstore.WriterOptions{LeaseTTL: m.cache.cfg.LeaseTTL, Logger: m.log, Metrics: m.cache.smetrics})
	if err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancel(m.ctx)
	go func() { _ = w.Run(wctx) }()
	m.w, m.stop = w, stop
	return w, nil
}

// do runs one write until it succeeds or the cache stops.
func (m *mirror) do(what string, key string, op func(context.Context, *kvstore.Writer) error) {
	b := backoff.New(50*time.Millisecond, 5*time.Second)
	for {
		w, err := m.writer()
		if err == nil {
			if err = op(m.ctx, w); err == nil {
				return
			}
		}
		if errors.Is(err, kvstore.ErrNotOwned) || errors.Is(err, kvstore.ErrInvalidKind) || errors.Is(err, errInvalidObject) {
			// Not the store's fault: retrying would hold the peer's
			// stream forever. The object stays out of the copy.
			m.log.Error("object not copied to the local store", "op", what, "key", key, "error", err)
			return
		}
		if m.ctx.Err() != nil {
			return
		}
		m.log.Warn("copy to the local store failed; retrying", "op", what, "key", key, "error", err)
		if b.Wait(m.ctx) != nil {
			return
		}
	}
}

// doBatch writes a lane's queued operations, in one transaction when
// there are several; when that fails, one by one (do: retried, and what
// is refused is reported and skipped).
func (m *mirror) doBatch(batch []laneOp) {
	if len(batch) > 1 {
		// Objects that cannot be written are skipped (do reports them),
		// as one by one; of several writes of a key the last one counts.
		last := make(map[string]int, len(batch))
		var invalid []laneOp
		for i, op := range batch {
			if obj := op.change.Object; obj != nil && obj.Validate() != nil {
				invalid = append(invalid, op)
				continue
			}
			last[op.key] = i
		}
		changes := make([]kvstore.Change, 0, len(last))
		for i, op := range batch {
			if j, ok := last[op.key]; ok && j == i {
				changes = append(changes, op.change)
			}
		}
		w, err := m.writer()
		if err == nil {
			if err = w.Apply(m.ctx, changes); err == nil {
				batch = invalid
			}
		}
		if err != nil {
			if m.ctx.Err() != nil {
				return
			}
			m.log.Debug("batch of copies failed; writing them one by one", "writes", len(batch), "error", err)
		}
	}
	for _, op := range batch {
		m.do(op.what, op.key, op.fn)
	}
}

// ClusterAccepted copies the peer's config: agents validate it before
// anything else of the peer.
func (m *mirror) ClusterAccepted(cfg *api.Cluster) {
	m.barrier()
	m.do("upsert", cfg.Key(), func(ctx context.Context, w *kvstore.Writer) error { return w.Upsert(ctx, cfg) })
}

func (m *mirror) Upsert(_ string, obj api.Object) {
	m.enqueue("upsert", obj.Key(), kvstore.Change{Object: obj}, func(ctx context.Context, w *kvstore.Writer) error {
		// An admitted object reduced to nothing valid (say, a node whose
		// every address was refused) cannot be written; it is skipped.
		if err := obj.Validate(); err != nil {
			return fmt.Errorf("%w: %w", errInvalidObject, err)
		}
		return w.Upsert(ctx, obj)
	})
}

func (m *mirror) Delete(_ string, key api.ParsedKey) {
	k := key.Key
	m.enqueue("delete", k, kvstore.Change{DeleteKey: k}, func(ctx context.Context, w *kvstore.Writer) error { return w.Delete(ctx, k) })
}

// Synced writes the kind's canary in the local store, after pruning what
// an earlier copy held and the peer no longer lists.
func (m *mirror) Synced(_ string, kind api.Kind) {
	m.barrier()
	m.do("mark synced", string(kind), func(ctx context.Context, w *kvstore.Writer) error { return w.MarkSynced(ctx, kind) })
}

// Drain purges the copy: the peer was disconnected past the grace, or its
// config stopped passing validation (a peer turned bad keeps nothing in
// the cache). A later acceptance starts a fresh writer.
func (m *mirror) Drain(string) {
	m.barrier()
	m.do("purge", m.name, func(ctx context.Context, w *kvstore.Writer) error { return w.Purge(ctx) })
	m.mu.Lock()
	if m.stop != nil {
		m.stop()
	}
	m.w, m.stop = nil, nil
	m.mu.Unlock()
	m.log.Info("peer's copy purged from the local store")
}

// close stops the lanes and the writer, leaving the copy in place.
func (m *mirror) close() {
	m.cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.w != nil {
		m.w.Close()
	}
}
