// SPDX-License-Identifier: GPL-2.0
/* xdp_kvcache.c - the hand-written XDP half of examples/kvcache (a BMC-like memcached-over-UDP cache).
 *
 * Answers "get KEY\r\n" hits at XDP from kv_cache, whose values are whole preformatted reply bodies
 * ("VALUE KEY FLAGS BYTES\r\nDATA\r\nEND\r\n", written by hand_server.py), so the fast path only copies:
 * the packet becomes the reply (MACs, IPs and ports swapped, lengths and the IPv4 checksum fixed, UDP
 * checksum 0, which IPv4 allows) and goes back out with XDP_TX. Everything else is passed to the stack:
 * misses, malformed requests, and SETs and DELETEs, which first bump kv_seen for their key's bucket.
 *
 * Coordination with the server (the argument is in hand_server.py): kv_seen[b] counts the SET/DELETE
 * datagrams of bucket b that this program has passed up, kv_done[b] those the server has applied (store
 * and cache entry both). Each has one writer. A GET is answered here only while the two are equal, that
 * is when no write to any key of its bucket is on its way to the server. The rule for which datagrams
 * count ("set " or "delete ", then a key of 1..32 bytes ending at ' ', '\r' or the end of the datagram)
 * is mirrored exactly by written_key() in hand_server.py; the key hash is FNV-1a (32 bit) there too.
 * Assumed: requests arrive as unfragmented IPv4 datagrams through this interface (a memcached UDP request
 * fits one frame); a fragment is passed uncounted.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define KV_PORT    11211
#define FRAME_HDR  8     /* memcached UDP frame: request id, sequence, datagram count, reserved */
#define KEY_MAX    32
#define REPLY_MAX  128   /* "VALUE " 32-byte key, 10-digit flags, 2-digit length, 64 data bytes: 125 */
#define BUCKETS    1024  /* power of two: the bucket is hash & (BUCKETS - 1) */
#define HDRS       (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct kv_key {
	__u8 bytes[KEY_MAX]; /* zero-padded, as partition.runtime.Bytes(32) */
};

struct kv_reply {
	__u32 len;
	__u8 data[REPLY_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* replaced elements are freed after readers, not reused at once */
	__type(key, struct kv_key);
	__type(value, struct kv_reply);
} kv_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} kv_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
} kv_done SEC(".maps");

enum { ST_HIT, ST_MISS, ST_BLOCKED, ST_WRITE, ST_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} kv_stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&kv_stats, &what);

	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline __u32 fnv1a_step(__u32 h, __u8 c)
{
	return (h ^ c) * 16777619u;
}

static __always_inline __u16 ipv4_csum(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* A SET or DELETE: count it in its bucket (before it reaches the server), drop the cached reply. */
static __always_inline int pass_write(__u8 *body, void *end, __u32 blen, __u32 skip)
{
	struct kv_key key = {};
	__u32 h = 2166136261u, klen = 0, *seen;

#pragma unroll
	for (int i = 0; i <= KEY_MAX; i++) {
		__u32 at = skip + i;
		__u8 c;

		if (at >= blen || (void *)(body + at + 1) > end)
			break;
		c = body[at];
		if (c == ' ' || c == '\r')
			break;
		if (i == KEY_MAX)
			return XDP_PASS; /* longer than a key: the server answers ERROR, not counted */
		key.bytes[i] = c;
		h = fnv1a_step(h, c);
		klen++;
	}
	if (klen == 0)
		return XDP_PASS;
	h &= BUCKETS - 1;
	seen = bpf_map_lookup_elem(&kv_seen, &h);
	if (!seen)
		return XDP_PASS;
	__sync_fetch_and_add(seen, 1);
	bpf_map_delete_elem(&kv_cache, &key);
	count(ST_WRITE);
	return XDP_PASS;
}

static __always_inline int answer_get(struct xdp_md *ctx, __u8 *body, void *end, __u32 blen)
{
	struct kv_key key = {};
	__u32 h = 2166136261u, klen, rlen, bad = 0, *seen, *done;
	struct kv_reply *reply;
	__u8 *crlf;

	if (blen < 4 + 1 + 2 || blen > 4 + KEY_MAX + 2)
		return XDP_PASS;
	klen = blen - 4 - 2;
	for (int i = 0; i < KEY_MAX; i++) { /* a bounded loop: clang does not unroll this one */
		__u8 c;

		if (i >= (int)klen || (void *)(body + 4 + i + 1) > end)
			break;
		c = body[4 + i];
		bad |= c <= ' ' || c >= 0x7f; /* not a valid key: the server says ERROR */
		key.bytes[i] = c;
		h = fnv1a_step(h, c);
	}
	if (bad)
		return XDP_PASS;
	/* klen <= KEY_MAX: the verifier knows it through the copy of the length the check above bounded
	 * (linked scalars: klen is that copy minus a constant). */
	crlf = body + 4 + klen;
	if ((void *)(crlf + 2) > end || crlf[0] != '\r' || crlf[1] != '\n')
		return XDP_PASS;

	h &= BUCKETS - 1;
	seen = bpf_map_lookup_elem(&kv_seen, &h);
	done = bpf_map_lookup_elem(&kv_done, &h);
	if (!seen || !done)
		return XDP_PASS;
	if (*(volatile __u32 *)seen != *(volatile __u32 *)done) {
		count(ST_BLOCKED); /* a write of this bucket is still on its way: the server answers */
		return XDP_PASS;
	}
	reply = bpf_map_lookup_elem(&kv_cache, &key);
	if (!reply) {
		count(ST_MISS);
		return XDP_PASS;
	}
	rlen = reply->len;
	if (rlen == 0 || rlen > REPLY_MAX)
		return XDP_PASS;

	/* The request becomes the reply: same headers, swapped, and the cached body. */
	/* Its length from the helper: the verifier allows no arithmetic on data_end. */
	int delta = (int)(HDRS + FRAME_HDR + rlen) - (int)bpf_xdp_get_buff_len(ctx);
	if (delta > 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		/* No tailroom (veth runs XDP on the sender's skb in place when it has XDP_PACKET_HEADROOM in
		 * front, and such a small skb has next to nothing behind): grow at the head instead, where
		 * that headroom is, and move the headers to the new start. */
		__u8 hdrs[HDRS + FRAME_HDR];

		if (bpf_xdp_load_bytes(ctx, 0, hdrs, sizeof(hdrs)) || bpf_xdp_adjust_head(ctx, -delta))
			return XDP_PASS; /* the server answers, nothing was changed */
		if (bpf_xdp_store_bytes(ctx, 0, hdrs, sizeof(hdrs)))
			return XDP_ABORTED;
	} else if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta)) {
		return XDP_PASS;
	}

	void *data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *frame = (__u8 *)(udp + 1);
	if ((void *)(frame + FRAME_HDR) > end)
		return XDP_ABORTED; /* cannot happen: the packet was just sized */

	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	__be32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + FRAME_HDR + rlen);
	ip->ttl = 64;
	ip->check = 0;
	ip->check = ipv4_csum(ip);

	__be16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(sizeof(*udp) + FRAME_HDR + rlen);
	udp->check = 0;

	/* Frame header: the request id stays; sequence 0 of 1 datagram, reserved 0. */
	frame[2] = 0;
	frame[3] = 0;
	frame[4] = 0;
	frame[5] = 1;
	frame[6] = 0;
	frame[7] = 0;
	if (bpf_xdp_store_bytes(ctx, HDRS + FRAME_HDR, reply->data, rlen))
		return XDP_ABORTED;
	count(ST_HIT);
	return XDP_TX;
}

SEC("xdp")
int xdp_kvcache(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;
	__u8 *body;
	__u32 ihl, ulen, blen;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	ihl = ip->ihl;
	if (ihl < 5 || ihl > 15) /* the bitfield cannot exceed 15: the bound is for the verifier */
		return XDP_PASS;
	/* IP options move the UDP header; they are counted like any write, but only answered without them. */
	udp = (void *)ip + ihl * 4;
	if ((void *)(udp + 1) > end || udp->dest != bpf_htons(KV_PORT))
		return XDP_PASS;
	ulen = bpf_ntohs(udp->len);
	if (ulen < sizeof(*udp) + FRAME_HDR)
		return XDP_PASS;
	body = (__u8 *)(udp + 1) + FRAME_HDR;
	blen = ulen - sizeof(*udp) - FRAME_HDR; /* udp->len, not the frame: the frame may be padded */
	/* Shorter than "delete ": passed uncounted (by the datagram's length, as written_key() decides). */
	if (blen < 7 || (void *)(body + 7) > end)
		return XDP_PASS;

	if (body[0] == 's' && body[1] == 'e' && body[2] == 't' && body[3] == ' ')
		return pass_write(body, end, blen, 4);
	if (body[0] == 'd' && body[1] == 'e' && body[2] == 'l' && body[3] == 'e' && body[4] == 't' &&
	    body[5] == 'e' && body[6] == ' ')
		return pass_write(body, end, blen, 7);
	if (body[0] == 'g' && body[1] == 'e' && body[2] == 't' && body[3] == ' ' && ihl == 5)
		return answer_get(ctx, body, end, blen);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
