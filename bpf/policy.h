/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Policy: identity-aware network policy for the node's local endpoints.
 *
 * Identities are numbers with the cluster ID in their high bits, so one
 * number names a set of pods mesh-wide. cm_ipcache says which identity owns
 * an address (every connected cluster's pods); userspace computes, per local
 * identity and direction, the peer identities and ports it may reach (or is
 * denied) and writes them to cm_pol. Checks happen where they are cheapest:
 *
 *   egress   in the socket hooks (connect, unconnected sendmsg), after the
 *            service translation, so a service is judged by the backend it
 *            reaches; the socket's endpoint is found by its network
 *            namespace cookie (cm_pol_netns). A denied call fails at once
 *            with EPERM: no packet is sent.
 *   ingress  in a tcx program on the host side of the pod's interface,
 *            before the packet reaches the pod: a new TCP connection (SYN
 *            without ACK) or a UDP datagram from a peer the policy does not
 *            allow is dropped and counted. Other TCP segments pass: they
 *            belong to a connection some check already let through (or
 *            reach no socket and get a reset).
 *
 * UDP has no handshake, so an allowed UDP exchange is remembered in cm_pol_ct
 * (endpoint address, peer address and port) to let its replies through the
 * other direction's check. Each entry carries the endpoint identity's policy
 * revision: when the policy changes, userspace bumps the revision and old
 * entries stop counting, so a peer that lost its permission loses it at once.
 *
 * Lookups try the exact (peer, protocol, port) first and then each wildcard
 * (any peer, any protocol, any port) the identity has entries of: one to
 * eight hash lookups, and only for endpoints a policy selects in that
 * direction. A deny entry anywhere wins over allow entries (Cilium's
 * ingressDeny / egressDeny).
 */
#ifndef __CLUSTERMESH_POLICY_H
#define __CLUSTERMESH_POLICY_H

#define IDENTITY_WORLD 2

#define POL_F_INGRESS 1
#define POL_F_EGRESS 2

#define POL_ALLOW 1
#define POL_DENY 2

#define POL_DIR_INGRESS 0
#define POL_DIR_EGRESS 1

#define TCX_PASS 0
#define TCX_DROP 2

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

enum pol_stat_index {
	POL_STAT_EGRESS_DENIED = 0,
	POL_STAT_INGRESS_DROPPED = 1,
	POL_STAT_EGRESS_ALLOWED = 2,
	POL_STAT_INGRESS_ALLOWED = 3,
	POL_STAT_MAX = 4,
};

struct ipc_key {
	__u32 addr[4];
};

struct pol_endpoint {
	__u32 identity;
	__be32 ip4; /* 0: none */
	__u32 ip6[4]; /* all zero: none */
};

struct pol_state {
	__u32 flags;
	__u32 rev;
	/* shapes has bit dir*8 + i set when the identity has entries of
	 * wildcard combination i (4: any peer, 2: any protocol, 1: any port)
	 * in direction dir: lookups of absent combinations are skipped. */
	__u32 shapes;
};

struct pol_key {
	__u32 identity;
	__u32 peer; /* 0: any peer */
	__u8 dir;
	__u8 proto; /* 0: any protocol */
	__be16 port; /* 0: any port */
};

struct ct_key {
	__u32 ep[4];
	__u32 peer[4];
	__be16 port; /* the peer's port */
	__u8 proto;
	__u8 pad;
};

struct ct_value {
	__u32 identity;
	__u32 rev;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipc_key);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct pol_endpoint);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct pol_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct pol_key);
	__type(value, __u8);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, POL_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_stats SEC(".maps");

static __always_inline void pol_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&cm_pol_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline __u32 peer_identity(const __u32 addr[4])
{
	__u32 *id = bpf_map_lookup_elem(&cm_ipcache, addr);

	return id ? *id : IDENTITY_WORLD;
}

/* pol_verdict returns POL_ALLOW if some entry allows the traffic and none
 * denies it, POL_DENY otherwise (no entry: the direction is enforced, so
 * what is not allowed is denied). */
static __always_inline int pol_verdict(__u32 identity, const struct pol_state *st, __u32 peer, __u8 dir,
				       __u8 proto, __be16 port)
{
	struct pol_key k = { .identity = identity, .dir = dir };
	__u32 shapes = st->shapes >> (dir * 8);
	int allowed = 0;
	__u8 *v;
	int i;

#pragma unroll
	for (i = 0; i < 8; i++) {
		if (!(shapes & (1 << i)))
			continue;
		k.peer = (i & 4) ? 0 : peer;
		k.proto = (i & 2) ? 0 : proto;
		k.port = (i & 1) ? 0 : port;
		v = bpf_map_lookup_elem(&cm_pol, &k);
		if (!v)
			continue;
		if (*v == POL_DENY)
			return POL_DENY;
		allowed = 1;
	}
	return allowed ? POL_ALLOW : POL_DENY;
}

/* ct_allowed tells whether an earlier allowed UDP exchange of the endpoint
 * with this peer and port still counts under the current policy. */
static __always_inline int ct_allowed(const struct ct_key *ck, __u32 identity, const struct pol_state *st)
{
	struct ct_value *cv = bpf_map_lookup_elem(&cm_pol_ct, ck);

	return cv && cv->identity == identity && cv->rev == st->rev;
}

static __always_inline void ct_remember(const struct ct_key *ck, __u32 identity, const struct pol_state *st)
{
	struct ct_value cv = { .identity = identity, .rev = st->rev };

	bpf_map_update_elem(&cm_pol_ct, ck, &cv, BPF_ANY);
}

/* egress_allowed checks the (already translated) destination of a connect
 * or sendmsg against the egress policy of the socket's endpoint. It returns
 * 1 to let the call proceed, 0 to refuse it with EPERM. Sockets of no known
 * endpoint (the host's, a pod the agent has not mapped yet) pass. */
static __always_inline int egress_allowed(struct bpf_sock_addr *ctx, int v6)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct pol_endpoint *ep;
	struct pol_state *st;
	struct ct_key ck = {};
	__u32 id, peer;

	ep = bpf_map_lookup_elem(&cm_pol_netns, &cookie);
	if (!ep)
		return 1;
	id = ep->identity;
	st = bpf_map_lookup_elem(&cm_pol_state, &id);
	if (!st || !(st->flags & POL_F_EGRESS))
		return 1;

	if (v6) {
		ck.ep[0] = ep->ip6[0];
		ck.ep[1] = ep->ip6[1];
		ck.ep[2] = ep->ip6[2];
		ck.ep[3] = ep->ip6[3];
	} else {
		ck.ep[2] = bpf_htonl(0xffff);
		ck.ep[3] = ep->ip4;
	}
	key_from_ctx(ctx, v6, ck.peer);
	ck.port = (__be16)ctx->user_port;
	ck.proto = (__u8)ctx->protocol;
	if (ck.proto == IPPROTO_UDP && ct_allowed(&ck, id, st))
		return 1;
	peer = peer_identity(ck.peer);
	if (pol_verdict(id, st, peer, POL_DIR_EGRESS, ck.proto, ck.port) != POL_ALLOW) {
		pol_stat_inc(POL_STAT_EGRESS_DENIED);
		if (ev_admit(EV_POLICY_DENY)) {
			struct flow_event ev = { .kind = EV_POLICY_DENY, .flags = EV_F_EGRESS, .proto = ck.proto,
						 .peer_port = ck.port, .cookie = cookie, .identity = id,
						 .peer_identity = peer };

			__builtin_memcpy(ev.addr, ck.ep, sizeof(ev.addr));
			__builtin_memcpy(ev.peer, ck.peer, sizeof(ev.peer));
			ev_send(&ev);
		}
		return 0;
	}
	pol_stat_inc(POL_STAT_EGRESS_ALLOWED);
	if (ck.proto == IPPROTO_UDP)
		ct_remember(&ck, id, st);
	return 1;
}

struct __sk_buff;

/* cm_pod_ingress runs on the host side of a local pod's interface, for
 * packets on their way into the pod (tcx egress of the host veth). */
SEC("tcx/egress")
int cm_pod_ingress(struct __sk_buff *skb)
{
	struct ct_key ck = {};
	struct pol_state *st;
	__u32 *idp, id, peer, l4off;
	__be16 ethertype, ports[2];
	__u8 proto, flags;

	if (bpf_skb_load_bytes(skb, 12, &ethertype, sizeof(ethertype)))
		return TCX_PASS;
	if (ethertype == bpf_htons(ETH_P_IP)) {
		__u8 vihl;
		__be16 frag;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 6, &frag, 2) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 9, &proto, 1) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 12, &ck.peer[3], 4) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 16, &ck.ep[3], 4))
			return TCX_PASS;
		ck.ep[2] = bpf_htonl(0xffff);
		ck.peer[2] = bpf_htonl(0xffff);
		l4off = ETH_HLEN + (vihl & 0xf) * 4;
		/* Later fragments carry no ports; the first one was checked,
		 * and without it the datagram is never reassembled. */
		if (frag & bpf_htons(0x1fff))
			return TCX_PASS;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 6, &proto, 1) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 8, ck.peer, 16) ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + 24, ck.ep, 16))
			return TCX_PASS;
		l4off = ETH_HLEN + 40;
	} else {
		return TCX_PASS;
	}

	idp = bpf_map_lookup_elem(&cm_ipcache, ck.ep);
	if (!idp)
		return TCX_PASS;
	id = *idp;
	st = bpf_map_lookup_elem(&cm_pol_state, &id);
	if (!st || !(st->flags & POL_F_INGRESS))
		return TCX_PASS;

	ports[0] = 0;
	ports[1] = 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, l4off, ports, sizeof(ports)))
			return TCX_DROP;
	}
	if (proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, l4off + 13, &flags, 1))
			return TCX_DROP;
		if (!(flags & TCP_FLAG_SYN) || (flags & TCP_FLAG_ACK))
			return TCX_PASS;
	}
	ck.port = ports[0];
	ck.proto = proto;
	if (proto == IPPROTO_UDP && ct_allowed(&ck, id, st))
		return TCX_PASS;
	peer = peer_identity(ck.peer);
	if (pol_verdict(id, st, peer, POL_DIR_INGRESS, proto, ports[1]) != POL_ALLOW) {
		pol_stat_inc(POL_STAT_INGRESS_DROPPED);
		if (ev_admit(EV_POLICY_DENY)) {
			struct flow_event ev = { .kind = EV_POLICY_DENY, .proto = proto, .port = ports[1],
						 .peer_port = ports[0], .identity = id, .peer_identity = peer };

			__builtin_memcpy(ev.addr, ck.ep, sizeof(ev.addr));
			__builtin_memcpy(ev.peer, ck.peer, sizeof(ev.peer));
			ev_send(&ev);
		}
		return TCX_DROP;
	}
	pol_stat_inc(POL_STAT_INGRESS_ALLOWED);
	if (proto == IPPROTO_UDP)
		ct_remember(&ck, id, st);
	return TCX_PASS;
}

#endif /* __CLUSTERMESH_POLICY_H */
