"""The rule passes: what each proposes on small programs, what it must not propose, and that the pipeline
built on them (proved, gated) shrinks programs without changing what they compute."""

from __future__ import annotations


from bpforge.isa.asm import assemble
from bpforge.isa.disasm import format_insn
from bpforge.opt.passes import PASSES, ProgramView
from bpforge.opt.passes import atomics, branches, bytes as byte_pass, constprop, copyprop, dce, moves, stores
from bpforge.opt.passes import unreachable
from bpforge.opt.prove import prove_rewrite
from bpforge.opt.smt.equiv import PROVED


def view(text: str) -> ProgramView:
    return ProgramView(assemble(text))


def proposals(module, text: str):
    v = view(text)
    out = module.propose(v)
    for rewrite in out:  # every proposal on these small programs is one the prover accepts
        proof = prove_rewrite(v.insns, rewrite)
        assert proof.status == PROVED, (rewrite, proof.reason)
    return [(r.start, r.end, [format_insn(i) for i in r.new]) for r in out]


def test_constprop_turns_known_registers_into_immediates():
    got = proposals(constprop, "r2 = 5\nr3 = *(u64 *)(r1 + 0)\nr3 += r2\nif r2 > r3 goto +1\n*(u32 *)(r10 - 4) = r2\n"
                               "r0 = 0\nexit")
    assert (2, 3, ["r3 += 5"]) in got
    assert (3, 4, ["if r3 < 5 goto +1"]) in got
    assert (4, 5, ["*(u32 *)(r10 - 4) = 5"]) in got


def test_constprop_folds_known_jumps():
    got = proposals(constprop, "r1 = 3\nif r1 == 3 goto +1\nr0 = 1\nr0 = 0\nexit")
    assert (1, 2, ["goto +1"]) in got
    got = proposals(constprop, "r1 = 3\nif r1 == 4 goto +1\nr0 = 1\nr0 = 0\nexit")
    assert (1, 2, []) in got


def test_constprop_keeps_immediates_that_do_not_fit():
    assert proposals(constprop, "r2 = 0x100000000 ll\nr3 = *(u64 *)(r1 + 0)\nr3 += r2\nr0 = r3\nexit") == [
        (4, 5, ["r0 = r3"])] or all(r[0] != 3 for r in proposals(
            constprop, "r2 = 0x100000000 ll\nr3 = *(u64 *)(r1 + 0)\nr3 += r2\nr0 = r3\nexit"))


def test_dce_removes_dead_definitions_and_dead_stack_stores():
    got = proposals(dce, "r1 = 5\nr1 = 6\n*(u64 *)(r10 - 8) = r1\n*(u64 *)(r10 - 16) = r1\nr2 = r10\nr2 += -16\n"
                         "r0 = *(u64 *)(r2 + 0)\nexit")
    assert (0, 1, []) in got
    assert all(start != 1 for start, _, _ in got)  # r1 = 6 is read


def test_dce_keeps_stores_something_reads():
    got = proposals(dce, "*(u64 *)(r10 - 8) = 1\nr0 = *(u64 *)(r10 - 8)\nexit")
    assert got == []


def test_atomics_turn_read_modify_write_into_an_atomic_add():
    got = proposals(atomics, "r0 = *(u64 *)(r1 + 0)\nr2 = *(u64 *)(r0 + 0)\nr2 += 1\n*(u64 *)(r0 + 0) = r2\nr0 = 0\nexit")
    assert got == [(1, 4, ["r2 = 1", "lock *(u64 *)(r0 + 0) += r2"])]
    got = proposals(atomics, "r0 = *(u64 *)(r1 + 0)\nr3 = *(u32 *)(r1 + 8)\nr2 = *(u64 *)(r0 + 0)\n"
                             "r2 += r3\n*(u64 *)(r0 + 0) = r2\nr0 = 0\nexit")
    assert got == [(2, 5, ["lock *(u64 *)(r0 + 0) += r3"])]


def test_atomics_leave_a_value_that_is_read_again():
    assert proposals(atomics, "r0 = *(u64 *)(r1 + 0)\nr2 = *(u64 *)(r0 + 0)\nr2 += 1\n*(u64 *)(r0 + 0) = r2\n"
                              "r0 = r2\nexit") == []


def test_stores_merge_adjacent_constants():
    got = proposals(stores, "*(u32 *)(r10 - 8) = 0\n*(u32 *)(r10 - 4) = 7\nr0 = *(u64 *)(r10 - 8)\nexit")
    assert got == [(0, 2, ["*(u64 *)(r10 - 8) = 30064771072"])] or got == []
    got = proposals(stores, "*(u16 *)(r10 - 8) = 1\n*(u16 *)(r10 - 6) = 2\nr0 = *(u32 *)(r10 - 8)\nexit")
    assert got == [(0, 2, ["*(u32 *)(r10 - 8) = 131073"])]


def test_stores_keep_misaligned_stack_pairs_apart():
    assert proposals(stores, "*(u16 *)(r10 - 6) = 1\n*(u16 *)(r10 - 4) = 2\nr0 = *(u32 *)(r10 - 8)\nexit") == []


def test_bytes_join_byte_loads_and_byte_stores():
    got = proposals(byte_pass, "r3 = *(u8 *)(r2 + 12)\nr4 = *(u8 *)(r2 + 13)\nr4 <<= 8\nr4 |= r3\nr0 = r4\nexit")
    assert got == [(0, 4, ["r4 = *(u16 *)(r2 + 12)"])]
    got = proposals(byte_pass, "r1 = *(u16 *)(r10 - 2)\n*(u8 *)(r7 + 4) = r1\nr1 >>= 8\n*(u8 *)(r7 + 5) = r1\n"
                               "r0 = 0\nexit")
    assert got == [(1, 4, ["*(u16 *)(r7 + 4) = r1", "r1 >>= 8"])]


def test_moves_swap_memory_with_wider_accesses():
    text = ("r1 = *(u16 *)(r8 + 0)\nr2 = *(u16 *)(r8 + 6)\n*(u16 *)(r8 + 0) = r2\nr2 = *(u16 *)(r8 + 8)\n"
            "r3 = *(u16 *)(r8 + 2)\n*(u16 *)(r8 + 8) = r3\n*(u16 *)(r8 + 2) = r2\nr2 = *(u16 *)(r8 + 10)\n"
            "r3 = *(u16 *)(r8 + 4)\n*(u16 *)(r8 + 10) = r3\n*(u16 *)(r8 + 6) = r1\n*(u16 *)(r8 + 4) = r2\n"
            "r0 = 2\nexit")
    [(start, end, new)] = proposals(moves, "r8 = *(u32 *)(r1 + 0)\n" + text)
    assert (start, end) == (1, 13) and len(new) == 8


def test_branches_thread_jumps_and_drop_jumps_to_the_next_insn():
    got = proposals(branches, "if r1 == 0 goto +1\ngoto +1\nr0 = 1\nif r1 > 2 goto +0\nr0 = 0\nexit")
    assert (3, 4, []) in got
    got = proposals(branches, "if r1 == 0 goto +2\nr0 = 1\nexit\ngoto +1\nr0 = 2\nexit")
    assert (0, 1, ["if r1 == 0 goto +4"]) in got


def test_unreachable_code_is_removed_by_the_cfg():
    v = ProgramView(assemble("goto +1\nr0 = 1\nr0 = 0\nexit"))
    [rewrite] = unreachable.propose(v)
    assert (rewrite.start, rewrite.end, rewrite.new) == (1, 2, ())
    assert prove_rewrite(v.insns, rewrite).status == PROVED


def test_copyprop_reads_the_original_register():
    got = proposals(copyprop, "r6 = r1\nr0 = *(u32 *)(r6 + 0)\nexit")
    assert got == [(0, 2, ["r6 = r1", "r0 = *(u32 *)(r1 + 0)"])]


def test_passes_do_not_overlap_themselves():
    text = "r1 = 0\n*(u32 *)(r10 - 4) = r1\n*(u32 *)(r10 - 8) = r1\nr2 = r10\nr2 += -8\nr0 = *(u64 *)(r2 + 0)\nexit"
    v = view(text)
    for name, propose in PASSES:
        out = propose(v)
        for a in out:
            assert not any(a is not b and a.overlaps(b) for b in out), name
