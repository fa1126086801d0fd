"""Global functions (BTF linkage global) are checked once on their own, from their prototype: the caller's
arguments against it, the function from a state it gives. Verdicts against the kernel's, on small C programs
compiled here with clang-19."""

from __future__ import annotations

import pytest

from bpforge.kernel.program import verify_linked
from bpforge.verifier.check import verify_linked_program
from bpforge.verifier.functions import Argument, global_functions

from conftest import compile_cases

SOURCE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct pair { int a; int b; };
__noinline int takes_ctx(struct xdp_md *ctx) { return ctx ? 1 : 0; }
__noinline int takes_scalar(int x) { return x + 1; }
__noinline int takes_mem(struct pair *p) { if (!p) return 0; return p->a + p->b; }
__noinline int takes_mem_unchecked(struct pair *p) { return p->a; }
__noinline int moves_packet(struct xdp_md *ctx) { return bpf_xdp_adjust_head(ctx, 0); }
SEC("xdp") int prog(struct xdp_md *ctx) {
  struct pair p = {1, 2};
  char small[4] = {};
  int r = 0;
#if CASE == 0
  r = takes_ctx(ctx) + takes_scalar(3) + takes_mem(&p) + takes_mem(0);
#elif CASE == 1
  r = takes_ctx((void *)&p);
#elif CASE == 2
  asm volatile("r1 = r10; r1 += -8; call takes_scalar; %[r] = r0" : [r]"=r"(r) :: "r1","r2","r3","r4","r5","r0");
#elif CASE == 3
  r = takes_mem((void *)small);
#elif CASE == 4
  r = takes_mem_unchecked(&p);
#elif CASE == 5
  r = takes_mem((void *)(long)ctx->data);
#elif CASE == 6
  unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
  if (data + 1 > end) return 0;
  r = moves_packet(ctx);
  asm volatile("" ::: "memory");
  r += *(volatile unsigned char *)data;
#endif
  return r & 1;
}
char LICENSE[] SEC("license") = "GPL";
"""
CASES = {0: "all arguments as the prototypes say", 1: "a stack pointer for the context",
         2: "a pointer for an int", 3: "4 bytes of stack for an 8-byte struct",
         4: "the function dereferences its pointer without a NULL check",
         5: "a packet pointer with nothing checked against data_end",
         6: "a packet pointer kept across a global function that moves the packet"}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    return compile_cases(tmp_path_factory.mktemp("globals"), "g", SOURCE, CASES)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES.values()))
def test_global_function_verdicts_are_the_kernels(kernel, objects, case):
    obj = objects[case]
    linked = obj.linked("prog")
    theirs = verify_linked(linked, obj, prog_type="xdp")
    ours = verify_linked_program(obj, linked, "xdp")
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)
    if not theirs.accepted:
        assert ours.insn == theirs.slot, (ours.message, theirs.message)


def test_prototypes_become_argument_kinds(objects):
    obj = objects[0]
    found = {sig.name: sig.args for sig in global_functions(obj, obj.linked("prog"), "xdp").values()}
    assert found["takes_ctx"] == (Argument("ctx"),)
    assert found["takes_scalar"] == (Argument("scalar"),)
    assert found["takes_mem"] == (Argument("mem", 8),)
