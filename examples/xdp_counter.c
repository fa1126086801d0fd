// SPDX-License-Identifier: GPL-2.0
/* xdp_counter.c - XDP packet/byte accounting.
 *
 * Classifies every frame by ethertype (IPv4, IPv6, ARP, other) and, for IP
 * traffic, by L4 protocol (TCP, UDP, ICMP/ICMPv6, other).  Per-class packet
 * and byte counters live in a PERCPU_ARRAY so the fast path never contends;
 * a plain ARRAY keeps a global frame-size histogram updated with atomic adds.
 * Every frame is passed on (XDP_PASS).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum counter_class {
	CLS_ETH_OTHER = 0,
	CLS_ARP,
	CLS_IPV4_TCP,
	CLS_IPV4_UDP,
	CLS_IPV4_ICMP,
	CLS_IPV4_OTHER,
	CLS_IPV6_TCP,
	CLS_IPV6_UDP,
	CLS_IPV6_ICMP,
	CLS_IPV6_OTHER,
	CLS_TRUNCATED,
	CLS_MAX,
};

struct datarec {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLS_MAX);
	__type(key, __u32);
	__type(value, struct datarec);
} class_stats SEC(".maps");

/* Frame sizes in 64-byte buckets, bucket 23 collects >= 1472 bytes. */
#define SIZE_BUCKETS 24

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SIZE_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} size_hist SEC(".maps");

static __always_inline __u32 l4_class(__u8 proto, __u32 base)
{
	/* base is CLS_IPV4_TCP or CLS_IPV6_TCP; the four classes follow it. */
	switch (proto) {
	case IPPROTO_TCP:
		return base;
	case IPPROTO_UDP:
		return base + 1;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return base + 2;
	default:
		return base + 3;
	}
}

static __always_inline __u32 classify(void *data, void *data_end)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return CLS_TRUNCATED;

	switch (bpf_ntohs(eth->h_proto)) {
	case ETH_P_IP: {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end)
			return CLS_TRUNCATED;
		return l4_class(iph->protocol, CLS_IPV4_TCP);
	}
	case ETH_P_IPV6: {
		struct ipv6hdr *ip6h = (void *)(eth + 1);

		if ((void *)(ip6h + 1) > data_end)
			return CLS_TRUNCATED;
		return l4_class(ip6h->nexthdr, CLS_IPV6_TCP);
	}
	case ETH_P_ARP:
		return CLS_ARP;
	default:
		return CLS_ETH_OTHER;
	}
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u64 len = data_end - data;
	__u32 key = classify(data, data_end);
	struct datarec *rec;
	__u64 *bucket;

	rec = bpf_map_lookup_elem(&class_stats, &key);
	if (rec) {
		/* per-CPU value: plain increments are safe */
		rec->packets++;
		rec->bytes += len;
	}

	key = len >> 6;
	if (key >= SIZE_BUCKETS)
		key = SIZE_BUCKETS - 1;
	bucket = bpf_map_lookup_elem(&size_hist, &key);
	if (bucket)
		__sync_fetch_and_add(bucket, 1);

	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
