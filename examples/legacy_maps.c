// SPDX-License-Identifier: GPL-2.0
/* legacy_maps.c - XDP per-protocol counter with *legacy* map definitions.
 *
 * Maps are declared the pre-BTF way: a struct bpf_map_def (type, key_size,
 * value_size, max_entries, map_flags) placed in SEC("maps").  libbpf >= 1.0
 * (and so bpftool with libbpf 1.x) refuses such objects, so this example is
 * NOT loadable; it exists so ELF readers can be tested on legacy "maps"
 * sections (map definitions found by symbol offset, relocations against
 * the "maps" section).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* The historical layout (samples/bpf, iproute2, old libbpf). */
struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct bpf_map_def SEC("maps") proto_count = {
	.type = BPF_MAP_TYPE_PERCPU_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 256,
};

struct bpf_map_def SEC("maps") src_seen = {
	.type = BPF_MAP_TYPE_HASH,
	.key_size = sizeof(__be32),
	.value_size = sizeof(__u64),
	.max_entries = 4096,
	.map_flags = BPF_F_NO_PREALLOC,
};

SEC("xdp")
int xdp_legacy_count(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u64 *val, one = 1;
	__u32 proto;
	__be32 saddr;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;

	proto = iph->protocol;
	val = bpf_map_lookup_elem(&proto_count, &proto);
	if (val)
		(*val)++;

	saddr = iph->saddr;
	val = bpf_map_lookup_elem(&src_seen, &saddr);
	if (val)
		__sync_fetch_and_add(val, 1);
	else
		bpf_map_update_elem(&src_seen, &saddr, &one, BPF_NOEXIST);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
