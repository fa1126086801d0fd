# xdp_pass.s - minimal XDP program: read ctx->data / ctx->data_end, check that
# a full Ethernet header is present, peek at the ethertype, return XDP_PASS.
# Loadable with bpftool (section "xdp", GPL license section, no BTF).
#
# Assemble: llvm-mc-19 -triple bpf -filetype=obj xdp_pass.s -o xdp_pass.o

	.section	xdp,"ax",@progbits
	.globl	xdp_pass
	.p2align	3
	.type	xdp_pass,@function
xdp_pass:
	r2 = *(u32 *)(r1 + 0)		# ctx->data
	r3 = *(u32 *)(r1 + 4)		# ctx->data_end
	w0 = 2				# XDP_PASS
	r4 = r2
	r4 += 14			# sizeof(struct ethhdr)
	if r4 > r3 goto .Lout		# truncated frame: pass anyway
	r5 = *(u16 *)(r2 + 12)		# h_proto (network byte order)
	r5 = be16 r5
.Lout:
	exit
.Lfunc_end0:
	.size	xdp_pass, .Lfunc_end0-xdp_pass

	.section	license,"aw",@progbits
	.globl	LICENSE
LICENSE:
	.asciz	"GPL"
	.size	LICENSE, 4
