// SPDX-License-Identifier: GPL-2.0
/* xdp_lb.c - one-arm stateful L4 load balancer (DNAT + reverse NAT) in XDP.
 *
 * Forward path (client -> VIP):
 *   - Ethernet, IPv4 (no options, no fragments) or IPv6 (no fragment header),
 *     TCP or UDP; (VIP address, port, protocol) is looked up in vip_map
 *     (HASH), falling back to a port-less "any port" VIP entry.
 *   - The backend ("real") is taken from the connection table (LRU_HASH);
 *     TCP SYNs and table misses pick a real from the VIP's consistent-hash
 *     ring (ARRAY of MAX_VIPS * RING_SIZE real indices) using a Jenkins hash
 *     of the flow.  UDP entries expire after UDP_LRU_TIMEOUT_NS.
 *   - The destination address and port are rewritten to the real's
 *     (DNAT); IPv4 header and TCP/UDP checksums are updated incrementally
 *     (bpf_csum_diff for addresses, a manual one's-complement fold for
 *     16-bit fields).  A reverse-NAT entry is recorded for the reply path.
 * Reply path (real -> client): the source is rewritten back to the VIP.
 * ICMP:
 *   - echo requests (ICMP and ICMPv6) are answered in place;
 *   - "fragmentation needed" / "packet too big" / unreachable / time
 *     exceeded errors about a VIP flow are forwarded to the flow's real with
 *     the outer destination and the quoted inner source rewritten.
 * Frames leave through the same interface (XDP_TX) towards the next hop
 * configured in ctl_array (or back to the sender's MAC when unset).
 * Per-VIP packet/byte counters and global counters live in a PERCPU_ARRAY.
 */
#include <stdbool.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_VIPS		64
#define RING_SIZE		4099		/* prime: ring slots per VIP */
#define MAX_REALS		4096
#define CONN_TABLE_SIZE		(1 << 18)
#define UDP_LRU_TIMEOUT_NS	(30ULL * 1000 * 1000 * 1000)
#define HASH_SEED		0x8badf00d
#define DEFAULT_TTL		64

/* vip_meta.flags */
#define F_HASH_NO_SRC_PORT	(1 << 0)	/* source-address affinity */
#define F_LRU_BYPASS		(1 << 1)	/* stateless: no conn or rev-NAT
						 * entries; replies must not
						 * come back through us */
#define F_ANY_PORT		(1 << 2)	/* port-less VIP entry (key port 0) */

/* real_def.flags */
#define F_REAL_IPV6		(1 << 0)

/* lb_stats indices after the per-VIP block */
#define STATS_LRU		(MAX_VIPS + 0)	/* v1: lookups, v2: misses */
#define STATS_NEW_CONN		(MAX_VIPS + 1)	/* v1: TCP SYN, v2: other */
#define STATS_ICMP		(MAX_VIPS + 2)	/* v1: echo replies, v2: errors fwd */
#define STATS_REV_NAT		(MAX_VIPS + 3)	/* v1: packets, v2: bytes */
#define STATS_DROP		(MAX_VIPS + 4)	/* v1: malformed, v2: no real */
#define STATS_MAX		(MAX_VIPS + 5)

#define IP_MF			0x2000
#define IP_OFFSET		0x1fff

#define CONTINUE_PROCESSING	-1

/* <linux/icmp.h> drags in glibc's <sys/socket.h> (via <linux/if.h>), which
 * does not build for the BPF target; the few bits needed are defined here. */
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be32 rest;	/* echo id/sequence, mtu, gateway, ... */
};

struct flow_key {
	union {
		__be32 src;
		__be32 srcv6[4];
	};
	union {
		__be32 dst;
		__be32 dstv6[4];
	};
	union {
		__u32 ports;
		__be16 port16[2];	/* [0] = source, [1] = destination */
	};
	__u8 proto;
	__u8 pad[3];
};

struct vip_key {
	union {
		__be32 vip;
		__be32 vipv6[4];
	};
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct vip_meta {
	__u32 flags;
	__u32 vip_num;
};

struct real_def {
	union {
		__be32 dst;
		__be32 dstv6[4];
	};
	__be16 port;		/* 0: keep the VIP port */
	__u8 flags;
	__u8 pad;
};

struct conn_val {
	__u32 real_idx;
	__u32 pad;
	__u64 atime;
};

struct rev_nat_val {
	union {
		__be32 vip;
		__be32 vipv6[4];
	};
	__be16 port;
	__u16 pad;
	__u32 vip_num;
};

struct lb_stats {
	__u64 v1;
	__u64 v2;
};

struct ctl_value {
	__u8 nexthop_mac[ETH_ALEN];
	__u8 pad[2];
};

struct pkt_desc {
	struct flow_key flow;
	__u8 tcp_flags;
	__u8 icmp_err;	/* flow comes from the header quoted in an ICMP error */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
} vip_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VIPS * RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} ch_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_REALS);
	__type(key, __u32);
	__type(value, struct real_def);
} reals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONN_TABLE_SIZE);
	__type(key, struct flow_key);
	__type(value, struct conn_val);
} conn_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONN_TABLE_SIZE);
	__type(key, struct flow_key);
	__type(value, struct rev_nat_val);
} rev_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS_MAX);
	__type(key, __u32);
	__type(value, struct lb_stats);
} lb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ctl_value);
} ctl_array SEC(".maps");

/* ---- statistics ------------------------------------------------------- */

static __always_inline void stats_add(__u32 idx, __u64 v1, __u64 v2)
{
	struct lb_stats *st = bpf_map_lookup_elem(&lb_stats, &idx);

	if (st) {
		st->v1 += v1;
		st->v2 += v2;
	}
}

/* ---- Jenkins lookup3-style hashing ------------------------------------ */

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> (32 - shift));
}

#define hash_mix(a, b, c)				\
	do {						\
		a -= c; a ^= rol32(c, 4);  c += b;	\
		b -= a; b ^= rol32(a, 6);  a += c;	\
		c -= b; c ^= rol32(b, 8);  b += a;	\
		a -= c; a ^= rol32(c, 16); c += b;	\
		b -= a; b ^= rol32(a, 19); a += c;	\
		c -= b; c ^= rol32(b, 4);  b += a;	\
	} while (0)

#define hash_final(a, b, c)				\
	do {						\
		c ^= b; c -= rol32(b, 14);		\
		a ^= c; a -= rol32(c, 11);		\
		b ^= a; b -= rol32(a, 25);		\
		c ^= b; c -= rol32(b, 16);		\
		a ^= c; a -= rol32(c, 4);		\
		b ^= a; b -= rol32(a, 14);		\
		c ^= b; c -= rol32(b, 24);		\
	} while (0)

static __always_inline __u32 hash_3words(__u32 a, __u32 b, __u32 c, __u32 seed)
{
	a += 0xdeadbeef + (3 << 2) + seed;
	b += 0xdeadbeef + (3 << 2) + seed;
	c += 0xdeadbeef + (3 << 2) + seed;
	hash_final(a, b, c);
	return c;
}

/* Hash of four 32-bit words (an IPv6 address). */
static __always_inline __u32 hash_4words(const __be32 *k, __u32 seed)
{
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (4 << 2) + seed;
	a += k[0];
	b += k[1];
	c += k[2];
	hash_mix(a, b, c);
	a += k[3];
	hash_final(a, b, c);
	return c;
}

static __always_inline __u32 flow_hash(const struct flow_key *flow,
				       bool is_ipv6, bool no_src_port)
{
	union {
		__u32 ports;
		__be16 port16[2];
	} p = { .ports = flow->ports };
	__u32 src;

	if (no_src_port)
		p.port16[0] = 0;
	if (is_ipv6)
		src = hash_4words(flow->srcv6, HASH_SEED);
	else
		src = flow->src;
	return hash_3words(src, p.ports, flow->proto, HASH_SEED);
}

/* ---- checksums -------------------------------------------------------- */

static __always_inline __u16 csum_fold(__u64 csum)
{
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < 4; i++) {
		if (csum >> 16)
			csum = (csum & 0xffff) + (csum >> 16);
	}
	return ~csum;
}

/* Replace a 16-bit word covered by *check (RFC 1624, eqn. 3). */
static __always_inline void csum_replace2(__u16 *check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*check + (__u16)~from + to;

	*check = csum_fold(sum);
}

/* Replace size bytes (multiple of 4) covered by *check, via bpf_csum_diff. */
static __always_inline void csum_replace_mem(__u16 *check, __be32 *from,
					     __be32 *to, __u32 size)
{
	__s64 sum = bpf_csum_diff(from, size, to, size, (__u16)~*check);

	if (sum >= 0)
		*check = csum_fold(sum);
}

/* L4 checksum update; a zero UDP/IPv4 checksum means "none" and stays 0. */
static __always_inline void l4_csum_replace_mem(__u16 *check, __be32 *from,
						__be32 *to, __u32 size,
						bool udp4)
{
	if (udp4 && *check == 0)
		return;
	csum_replace_mem(check, from, to, size);
	if (udp4 && *check == 0)
		*check = 0xffff;
}

static __always_inline void l4_csum_replace2(__u16 *check, __u16 from,
					     __u16 to, bool udp4)
{
	if (udp4 && *check == 0)
		return;
	csum_replace2(check, from, to);
	if (udp4 && *check == 0)
		*check = 0xffff;
}

/* ---- parsing ---------------------------------------------------------- */

static __always_inline int parse_l3(void *data, void *data_end, bool is_ipv6,
				    struct pkt_desc *pd, void **l4)
{
	void *l3 = data + sizeof(struct ethhdr);

	if (is_ipv6) {
		struct ipv6hdr *ip6h = l3;

		if ((void *)(ip6h + 1) > data_end)
			return XDP_DROP;
		if (ip6h->nexthdr == IPPROTO_FRAGMENT)
			return XDP_DROP;	/* fragments are not balanced */
		pd->flow.proto = ip6h->nexthdr;
		__builtin_memcpy(pd->flow.srcv6, &ip6h->saddr, 16);
		__builtin_memcpy(pd->flow.dstv6, &ip6h->daddr, 16);
		*l4 = ip6h + 1;
	} else {
		struct iphdr *iph = l3;

		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		if (iph->ihl != 5)
			return XDP_DROP;	/* IP options are not supported */
		if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return XDP_DROP;
		pd->flow.proto = iph->protocol;
		pd->flow.src = iph->saddr;
		pd->flow.dst = iph->daddr;
		*l4 = iph + 1;
	}
	return CONTINUE_PROCESSING;
}

static __always_inline int parse_l4(void *l4, void *data_end,
				    struct pkt_desc *pd)
{
	if (pd->flow.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		pd->flow.port16[0] = th->source;
		pd->flow.port16[1] = th->dest;
		pd->tcp_flags = ((__u8 *)th)[13];
	} else {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		pd->flow.port16[0] = uh->source;
		pd->flow.port16[1] = uh->dest;
	}
	return 0;
}

/* ---- layer 2 ---------------------------------------------------------- */

static __always_inline void prepare_l2_tx(struct ethhdr *eth)
{
	__u8 old_src[ETH_ALEN];
	struct ctl_value *ctl;
	__u32 zero = 0;

	__builtin_memcpy(old_src, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	ctl = bpf_map_lookup_elem(&ctl_array, &zero);
	if (ctl && (ctl->nexthop_mac[0] | ctl->nexthop_mac[1] |
		    ctl->nexthop_mac[2] | ctl->nexthop_mac[3] |
		    ctl->nexthop_mac[4] | ctl->nexthop_mac[5]))
		__builtin_memcpy(eth->h_dest, ctl->nexthop_mac, ETH_ALEN);
	else
		__builtin_memcpy(eth->h_dest, old_src, ETH_ALEN);
}

/* ---- ICMP ------------------------------------------------------------- */

static __always_inline int icmp4_process(void *l3, void *l4, void *data_end,
					 struct pkt_desc *pd)
{
	struct iphdr *iph = l3;
	struct icmphdr *ic = l4;
	struct iphdr *inner;
	__be16 *ports;
	__be32 tmp;
	__u16 old;

	if ((void *)(ic + 1) > data_end)
		return XDP_DROP;

	if (ic->type == ICMP_ECHO) {
		tmp = iph->saddr;
		iph->saddr = iph->daddr;
		iph->daddr = tmp;	/* swapping keeps the header sum */
		old = *(__u16 *)&iph->ttl;
		iph->ttl = DEFAULT_TTL;
		csum_replace2(&iph->check, old, *(__u16 *)&iph->ttl);
		old = *(__u16 *)ic;
		ic->type = ICMP_ECHOREPLY;
		csum_replace2(&ic->checksum, old, *(__u16 *)ic);
		stats_add(STATS_ICMP, 1, 0);
		return XDP_TX;
	}
	if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED)
		return XDP_PASS;

	inner = (void *)(ic + 1);
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;
	if (inner->ihl != 5)
		return XDP_DROP;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return XDP_DROP;
	/* the quoted packet went VIP -> client: reverse it */
	pd->flow.proto = inner->protocol;
	pd->flow.src = inner->daddr;
	pd->flow.dst = inner->saddr;
	pd->flow.port16[0] = ports[1];
	pd->flow.port16[1] = ports[0];
	pd->icmp_err = 1;
	return CONTINUE_PROCESSING;
}

static __always_inline int icmp6_process(void *l3, void *l4, void *data_end,
					 struct pkt_desc *pd)
{
	struct ipv6hdr *ip6h = l3;
	struct icmp6hdr *ic = l4;
	struct ipv6hdr *inner;
	struct in6_addr tmp;
	__be16 *ports;
	__u16 old;

	if ((void *)(ic + 1) > data_end)
		return XDP_DROP;

	if (ic->icmp6_type == ICMPV6_ECHO_REQUEST) {
		/* the pseudo-header sum is unchanged by the swap */
		tmp = ip6h->saddr;
		ip6h->saddr = ip6h->daddr;
		ip6h->daddr = tmp;
		ip6h->hop_limit = DEFAULT_TTL;
		old = *(__u16 *)ic;
		ic->icmp6_type = ICMPV6_ECHO_REPLY;
		csum_replace2(&ic->icmp6_cksum, old, *(__u16 *)ic);
		stats_add(STATS_ICMP, 1, 0);
		return XDP_TX;
	}
	if (ic->icmp6_type != ICMPV6_PKT_TOOBIG &&
	    ic->icmp6_type != ICMPV6_DEST_UNREACH &&
	    ic->icmp6_type != ICMPV6_TIME_EXCEED)
		return XDP_PASS;	/* neighbour discovery etc. */

	inner = (void *)(ic + 1);
	if ((void *)(inner + 1) > data_end)
		return XDP_DROP;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return XDP_DROP;
	pd->flow.proto = inner->nexthdr;
	__builtin_memcpy(pd->flow.srcv6, &inner->daddr, 16);
	__builtin_memcpy(pd->flow.dstv6, &inner->saddr, 16);
	pd->flow.port16[0] = ports[1];
	pd->flow.port16[1] = ports[0];
	pd->icmp_err = 1;
	return CONTINUE_PROCESSING;
}

/* ---- backend selection ------------------------------------------------ */

static __always_inline int pick_real(struct pkt_desc *pd,
				     const struct vip_meta *vm, bool is_ipv6,
				     __u32 *real_idx, bool *is_new)
{
	bool bypass = vm->flags & F_LRU_BYPASS;
	struct conn_val *cv;
	struct conn_val nv;
	__u32 hash, key, *slot;
	__u64 now = bpf_ktime_get_ns();

	*is_new = false;
	if (!bypass && !(pd->flow.proto == IPPROTO_TCP &&
			 (pd->tcp_flags & 0x12) == 0x02 /* SYN, !ACK */)) {
		cv = bpf_map_lookup_elem(&conn_table, &pd->flow);
		if (cv) {
			if (pd->flow.proto != IPPROTO_UDP) {
				*real_idx = cv->real_idx;
				stats_add(STATS_LRU, 1, 0);
				return 0;
			}
			if (now - cv->atime < UDP_LRU_TIMEOUT_NS) {
				cv->atime = now;
				*real_idx = cv->real_idx;
				stats_add(STATS_LRU, 1, 0);
				return 0;
			}
		}
		stats_add(STATS_LRU, 1, 1);
	}

	if (vm->vip_num >= MAX_VIPS)
		return -1;
	hash = flow_hash(&pd->flow, is_ipv6, vm->flags & F_HASH_NO_SRC_PORT);
	key = vm->vip_num * RING_SIZE + hash % RING_SIZE;
	slot = bpf_map_lookup_elem(&ch_rings, &key);
	if (!slot)
		return -1;
	*real_idx = *slot;

	/* ICMP errors never create connections */
	if (!bypass && !pd->icmp_err) {
		nv.real_idx = *slot;
		nv.pad = 0;
		nv.atime = now;
		bpf_map_update_elem(&conn_table, &pd->flow, &nv, BPF_ANY);
		*is_new = true;
		if (pd->flow.proto == IPPROTO_TCP)
			stats_add(STATS_NEW_CONN, 1, 0);
		else
			stats_add(STATS_NEW_CONN, 0, 1);
	}
	return 0;
}

static __always_inline void record_rev_nat(const struct pkt_desc *pd,
					   const struct real_def *real,
					   const struct vip_meta *vm,
					   bool is_ipv6)
{
	struct flow_key rk = {};
	struct rev_nat_val rv = {};

	/* key: the reply as seen on the wire, real -> client */
	if (is_ipv6) {
		__builtin_memcpy(rk.srcv6, real->dstv6, 16);
		__builtin_memcpy(rk.dstv6, pd->flow.srcv6, 16);
		__builtin_memcpy(rv.vipv6, pd->flow.dstv6, 16);
	} else {
		rk.src = real->dst;
		rk.dst = pd->flow.src;
		rv.vip = pd->flow.dst;
	}
	rk.port16[0] = real->port ? real->port : pd->flow.port16[1];
	rk.port16[1] = pd->flow.port16[0];
	rk.proto = pd->flow.proto;
	rv.port = pd->flow.port16[1];
	rv.vip_num = vm->vip_num;
	bpf_map_update_elem(&rev_nat, &rk, &rv, BPF_ANY);
}

/* ---- address/port rewriting ------------------------------------------- */

/* Rewrite the source (is_src) or destination address and port of a TCP/UDP
 * packet, fixing the IPv4 header checksum and the L4 checksum. */
static __always_inline int nat_rewrite(void *l3, void *l4, void *data_end,
				       bool is_ipv6, __u8 proto, bool is_src,
				       __be32 *new_addr, __be16 new_port)
{
	bool udp = proto == IPPROTO_UDP;
	__be16 *port_p;
	__u16 *check;
	__be32 old[4];

	/* Re-check the L4 bounds here: the verifier does not carry the
	 * protocol it parsed with through the stack-spilled flow key. */
	if (udp) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		check = &uh->check;
		port_p = is_src ? &uh->source : &uh->dest;
	} else {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		check = &th->check;
		port_p = is_src ? &th->source : &th->dest;
	}

	if (is_ipv6) {
		struct ipv6hdr *ip6h = l3;
		struct in6_addr *a = is_src ? &ip6h->saddr : &ip6h->daddr;

		__builtin_memcpy(old, a, 16);
		csum_replace_mem(check, old, new_addr, 16);
		__builtin_memcpy(a, new_addr, 16);
	} else {
		struct iphdr *iph = l3;
		__be32 *a = is_src ? &iph->saddr : &iph->daddr;

		old[0] = *a;
		csum_replace_mem(&iph->check, old, new_addr, 4);
		l4_csum_replace_mem(check, old, new_addr, 4, udp);
		*a = new_addr[0];
	}

	if (new_port && new_port != *port_p) {
		l4_csum_replace2(check, *port_p, new_port, udp && !is_ipv6);
		*port_p = new_port;
	}
	return 0;
}

/* ICMP error about a VIP flow: outer destination VIP -> real, quoted source
 * VIP -> real and quoted source port VIP port -> real port. */
static __always_inline int icmp_err_rewrite(void *l3, void *l4,
					    void *data_end, bool is_ipv6,
					    __be32 *new_addr, __be16 new_port)
{
	__be32 old[4];
	__be16 *ports;
	__u16 *check;

	if (is_ipv6) {
		struct ipv6hdr *ip6h = l3;
		struct icmp6hdr *ic = l4;
		struct ipv6hdr *inner = (void *)(ic + 1);

		ports = (void *)(inner + 1);
		if ((void *)(ports + 2) > data_end)
			return -1;
		check = &ic->icmp6_cksum;
		/* outer daddr is part of the ICMPv6 pseudo header */
		__builtin_memcpy(old, &ip6h->daddr, 16);
		csum_replace_mem(check, old, new_addr, 16);
		__builtin_memcpy(&ip6h->daddr, new_addr, 16);
		__builtin_memcpy(old, &inner->saddr, 16);
		csum_replace_mem(check, old, new_addr, 16);
		__builtin_memcpy(&inner->saddr, new_addr, 16);
	} else {
		struct iphdr *iph = l3;
		struct icmphdr *ic = l4;
		struct iphdr *inner = (void *)(ic + 1);
		__u16 old_check;

		ports = (void *)(inner + 1);
		if ((void *)(ports + 2) > data_end)
			return -1;
		check = &ic->checksum;
		old[0] = iph->daddr;
		csum_replace_mem(&iph->check, old, new_addr, 4);
		iph->daddr = new_addr[0];
		old[0] = inner->saddr;
		old_check = inner->check;
		csum_replace_mem(&inner->check, old, new_addr, 4);
		inner->saddr = new_addr[0];
		/* the ICMP sum covers the quoted address and header checksum */
		csum_replace_mem(check, old, new_addr, 4);
		csum_replace2(check, old_check, inner->check);
	}
	if (new_port && new_port != ports[0]) {
		csum_replace2(check, ports[0], new_port);
		ports[0] = new_port;
	}
	return 0;
}

/* ---- reply path ------------------------------------------------------- */

static __always_inline int reverse_nat(struct ethhdr *eth, void *l3, void *l4,
				       void *data_end, bool is_ipv6,
				       struct pkt_desc *pd, __u64 pkt_bytes)
{
	struct rev_nat_val *rv;
	__be32 vip[4];

	rv = bpf_map_lookup_elem(&rev_nat, &pd->flow);
	if (!rv)
		return XDP_PASS;
	if (is_ipv6)
		__builtin_memcpy(vip, rv->vipv6, 16);
	else
		vip[0] = rv->vip;
	if (nat_rewrite(l3, l4, data_end, is_ipv6, pd->flow.proto, true, vip,
			rv->port) < 0)
		return XDP_DROP;
	stats_add(STATS_REV_NAT, 1, pkt_bytes);
	prepare_l2_tx(eth);
	return XDP_TX;
}

/* ---- main path -------------------------------------------------------- */

static __always_inline int process_packet(struct xdp_md *ctx, bool is_ipv6)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u64 pkt_bytes = data_end - data;
	struct ethhdr *eth = data;
	struct pkt_desc pd = {};
	struct vip_key vk = {};
	struct real_def *real;
	struct vip_meta *vm;
	__be32 new_addr[4];
	__u32 real_idx;
	bool is_new;
	void *l3 = eth + 1;
	void *l4;
	int action;

	action = parse_l3(data, data_end, is_ipv6, &pd, &l4);
	if (action >= 0)
		goto drop;

	if (!is_ipv6 && pd.flow.proto == IPPROTO_ICMP) {
		action = icmp4_process(l3, l4, data_end, &pd);
		if (action == XDP_TX)
			prepare_l2_tx(eth);
		if (action >= 0)
			return action;
	} else if (is_ipv6 && pd.flow.proto == IPPROTO_ICMPV6) {
		action = icmp6_process(l3, l4, data_end, &pd);
		if (action == XDP_TX)
			prepare_l2_tx(eth);
		if (action >= 0)
			return action;
	} else if (pd.flow.proto == IPPROTO_TCP ||
		   pd.flow.proto == IPPROTO_UDP) {
		if (parse_l4(l4, data_end, &pd) < 0) {
			action = XDP_DROP;
			goto drop;
		}
	} else {
		return XDP_PASS;
	}
	if (pd.flow.proto != IPPROTO_TCP && pd.flow.proto != IPPROTO_UDP)
		return XDP_PASS;	/* ICMP error quoting something else */

	if (is_ipv6)
		__builtin_memcpy(vk.vipv6, pd.flow.dstv6, 16);
	else
		vk.vip = pd.flow.dst;
	vk.port = pd.flow.port16[1];
	vk.proto = pd.flow.proto;
	vm = bpf_map_lookup_elem(&vip_map, &vk);
	if (!vm) {
		vk.port = 0;
		vm = bpf_map_lookup_elem(&vip_map, &vk);
		if (!vm || !(vm->flags & F_ANY_PORT)) {
			if (pd.icmp_err)
				return XDP_PASS;
			return reverse_nat(eth, l3, l4, data_end, is_ipv6,
					   &pd, pkt_bytes);
		}
	}
	stats_add(vm->vip_num < MAX_VIPS ? vm->vip_num : STATS_DROP, 1,
		  pkt_bytes);

	if (pick_real(&pd, vm, is_ipv6, &real_idx, &is_new) < 0)
		goto no_real;
	real = bpf_map_lookup_elem(&reals, &real_idx);
	if (!real)
		goto no_real;
	if (!!(real->flags & F_REAL_IPV6) != is_ipv6)
		goto no_real;	/* DNAT cannot change address family */

	if (is_ipv6)
		__builtin_memcpy(new_addr, real->dstv6, 16);
	else
		new_addr[0] = real->dst;

	if (pd.icmp_err) {
		if (icmp_err_rewrite(l3, l4, data_end, is_ipv6, new_addr,
				     real->port) < 0) {
			action = XDP_DROP;
			goto drop;
		}
		stats_add(STATS_ICMP, 0, 1);
	} else {
		if (is_new)
			record_rev_nat(&pd, real, vm, is_ipv6);
		if (nat_rewrite(l3, l4, data_end, is_ipv6, pd.flow.proto,
				false, new_addr, real->port) < 0) {
			action = XDP_DROP;
			goto drop;
		}
	}
	prepare_l2_tx(eth);
	return XDP_TX;

no_real:
	stats_add(STATS_DROP, 0, 1);
	return XDP_DROP;
drop:
	stats_add(STATS_DROP, 1, 0);
	return action;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return process_packet(ctx, false);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return process_packet(ctx, true);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
