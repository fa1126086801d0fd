"""Stack accesses at an offset known only within bounds, as a privileged loader may make them: every byte
the access may touch must lie in the frame and the access must be aligned whatever the offset; a read is any
number (or zero when every byte it may read is zero); a write leaves misc bytes and erases the registers
spilled there. Verdicts against the kernel's."""

from __future__ import annotations

import pytest

from bpforge.isa import assemble, slot_starts
from bpforge.kernel.program import verify_insns
from bpforge.verifier.check import verify_program

# r2 = fp + base + (a random number & mask), then the access
PRE = "call bpf_get_prandom_u32\nr1 = r0\nr1 &= {mask}\nr2 = r10\nr2 += {base}\nr2 += r1\n"
CASES = {
 "read_in": (7*8, -64, "*(u64 *)(r10 - 64) = 0\nr0 = *(u8 *)(r2 + 0)\nr0 = 0\nexit"),
 "read_aligned8": (0x38, -64, "r0 = *(u64 *)(r2 + 0)\nr0 = 0\nexit"),
 "read_misaligned": (7, -64, "r0 = *(u64 *)(r2 + 0)\nr0 = 0\nexit"),
 "read_oob": (127, -64, "r0 = *(u8 *)(r2 + 0)\nr0 = 0\nexit"),
 "read_low_oob": (7, -520, "r0 = *(u8 *)(r2 + 0)\nr0 = 0\nexit"),
 "write_in": (7, -64, "*(u8 *)(r2 + 0) = 1\nr0 = 0\nexit"),
 "write_oob": (127, -64, "*(u8 *)(r2 + 0) = 1\nr0 = 0\nexit"),
 "zero_read_zero": (7, -16, "*(u64 *)(r10 - 16) = 0\nr3 = *(u8 *)(r2 + 0)\nr0 = 1\nr0 /= r3\nexit"),
 "write_kills_spill": (7, -16, "*(u64 *)(r10 - 16) = r10\n*(u8 *)(r2 + 0) = 1\nr3 = *(u64 *)(r10 - 16)\nr0 = *(u8 *)(r3 - 1)\nr0 = 0\nexit"),
 "zero_keeps_spill0": (7, -16, "r4 = 0\n*(u64 *)(r10 - 16) = r4\n*(u8 *)(r2 + 0) = 0\nr3 = *(u64 *)(r10 - 16)\nr5 = r10\nr5 += r3\nr0 = *(u8 *)(r5 - 1)\nr0 = 0\nexit"),
 "unbounded": (-1, -64, "r0 = *(u8 *)(r2 + 0)\nr0 = 0\nexit"),
 "partial_spill_then_fill": (3, -16, "*(u64 *)(r10 - 16) = r10\n*(u8 *)(r2 + 0) = 1\nr3 = *(u64 *)(r10 - 16)\nr0 = r3\nr0 = 0\nexit"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_variable_offset_stack_accesses_get_the_kernels_verdict(kernel, name):
    mask, base, tail = CASES[name]
    insns = assemble(PRE.format(mask=mask, base=base) + tail)
    theirs = verify_insns(insns, "socket_filter")
    ours = verify_program(insns, "socket_filter")
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)
    if not theirs.accepted:
        assert ours.insn == slot_starts(insns)[theirs.insn]
        assert theirs.message.startswith(ours.message)
