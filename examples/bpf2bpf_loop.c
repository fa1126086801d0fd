// SPDX-License-Identifier: GPL-2.0
/* bpf2bpf_loop.c - XDP parser for a small UDP "telemetry TLV" protocol,
 * written with real BPF-to-BPF calls and verifier-checked bounded loops.
 *
 * Datagrams to UDP port 7777 carry a 4-byte header (magic 0xB7, version,
 * TLV count) followed by up to 16 TLVs: type (1 byte), length (1 byte),
 * value (length bytes, at most 64).  Subprograms:
 *   payload_offset()  global: finds the payload (takes only the context;
 *                     the kernel verifies global functions on their own);
 *   walk_tlvs()       static __noinline: the TLV loop (not unrolled, at
 *                     most MAX_TLVS iterations), calling
 *   parse_tlv()       static __noinline: bounds-checks one TLV, taking
 *                     packet pointers and a pointer to the caller's stack;
 *   account_tlv()     static __noinline: per-type counters (ARRAY);
 *   value_sum()       global: loop summing the value bytes;
 *   sample_stats()    global: loop folding the big-endian signed 16-bit
 *                     samples of TLV_SAMPLES TLVs into an accumulator on the
 *                     caller's stack (min, max, sum).
 * The datagram's sample mean goes to sample_summary (signed division:
 * BPF_SDIV with -mcpu=v4, emulated with unsigned division on v3).
 * Malformed telemetry is dropped; all other traffic passes.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TELEMETRY_PORT	7777
#define TLM_MAGIC	0xB7
#define TLM_VERSION	1
#define MAX_TLVS	16
#define MAX_VALUE_LEN	64
#define MAX_TLV_TYPES	32
#define TLV_SAMPLES	1	/* value: big-endian __s16 samples */
#define MAX_PAYLOAD_OFF	256	/* the header is near the start of a frame */
#define MAX_WALK_OFF	(MAX_PAYLOAD_OFF + 4 + MAX_TLVS * (2 + MAX_VALUE_LEN))

struct tlm_hdr {
	__u8 magic;
	__u8 version;
	__u8 count;
	__u8 flags;
};

struct tlv {
	__u8 type;
	__u8 len;
};

struct tlv_stat {
	__u64 packets;
	__u64 value_bytes_sum;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_TLV_TYPES);
	__type(key, __u32);
	__type(value, struct tlv_stat);
} tlv_stats SEC(".maps");

struct sample_acc {
	__s64 sum;
	__s32 min;
	__s32 max;
	__u32 count;
	__u32 pad;
};

struct sample_summary {
	__s64 mean;
	__s32 min;
	__s32 max;
	__u64 datagrams;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sample_summary);
} sample_summary SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");	/* 0: accepted datagrams, 1: malformed */

/* Global function: verified independently, so it may only take the context
 * (and scalars); it re-derives the packet pointers itself.  Returns the
 * payload offset of a telemetry datagram, or -1. */
__noinline int payload_offset(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *uh;
	__u32 ihl;

	if (!ctx)
		return -1;
	if ((void *)(eth + 1) > data_end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return -1;
	if (iph->protocol != IPPROTO_UDP)
		return -1;
	ihl = iph->ihl * 4;
	if (ihl < sizeof(*iph))
		return -1;
	uh = (void *)iph + ihl;
	if ((void *)(uh + 1) > data_end)
		return -1;
	if (uh->dest != bpf_htons(TELEMETRY_PORT))
		return -1;
	return (void *)(uh + 1) - data;
}

/* Sum of the len (<= MAX_VALUE_LEN) value bytes at offset off.  Global:
 * verified once, not once per iteration of the caller's loop (as a static
 * subprogram, the nested loops cost the verifier ~200k instructions). */
__noinline int value_sum(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u32 sum = 0;
	__u32 i;

	if (off > MAX_WALK_OFF)
		return 0;
#pragma clang loop unroll(disable)
	for (i = 0; i < MAX_VALUE_LEN && i < len; i++) {
		__u8 *p = data + off + i;

		if ((void *)(p + 1) > data_end)
			break;
		sum += *p;
	}
	return sum;
}

/* Fold the len / 2 big-endian signed samples at offset off into *acc.
 * Global functions cannot take packet pointers: it gets the context, a
 * scalar offset and a (nullable) pointer to the caller's stack. */
__noinline int sample_stats(struct xdp_md *ctx, __u32 off, __u32 len,
			    struct sample_acc *acc)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u32 i;

	if (!acc || off > MAX_WALK_OFF)
		return -1;
#pragma clang loop unroll(disable)
	for (i = 0; i < MAX_VALUE_LEN / 2 && 2 * i + 1 < len; i++) {
		__be16 *p = data + off + 2 * i;
		__s32 v;

		if ((void *)(p + 1) > data_end)
			return -1;
		v = (__s16)bpf_ntohs(*p);
		acc->sum += v;
		if (v < acc->min)
			acc->min = v;
		if (v > acc->max)
			acc->max = v;
		acc->count++;
	}
	return 0;
}

static __always_inline __s64 div_s64(__s64 a, __u32 b)
{
#ifdef __BPF_FEATURE_SDIV_SMOD
	return a / (__s64)b;
#else
	/* BPF before v4 has unsigned division only */
	return a < 0 ? -(__s64)((__u64)-a / b) : (__s64)((__u64)a / b);
#endif
}

/* Validate the TLV at data + off (packet pointers passed to a static
 * subprogram) and return its type and length through *out. */
static __noinline int parse_tlv(void *data, void *data_end, __u32 off,
				struct tlv *out)
{
	struct tlv *t;

	if (off > MAX_WALK_OFF)
		return -1;
	t = data + off;
	if ((void *)(t + 1) > data_end)
		return -1;
	if (t->len > MAX_VALUE_LEN)
		return -1;
	if ((void *)(t + 1) + t->len > data_end)
		return -1;
	*out = *t;
	return 0;
}

static __noinline void account_tlv(__u32 type, __u32 bytes_sum)
{
	struct tlv_stat *st;

	st = bpf_map_lookup_elem(&tlv_stats, &type);
	if (st) {
		__sync_fetch_and_add(&st->packets, 1);
		__sync_fetch_and_add(&st->value_bytes_sum, bytes_sum);
	}
}

/* Walk the TLV list; returns the number of TLVs or -1 when malformed. */
static __noinline int walk_tlvs(struct xdp_md *ctx, __u32 off)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct sample_acc acc = { .min = 0x7fff, .max = -0x8000 };
	struct sample_summary *sum;
	struct tlm_hdr *hdr;
	__u32 n, i, zero = 0;
	struct tlv t;

	if (off > MAX_PAYLOAD_OFF)
		return -1;
	hdr = data + off;
	if ((void *)(hdr + 1) > data_end)
		return -1;
	if (hdr->magic != TLM_MAGIC || hdr->version != TLM_VERSION)
		return -1;
	n = hdr->count;
	off += sizeof(*hdr);

#pragma clang loop unroll(disable)
	for (i = 0; i < MAX_TLVS && i < n; i++) {
		if (parse_tlv(data, data_end, off, &t) < 0)
			return -1;
		off += sizeof(t);
		account_tlv(t.type, value_sum(ctx, off, t.len));
		if (t.type == TLV_SAMPLES &&
		    sample_stats(ctx, off, t.len, &acc) < 0)
			return -1;
		off += t.len;
	}

	if (acc.count) {
		sum = bpf_map_lookup_elem(&sample_summary, &zero);
		if (sum) {
			sum->mean = div_s64(acc.sum, acc.count);
			sum->min = acc.min;
			sum->max = acc.max;
			sum->datagrams++;
		}
	}
	return i;
}

SEC("xdp")
int xdp_telemetry(struct xdp_md *ctx)
{
	__u64 *cnt;
	__u32 key;
	int off, n;

	off = payload_offset(ctx);
	if (off < 0)
		return XDP_PASS;
	n = walk_tlvs(ctx, off);

	key = n < 0;
	cnt = bpf_map_lookup_elem(&verdicts, &key);
	if (cnt)
		__sync_fetch_and_add(cnt, 1);
	return n < 0 ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
