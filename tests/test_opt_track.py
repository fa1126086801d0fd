"""Rewrites laid out over a program: jumps across and out of windows land where they landed, origins and
positions follow every instruction (what the ELF writer keeps relocations and line info right with)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.isa import branch_target, slot_starts
from bpforge.isa.asm import assemble
from bpforge.isa.disasm import format_insn
from bpforge.opt.rewrite import Rewrite
from bpforge.opt.track import Transformation, apply_rewrites


def asm(text):
    return assemble(text, check_jumps=False)


def test_a_batch_keeps_jumps_out_of_windows_landing_right():
    program = asm("if r1 == 0 goto +4\nr2 = 1\nr3 = 2\nr4 = 3\nr5 = 4\nr0 = 0\nexit")
    # two rewrites computed against the same program: the first one's jump must still reach `r0 = 0`
    first = Rewrite(0, 1, tuple(asm("if r1 == 0 goto +4")), "jump")
    second = Rewrite(2, 4, (), "drop two")
    out = apply_rewrites(program, [first, second])
    assert [format_insn(i) for i in out] == ["if r1 == 0 goto +2", "r2 = 1", "r5 = 4", "r0 = 0", "exit"]


def test_origins_and_positions_follow_the_instructions():
    program = asm("r1 = map_fd(3) ll\nr2 = 0\nr3 = 1\nr0 = 0\nexit")
    t = Transformation.start(program).apply([Rewrite(0, 4, tuple(asm("r1 = map_fd(3) ll\nr3 = 1")), "x")])
    assert t.origins == [0, 2, 3, 4]  # instructions equal to ones of the window keep their origin (an lddw: its relocation)
    assert t.positions == [0, None, None, 2, 3, 4]


def _program(rng_lines):
    lines = []
    for k, kind in enumerate(rng_lines):
        lines.append(f"if r1 > {k} goto +{kind % 3}" if kind % 4 == 0 and k < len(rng_lines) - 3 else f"r{kind % 9 + 1} += 1")
    return asm("\n".join(lines + ["r0 = 0", "exit"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=4, max_size=14), st.lists(st.integers(0, 13), max_size=4, unique=True))
def test_random_removals_keep_every_jump_on_its_instruction(lines, removals):
    program = _program(lines)
    starts = slot_starts(program)
    targets = {branch_target(i, s) for i, s in zip(program, starts)} - {None}
    chosen = [k for k in removals if k < len(program) - 2 and starts[k] not in targets
              and program[k].form.kind != "jmp"]
    rewrites = [Rewrite(starts[k], starts[k] + 1, (), "drop") for k in chosen]
    t = Transformation.start(program).apply(rewrites)
    new_starts = slot_starts(t.insns)
    for j, (insn, origin) in enumerate(zip(t.insns, t.origins)):
        assert origin is not None and program[origin] == insn or branch_target(insn, new_starts[j]) is not None
        target = branch_target(insn, new_starts[j])
        if target is not None:
            old_target = starts.index(branch_target(program[origin], starts[origin]))
            assert new_starts[t.positions[old_target]] == target
    assert len(t.insns) == len(program) - len(chosen)
