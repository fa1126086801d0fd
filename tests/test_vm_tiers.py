"""The interpreter and the fast tier give the same answer (or the same error, at the same instruction) on any
program, including those the kernel's verifier would refuse; may_goto loops end as the kernel ends them;
calls reuse one stack per depth, so memory stays bounded however many calls a loop makes; large programs
translate in time and memory linear in their size."""

from __future__ import annotations

import pytest

from bpforge.errors import BpforgeError
from bpforge.isa import assemble
from bpforge.vm import Machine, from_insns, run_fast
from bpforge.vm.fast import SEGMENT_BLOCKS, compiled
from bpforge.vm.interp import MAY_GOTO_BUDGET

TIERS = ("interp", "fast")


def outcome(source: str, tier: str, data: bytes = bytes(64), prog_type: str = "xdp", **options):
    """(retval, data_out) or the fault's (message, slot), and the machine."""
    machine = Machine(from_insns(assemble(source, check_jumps=False)), **options)
    try:
        result = machine.run(data, prog_type) if tier == "interp" else run_fast(machine, data, prog_type)
        return (result.retval, result.data_out), machine
    except BpforgeError as err:
        return (err.message, err.where.insn), machine


def same(source: str, **options):
    results = [outcome(source, tier, **options)[0] for tier in TIERS]
    assert results[0] == results[1], results
    return results[0]


# Programs the verifier refuses, where both tiers must still agree.
CALLEE_READS_UNSET_R0 = "r0 = 7\ncall f\nexit\nf:\nr0 += 1\nexit\n"  # the callee sees the caller's r0
CALLEE_READS_R6 = "r6 = 5\ncall f\nexit\nf:\nr0 = r6\nexit\n"
CALLER_READS_R1_AFTER_CALL = "r1 = 3\ncall f\nr0 = r1\nexit\nf:\nr1 = 9\nr0 = 0\nexit\n"  # the callee's r1
JUMP_FROM_CALLEE_INTO_CALLER = "call f\nback:\nr0 = 1\nexit\nf:\ngoto back\n"
FALL_INTO_SUBPROGRAM = "r0 = 1\ncall f\nr0 = 2\nf:\nr0 = 3\nexit\n"
FALL_OFF_THE_END = "r0 = 1\nif r0 == 1 goto +0\n"


@pytest.mark.parametrize("source, expected", [
    (CALLEE_READS_UNSET_R0, 8),
    (CALLEE_READS_R6, 5),
    (CALLER_READS_R1_AFTER_CALL, 9),
])
def test_registers_across_calls(source, expected):
    assert same(source)[0] == expected


@pytest.mark.parametrize("source, slot", [
    (JUMP_FROM_CALLEE_INTO_CALLER, 1),
    (FALL_INTO_SUBPROGRAM, 3),
    (FALL_OFF_THE_END, 2),
])
def test_control_leaving_its_function_faults_alike(source, slot):
    message, where = same(source)
    assert "not an instruction of this function" in message and where == slot


def test_call_depth_limit_alike():
    recurse = "call f\nexit\nf:\ncall f\nexit\n"
    message, where = same(recurse)
    assert "call depth exceeds 8 frames" in message and where == 2


def test_budget_fault_alike():
    message, where = same("r0 = 0\nl:\nr0 += 1\ngoto l\n", budget=10_000)
    assert "budget of 10000 exhausted" in message and where == 2


# ---- may_goto ------------------------------------------------------------------------------------------

MAY_GOTO_COUNTED = "r0 = 0\nl:\nmay_goto +2\nr0 += 1\ngoto l\nexit\n"
MAY_GOTO_PER_CALL = ("r6 = 0\ncall f\nr6 += r0\ncall f\nr0 += r6\nexit\n"
                     "f:\nr0 = 0\nl:\nmay_goto +2\nr0 += 1\ngoto l\nexit\n")


@pytest.mark.parametrize("tier", [
    "fast", pytest.param("interp", marks=pytest.mark.slow),  # 50 M instructions: half a minute
])
def test_may_goto_counts_per_frame(tier):
    # A loop bounded only by may_goto stops after BPF_MAX_LOOPS iterations of its frame's counter ...
    assert outcome(MAY_GOTO_COUNTED, tier, budget=4 * MAY_GOTO_BUDGET)[0][0] == MAY_GOTO_BUDGET
    # ... and each call of a function has its own counter: two calls, two full loops.
    assert outcome(MAY_GOTO_PER_CALL, tier, budget=8 * MAY_GOTO_BUDGET)[0][0] == 2 * MAY_GOTO_BUDGET


def test_may_goto_loop_ends_when_the_budget_runs_out():
    # The kernel ends a may_goto loop when its time slice runs out; the VM's clock is its budget: the
    # loop exits and the code after it still runs (no fault), identically in both tiers.
    endless = "r0 = 0\nl:\nmay_goto +2\nr0 += 1\ngoto l\nr0 |= 0x40000000\nexit\n"
    retval, _ = same(endless, budget=30_000)
    assert retval & 0x40000000 and 0 < retval & 0xFFFF <= 10_000
    # without may_goto an endless loop is still a fault
    assert "exhausted" in same("l:\ngoto l\n", budget=30_000)[0]


# ---- memory stays bounded ------------------------------------------------------------------------------

@pytest.mark.parametrize("tier", TIERS)
def test_calls_reuse_one_stack_per_depth(tier):
    loop = ("r6 = 0\nl:\ncall f\nr6 += 1\nif r6 < 20000 goto l\nr0 = r6\nexit\n"
            "f:\n*(u64 *)(r10 - 8) = r6\ncall g\nexit\ng:\nr0 = 0\nexit\n")
    (retval, _), machine = outcome(loop, tier)
    assert retval == 20000
    stacks = [r for r in machine.memory.regions if r.name.startswith("stack")]
    assert len(stacks) == 3  # depth 0, 1 and 2, each one buffer
    assert len(machine.memory.regions) < 10


def test_stack_contents_carry_over_between_calls_alike():
    # Not initialised by the callee: it reads what the previous call at its depth left (machine stack).
    leftover = ("r1 = 41\ncall put\ncall get\nexit\nput:\n*(u64 *)(r10 - 8) = r1\nr0 = 0\nexit\n"
                "get:\nr0 = *(u64 *)(r10 - 8)\nr0 += 1\nexit\n")
    assert same(leftover)[0] == 42


# ---- translation is linear -------------------------------------------------------------------------------

def test_huge_function_is_translated_in_segments():
    blocks = 3 * SEGMENT_BLOCKS + 7
    body = "".join(f"if r1 == {i} goto +1\nr0 += 1\n" for i in range(blocks))
    source = "r0 = 0\nr1 = -1\n" + body + "exit\n"
    assert same(source, data=bytes(20))[0] == blocks
    program = from_insns(assemble(source))
    translation = compiled(program)
    assert len(translation.function(0).segments) == (2 * blocks + 2) // SEGMENT_BLOCKS + 1
    assert len(translation._units) == 0  # nothing is compiled before a run enters it


def test_units_compile_only_where_a_run_goes():
    source = "r0 = 1\nif r0 == 1 goto +1\ncall f\nexit\nf:\nr0 = 2\nexit\n"
    program = from_insns(assemble(source))
    run_fast(Machine(program), bytes(20))
    assert set(compiled(program)._units) == {("f", 0)}
