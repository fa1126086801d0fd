"""analysis/dataflow.py and the analyses on it: liveness (registers and stack slots), reaching definitions,
def-use chains — by hand, against brute force over every path of small acyclic programs, and on every
example (the largest one timed, for the report; no timing assertion)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.analysis import (
    BACKWARD, FORWARD, Problem, analyze, argument_uses, build_cfg, def_use_chains, effects_of, liveness,
    reaching_definitions, solve,
)
from bpforge.analysis.liveness import ALL_STACK, LiveSet, slot_bit
from bpforge.analysis.reaching import Def, entry_registers
from bpforge.elf import read_object
from bpforge.isa import assemble, helper_id
from bpforge.isa.ops import Jump

from conftest import EXAMPLE_OBJECTS, EXAMPLES

STRAIGHT = [
    "r{a} = r{b}", "r{a} += r{b}", "r{a} = 7", "*(u64 *)(r10 - 8) = r{a}", "r{a} = *(u64 *)(r10 - 8)",
    "*(u32 *)(r10 - 12) = r{a}", "r{a} = *(u32 *)(r10 - 16)", "*(u64 *)(r10 - 16) = r{a}",
    "r{a} = *(u8 *)(r{b} + 0)", f"call {helper_id('ktime_get_ns')}", f"call {helper_id('map_lookup_elem')}",
]


@st.composite
def acyclic_programs(draw):
    n = draw(st.integers(2, 11))
    lines = []
    for i in range(n - 1):
        kind = draw(st.sampled_from(["op", "op", "op", "cond", "goto", "exit"]))
        if kind in ("cond", "goto"):
            off = draw(st.integers(i + 1, n - 1)) - i - 1
            lines.append(f"goto +{off}" if kind == "goto" else f"if r{draw(st.integers(0, 3))} > r{draw(st.integers(0, 3))} goto +{off}")
        elif kind == "exit":
            lines.append("exit")
        else:
            lines.append(draw(st.sampled_from(STRAIGHT)).format(a=draw(st.integers(0, 3)), b=draw(st.integers(0, 3))))
    lines.append("exit")
    return assemble("\n".join(lines))


def _next(ops, slot):
    op = ops[slot]
    succ = []
    if isinstance(op, Jump):
        succ.append(op.target)
    if not (isinstance(op, Jump) and op.cmp is None) and type(op).__name__ != "Exit":
        succ.append(slot + 1)
    return succ


def _paths_from(ops, slot):
    if not _next(ops, slot):
        yield [slot]
        return
    for nxt in _next(ops, slot):
        for rest in _paths_from(ops, nxt):
            yield [slot] + rest


def _events(op):
    """(read mask, overwrite mask) of one op, locations as the liveness bitmask spells them."""
    fx = effects_of(op)
    read = sum(1 << r for r in fx.reads) | (ALL_STACK if fx.memory_reads else 0)
    for a in fx.stack_reads:
        for s in a.slots:
            read |= slot_bit(s)
    kill = sum(1 << r for r in fx.kills)
    for a in fx.stack_writes:
        for s in a.whole_slots:
            kill |= slot_bit(s)
    return read, kill


def _brute_live_before(ops, slot):
    live = 0
    for path in _paths_from(ops, slot):
        dead = 0
        for s in path:
            read, kill = _events(ops[s])
            live |= read & ~dead
            dead |= kill
    return live


@given(acyclic_programs())
@settings(max_examples=150, deadline=None)
def test_liveness_equals_brute_force_over_every_path(insns):
    cfg = build_cfg(insns)
    live = liveness(cfg)
    reachable = {s for b in cfg.blocks if b.id not in cfg.unreachable for s, _ in b.ops}
    for slot in reachable:
        assert live.before_mask(slot) == _brute_live_before(cfg.ops, slot), slot


def _paths_to(ops, target):
    def walk(path):
        here = path[-1]
        if here == target:
            yield path
            return
        for nxt in _next(ops, here):
            yield from walk(path + [nxt])
    yield from walk([0])


def _brute_reaching(ops, slot):
    found = set()
    for path in _paths_to(ops, slot):
        last = {r: Def(0, r, entry=True) for r in entry_registers(0)}
        for s in path[:-1]:
            fx = effects_of(ops[s])
            for r in fx.clobbers:
                last.pop(r, None)
            for r in fx.writes:
                last[r] = Def(s, r)
        found |= set(last.values())
    return found


@given(acyclic_programs())
@settings(max_examples=150, deadline=None)
def test_reaching_definitions_equal_brute_force_over_every_path(insns):
    cfg = build_cfg(insns)
    reaching = reaching_definitions(cfg)
    for block in cfg.blocks:
        for slot, _ in block.ops:
            expected = _brute_reaching(cfg.ops, slot) if block.id not in cfg.unreachable else set()
            assert reaching.before(slot) == expected, slot


def test_liveness_by_hand_registers_stack_and_calls():
    text = f"""
    r6 = r1
    *(u64 *)(r10 - 8) = r6
    *(u32 *)(r10 - 16) = r6
    r2 = r10
    r2 += -8
    r1 = 0 ll
    call {helper_id('map_lookup_elem')}
    r7 = *(u32 *)(r10 - 16)
    r0 += r7
    r0 += r6
    exit
    """
    cfg = build_cfg(assemble(text))
    live = liveness(cfg)
    frame = LiveSet.of(ALL_STACK).stack
    # The helper reads memory through r2, which may be any stack slot: the whole frame is live before it, but
    # slot -8 is written whole first, and -16 only half (so it stays live).
    assert live.live_before(0) == LiveSet(frozenset({1, 10}), frame - {-8})
    assert live.live_before(7) == LiveSet(frozenset({1, 2, 6, 10}), frame)
    assert live.live_after(7) == LiveSet(frozenset({0, 6, 10}), frozenset({-16}))  # r6 lives across the call
    assert live.live_before(9) == LiveSet(frozenset({0, 6, 7}), frozenset())
    assert live.live_before(11) == LiveSet(frozenset({0}), frozenset())
    assert live.live_after(11) == LiveSet(frozenset(), frozenset())
    assert live.live_out(cfg.blocks[-1].id) == LiveSet(frozenset(), frozenset())


def test_a_call_uses_exactly_the_callee_inputs_with_argument_uses():
    text = """
    r1 = 1
    call pc+3
    r0 = r6
    exit
    exit
    r0 = r1
    exit
    """
    cfg = build_cfg(assemble(text, check_jumps=False))
    conservative = liveness(cfg)
    assert conservative.live_before(1).registers == {1, 2, 3, 4, 5, 6}
    arguments = argument_uses(cfg)
    assert arguments == {0: 0, 5: 1 << 1}
    precise = liveness(cfg, arguments=arguments)
    assert precise.live_before(1).registers == {1, 6}
    assert precise.live_before(0).registers == {6}


def test_reaching_definitions_and_chains_by_hand():
    text = """
    r0 = 0
    if r1 > 2 goto +1
    r0 = 1
    r0 += r10
    call 5
    r3 = r1
    exit
    """
    cfg = build_cfg(assemble(text))
    reaching = reaching_definitions(cfg)
    assert reaching.reaching(3, 0) == {Def(0, 0), Def(2, 0)}
    assert reaching.reaching(3, 10) == {Def(0, 10, entry=True)}
    assert reaching.reaching(1, 1) == {Def(0, 1, entry=True)}
    assert reaching.reaching(5, 1) == frozenset()  # clobbered by the call
    chains = def_use_chains(cfg, reaching=reaching)
    assert chains.def_use[Def(0, 0)] == chains.def_use[Def(2, 0)]
    assert [(u.slot, u.reg) for u in chains.uninitialised()] == [(5, 1)]
    assert chains.def_use[Def(3, 0)] == frozenset()  # overwritten by the call before any use
    assert {(u.slot, u.reg) for u in chains.def_use[Def(4, 0)]} == {(6, 0)}


def test_subprogram_entry_definitions_are_its_arguments():
    cfg = build_cfg(assemble("call pc+1\nexit\nr0 = r5\nexit", check_jumps=False))
    reaching = reaching_definitions(cfg, 1)
    assert reaching.reaching(2, 5) == {Def(2, 5, entry=True)}


def test_the_solver_runs_a_user_problem_in_both_directions():
    cfg = build_cfg(assemble("r0 = 0\nl:\nr0 += 1\nif r0 < 9 goto l\nexit"))
    # Forward: the longest distance in blocks from the entry, capped (a finite lattice).
    forward = solve(cfg, 0, Problem(FORWARD, 0, 0, max, lambda b, v: min(v + 1, 5)))
    assert forward.before == {0: 0, 1: 5, 2: 5}
    backward = solve(cfg, 0, Problem(BACKWARD, frozenset(), frozenset(), frozenset.__or__,
                                     lambda b, v: v | {b}))
    assert backward.before[0] == {0, 1, 2} and backward.after[2] == frozenset()


@pytest.mark.parametrize("path", EXAMPLE_OBJECTS, ids=lambda p: p.name)
def test_every_example_analyses(path):
    obj = read_object(path)
    for program in obj.programs:
        result = analyze(obj.linked(program.name).insns)
        arguments = argument_uses(result.cfg)
        for fa in result.functions:
            entry = fa.function.entry_block
            # Nothing but the context, the frame pointer (and a subprogram's arguments) is live on entry; the
            # `mem` convention of the asm examples passes the buffer's length in r2 as well.
            allowed = entry_registers(fa.function.index) | ({2} if path.name.startswith("asm_mem") else set())
            assert fa.liveness.live_in(entry).registers <= allowed
            chains = def_use_chains(result.cfg, fa.function.index, reaching=fa.reaching, arguments=arguments)
            assert {u.reg for u in chains.uninitialised()} <= allowed - entry_registers(fa.function.index)


def test_xdp_lb_analyses_quickly(capsys):
    path = EXAMPLES / "obj" / "xdp_lb.o"
    if not path.exists():
        pytest.skip("examples not built")
    obj = read_object(path)
    insns = obj.linked(obj.programs[0].name).insns
    start = time.perf_counter()
    result = analyze(insns)
    for fa in result.functions:
        def_use_chains(result.cfg, fa.function.index, reaching=fa.reaching)
        fa.liveness.live_before(fa.function.entry)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nxdp_lb: {len(insns)} insns, {len(result.cfg.blocks)} blocks, full analysis {elapsed * 1000:.1f} ms")
    assert len(result.cfg.blocks) > 100
