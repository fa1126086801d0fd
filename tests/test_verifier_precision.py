"""Precision tracking against the kernel: two paths that meet with different values of a register, where one
value is safe and the other is not, must not be pruned into one. Each program sets r7 to one value on each
side of an undecided branch, carries it to a join (directly, through a copy, a stack spill, arithmetic, a
subprogram's argument and return value, or a linked copy refined by a comparison) and then lets the value
decide something (a map-value offset, a branch, a helper's size argument). The verdict must be the kernel's:
a pruned unsafe path would be an unsafe accept."""

from __future__ import annotations

import itertools
import random

import pytest

from bpforge.isa import assemble
from bpforge.isa.maptypes import MapSpec
from bpforge.verifier.check import verify_program

from verifier_corpus.corpus import kernel_verdict

ARRAY = MapSpec("values", 2, 4, 16, 1)  # BPF_MAP_TYPE_ARRAY, u32 key, 16-byte value
VALUES = (0, 1, 8, 15, 16, 100)

CARRIERS = {
    "direct": "r8 = r7",
    "spill": "*(u64 *)(r10 - 24) = r7\nr8 = *(u64 *)(r10 - 24)",
    "arith": "r8 = r7\nr8 += 1\nr8 += -1",
    "call": "r1 = r7\ncall pc_sub\nr8 = r0",
    "linked": "r8 = r7\nif r7 > 200 goto out",
}
USES = {
    # r8 as an offset into a 16-byte map value (array with a constant key: never NULL).
    "map_offset": """
        *(u32 *)(r10 - 4) = 0
        r2 = r10
        r2 += -4
        r1 = map_fd(0) ll
        call bpf_map_lookup_elem
        if r0 == 0 goto out
        r0 += r8
        r0 = *(u8 *)(r0 + 0)
    """,
    # r8 decides a branch to an instruction that reads an uninitialised register.
    "branch": """
        if r8 > 15 goto bad
        goto out
    bad:
        r0 = r9
    """,
    # r8 is a helper's size argument: 1..16 bytes into a 16-byte stack buffer.
    "helper_size": """
        r1 = r6
        r2 = 0
        r3 = r10
        r3 += -16
        r4 = r8
        call bpf_xdp_load_bytes
    """,
}


def program(carrier: str, use: str, first: int, second: int) -> str:
    return f"""
        r6 = r1
        call bpf_get_prandom_u32
        r7 = {first}
        if r0 > 100 goto other
        goto join
    other:
        r7 = {second}
    join:
        {CARRIERS[carrier]}
        {USES[use]}
    out:
        r0 = 2
        exit
    """ + ("pc_sub:\nr0 = r1\nexit" if carrier == "call" else "")  # (unreachable code is refused)


def _assemble(text: str):
    return assemble("\n".join(line.strip() for line in text.splitlines() if line.strip()))


CASES = list(itertools.product(CARRIERS, USES, VALUES, VALUES))


@pytest.mark.parametrize("carrier, use, first, second",
                         random.Random(5).sample(CASES, 90), ids=lambda v: str(v))
def test_paths_with_different_values_are_not_pruned_into_one(kernel, carrier, use, first, second):
    insns = _assemble(program(carrier, use, first, second))
    theirs = kernel_verdict(insns, "xdp", [ARRAY])
    ours = verify_program(insns, "xdp", [ARRAY], budget=20_000)
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)


@pytest.mark.slow
@pytest.mark.parametrize("carrier, use, first, second", CASES, ids=lambda v: str(v))
def test_every_value_pair(kernel, carrier, use, first, second):
    insns = _assemble(program(carrier, use, first, second))
    theirs = kernel_verdict(insns, "xdp", [ARRAY])
    assert verify_program(insns, "xdp", [ARRAY], budget=20_000).accepted == theirs.accepted


def test_an_imprecise_counter_lets_loop_paths_meet():
    """A value that decides nothing does not keep paths apart: the same program with many distinct values of
    an unused register is checked in a handful of states, not one per value."""
    lines = ["r6 = r1", "call bpf_get_prandom_u32", "r7 = 0"]
    for i in range(1, 12):
        lines += [f"if r0 > {i * 10} goto +1", f"r7 = {i}"]
    lines += ["*(u64 *)(r10 - 8) = r7", "r0 = 2", "exit"]  # r7 is live to the end, and decides nothing
    verdict = verify_program(assemble("\n".join(lines)), "xdp")
    assert verdict.accepted
    assert verdict.processed < 150  # kept exact, r7 would make one path per combination: thousands
