// SPDX-License-Identifier: GPL-2.0
/* tc_classifier.c - tc (sched_cls) traffic classifier for egress QoS.
 *
 * Reads Ethernet, IPv4/IPv6 and the TCP/UDP destination port with direct
 * packet access (__sk_buff data/data_end) and picks a traffic class:
 *   1. a (protocol, destination port) entry in port_class (HASH), else
 *   2. the packet's DSCP in dscp_class (HASH), else
 *   3. nothing: the skb is left alone.
 * When a port class wins, a matching DSCP class may still adjust its
 * priority by a signed delta.
 * A class sets skb->mark, skb->priority and skb->tc_classid (for an HTB/
 * PRIO qdisc with "direct-action") and may re-mark the DSCP; the IPv4
 * header checksum is then fixed with bpf_l3_csum_replace().  Per-class
 * packet counters live in a PERCPU_ARRAY.  Always returns TC_ACT_OK.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_CLASSES	64
#define DSCP_KEEP	0xff

struct port_key {
	__u8 proto;
	__u8 pad;
	__be16 port;
};

struct class_val {
	__u32 class_idx;	/* index into class_stats */
	__u32 mark;
	__u32 priority;
	__u32 classid;		/* TC_H_MAKE(major, minor) */
	__u8 set_dscp;		/* DSCP_KEEP or a new DSCP value */
	__s8 prio_delta;	/* per-DSCP adjustment of the port class priority */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u8);
	__type(value, struct class_val);
} dscp_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct port_key);
	__type(value, struct class_val);
} port_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_CLASSES);
	__type(key, __u32);
	__type(value, __u64);
} class_stats SEC(".maps");

#define IP_CSUM_OFF	(ETH_HLEN + offsetof(struct iphdr, check))

SEC("tc")
int tc_classify(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	void *data = (void *)(long)skb->data;
	struct ethhdr *eth = data;
	struct port_key pk = {};
	struct class_val *cv, *dv;
	__u8 dscp, proto;
	__s64 prio;
	void *l4;
	__u64 *cnt;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end)
			return TC_ACT_OK;
		if (iph->ihl < 5)
			return TC_ACT_OK;
		dscp = iph->tos >> 2;
		proto = iph->protocol;
		l4 = (void *)iph + iph->ihl * 4;
		if (iph->frag_off & bpf_htons(0x1fff))
			l4 = NULL;	/* no L4 header in later fragments */
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);

		if ((void *)(ip6h + 1) > data_end)
			return TC_ACT_OK;
		dscp = (ip6h->priority << 2) | (ip6h->flow_lbl[0] >> 6);
		proto = ip6h->nexthdr;
		l4 = ip6h + 1;
	} else {
		return TC_ACT_OK;
	}

	cv = NULL;
	if (l4 && (proto == IPPROTO_TCP || proto == IPPROTO_UDP)) {
		/* source and destination port sit at the same offsets in both */
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) <= data_end) {
			pk.proto = proto;
			pk.port = uh->dest;
			cv = bpf_map_lookup_elem(&port_class, &pk);
		}
	}
	dv = bpf_map_lookup_elem(&dscp_class, &dscp);
	if (!cv)
		cv = dv;
	if (!cv)
		return TC_ACT_OK;

	/* a port class keeps its classid but the DSCP may nudge its
	 * priority (e.g. -1 for CS1 "scavenger" traffic) */
	prio = (__s64)cv->priority;
	if (dv && dv != cv)
		prio += dv->prio_delta;
	if (prio < 0)
		prio = 0;
	skb->mark = cv->mark;
	skb->priority = prio;
	skb->tc_classid = cv->classid;

	cnt = bpf_map_lookup_elem(&class_stats, &cv->class_idx);
	if (cnt)
		(*cnt)++;

	/* DSCP re-marking; only IPv4 has a header checksum to fix.  The
	 * helpers may move the packet: no packet pointer is used after them. */
	if (cv->set_dscp != DSCP_KEEP && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		__u16 old_word, new_word;

		if ((void *)(iph + 1) > data_end)
			return TC_ACT_OK;
		old_word = *(__u16 *)iph;	/* version/ihl + tos */
		iph->tos = (cv->set_dscp << 2) | (iph->tos & 0x03);
		new_word = *(__u16 *)iph;
		bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_word, new_word,
				    sizeof(__u16));
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
