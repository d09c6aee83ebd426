/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow events: what the socket load balancer and the policy checks decided,
 * sent to the agent through a ring buffer.
 *
 * Events are cheap by design and never stall the datapath: each kind has a
 * per-CPU token bucket (cm_ev_cfg gives its rate per CPU and second, 0 turns
 * the kind off), an event over the rate is counted and dropped, and so is an
 * event the ring buffer has no room for. The agent reads the counters
 * (cm_ev_stats) and exports them, so a loss is always visible.
 */
#ifndef __CLUSTERMESH_EVENTS_H
#define __CLUSTERMESH_EVENTS_H

enum ev_kind {
	EV_TRANSLATE = 0, /* a connect/sendmsg to a service was translated */
	EV_NO_BACKEND = 1, /* ... refused: no usable backend */
	EV_POLICY_DENY = 2, /* a policy check refused a connect or dropped a packet */
	EV_KIND_MAX = 3,
};

/* flow_event.flags */
#define EV_F_FALLBACK 1 /* the backend came from the fallback set */
#define EV_F_EGRESS 2 /* policy: egress (else ingress) */
#define EV_F_AFFINITY 4 /* the backend came from session affinity */

struct flow_event {
	__u64 ts; /* bpf_ktime_get_ns */
	__u64 cookie; /* netns cookie of the socket (0 for ingress packets) */
	__u32 addr[4]; /* translate: the service; policy: the local endpoint */
	__u32 peer[4]; /* translate: the backend; policy: the peer */
	__be16 port;
	__be16 peer_port;
	__u8 kind;
	__u8 proto;
	__u8 flags;
	__u8 pad;
	__u32 backend; /* translate: backend ID */
	__u32 identity; /* policy: the local endpoint's identity */
	__u32 peer_identity; /* policy: the peer's identity */
};

struct ev_bucket {
	__u64 last; /* ns of the last refill */
	__u64 tokens; /* in millitokens, so a refill every ms counts */
};

enum ev_stat {
	EV_STAT_SENT = 0,
	EV_STAT_RATE_LIMITED = 1,
	EV_STAT_LOST = 2,
	EV_STAT_MAX = 3,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_events SEC(".maps");

/* Events per second and CPU, by kind; 0 turns the kind off. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, EV_KIND_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ev_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ev_bucket);
	__uint(max_entries, EV_KIND_MAX);
} cm_ev_bucket SEC(".maps");

/* Counters by kind * EV_STAT_MAX + stat. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, EV_KIND_MAX * EV_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ev_stats SEC(".maps");

static __always_inline void ev_count(__u32 kind, __u32 stat)
{
	__u32 idx = kind * EV_STAT_MAX + stat;
	__u64 *v = bpf_map_lookup_elem(&cm_ev_stats, &idx);

	if (v)
		*v += 1;
}

/* ev_admit takes a token of kind's bucket; 0 when the kind is off or over
 * its rate. The bucket holds one second's worth. */
static __always_inline int ev_admit(__u32 kind)
{
	struct ev_bucket *b;
	__u64 now, rate, cap;
	__u32 *cfg;

	cfg = bpf_map_lookup_elem(&cm_ev_cfg, &kind);
	if (!cfg || !*cfg)
		return 0;
	b = bpf_map_lookup_elem(&cm_ev_bucket, &kind);
	if (!b)
		return 0;
	now = bpf_ktime_get_ns();
	rate = *cfg;
	cap = rate * 1000;
	/* rate tokens per second = rate millitokens per ms. */
	b->tokens += (now - b->last) / 1000000 * rate;
	if (b->tokens > cap)
		b->tokens = cap;
	if (now - b->last >= 1000000)
		b->last = now;
	if (b->tokens < 1000) {
		ev_count(kind, EV_STAT_RATE_LIMITED);
		return 0;
	}
	b->tokens -= 1000;
	return 1;
}

/* bpf_ringbuf_output flags and bpf_ringbuf_query's item (uapi bpf.h). */
#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2
#define RB_AVAIL_DATA 0
/* Wake the reader only once this much is waiting: it polls every 100 ms
 * anyway, and a wakeup per event would cost each connect a context switch. */
#define EV_WAKEUP_BYTES (1 << 18)

static __always_inline void ev_send(struct flow_event *ev)
{
	__u64 flags = RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&cm_events, RB_AVAIL_DATA) > EV_WAKEUP_BYTES)
		flags = RB_FORCE_WAKEUP;
	ev->ts = bpf_ktime_get_ns();
	if (bpf_ringbuf_output(&cm_events, ev, sizeof(*ev), flags))
		ev_count(ev->kind, EV_STAT_LOST);
	else
		ev_count(ev->kind, EV_STAT_SENT);
}

#endif /* __CLUSTERMESH_EVENTS_H */
