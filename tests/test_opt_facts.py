"""What the known-bits analysis must not claim, and the context tracking the prover relies on (soundness
against the interpreter on random programs: test_opt_passes_facts.py)."""

from __future__ import annotations

from bpforge.isa.asm import assemble
from bpforge.opt.facts import known_bits

M64 = (1 << 64) - 1


def test_a_four_byte_load_knows_nothing():  # it may be a context pointer field, loaded as 64 bits
    facts = known_bits(assemble("r2 = *(u32 *)(r1 + 0)\nr3 = *(u16 *)(r1 + 0)\nr0 = 0\nexit"))
    assert 2 not in facts.at(2) and facts.at(2)[3].mask == M64 ^ 0xFFFF


def test_the_context_is_tracked_through_copies_and_spills():
    program = assemble("r6 = r1\n*(u64 *)(r10 - 8) = r6\nr7 = *(u64 *)(r10 - 8)\nr1 = 0\nr8 = *(u32 *)(r6 + 0)\n"
                       "r0 = 0\nexit")
    facts = known_bits(program)
    assert facts.may_context(0) == {1}
    assert {6, 7} <= facts.may_context(4) and 1 not in facts.may_context(4)
    assert 8 not in facts.may_context(5)


def test_calls_forget_the_argument_registers():
    facts = known_bits(assemble("r1 = 1\nr6 = 2\ncall 7\nr0 = 0\nexit"))
    assert 1 not in facts.at(3) and facts.at(3)[6].value == 2
