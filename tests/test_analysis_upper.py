"""Upper-half liveness (`analysis.upper`): which 32-bit results need their zero-extension, as the kernel's
verifier marks them for JITs whose 32-bit operations do not zero-extend (riscv64)."""

from __future__ import annotations

import pytest

from bpforge.analysis import build_cfg
from bpforge.analysis.upper import upper_dead_after
from bpforge.isa import assemble


def dead(text: str) -> frozenset[int]:
    return upper_dead_after(build_cfg(assemble(text)))


@pytest.mark.parametrize("text, expected", [
    # 32-bit consumers only: ALU32, jmp32, a 4-byte store's value, a 4-byte atomic's value
    ("w1 = w2\nw1 += 3\n*(u32 *)(r10 - 4) = r1\nr0 = 0\nexit", {0, 1}),
    ("w1 = 7\nif w1 > 5 goto +1\nr1 = 0\nr0 = 0\nexit", {0}),
    ("w2 = 1\nlock *(u32 *)(r10 - 8) += w2\nr0 = 0\nexit", {0}),
    ("w1 = 5\nr1 = be16 r1\nr0 = 0\nexit", {0}),  # a 16-bit swap reads 16 bits
    ("w1 = 5\nr0 = (s32)r1\nexit", {0}),  # movsx reads at most 32 bits
    # read whole: 64-bit ALU, 64-bit jump, an 8-byte store, an address, r0 at exit, a helper's argument
    ("w1 = w2\nr0 = r1\nexit", set()),
    ("w1 = 7\nif r1 > 5 goto +1\nr1 = 0\nr0 = 0\nexit", set()),
    ("w1 = 7\n*(u64 *)(r10 - 8) = r1\nr0 = 0\nexit", set()),
    ("w1 = w10\nr1 = *(u8 *)(r1 + 0)\nr0 = 0\nexit", set()),
    ("w0 = 7\nexit", set()),
    ("w1 = 7\ncall 2\nr0 = 0\nexit", set()),  # map_update_elem(r1, r2, r3, r4)
    ("w1 = 7\ncall 7\nr0 = 0\nexit", {0}),  # get_prandom_u32() reads no argument: r1 dies
    # overwritten before any read: dead; read whole on one path only: live
    ("w1 = 7\nr1 = 0\nr0 = r1\nexit", {0}),
    ("w1 = 7\nif r2 == 0 goto +2\nr0 = r1\nexit\nw0 = w1\nexit", set()),
    ("w1 = 7\nif r2 == 0 goto +2\nr1 = 0\nw0 = w1\nexit\nw0 = w1\nexit", {0}),
])
def test_which_zero_extensions_are_dead(text, expected):
    found = dead(text)
    narrow_slots = {0}  # the first instruction is the 32-bit result each case is about
    assert found & narrow_slots == set(expected) & narrow_slots


def test_a_loop_carries_a_whole_read_back():
    # w1 defined in the loop, read whole at the loop's head on the next round
    text = "r1 = 0\nr2 = 3\nl:\nr0 = r1\nw1 += 1\nr2 -= 1\nif r2 != 0 goto l\nexit"
    assert 3 not in dead(text)
    text = "r1 = 0\nr2 = 3\nl:\nw0 = w1\nw1 += 1\nr2 -= 1\nif r2 != 0 goto l\nexit"
    assert 3 in dead(text)


def test_a_callee_reads_its_arguments_whole():
    assert 0 not in dead("w1 = -1\ncall f\nexit\nf:\nr0 = r1\nexit")
