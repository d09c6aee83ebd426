// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//go:build ignore

/*
 * Socket-level load balancing for global services.
 *
 * cgroup sock_addr hooks rewrite a service VIP:port to a chosen backend when a
 * socket in the attached cgroup calls connect() (TCP and connected UDP) or
 * sendmsg() (unconnected UDP), before any packet exists. recvmsg() (UDP)
 * and getpeername() (TCP and UDP) translate the backend back to the VIP, so
 * the application only ever sees the address it asked for.
 *
 * All addresses are 16 bytes in network byte order; IPv4 is stored
 * IPv4-mapped (::ffff:a.b.c.d), so one set of maps serves both families and a
 * dual-stack socket connecting to ::ffff:VIP finds the IPv4 service.
 *
 * Map layout (mirrored by the Go types in maps.go; keep them in step):
 *   cm_services  an open-addressing table in an array: (addr, port, proto)
 *                hashed to a home index, probed linearly for at most
 *                SVC_PROBES entries; each 64-byte entry (one cache line)
 *                holds its state, its key and the service's slot set,
 *                preferred/fallback counts, flags, revision, and the
 *                backend ids of the first SLOT_GROUP slots (the head)
 *   cm_slots     (slot set, slot / SLOT_GROUP) -> backend ids of SLOT_GROUP slots,
 *                for groups 1 and up (group 0 is the entry's head);
 *                slots [0, preferred) are the preferred set, then fallback;
 *                0 marks a slot past the set's end
 *   cm_backends  backend id                   -> addr, port, cluster, node id
 *   cm_nodes     node id                      -> flags (NODE_F_DOWN), name
 *   cm_revnat    (socket cookie, backend)     -> VIP, for UDP recvmsg/getpeername
 *   cm_tcp_vip   socket cookie & tcp_vip_mask -> cookie, VIP, backend, for TCP
 *                getpeername (a ring: an array overwritten in cookie order)
 *   cm_stats     per-CPU counters
 *   cm_svc_affinity (addr, port, proto)       -> session affinity timeout (s)
 *   cm_affinity  (service, netns cookie)      -> backend, slot set, last use
 *
 * Network policy (policy.h, included below):
 *   cm_ipcache   address                      -> identity, every cluster's pods
 *   cm_pol_netns netns cookie                 -> local endpoint (identity, IPs)
 *   cm_pol_state identity                     -> enforced directions, revision
 *   cm_pol       (identity, peer, dir, proto, port) -> allow or deny
 *   cm_pol_ct    (endpoint IP, peer, port, proto)   -> UDP flow allowed before
 *   cm_pol_stats per-CPU policy counters
 *
 * Userspace writes a service's new slots under a fresh slot set, then a new
 * service entry in a free table entry of the key's probe window, first not
 * live, then rewritten the same but live, then marks the old entry dead: a reader sees
 * either the old or the new backend set, never a mix. The old entry, the old
 * set and the backends only it uses are freed after an RCU grace period, when
 * no program can still be reading them, so a live entry never changes while
 * a program holds it.
 */
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define NODE_F_DOWN 1
/* svc_value.flags: the service has session affinity (cm_svc_affinity). */
#define SVC_F_AFFINITY 1
/* Slots per cm_slots entry, and in a service entry's head. A power of two.
 * Grouping slots makes a service of up to four backends one entry, not four
 * (each hash entry costs the same to write whatever its value's size), and
 * keeping the first group in the service entry itself makes it no slot
 * entry at all: a connect to such a service does one hash lookup fewer (a
 * cold one, half of the program's run time with 100,000 services), and a
 * bulk load writes half the entries. */
#define SLOT_GROUP 4
/* Single loads and stores the compiler may not merge, split or reorder
 * with one another (the cm_tcp_vip ring's cookie, a cm_services state). */
#define READ_ONCE_U32(x) (*(volatile __u32 *)&(x))
#define READ_ONCE_U64(x) (*(volatile __u64 *)&(x))
#define WRITE_ONCE_U64(x, v) (*(volatile __u64 *)&(x) = (v))
/* Rejection-sampling draws before falling back to an exact scan. */
#define PICK_TRIES 3

enum stat_index {
	STAT_TRANSLATED = 0,
	STAT_FALLBACK = 1,
	STAT_NO_BACKEND = 2,
	STAT_REVNAT = 3,
	STAT_MAX = 4,
};

struct svc_key {
	__u32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_value {
	__u32 set;
	__u16 preferred;
	__u16 fallback;
	__u16 flags;
	__u16 pad;
	__u32 rev;
	__u32 head[SLOT_GROUP]; /* backend IDs of slots 0..SLOT_GROUP-1 */
};

/* The head of a service entry as two scalars (slots 0-1 and 2-3), so that
 * the global function cm_pick can take it as arguments. */
struct slot_head {
	__u64 lo;
	__u64 hi;
};

struct slot_key {
	__u32 set;
	__u32 group; /* slot index / SLOT_GROUP */
};

struct slot_value {
	__u32 ids[SLOT_GROUP]; /* backend ID of slot group*SLOT_GROUP + i */
};

struct backend_value {
	__u32 addr[4];
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 cluster_id;
	__u32 node_id;
};

struct node_value {
	__u32 flags;
	__u32 cluster_id;
	char name[256];
};

struct revnat_key {
	__u64 cookie;
	__u32 addr[4];
	__be16 port;
	__u8 pad[6];
};

struct revnat_value {
	__u32 addr[4];
	__be16 port;
	__u8 pad[2];
};

/* max_entries are placeholders: the loader sets them from its Config. */
/* cm_services entry states. A probe stops at an empty entry; dead (freed
 * after a grace period) and free entries hold no service but do not stop it,
 * as a live entry further on may have been placed past them. */
#define SVC_EMPTY 0
#define SVC_LIVE 1
#define SVC_DEAD 2
#define SVC_FREE 3
/* Written, not live yet (the first write of an update). */
#define SVC_RESERVED 4
/* The longest probe: userspace places every key within SVC_PROBES entries
 * of its home index (and refuses it by name otherwise). */
#define SVC_PROBES 128
/* Probes of a lookup that passed dead entries and found nothing (svc_find). */
#define SVC_PASSES 4

/* One cache line: a hit reads one entry, where the hash map it replaced
 * read a bucket and an element, two cold misses among 100,000 services. */
struct svc_entry {
	__u32 state;
	struct svc_key key;
	struct svc_value value;
	__u32 pad[2];
};

/* The table's size minus one; the loader sets it (a power of two). */
volatile const __u32 svc_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct svc_entry);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct slot_key);
	__type(value, struct slot_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct node_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat_key);
	__type(value, struct revnat_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_stats SEC(".maps");

/* The VIP a TCP socket dialled, for getpeername(): one entry per socket in
 * an array indexed by the socket's cookie modulo its size. Cookies are
 * handed out in increasing order (per CPU, in batches), so the array is a
 * ring: a connect writes the next entries in sequence (warm cache lines,
 * no allocation, no lock), and a socket's entry lasts until about
 * tcp_vip_mask+1 sockets have had cookies after it; getpeername() of an
 * older socket then returns the backend. Socket storage, its predecessor,
 * never forgot but cost two memory-charged allocations per connect, most
 * of the program's run time. An entry counts only for the socket whose
 * cookie it holds, and only while the peer is still the backend it was
 * sent to (a socket that reconnected elsewhere is not rewritten). A writer
 * clears the cookie first and sets it last, and a reader checks it before
 * and after copying, so a reader never takes a half-written entry for its
 * own. */
struct tcp_vip {
	__u64 cookie; /* 0: no socket */
	__u32 vip[4];
	__u32 backend[4];
	__be16 vip_port;
	__be16 backend_port;
	__u32 pad;
};

/* The ring's size minus one; the loader sets it (a power of two). */
volatile const __u32 tcp_vip_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tcp_vip);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_tcp_vip SEC(".maps");

/* Session affinity (sessionAffinity: ClientIP). The client is the socket's
 * network namespace, i.e. the pod: in the socket hooks the source address
 * is not chosen yet, and a pod's sockets share one namespace. An entry
 * counts while the service keeps the slot set it was made under (any change
 * of the service's backends starts clients afresh), its backend's node is
 * up, and it was used within the service's timeout. */
struct aff_key {
	struct svc_key svc;
	__u64 cookie;
};

struct aff_value {
	__u64 last;
	__u32 backend;
	__u32 set;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_svc_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct aff_key);
	__type(value, struct aff_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_affinity SEC(".maps");

#include "events.h"

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&cm_stats, &idx);

	if (v)
		*v += 1;
}

/* usable_id returns the backend ID behind slot idx of the slot set (whose
 * first slots are in head) if the backend exists and its node is not marked
 * down, else 0. */
static __always_inline __u32 usable_id(__u32 set, struct slot_head head, __u32 idx)
{
	struct slot_key sk = { .set = set, .group = idx / SLOT_GROUP };
	struct backend_value *be;
	struct node_value *node;
	struct slot_value *sv;
	__u32 id;

	if (idx < SLOT_GROUP) {
		__u64 two = idx < 2 ? head.lo : head.hi;

		id = (__u32)(two >> ((idx & 1) * 32));
	} else {
		sv = bpf_map_lookup_elem(&cm_slots, &sk);
		if (!sv)
			return 0;
		id = sv->ids[idx & (SLOT_GROUP - 1)];
	}
	if (!id)
		return 0;
	be = bpf_map_lookup_elem(&cm_backends, &id);
	if (!be)
		return 0;
	node = bpf_map_lookup_elem(&cm_nodes, &be->node_id);
	if (node && (node->flags & NODE_F_DOWN))
		return 0;
	return id;
}

static __always_inline __u32 rotl32(__u32 x, int r) { return (x << r) | (x >> (32 - r)); }

/* svc_hash is the home index hash of a service key, murmur3's 32-bit mix
 * over its five words; svcHash in svctable.go must compute the same. */
static __always_inline __u32 svc_hash(const struct svc_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0x2d358dcc;
	int i;

#pragma unroll
	for (i = 0; i < 5; i++) {
		__u32 x = w[i] * 0xcc9e2d51;

		x = rotl32(x, 15) * 0x1b873593;
		h = rotl32(h ^ x, 13) * 5 + 0xe6546b64;
	}
	h ^= 20;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* svc_find returns the live entry of key in cm_services, or NULL. The state
 * is read before the key and value (the compiler barrier keeps that order;
 * x86 keeps loads in order): an entry turns live only once written in
 * full, and stays unchanged until a grace period after it stops being
 * live, so what is read after a live state is one whole entry.
 *
 * An update makes the new entry live, then the old one dead. A probe that
 * passed the new entry's place just before it turned live and reached the
 * old one just after it died finds neither; having passed a dead entry, it
 * probes again, and then finds the new one (live before the old one died,
 * which it saw), unless the key was updated again meanwhile: up to
 * SVC_PASSES probes. */
static __always_inline struct svc_value *svc_find(const struct svc_key *key)
{
	__u32 h = svc_hash(key);
	int pass, i;

	for (pass = 0; pass < SVC_PASSES; pass++) {
		int dead = 0;

		for (i = 0; i < SVC_PROBES; i++) {
			__u32 idx = (h + i) & svc_mask;
			struct svc_entry *e = bpf_map_lookup_elem(&cm_services, &idx);
			__u32 st;

			if (!e)
				return 0;
			st = READ_ONCE_U32(e->state);
			if (st == SVC_EMPTY)
				break;
			if (st != SVC_LIVE) {
				dead |= st == SVC_DEAD;
				continue;
			}
			asm volatile("" ::: "memory");
			if (e->key.addr[3] == key->addr[3] && e->key.port == key->port && e->key.proto == key->proto &&
			    e->key.addr[0] == key->addr[0] && e->key.addr[1] == key->addr[1] &&
			    e->key.addr[2] == key->addr[2])
				return &e->value;
		}
		if (!dead)
			return 0;
	}
	return 0;
}

/* backend_up tells whether a backend exists and its node is not down. */
static __always_inline int backend_up(__u32 id)
{
	struct backend_value *be = bpf_map_lookup_elem(&cm_backends, &id);
	struct node_value *node;

	if (!be)
		return 0;
	node = bpf_map_lookup_elem(&cm_nodes, &be->node_id);
	return !(node && (node->flags & NODE_F_DOWN));
}

/* affine returns the backend a client was given within the service's
 * affinity timeout, if it still counts, else 0. */
static __always_inline __u32 affine(const struct aff_key *ak, const struct svc_value *svc, __u64 now)
{
	struct aff_value *av = bpf_map_lookup_elem(&cm_affinity, ak);
	__u32 *timeout = bpf_map_lookup_elem(&cm_svc_affinity, &ak->svc);

	if (!av || !timeout || av->set != svc->set || now - av->last > (__u64)*timeout * 1000000000ULL)
		return 0;
	return backend_up(av->backend) ? av->backend : 0;
}

struct scan_ctx {
	struct slot_head head;
	__u32 set;
	__u32 base;
	__u32 seen;
	__u32 found;
};

/* scan_cb is one step of reservoir sampling: the i-th usable slot replaces
 * the pick with probability 1/i. Nothing after the loop branches on the
 * counter, so the verifier can treat it as imprecise and converge. */
static long scan_cb(__u32 i, void *data)
{
	struct scan_ctx *c = data;
	__u32 id = usable_id(c->set, c->head, c->base + i);

	if (!id)
		return 0;
	c->seen++;
	if (bpf_get_prandom_u32() % c->seen == 0)
		c->found = id;
	return 0;
}

/* cm_pick draws uniformly among the usable slots [base, base+n) and returns
 * the backend ID, 0 if none is usable. A few random draws come first
 * (rejection sampling: uniform over the usable slots, O(1) while most are
 * healthy); if they all hit unusable slots, one reservoir-sampling pass over
 * the range picks exactly uniformly. Both paths are uniform, so their mixture
 * is too. It is a global function so the verifier checks it once, not once
 * per call site; the head comes as two scalars (slots 0-1 and 2-3) because
 * a global function cannot take a map value. */
__noinline __u32 cm_pick(__u32 set, __u64 head_lo, __u64 head_hi, __u32 base, __u32 n)
{
	struct slot_head head = { .lo = head_lo, .hi = head_hi };
	struct scan_ctx c = {};
	__u32 id;
	int i;

	if (n == 0)
		return 0;
	for (i = 0; i < PICK_TRIES; i++) {
		id = usable_id(set, head, base + bpf_get_prandom_u32() % n);
		if (id)
			return id;
	}
	c.head = head;
	c.set = set;
	c.base = base;
	bpf_loop(n, scan_cb, &c, 0);
	return c.found;
}

static __always_inline void key_from_ctx(struct bpf_sock_addr *ctx, int v6, __u32 addr[4])
{
	if (v6) {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	} else {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0xffff);
		addr[3] = ctx->user_ip4;
	}
}

static __always_inline int is_v4_mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

/* xlate rewrites ctx's destination if it is a service frontend. It returns 0
 * to refuse the call (a service with no usable backend fails fast with EPERM
 * instead of sending to a VIP nobody answers), 1 otherwise. */
static __always_inline int xlate(struct bpf_sock_addr *ctx, int v6)
{
	struct svc_key key = {};
	struct revnat_key rk = {};
	struct revnat_value rv = {}, *old;
	struct aff_key ak = {};
	struct backend_value *be;
	struct svc_value *svc;
	__u64 head_lo, head_hi;
	__u64 now = 0;
	__u32 id = 0;
	__u8 evflags = 0;

	key_from_ctx(ctx, v6, key.addr);
	key.port = (__be16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	svc = svc_find(&key);
	if (!svc)
		return 1;

	if (svc->flags & SVC_F_AFFINITY) {
		ak.svc = key;
		ak.cookie = bpf_get_netns_cookie(ctx);
		now = bpf_ktime_get_ns();
		id = affine(&ak, svc, now);
		if (id)
			evflags |= EV_F_AFFINITY;
	}
	head_lo = (__u64)svc->head[0] | (__u64)svc->head[1] << 32;
	head_hi = (__u64)svc->head[2] | (__u64)svc->head[3] << 32;
	if (!id)
		id = cm_pick(svc->set, head_lo, head_hi, 0, svc->preferred);
	if (!id) {
		id = cm_pick(svc->set, head_lo, head_hi, svc->preferred, svc->fallback);
		if (id) {
			stat_inc(STAT_FALLBACK);
			evflags |= EV_F_FALLBACK;
		}
	}
	be = id ? bpf_map_lookup_elem(&cm_backends, &id) : 0;
	if (!be) {
		stat_inc(STAT_NO_BACKEND);
		if (ev_admit(EV_NO_BACKEND)) {
			struct flow_event ev = { .kind = EV_NO_BACKEND, .proto = key.proto, .port = key.port };

			ev.cookie = bpf_get_netns_cookie(ctx);
			__builtin_memcpy(ev.addr, key.addr, sizeof(ev.addr));
			ev_send(&ev);
		}
		return 0;
	}
	if (ev_admit(EV_TRANSLATE)) {
		struct flow_event ev = { .kind = EV_TRANSLATE, .proto = key.proto, .port = key.port,
					 .peer_port = be->port, .flags = evflags, .backend = id };

		ev.cookie = bpf_get_netns_cookie(ctx);
		__builtin_memcpy(ev.addr, key.addr, sizeof(ev.addr));
		__builtin_memcpy(ev.peer, be->addr, sizeof(ev.peer));
		ev_send(&ev);
	}

	if (v6) {
		ctx->user_ip6[0] = be->addr[0];
		ctx->user_ip6[1] = be->addr[1];
		ctx->user_ip6[2] = be->addr[2];
		ctx->user_ip6[3] = be->addr[3];
	} else {
		if (!is_v4_mapped(be->addr)) {
			stat_inc(STAT_NO_BACKEND);
			return 0;
		}
		ctx->user_ip4 = be->addr[3];
	}
	ctx->user_port = (__u32)be->port;
	stat_inc(STAT_TRANSLATED);
	if (svc->flags & SVC_F_AFFINITY) {
		struct aff_value av = { .last = now, .backend = id, .set = svc->set };

		bpf_map_update_elem(&cm_affinity, &ak, &av, BPF_ANY);
	}

	/* Remember the VIP so that getpeername() (TCP and UDP) and UDP
	 * replies show the address the application dialled. TCP: in the
	 * socket's slot of the cm_tcp_vip ring. UDP: by socket and backend (an
	 * unconnected socket talks to several), skipping the write when the
	 * entry is already there (sendmsg runs per datagram); socket cookies
	 * are never reused, so an entry of a closed socket is only evicted by
	 * the LRU, never misread. */
	if (key.proto != IPPROTO_UDP) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		__u32 slot = (__u32)cookie & tcp_vip_mask;
		struct tcp_vip *tv = bpf_map_lookup_elem(&cm_tcp_vip, &slot);

		if (tv) {
			WRITE_ONCE_U64(tv->cookie, 0);
			__builtin_memcpy(tv->vip, key.addr, sizeof(tv->vip));
			__builtin_memcpy(tv->backend, be->addr, sizeof(tv->backend));
			tv->vip_port = key.port;
			tv->backend_port = be->port;
			WRITE_ONCE_U64(tv->cookie, cookie);
		}
		return 1;
	}
	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be->addr, sizeof(rk.addr));
	rk.port = be->port;
	__builtin_memcpy(rv.addr, key.addr, sizeof(rv.addr));
	rv.port = key.port;
	old = bpf_map_lookup_elem(&cm_revnat, &rk);
	if (!old || old->port != rv.port || old->addr[0] != rv.addr[0] || old->addr[1] != rv.addr[1] ||
	    old->addr[2] != rv.addr[2] || old->addr[3] != rv.addr[3])
		bpf_map_update_elem(&cm_revnat, &rk, &rv, BPF_ANY);
	return 1;
}

/* revnat puts the VIP back as the peer address when the socket talked to a
 * backend through a service. Always returns 1: these hooks cannot refuse. */
static __always_inline int revnat(struct bpf_sock_addr *ctx, int v6)
{
	struct revnat_key rk = {};
	struct revnat_value *rv;

	key_from_ctx(ctx, v6, rk.addr);
	rk.port = (__be16)ctx->user_port;
	if (ctx->protocol != IPPROTO_UDP) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		__u32 slot = (__u32)cookie & tcp_vip_mask;
		struct tcp_vip *tv = bpf_map_lookup_elem(&cm_tcp_vip, &slot);
		__u32 vip[4];
		__be16 vip_port;

		if (!tv || READ_ONCE_U64(tv->cookie) != cookie)
			return 1;
		if (tv->backend_port != rk.port || tv->backend[0] != rk.addr[0] || tv->backend[1] != rk.addr[1] ||
		    tv->backend[2] != rk.addr[2] || tv->backend[3] != rk.addr[3])
			return 1;
		__builtin_memcpy(vip, tv->vip, sizeof(vip));
		vip_port = tv->vip_port;
		if (READ_ONCE_U64(tv->cookie) != cookie)
			return 1; /* overwritten while read */
		if (v6) {
			ctx->user_ip6[0] = vip[0];
			ctx->user_ip6[1] = vip[1];
			ctx->user_ip6[2] = vip[2];
			ctx->user_ip6[3] = vip[3];
		} else {
			ctx->user_ip4 = vip[3];
		}
		ctx->user_port = (__u32)vip_port;
		stat_inc(STAT_REVNAT);
		return 1;
	}
	rk.cookie = bpf_get_socket_cookie(ctx);
	rv = bpf_map_lookup_elem(&cm_revnat, &rk);
	if (!rv)
		return 1;
	if (v6) {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
	} else {
		ctx->user_ip4 = rv->addr[3];
	}
	ctx->user_port = (__u32)rv->port;
	stat_inc(STAT_REVNAT);
	return 1;
}

#include "policy.h"

/* A socket's connect or unconnected send is translated first, then checked
 * against the egress policy of the endpoint that owns the socket, so a
 * service is allowed or denied by the identity of the backend it reaches. */
static __always_inline int xlate_and_check(struct bpf_sock_addr *ctx, int v6)
{
	if (!xlate(ctx, v6))
		return 0;
	return egress_allowed(ctx, v6);
}

SEC("cgroup/connect4")
int cm_connect4(struct bpf_sock_addr *ctx) { return xlate_and_check(ctx, 0); }

SEC("cgroup/sendmsg4")
int cm_sendmsg4(struct bpf_sock_addr *ctx) { return xlate_and_check(ctx, 0); }

SEC("cgroup/recvmsg4")
int cm_recvmsg4(struct bpf_sock_addr *ctx) { return revnat(ctx, 0); }

SEC("cgroup/getpeername4")
int cm_getpeername4(struct bpf_sock_addr *ctx) { return revnat(ctx, 0); }

SEC("cgroup/connect6")
int cm_connect6(struct bpf_sock_addr *ctx) { return xlate_and_check(ctx, 1); }

SEC("cgroup/sendmsg6")
int cm_sendmsg6(struct bpf_sock_addr *ctx) { return xlate_and_check(ctx, 1); }

SEC("cgroup/recvmsg6")
int cm_recvmsg6(struct bpf_sock_addr *ctx) { return revnat(ctx, 1); }

SEC("cgroup/getpeername6")
int cm_getpeername6(struct bpf_sock_addr *ctx) { return revnat(ctx, 1); }

char __license[] SEC("license") = "Dual BSD/GPL";
