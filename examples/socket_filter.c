// SPDX-License-Identifier: GPL-2.0
/* socket_filter.c - classic "tcp dst port 80 or 443" socket filter in eBPF.
 *
 * Attached with SO_ATTACH_BPF to an AF_PACKET SOCK_DGRAM socket (or a raw
 * IP socket): the packet data starts at the network header and the
 * ethertype is in skb->protocol.  BPF_PROG_TEST_RUN presents socket filters
 * the same way (it strips the Ethernet header of the test frame).  Accepts
 * only unfragmented (or first-fragment) IPv4 TCP segments whose destination
 * port is 80 or 443 and returns the whole packet length as snap length;
 * everything else returns 0 (not delivered to the socket).
 *
 * It deliberately mixes the two ways a socket filter can read the packet:
 *   - legacy cBPF-style loads, LD_ABS (constant offset) and LD_IND (register
 *     + constant offset), via the llvm.bpf.load.* intrinsics; these return
 *     the value in host byte order;
 *   - the bpf_skb_load_bytes() helper, copying the IPv4 header to the stack.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

unsigned long long load_byte(void *skb, unsigned long long off)
	asm("llvm.bpf.load.byte");
unsigned long long load_half(void *skb, unsigned long long off)
	asm("llvm.bpf.load.half");
unsigned long long load_word(void *skb, unsigned long long off)
	asm("llvm.bpf.load.word");

#define IP_OFFSET	0x1fff

SEC("socket")
int http_filter(struct __sk_buff *skb)
{
	struct iphdr iph;
	__u32 ihl, dport, daddr;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return 0;

	/* helper-based load of the fixed IPv4 header */
	if (bpf_skb_load_bytes(skb, 0, &iph, sizeof(iph)) < 0)
		return 0;
	if (iph.version != 4 || iph.protocol != IPPROTO_TCP)
		return 0;
	if (bpf_ntohs(iph.frag_off) & IP_OFFSET)
		return 0;	/* not the first fragment: no TCP header */

	/* LD_ABS: first byte of the IP header gives the header length */
	ihl = (load_byte(skb, 0) & 0x0f) << 2;
	if (ihl < sizeof(struct iphdr))
		return 0;

	/* LD_IND: TCP destination port at ihl + 2 */
	dport = load_half(skb, ihl + offsetof(struct tcphdr, dest));
	if (dport != 80 && dport != 443)
		return 0;

	/* LD_ABS word load: ignore packets to 0.0.0.0 / 255.255.255.255 */
	daddr = load_word(skb, offsetof(struct iphdr, daddr));
	if (daddr == 0 || daddr == 0xffffffff)
		return 0;

	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";
