package apiserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"

	"github.com/clustermesh/clustermesh/api"
	"github.com/clustermesh/clustermesh/kvstore"
)

// ReservationPrefix is the root of the identity reservations: keys only the
// cluster's apiservers read and write (outside api.KeyPrefix, so peers' and
// agents' read-only roles cannot see them). Per cluster:
//
//	<prefix><cluster>/labels/<sha256 of namespace+labels>  -> numeric identity
//	<prefix><cluster>/ids/<numeric identity>                -> the labels hash
//
// Both keys of an identity are created in one etcd transaction that succeeds
// only if neither exists, so two apiserver replicas can never hand out the
// same number for different label sets, nor two numbers for one set. They
// carry no lease: an identity keeps its number across apiserver restarts for
// as long as a pod uses it.
const ReservationPrefix = "clustermesh-private/v1/identity/"

// ErrIdentitiesExhausted is returned when every local identity number of the
// cluster is taken.
var ErrIdentitiesExhausted = errors.New("identity numbers exhausted")

// publisher is where allocated identities are published (the kvstore
// Writer).
type publisher interface {
	Upsert(ctx context.Context, obj api.Object) error
	Delete(ctx context.Context, key string) error
}

// allocator hands out cluster-scoped identities per (namespace, label set)
// and counts their users. It is safe for concurrent use.
type allocator struct {
	store        *kvstore.Client
	pub          publisher
	cluster      string
	clusterID    uint32
	maxClusterID uint32

	mu sync.Mutex
	// byLabels maps a labelsID to the identity in use for it.
	byLabels map[string]*identityRef
	// taken holds every local number known to be reserved (by us or,
	// as far as we saw, by another replica).
	taken map[uint32]bool
	// next is where the search for a free number starts.
	next uint32
	// locks serialises Acquire/Release per label set. An entry lives while
	// anyone holds or waits for it, so two callers never hold different
	// mutexes for one label set.
	locks map[string]*labelLock
	// gc is held shared while a reservation is read or made and
	// exclusively by Collect, so Collect never frees a reservation that
	// an Acquire is adopting.
	gc sync.RWMutex
}

type identityRef struct {
	id    api.Identity
	users map[string]struct{}
	// published is true once the identity is in the store.
	published bool
}

func newAllocator(store *kvstore.Client, pub publisher, cluster string, clusterID, maxClusterID uint32) *allocator {
	return &allocator{
		store: store, pub: pub, cluster: cluster, clusterID: clusterID, maxClusterID: maxClusterID,
		byLabels: map[string]*identityRef{},
		taken:    map[uint32]bool{},
		next:     1,
		locks:    map[string]*labelLock{},
	}
}

func (a *allocator) prefix() string { return ReservationPrefix + a.cluster + "/" }

func (a *allocator) labelsKey(lid string) string {
	sum := sha256.Sum256([]byte(lid))
	return a.prefix() + "labels/" + hex.EncodeToString(sum[:16])
}

func (a *allocator) idKey(local uint32) string {
	return a.prefix() + "ids/" + strconv.FormatUint(uint64(local), 10)
}

// parseIDKey inverts idKey: it returns the local identity number of a
// reservation key of this allocator's cluster, refusing any key idKey does
// not write.
func (a *allocator) parseIDKey(key string) (uint32, error) {
	s, ok := strings.CutPrefix(key, a.prefix()+"ids/")
	if !ok {
		return 0, fmt.Errorf("identity reservation key %q: not under %q", key, a.prefix()+"ids/")
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("identity reservation key %q: %q is not a canonical 32-bit number", key, s)
	}
	return uint32(n), nil
}

// load reads the reservations already in the store, so that numbers are
// reused for the same label sets after a restart and never handed out twice.
func (a *allocator) load(ctx context.Context) error {
	kvs, err := a.store.List(ctx, a.prefix()+"ids/", kvstore.ListOptions{KeysOnly: true})
	if err != nil {
		return fmt.Errorf("cluster %s: load identity reservations: %w", a.cluster, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, kv := range kvs {
		if n, err := a.parseIDKey(kv.Key); err == nil {
			a.taken[n] = true
		}
	}
	return nil
}

type labelLock struct {
	sync.Mutex
	// refs counts holders and waiters; guarded by allocator.mu.
	refs int
}

// lock takes the per-label-set lock and returns its release.
func (a *allocator) lock(lid string) func() {
	a.mu.Lock()
	l := a.locks[lid]
	if l == nil {
		l = &labelLock{}
		a.locks[lid] = l
	}
	l.refs++
	a.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		a.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(a.locks, lid)
		}
		a.mu.Unlock()
	}
}

// Acquire returns the identity of (namespace, labels) for user (a pod's
// namespace/name), reserving a number and publishing the identity first if no
// other user holds it. Acquiring twice for the same user is one use.
func (a *allocator) Acquire(ctx context.Context, user, namespace string, labels map[string]string) (uint32, error) {
	lid := labelsID(namespace, labels)
	unlock := a.lock(lid)
	defer unlock()

	a.mu.Lock()
	ref := a.byLabels[lid]
	a.mu.Unlock()
	if ref == nil {
		a.gc.RLock()
		id, err := a.reserve(ctx, lid)
		if err != nil {
			a.gc.RUnlock()
			return 0, err
		}
		ref = &identityRef{
			id:    api.Identity{Cluster: a.cluster, ID: id, Namespace: namespace, Labels: maps.Clone(labels)},
			users: map[string]struct{}{},
		}
		a.mu.Lock()
		a.byLabels[lid] = ref
		a.mu.Unlock()
		a.gc.RUnlock()
	}
	if !ref.published {
		if err := a.pub.Upsert(ctx, &ref.id); err != nil {
			return 0, fmt.Errorf("publish identity %d (%s): %w", ref.id.ID, namespace, err)
		}
		ref.published = true
	}
	a.mu.Lock()
	ref.users[user] = struct{}{}
	a.mu.Unlock()
	return ref.id.ID, nil
}

// reserve finds the number reserved for lid, or reserves a free one.
func (a *allocator) reserve(ctx context.Context, lid string) (uint32, error) {
	lkey := a.labelsKey(lid)
	maxLocal := api.MaxLocalIdentity(a.maxClusterID)
	for tries := uint32(0); tries <= maxLocal; tries++ {
		local, ok := a.candidate(maxLocal)
		if !ok {
			return 0, fmt.Errorf("cluster %s: %w (%d in use)", a.cluster, ErrIdentitiesExhausted, maxLocal)
		}
		ikey := a.idKey(local)
		ok, err := a.store.CompareAndSwap(ctx,
			[]kvstore.Cond{kvstore.Absent(lkey), kvstore.Absent(ikey)},
			kvstore.PutOp(lkey, []byte(strconv.FormatUint(uint64(local), 10))), kvstore.PutOp(ikey, []byte(lkey)))
		if err != nil {
			return 0, fmt.Errorf("cluster %s: reserve identity %d: %w", a.cluster, local, err)
		}
		a.mu.Lock()
		a.taken[local] = true
		a.mu.Unlock()
		if !ok {
			// Either the label set already has a number (ours from an
			// earlier run, or another replica's), or the number is taken.
			// The label key is read after the transaction: if it was freed
			// in between, the next round tries again.
			kv, found, err := a.store.Get(ctx, lkey)
			if err != nil {
				return 0, fmt.Errorf("cluster %s: read identity reservation %s: %w", a.cluster, lkey, err)
			}
			if found {
				n, err := strconv.ParseUint(string(kv.Value), 10, 32)
				if err != nil || n == 0 || uint32(n) > maxLocal {
					return 0, fmt.Errorf("cluster %s: identity reservation %s holds %q, not a local identity", a.cluster, lkey, kv.Value)
				}
				local = uint32(n)
				a.mu.Lock()
				a.taken[local] = true
				a.mu.Unlock()
			} else {
				continue
			}
		}
		id, err := api.MakeIdentity(a.clusterID, local, a.maxClusterID)
		if err != nil {
			return 0, fmt.Errorf("cluster %s: %w", a.cluster, err)
		}
		return id, nil
	}
	return 0, fmt.Errorf("cluster %s: %w", a.cluster, ErrIdentitiesExhausted)
}

// candidate returns the lowest number not known to be taken, searching from
// next and wrapping around.
func (a *allocator) candidate(maxLocal uint32) (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := uint32(0); i < maxLocal; i++ {
		n := (a.next-1+i)%maxLocal + 1
		if !a.taken[n] {
			a.next = n%maxLocal + 1
			return n, true
		}
	}
	return 0, false
}

// Release drops user's use of the identity of (namespace, labels); the last
// user's release unpublishes the identity and frees its number.
func (a *allocator) Release(ctx context.Context, user, namespace string, labels map[string]string) error {
	lid := labelsID(namespace, labels)
	unlock := a.lock(lid)
	defer unlock()

	a.mu.Lock()
	ref := a.byLabels[lid]
	if ref != nil {
		delete(ref.users, user)
	}
	last := ref != nil && len(ref.users) == 0
	a.mu.Unlock()
	if !last {
		return nil
	}
	if err := a.free(ctx, lid, ref); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.byLabels, lid)
	a.mu.Unlock()
	return nil
}

// free unpublishes ref's identity and deletes its reservation, if the
// reservation still names it. If the reservation cannot be deleted, ref
// stays known but unpublished, so that the next Acquire publishes it again
// instead of trusting a value that is gone from the store.
func (a *allocator) free(ctx context.Context, lid string, ref *identityRef) error {
	id := ref.id.ID
	if err := a.pub.Delete(ctx, api.IdentityKey(a.cluster, id)); err != nil {
		return fmt.Errorf("unpublish identity %d: %w", id, err)
	}
	ref.published = false
	local := id & api.MaxLocalIdentity(a.maxClusterID)
	lkey := a.labelsKey(lid)
	_, err := a.store.CompareAndSwap(ctx,
		[]kvstore.Cond{kvstore.ValueIs(lkey, []byte(strconv.FormatUint(uint64(local), 10)))},
		kvstore.DeleteOp(lkey), kvstore.DeleteOp(a.idKey(local)))
	if err != nil {
		return fmt.Errorf("cluster %s: free identity %d: %w", a.cluster, id, err)
	}
	a.mu.Lock()
	delete(a.taken, local)
	a.mu.Unlock()
	return nil
}

// Collect deletes every reservation no user holds: leftovers of label sets
// whose pods went away while no apiserver was running. Call it once the
// initial pass over all pods is complete.
func (a *allocator) Collect(ctx context.Context) (int, error) {
	a.gc.Lock()
	defer a.gc.Unlock()
	kvs, err := a.store.List(ctx, a.prefix()+"ids/", kvstore.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("cluster %s: list identity reservations: %w", a.cluster, err)
	}
	a.mu.Lock()
	inUse := map[string]bool{}
	for lid := range a.byLabels {
		inUse[a.labelsKey(lid)] = true
	}
	a.mu.Unlock()
	n := 0
	for _, kv := range kvs {
		lkey := string(kv.Value)
		if inUse[lkey] {
			continue
		}
		_, err := a.store.CompareAndSwap(ctx,
			[]kvstore.Cond{kvstore.ModRevisionIs(kv.Key, kv.ModRevision)},
			kvstore.DeleteOp(kv.Key), kvstore.DeleteOp(lkey))
		if err != nil {
			return n, fmt.Errorf("cluster %s: collect identity reservation %s: %w", a.cluster, kv.Key, err)
		}
		if local, err := a.parseIDKey(kv.Key); err == nil {
			a.mu.Lock()
			delete(a.taken, local)
			a.mu.Unlock()
		}
		n++
	}
	return n, nil
}

// Len is the number of identities in use.
func (a *allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byLabels)
}
