"""Rule passes over control flow: branches (jumps to the next slot, jump threading) and unreachable (code
no path reaches). Proposals are checked by their asm text, their proof (the SMT one, or the CFG's for
unreachable code) and interpreter runs of the program before and after."""

from __future__ import annotations

from functools import partial

from bpforge.isa.asm import assemble
from bpforge.isa.disasm import format_insn
from bpforge.opt.passes import PASSES, ProgramView, branches, unreachable
from bpforge.opt.prove import prove_rewrite
from bpforge.opt.track import apply_rewrites

import pass_checks
from pass_checks import asm, proposals

SEED = 3  # the interpreter runs' buffers
proved = partial(pass_checks.check, seed=SEED)
same_runs = partial(pass_checks.same_runs, seed=SEED)


# ---- branches ------------------------------------------------------------------------------------------------

def test_branches_removes_a_goto_plus_zero():
    insns, found = proposals(branches, "r0 = *(u8 *)(r1 + 0)\ngoto +0\nexit")
    assert [(r.start, asm(r)) for r in found] == [(1, [])]
    proved(insns, found[0])


def test_branches_removes_a_conditional_jump_to_the_next_slot():
    insns, found = proposals(branches, "r0 = *(u8 *)(r1 + 0)\nif r0 > 5 goto +0\nr0 += 1\nexit")
    assert [(r.start, asm(r)) for r in found] == [(1, [])]
    proved(insns, found[0])


def test_branches_threads_a_jump_to_a_goto():
    text = "r0 = *(u8 *)(r1 + 0)\nif r0 > 5 goto +2\nr0 = 1\nexit\ngoto +1\nr0 = 2\nexit"
    insns, found = proposals(branches, text)
    threaded = [r for r in found if r.start == 1]
    assert len(threaded) == 1 and asm(threaded[0]) == ["if r0 > 5 goto +4"]
    proved(insns, threaded[0])


def test_branches_leaves_jumps_that_go_somewhere():
    _, found = proposals(branches, "r0 = *(u8 *)(r1 + 0)\nif r0 > 5 goto +1\nr0 = 1\nexit")
    assert found == []


def test_branches_does_not_thread_around_a_loop_of_gotos():
    _, found = proposals(branches, "r0 = 0\nif r0 > 5 goto +1\nexit\ngoto -1\n")
    for r in found:
        assert r.start != 3  # `goto -1` jumps to itself: no final target


# ---- unreachable ---------------------------------------------------------------------------------------------

def test_unreachable_removes_code_after_a_goto_that_nothing_targets():
    text = "r0 = 1\ngoto +2\nr0 = 2\nr0 = 3\nexit"
    insns, found = proposals(unreachable, text)
    assert [(r.start, r.end, asm(r)) for r in found] == [(2, 4, [])]
    assert all(r.unreachable for r in found)
    proved(insns, found[0])


def test_unreachable_proposes_nothing_when_all_is_reached():
    _, found = proposals(unreachable, "r0 = *(u8 *)(r1 + 0)\nif r0 > 5 goto +1\nr0 = 1\nexit")
    assert found == []


def test_a_folded_jump_leaves_unreachable_code_for_the_next_round():
    """Rounds compose: constprop folds the jump, then the code it skipped is unreachable."""
    insns = assemble("r2 = 7\nif r2 > 3 goto +1\nr0 = 1\nr0 = 0\nexit")
    rounds = 0
    while rounds < 6:
        view = ProgramView(insns)
        chosen = []
        for _, propose in PASSES:
            for r in propose(view):
                if r.saved >= 0 and not any(r.overlaps(o) for o in chosen) and \
                        prove_rewrite(insns, r).status == "proved":
                    chosen.append(r)
        if not chosen:
            break
        after = apply_rewrites(insns, chosen)
        same_runs(insns, after, trials=3)
        insns = after
        rounds += 1
    assert [format_insn(i) for i in insns] == ["r0 = 0", "exit"]
