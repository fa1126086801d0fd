// SPDX-License-Identifier: GPL-2.0
/* global_data.c - XDP fault injector driven by global variables.
 *
 * Drops a random 1-in-N share of the IPv4 packets of one L4 protocol, to
 * test how applications cope with loss, until a drop budget is spent.
 * It uses the three kinds of global data libbpf maps to array maps:
 *   .rodata  const volatile knobs set by the loader before load
 *            (enabled, target protocol, 1-in-N) and a constant cost table
 *            indexed at run time;
 *   .data    the initialised, mutable drop budget (decremented atomically);
 *   .bss     zero-initialised statistics counters.
 */
#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* .rodata: the loader may rewrite these before loading the object */
const volatile bool enabled = true;
const volatile __u8 target_proto = IPPROTO_UDP;
const volatile __u32 drop_one_in = 100;

/* .rodata: budget units charged per drop, by frame size class (512 B) */
static const __u32 size_cost[4] = { 1, 2, 3, 5 };

/* .data */
__s64 drop_budget = 100000;
char tag[8] = "bpforge";

/* .bss */
__u64 packets_seen;
__u64 packets_matched;
__u64 packets_dropped;

SEC("xdp")
int xdp_fault_inject(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u32 cls, cost;

	__sync_fetch_and_add(&packets_seen, 1);
	if (!enabled || drop_one_in == 0)
		return XDP_PASS;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;
	if (iph->protocol != target_proto)
		return XDP_PASS;
	__sync_fetch_and_add(&packets_matched, 1);

	if (bpf_get_prandom_u32() % drop_one_in != 0)
		return XDP_PASS;

	cls = (data_end - data) >> 9;
	if (cls > 3)
		cls = 3;
	cost = size_cost[cls];
	if (drop_budget < cost)
		return XDP_PASS;
	__sync_fetch_and_sub(&drop_budget, cost);
	__sync_fetch_and_add(&packets_dropped, 1);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
