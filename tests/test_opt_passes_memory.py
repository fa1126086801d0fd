"""Rule passes over memory: stores (merging constant stores), atomics (read-modify-write into a locked
add), bytes (narrow accesses joined), moves (memory permutations redone wider). Proposals are checked by
their asm text, their SMT proof and interpreter runs (`mem` programs: r1 is a 64-byte buffer)."""

from __future__ import annotations

import random
from functools import partial

import pytest

from bpforge import vm
from bpforge.isa.asm import assemble
from bpforge.opt.passes import ProgramView, atomics, bytes as bytes_pass, constprop, moves, stores
from bpforge.opt.prove import prove_rewrite
from bpforge.opt.track import apply_rewrites

import pass_checks
from pass_checks import asm, none_at, proposals

SEED = 11  # the interpreter runs' buffers
only = partial(pass_checks.only, seed=SEED)
same_runs = partial(pass_checks.same_runs, seed=SEED)


# ---- stores --------------------------------------------------------------------------------------------------

def test_stores_merges_two_u32_zero_stores_into_one_u64():
    r = only(stores, "*(u32 *)(r10 - 8) = 0\n*(u32 *)(r10 - 4) = 0\nr0 = *(u64 *)(r10 - 8)\nexit")
    assert asm(r) == ["*(u64 *)(r10 - 8) = 0"]


def test_stores_merges_constants_little_endian():
    r = only(stores, "*(u16 *)(r10 - 8) = 0x1234\n*(u16 *)(r10 - 6) = 0x5678\nr0 = *(u32 *)(r10 - 8)\nexit")
    assert asm(r) == [f"*(u32 *)(r10 - 8) = {0x56781234}"]


def test_stores_rewrites_a_run_of_constant_stores_in_any_order():
    # clang zeroes a key field by field: bytes -50..-45 as three u16 stores, not in address order
    r = only(stores, "*(u16 *)(r10 - 48) = 0\n*(u16 *)(r10 - 50) = 0\n*(u16 *)(r10 - 46) = 0\n"
                     "r0 = *(u64 *)(r10 - 56)\nr1 = *(u64 *)(r10 - 48)\nr0 += r1\nexit")
    assert asm(r) == ["*(u16 *)(r10 - 50) = 0", "*(u32 *)(r10 - 48) = 0"]


def test_stores_run_keeps_the_last_value_of_a_byte_stored_twice():
    r = only(stores, "*(u32 *)(r10 - 8) = 0\n*(u8 *)(r10 - 7) = 1\n*(u32 *)(r10 - 4) = 0\n"
                     "r0 = *(u64 *)(r10 - 8)\nexit")
    assert asm(r) == ["*(u64 *)(r10 - 8) = 256"]


def test_stores_never_stores_an_immediate_into_the_context():
    # r1 at entry may be the context: the kernel takes no BPF_ST there (its stores are rewritten per field)
    _, found = proposals(stores, "r2 = 0\n*(u32 *)(r1 + 48) = r2\n*(u32 *)(r1 + 52) = r2\n"
                                 "*(u16 *)(r1 + 56) = 0\nr0 = 0\nexit")
    assert all("= r" in asm(r)[0] for r in found), [asm(r) for r in found]


def test_stores_merges_a_store_of_a_known_register():
    r = only(stores, "r2 = 0\n*(u32 *)(r10 - 8) = r2\n*(u32 *)(r10 - 4) = 0\nr0 = *(u64 *)(r10 - 8)\nexit", start=1)
    assert asm(r) in (["*(u64 *)(r10 - 8) = 0"], ["*(u64 *)(r10 - 8) = r2"])


def test_stores_does_not_merge_into_a_u64_immediate_that_sign_extends_wrongly():
    # 0xffffffff at -8 and 0 at -4: the u64 value 0x00000000ffffffff is no sign-extended imm32
    insns, found = proposals(stores, "*(u32 *)(r10 - 8) = -1\n*(u32 *)(r10 - 4) = 0\nr0 = *(u64 *)(r10 - 8)\nexit")
    for r in found:
        assert prove_rewrite(insns, r).status == "proved", asm(r)
        assert asm(r) != ["*(u64 *)(r10 - 8) = -1"]


def test_stores_keeps_misaligned_or_distant_stores_apart():
    none_at(stores, "*(u32 *)(r10 - 12) = 0\n*(u32 *)(r10 - 8) = 0\nr0 = *(u64 *)(r10 - 16)\nexit", 0)
    none_at(stores, "*(u32 *)(r10 - 16) = 0\n*(u32 *)(r10 - 8) = 0\nr0 = *(u64 *)(r10 - 16)\nexit", 0)
    none_at(stores, "*(u32 *)(r10 - 8) = 0\n*(u32 *)(r2 - 4) = 0\nr0 = 0\nexit", 0)


# ---- atomics -------------------------------------------------------------------------------------------------

def test_atomics_turns_a_read_modify_write_into_a_locked_add():
    r = only(atomics, "r2 = *(u64 *)(r1 + 8)\nr3 = *(u64 *)(r1 + 0)\nr3 += r2\n*(u64 *)(r1 + 0) = r3\nr0 = 0\nexit",
             start=1)
    assert asm(r) == ["lock *(u64 *)(r1 + 0) += r2"]


def test_atomics_adds_a_constant_through_a_register_that_holds_it():
    r = only(atomics, "r4 = 1\nr3 = *(u64 *)(r1 + 0)\nr3 += 1\n*(u64 *)(r1 + 0) = r3\nr0 = r4\nexit", start=1)
    assert asm(r) == ["lock *(u64 *)(r1 + 0) += r4"]
    assert set(r.assumes) == {4}


def test_atomics_materialises_a_constant_in_the_dead_register():
    r = only(atomics, "r3 = *(u64 *)(r1 + 0)\nr3 += 5\n*(u64 *)(r1 + 0) = r3\nr0 = 0\nexit")
    assert asm(r) == ["r3 = 5", "lock *(u64 *)(r1 + 0) += r3"]


@pytest.mark.parametrize("text", [
    # the loaded register is read after the store
    "r3 = *(u64 *)(r1 + 0)\nr3 += 5\n*(u64 *)(r1 + 0) = r3\nr0 = r3\nexit",
    # stored elsewhere
    "r3 = *(u64 *)(r1 + 0)\nr3 += 5\n*(u64 *)(r1 + 8) = r3\nr0 = 0\nexit",
    # a store in between may change the location
    "r3 = *(u64 *)(r1 + 0)\n*(u64 *)(r1 + 0) = 0\nr3 += 5\n*(u64 *)(r1 + 0) = r3\nr0 = 0\nexit",
    # a call in between
    "r6 = r1\nr3 = *(u64 *)(r6 + 0)\ncall 7\nr3 += 5\n*(u64 *)(r6 + 0) = r3\nr0 = 0\nexit",
    # not an add
    "r3 = *(u64 *)(r1 + 0)\nr3 *= 5\n*(u64 *)(r1 + 0) = r3\nr0 = 0\nexit",
])
def test_atomics_leaves_what_is_not_an_increment_in_place(text):
    _, found = proposals(atomics, text)
    assert found == [], [asm(r) for r in found]


def test_constprop_never_stores_an_immediate_into_the_context():
    _, found = proposals(constprop, "r2 = 14\n*(u32 *)(r1 + 48) = r2\nr0 = 0\nexit")
    assert [r for r in found if r.start == 1] == []
    _, found = proposals(constprop, "r2 = 14\n*(u32 *)(r10 - 4) = r2\nr0 = *(u32 *)(r10 - 4)\nexit")
    assert [asm(r) for r in found if r.start == 1] == [["*(u32 *)(r10 - 4) = 14"]]


# ---- bytes ---------------------------------------------------------------------------------------------------

def test_bytes_joins_two_byte_loads_into_one_u16():
    r = only(bytes_pass, "r2 = *(u8 *)(r1 + 4)\nr3 = *(u8 *)(r1 + 5)\nr3 <<= 8\nr3 |= r2\nr0 = r3\nexit")
    assert asm(r) == ["r3 = *(u16 *)(r1 + 4)"]


def test_bytes_keeps_byte_loads_whose_other_register_is_read_later():
    _, found = proposals(bytes_pass, "r2 = *(u8 *)(r1 + 4)\nr3 = *(u8 *)(r1 + 5)\nr3 <<= 8\nr3 |= r2\n"
                                     "r0 = r3\nr0 += r2\nexit")
    assert found == []


def test_bytes_joins_the_stores_of_a_values_bytes_with_the_shifts_that_made_them():
    """The window starts where the value was made, so the copies and shifts relating the stored
    registers to it are inside it (a window of the stores alone cannot be proved)."""
    text = ("r1 = *(u32 *)(r1 + 8)\nr2 = r1\nr2 >>= 24\n*(u8 *)(r10 - 5) = r2\nr2 = r1\nr2 >>= 16\n"
            "*(u8 *)(r10 - 6) = r2\n*(u8 *)(r10 - 8) = r1\nr1 >>= 8\n*(u8 *)(r10 - 7) = r1\n"
            "r0 = *(u32 *)(r10 - 8)\nexit")
    r = only(bytes_pass, text)
    assert r.start == 1
    assert [line for line in asm(r) if line.startswith("*")] == ["*(u32 *)(r10 - 8) = r1"]


SPILLED = "r2 = *(u64 *)(r1 + 0)\n*(u64 *)(r10 - 8) = r2\n"  # stack bytes from the buffer (never the context)


def test_bytes_joins_two_u16_loads_into_one_u32():
    r = only(bytes_pass, SPILLED + "r2 = *(u16 *)(r10 - 8)\nr3 = *(u16 *)(r10 - 6)\nr3 <<= 16\nr3 |= r2\n"
                                   "r0 = r3\nexit")
    assert asm(r) == ["r3 = *(u32 *)(r10 - 8)"]


def test_bytes_joins_a_high_half_shifted_before_the_low_half_is_loaded():
    r = only(bytes_pass, SPILLED + "r3 = *(u32 *)(r10 - 4)\nr3 <<= 32\nr2 = *(u32 *)(r10 - 8)\nr3 |= r2\n"
                                   "r0 = r3\nexit")
    assert asm(r) == ["r3 = *(u64 *)(r10 - 8)"]


def test_bytes_leaves_halves_that_are_not_adjacent_or_shifted_wrongly():
    none_at(bytes_pass, SPILLED + "r2 = *(u16 *)(r10 - 8)\nr3 = *(u16 *)(r10 - 4)\nr3 <<= 16\nr3 |= r2\n"
                                  "r0 = r3\nexit", 2)
    none_at(bytes_pass, SPILLED + "r2 = *(u16 *)(r10 - 8)\nr3 = *(u16 *)(r10 - 6)\nr3 <<= 8\nr3 |= r2\n"
                                  "r0 = r3\nexit", 2)


# ---- moves ---------------------------------------------------------------------------------------------------

# Four bytes of the packet swapped with four of the stack, two at a time: the packet (from the context's
# data field) and the stack are different memories, so the pass may reorder and widen across the two bases.
SWAP = """r7 = *(u32 *)(r1 + 0)
r8 = *(u32 *)(r1 + 4)
r2 = r7
r2 += 4
if r2 > r8 goto +11
*(u64 *)(r10 - 8) = 0x1234567
r2 = *(u16 *)(r7 + 0)
r3 = *(u16 *)(r10 - 8)
*(u16 *)(r7 + 0) = r3
*(u16 *)(r10 - 8) = r2
r2 = *(u16 *)(r7 + 2)
r3 = *(u16 *)(r10 - 6)
*(u16 *)(r7 + 2) = r3
*(u16 *)(r10 - 6) = r2
r0 = *(u32 *)(r10 - 8)
exit
r0 = 1
exit
"""


def _xdp_runs(insns, frames):
    return [(r.retval, r.data_out) for r in (vm.run(vm.from_insns(insns), f, "xdp") for f in frames)]


def test_moves_swaps_packet_and_stack_bytes_in_wider_pieces():
    insns = assemble(SWAP)
    view = ProgramView(insns, (), "xdp")
    [r] = moves.propose(view)
    assert (r.start, r.end) == (6, 14) and len(r.new) == 4  # eight u16 moves, then the load of the result
    proof = prove_rewrite(insns, r, sites=view.sites, facts=view.facts, regions=view.regions_at(r.start))
    assert proof.status == "proved", proof.reason
    rng = random.Random(SEED)
    frames = [rng.randbytes(rng.randrange(14, 40)) for _ in range(30)]
    assert _xdp_runs(insns, frames) == _xdp_runs(apply_rewrites(insns, [r]), frames)


def test_moves_keeps_two_bases_of_unknown_kinds_apart():
    # r7 and r8 come from memory the analysis cannot name: they may overlap, nothing is reordered
    text = SWAP.replace("r7 = *(u32 *)(r1 + 0)", "r7 = *(u64 *)(r10 - 16)").replace(
        "(r10 - 8)", "(r9 + 0)").replace("(r10 - 6)", "(r9 + 2)").replace("*(u64 *)(r9 + 0) = 0x1234567\n", "")
    insns = assemble("*(u64 *)(r10 - 16) = r1\nr9 = *(u64 *)(r1 + 8)\n" + text)
    assert moves.propose(ProgramView(insns, (), "xdp")) == []
