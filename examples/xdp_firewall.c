// SPDX-License-Identifier: GPL-2.0
/* xdp_firewall.c - stateless XDP firewall.
 *
 * Parses Ethernet (with at most one 802.1Q/802.1ad VLAN tag), IPv4 (with
 * options) and IPv6 (skipping up to three extension headers), then TCP/UDP
 * ports.  A frame is dropped when
 *   - its IPv4 source matches a prefix in src4_deny (LPM_TRIE), or
 *   - its IPv6 source matches a prefix in src6_deny (LPM_TRIE), or
 *   - its (L4 protocol, destination port) is in port_deny (HASH).
 * Every rule value carries a rule id; drops are accounted per rule id in a
 * PERCPU_ARRAY (packets + bytes).  Malformed IP headers are dropped and
 * counted under RULE_MALFORMED; everything else is passed.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_RULES	256
#define RULE_MALFORMED	0	/* rule id 0 is reserved for parse errors */
#define IP_MF		0x2000
#define IP_OFFSET	0x1fff
#define MAX_EXT_HDRS	3

struct vlan_hdr {
	__be16 h_vlan_TCI;
	__be16 h_vlan_encapsulated_proto;
};

struct ipv6_opt_hdr_min {
	__u8 nexthdr;
	__u8 hdrlen;	/* in 8-octet units, not counting the first 8 */
};

struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_v6_key {
	__u32 prefixlen;
	struct in6_addr addr;
};

struct port_key {
	__u8 proto;
	__u8 pad;
	__be16 port;
};

struct rule_val {
	__u32 rule_id;
};

struct drop_rec {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, struct rule_val);
} src4_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, struct rule_val);
} src6_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct port_key);
	__type(value, struct rule_val);
} port_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_RULES);
	__type(key, __u32);
	__type(value, struct drop_rec);
} drop_stats SEC(".maps");

struct pkt {
	void *l4;
	__u32 len;
	__u8 proto;
	__u8 is_frag;	/* not the first fragment: no L4 header */
};

static __always_inline int account_drop(__u32 rule_id, __u32 len)
{
	struct drop_rec *rec;

	if (rule_id >= MAX_RULES)
		rule_id = RULE_MALFORMED;
	rec = bpf_map_lookup_elem(&drop_stats, &rule_id);
	if (rec) {
		rec->packets++;
		rec->bytes += len;
	}
	return XDP_DROP;
}

/* Returns 0 to continue, -1 if the header is malformed. */
static __always_inline int parse_ipv4(void *nh, void *data_end,
				      struct pkt *p, __u32 *rule)
{
	struct iphdr *iph = nh;
	struct lpm_v4_key key;
	struct rule_val *rv;
	__u32 hlen;

	if ((void *)(iph + 1) > data_end)
		return -1;
	hlen = iph->ihl * 4;
	if (hlen < sizeof(*iph))
		return -1;
	if (nh + hlen > data_end)
		return -1;

	key.prefixlen = 32;
	key.addr = iph->saddr;
	rv = bpf_map_lookup_elem(&src4_deny, &key);
	if (rv) {
		*rule = rv->rule_id;
		return 0;
	}

	p->proto = iph->protocol;
	p->is_frag = (iph->frag_off & bpf_htons(IP_OFFSET)) != 0;
	p->l4 = nh + hlen;
	return 0;
}

static __always_inline int parse_ipv6(void *nh, void *data_end,
				      struct pkt *p, __u32 *rule)
{
	struct ipv6hdr *ip6h = nh;
	struct ipv6_opt_hdr_min *oh;
	struct lpm_v6_key key;
	struct rule_val *rv;
	__u8 nexthdr;
	int i;

	if ((void *)(ip6h + 1) > data_end)
		return -1;

	key.prefixlen = 128;
	__builtin_memcpy(&key.addr, &ip6h->saddr, sizeof(key.addr));
	rv = bpf_map_lookup_elem(&src6_deny, &key);
	if (rv) {
		*rule = rv->rule_id;
		return 0;
	}

	nexthdr = ip6h->nexthdr;
	nh = ip6h + 1;
#pragma clang loop unroll(full)
	for (i = 0; i < MAX_EXT_HDRS; i++) {
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		oh = nh;
		if ((void *)(oh + 1) > data_end)
			return -1;
		if (nexthdr == IPPROTO_FRAGMENT) {
			/* fragment header: 8 bytes, offset in bytes 2..3 */
			__be16 *fo = nh + 2;

			if ((void *)(fo + 1) > data_end)
				return -1;
			if (*fo & bpf_htons(0xfff8))
				p->is_frag = 1;
			nexthdr = oh->nexthdr;
			nh += 8;
		} else {
			nexthdr = oh->nexthdr;
			nh += (oh->hdrlen + 1) * 8;
		}
	}
	p->proto = nexthdr;
	p->l4 = nh;
	return 0;
}

SEC("xdp")
int xdp_firewall(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct pkt p = { .len = data_end - data };
	struct ethhdr *eth = data;
	struct port_key pk = {};
	struct rule_val *rv;
	__u32 rule = MAX_RULES;	/* no match */
	__u16 h_proto;
	void *nh;
	int ret;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	h_proto = eth->h_proto;
	nh = eth + 1;

	if (h_proto == bpf_htons(ETH_P_8021Q) ||
	    h_proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = nh;

		if ((void *)(vh + 1) > data_end)
			return XDP_PASS;
		h_proto = vh->h_vlan_encapsulated_proto;
		nh = vh + 1;
	}

	if (h_proto == bpf_htons(ETH_P_IP))
		ret = parse_ipv4(nh, data_end, &p, &rule);
	else if (h_proto == bpf_htons(ETH_P_IPV6))
		ret = parse_ipv6(nh, data_end, &p, &rule);
	else
		return XDP_PASS;

	if (ret < 0)
		return account_drop(RULE_MALFORMED, p.len);
	if (rule != MAX_RULES)
		return account_drop(rule, p.len);
	if (p.is_frag)
		return XDP_PASS;

	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *th = p.l4;

		if ((void *)(th + 1) > data_end)
			return account_drop(RULE_MALFORMED, p.len);
		pk.port = th->dest;
	} else if (p.proto == IPPROTO_UDP) {
		struct udphdr *uh = p.l4;

		if ((void *)(uh + 1) > data_end)
			return account_drop(RULE_MALFORMED, p.len);
		pk.port = uh->dest;
	} else {
		return XDP_PASS;
	}
	pk.proto = p.proto;

	rv = bpf_map_lookup_elem(&port_deny, &pk);
	if (rv)
		return account_drop(rv->rule_id, p.len);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
