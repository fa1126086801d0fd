// SPDX-License-Identifier: GPL-2.0
/* xdp_ratelimit.c - per-source IPv4 token-bucket rate limiter (DDoS guard).
 *
 * Each IPv4 source address owns a token bucket in an LRU_HASH (so floods of
 * spoofed sources just recycle the oldest buckets).  The bucket holds
 * "nano-tokens" (tokens * 1e9) so refilling is a multiply, not a division:
 * elapsed_ns * rate_pps nano-tokens are added, capped at burst * 1e9, and
 * each packet costs 1e9.  The debit is an atomic compare-and-swap (LRU maps
 * cannot hold a bpf_spin_lock).  rate (packets/s) and burst (packets) come
 * from config (ARRAY); rate 0 disables limiting.  Packets of an empty
 * bucket get XDP_DROP and are counted; non-IPv4 traffic is passed untouched.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define NSEC_PER_SEC		1000000000ULL
#define MAX_ELAPSED_NS		(60 * NSEC_PER_SEC)	/* keeps the product in 64 bits */
#define MAX_RATE		(1U << 24)

struct rl_config {
	__u32 rate;	/* tokens (packets) per second */
	__u32 burst;	/* bucket depth in packets */
};

struct bucket {
	__u64 tokens;	/* nano-tokens */
	__u64 last_ns;
};

enum rl_counter {
	RL_PASSED = 0,
	RL_DROPPED,
	RL_NEW_SOURCE,
	RL_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rl_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct bucket);
} buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RL_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);

	if (c)
		(*c)++;
}

/* Refill, then try to take one token.  LRU maps cannot hold a
 * bpf_spin_lock, so the debit is a compare-and-swap retried a few times;
 * the refill is credited by the first attempt only. */
static __always_inline int bucket_take(struct bucket *b, __u64 now,
				       __u64 rate, __u64 cap)
{
	__u64 last = b->last_ns;
	__u64 elapsed, tokens, want;
	int i;

	elapsed = now > last ? now - last : 0;
	if (elapsed > MAX_ELAPSED_NS)
		elapsed = MAX_ELAPSED_NS;
	if (elapsed)
		b->last_ns = now;

#pragma clang loop unroll(full)
	for (i = 0; i < 3; i++) {
		tokens = b->tokens;
		want = tokens + elapsed * rate;
		if (want > cap)
			want = cap;
		if (want < NSEC_PER_SEC) {
			if (want != tokens)
				__sync_val_compare_and_swap(&b->tokens, tokens,
							    want);
			return 0;
		}
		if (__sync_val_compare_and_swap(&b->tokens, tokens,
						want - NSEC_PER_SEC) == tokens)
			return 1;
		elapsed = 0;	/* lost the race: someone else refilled */
	}
	return 0;
}

SEC("xdp")
int xdp_ratelimit(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct rl_config *cfg;
	struct iphdr *iph;
	struct bucket *b;
	__u64 now, rate, cap;
	__u32 zero = 0;
	__be32 saddr;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || cfg->rate == 0)
		return XDP_PASS;
	rate = cfg->rate < MAX_RATE ? cfg->rate : MAX_RATE;
	cap = (__u64)(cfg->burst ? cfg->burst : 1) * NSEC_PER_SEC;

	saddr = iph->saddr;
	now = bpf_ktime_get_ns();
	b = bpf_map_lookup_elem(&buckets, &saddr);
	if (!b) {
		struct bucket fresh = {
			.tokens = cap - NSEC_PER_SEC,	/* this packet */
			.last_ns = now,
		};

		/* BPF_NOEXIST: another CPU may have created it meanwhile */
		if (bpf_map_update_elem(&buckets, &saddr, &fresh,
					BPF_NOEXIST) == 0) {
			count(RL_NEW_SOURCE);
			count(RL_PASSED);
			return XDP_PASS;
		}
		b = bpf_map_lookup_elem(&buckets, &saddr);
		if (!b)
			return XDP_PASS;
	}

	if (bucket_take(b, now, rate, cap)) {
		count(RL_PASSED);
		return XDP_PASS;
	}
	count(RL_DROPPED);
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
