"""Callbacks (bpf_loop) against the kernel: the callback is checked in a frame of its own as the body of a
loop of unknown count — iterations up to the bound the verifier knows for r1, states that stop changing
ending the exploration, numbers nothing relied on widened — with its return value in [0, 1]. Small C
programs compiled here with clang-19 (a raw program cannot use callbacks: they need BTF func_info)."""

from __future__ import annotations

import pytest

from bpforge.isa import assemble
from bpforge.kernel.program import verify_linked
from bpforge.verifier.check import verify_linked_program, verify_program

from conftest import compile_cases

SOURCE = r"""#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct ctx_t { __u64 count; __u8 buf[64]; };
static int cb_simple(__u32 i, void *c) { return 0; }
static int cb_count(__u32 i, struct ctx_t *c) { c->count++; return 0; }
static int cb_index(__u32 i, struct ctx_t *c) { c->buf[i & 63] = 1; return 0; }
static int cb_index_bad(__u32 i, struct ctx_t *c) { c->buf[i & 127] = 1; return 0; }
static int cb_ret2(__u32 i, void *c) { return 2; }
static int cb_stop(__u32 i, struct ctx_t *c) { if (c->count > 5) return 1; c->count += 2; return 0; }
SEC("xdp") int prog(struct xdp_md *xdp) {
  struct ctx_t c = {};
#if CASE == 0
  bpf_loop(10, cb_simple, 0, 0);
#elif CASE == 1
  bpf_loop(10, cb_count, &c, 0);
#elif CASE == 2
  bpf_loop(10, cb_count, &c, 0);
  return c.buf[c.count & 31];
#elif CASE == 3
  bpf_loop(10, cb_index, &c, 0);
#elif CASE == 4
  bpf_loop(10, cb_index_bad, &c, 0);
#elif CASE == 5
  bpf_loop(10, cb_ret2, 0, 0);
#elif CASE == 6
  bpf_loop(100, cb_stop, &c, 0);
  return c.buf[c.count & 63];
#elif CASE == 7
  bpf_loop(10, cb_count, &c, 0);
  if (c.count == 5) return c.buf[c.count + 100];
#elif CASE == 8
  bpf_loop(bpf_get_prandom_u32(), cb_count, &c, 0);
#elif CASE == 9
  bpf_loop(bpf_get_prandom_u32() & 1023, cb_count, &c, 0);
  return c.buf[c.count & 63];
#endif
  return 2;
}
char LICENSE[] SEC("license") = "GPL";
"""
CASES = {0: "an empty callback", 1: "a callback counting in the caller's stack",
         2: "the count used as an index after the loop", 3: "the loop index bounded in the callback",
         4: "the loop index not bounded enough", 5: "a callback returning 2",
         6: "a callback that stops the loop", 7: "a count the loop cannot reach",
         8: "an unknown number of iterations", 9: "an unknown number of iterations, the count used after"}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    return compile_cases(tmp_path_factory.mktemp("callbacks"), "cb", SOURCE, CASES)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES.values()))
def test_callback_verdicts_are_the_kernels(kernel, objects, case):
    obj = objects[case]
    linked = obj.linked("prog")
    theirs = verify_linked(linked, obj, prog_type="xdp")
    ours = verify_linked_program(obj, linked, "xdp", budget=200_000)
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)
    if not theirs.accepted:
        assert ours.insn == theirs.slot and theirs.message.startswith(ours.message), (ours.message, theirs.message)


def test_a_raw_program_cannot_take_a_functions_address(kernel):
    insns = assemble("r1 = 10\nr2 = cb ll\nr3 = 0\nr4 = 0\ncall bpf_loop\nr0 = 0\nexit\ncb:\nr0 = 0\nexit")
    verdict = verify_program(insns, "xdp")
    assert not verdict.accepted and verdict.message == "missing btf func_info" and verdict.insn == 1
