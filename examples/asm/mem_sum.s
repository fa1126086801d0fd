# mem_sum.s - sum the bytes of a memory buffer (uBPF-style "mem" program).
#
# Calling convention (bpforge --type mem, as in uBPF):
#   r1 = pointer to the buffer, r2 = its length in bytes
#   r0 = return value: the sum of the first min(len, 4096) bytes
# The loop is bounded: the length is clamped to 4096 before it starts.
# Not a kernel program type, so it is assembled but never loaded.
#
# Assemble: llvm-mc-19 -triple bpf -filetype=obj mem_sum.s -o mem_sum.o

	.text
	.globl	mem_sum
	.p2align	3
	.type	mem_sum,@function
mem_sum:
	r0 = 0				# running sum
	r3 = 0				# index
	if r2 <= 4096 goto .Lcheck
	r2 = 4096			# clamp: at most 4096 iterations
.Lcheck:
	if r3 >= r2 goto .Ldone
	r4 = r1
	r4 += r3
	r5 = *(u8 *)(r4 + 0)
	r0 += r5
	r3 += 1
	goto .Lcheck
.Ldone:
	exit
.Lfunc_end0:
	.size	mem_sum, .Lfunc_end0-mem_sum
