"""analysis/effects.py and analysis/cfg.py: what each op reads and writes; blocks, edges, functions, the call
graph, and the structural errors the kernel's check_subprogs raises (with the slot at fault)."""

from __future__ import annotations

import pytest

from bpforge.analysis import CfgError, build_cfg, effects_of
from bpforge.analysis.effects import StackAccess, handled_op_types
from bpforge.elf import read_object
from bpforge.isa import assemble, helper_id
from bpforge.isa.ops import OP_TYPES, decode_op

from conftest import EXAMPLE_OBJECTS


def fx(line: str):
    return effects_of(decode_op(assemble(line, check_jumps=False)[0], 0))


def test_every_op_type_has_effects():
    assert handled_op_types() == frozenset(OP_TYPES)


def test_register_effects_follow_the_calling_convention():
    assert fx("r1 += r2").reads == {1, 2} and fx("r1 += r2").writes == {1}
    assert fx("r1 = r2").reads == {2}
    assert fx("w1 = 7").reads == set()
    assert fx("r3 = be16 r3").reads == {3} == fx("r3 = be16 r3").writes
    assert fx("exit").reads == {0}
    assert fx("if r1 > r4 goto +0").reads == {1, 4}
    assert fx("goto +0").reads == set()
    lookup = fx(f"call {helper_id('map_lookup_elem')}")
    assert lookup.reads == {1, 2} and lookup.writes == {0} and lookup.clobbers == {1, 2, 3, 4, 5}
    assert lookup.memory_reads  # the key is read through r2
    clock = fx(f"call {helper_id('ktime_get_ns')}")
    assert clock.reads == set() and not clock.memory_reads and clock.kills == {0, 1, 2, 3, 4, 5}
    unknown = fx("call 999")
    assert unknown.reads == {1, 2, 3, 4, 5}
    local = fx("call pc+0")
    assert local.reads == {1, 2, 3, 4, 5} and local.writes == {0} and local.clobbers == {1, 2, 3, 4, 5}
    assert fx("callx r8").reads == {1, 2, 3, 4, 5, 8}
    ld_ind = fx("r0 = *(u16 *)skb[r7 + 4]")
    assert ld_ind.reads == {6, 7} and ld_ind.writes == {0} and ld_ind.clobbers == {1, 2, 3, 4, 5}
    assert fx("r0 = *(u32 *)skb[12]").reads == {6}
    cmpxchg = fx("r0 = cmpxchg_64(r1 - 8, r0, r2)")
    assert cmpxchg.reads == {0, 1, 2} and cmpxchg.writes == {0}
    fetch = fx("r2 = atomic_fetch_add((u64 *)(r10 - 8), r2)")
    assert fetch.reads == {2, 10} and fetch.writes == {2}
    assert fetch.stack_reads == fetch.stack_writes == (StackAccess(-8, 8),)
    assert fx("lock *(u64 *)(r1 + 0) += r2").writes == set()
    assert fx("r1 = 0x1234567890 ll").writes == {1}


def test_stack_accesses_through_r10_are_exact_others_are_unknown_memory():
    store = fx("*(u32 *)(r10 - 12) = r1")
    assert store.reads == {1, 10} and store.stack_writes == (StackAccess(-12, 4),) and not store.memory_writes
    assert store.stack_writes[0].slots == (-16,) and store.stack_writes[0].whole_slots == ()
    wide = StackAccess(-20, 16)
    assert wide.slots == (-24, -16, -8) and wide.whole_slots == (-16,)
    assert StackAccess(-16, 16).whole_slots == (-16, -8)
    load = fx("r0 = *(u64 *)(r10 - 8)")
    assert load.stack_reads == (StackAccess(-8, 8),) and load.writes == {0}
    other = fx("r0 = *(u64 *)(r2 + 8)")
    assert other.stack_reads == () and other.memory_reads
    assert fx("*(u8 *)(r3 + 0) = 1").memory_writes


PROGRAM = """
r6 = r1
r1 = 5
call pc+5
r0 += r6
may_goto +1
r0 = 1
if r0 == 0 goto -4
exit
r0 = r1
if r0 > 3 goto +1
r0 = 3
exit
"""


def test_blocks_edges_functions_and_call_graph():
    cfg = build_cfg(assemble(PROGRAM))
    spans = [(b.start, b.end, b.function) for b in cfg.blocks]
    assert spans == [(0, 3, 0), (3, 5, 0), (5, 6, 0), (6, 7, 0), (7, 8, 0), (8, 10, 1), (10, 11, 1), (11, 12, 1)]
    edges = {(e.source, e.target, e.kind) for b in cfg.blocks for e in b.succs}
    assert edges == {(0, 1, "fallthrough"), (1, 2, "fallthrough"), (1, 3, "taken"), (2, 3, "fallthrough"),
                     (3, 4, "fallthrough"), (3, 1, "taken"), (5, 6, "fallthrough"), (5, 7, "taken"),
                     (6, 7, "fallthrough")}
    assert cfg.blocks[1].predecessors == (0, 3)
    main, sub = cfg.functions
    assert (main.entry, main.end, main.exits, main.calls) == (0, 8, [7], [(2, 8)])
    assert (sub.entry, sub.end, sub.exits, sub.calls) == (8, 12, [11], [])
    assert cfg.call_graph == {0: (1,), 1: ()}
    assert cfg.function_at(9) is sub and cfg.block_at(5).id == 2
    assert cfg.unreachable == []


def test_lddw_is_one_op_of_two_slots_and_goto_ends_a_function():
    cfg = build_cfg(assemble("r1 = 0x100000000 ll\ngoto +1\nr0 = 1\nr0 = 0\nexit"))
    assert cfg.block_of_slot == [0, 0, 0, 1, 2, 2]
    assert [s for s, _ in cfg.blocks[0].ops] == [0, 2]
    assert cfg.blocks[0].succs[0].kind == "jump"
    assert cfg.unreachable == [1]


def test_callbacks_and_given_entries_are_functions():
    cfg = build_cfg(assemble("r2 = func(pc+3) ll\nr0 = 0\nexit\nexit\nr0 = 1\nexit"), entries=[5])
    assert [f.entry for f in cfg.functions] == [0, 4, 5]
    assert cfg.functions[0].references == [(0, 4)]
    assert [b.id for b in cfg.blocks if b.function == 2] == cfg.unreachable  # nobody calls slot 5


def test_tail_call_continues_and_ld_abs_ends_a_block():
    cfg = build_cfg(assemble(f"r6 = r1\ncall {helper_id('tail_call')}\nr0 = *(u8 *)skb[0]\nr0 = 0\nexit"))
    assert [(b.start, b.end) for b in cfg.blocks] == [(0, 2), (2, 3), (3, 5)]
    assert [e.kind for b in cfg.blocks for e in b.succs] == ["fallthrough", "fallthrough"]


@pytest.mark.parametrize("text, slot, message", [
    ("r0 = 0\nif r0 > 1 goto +5\nexit", 1, "jump out of range from insn 1 to 7"),
    ("r0 = 0\ngoto -3\nexit", 1, "jump out of range from insn 1 to -1"),
    ("r0 = 0\nmay_goto +9\nexit", 1, "jump out of range"),
    ("r0 = 0\nif r0 > 1 goto +1\nr1 = 1 ll\nexit", 1, "into the middle of ldimm64 insn 2"),
    ("r0 = 0", 0, "last insn is not an exit or jmp"),
    ("r0 = 0\nexit\nr0 = 1 ll", 3, "last insn is not an exit or jmp"),
    ("r0 = 0\nif r0 > 1 goto -2", 1, "last insn is not an exit or jmp"),
    # the main function falls into its subprogram
    ("call pc+1\nr0 = 0\nr0 = 1\nexit", 1, "last insn is not an exit or jmp"),
    # a jump from the subprogram back into main
    ("call pc+1\nexit\nr0 = 1\ngoto -3\nexit", 3, "jump out of range from insn 3 to 1"),
    ("call pc+7\nexit", 0, "call to invalid destination"),
])
def test_programs_no_cfg_can_describe_raise_with_the_slot(text, slot, message):
    with pytest.raises(CfgError) as caught:
        build_cfg(assemble(text, check_jumps=False))
    assert caught.value.where.insn == slot
    assert message in caught.value.message


def test_entry_inside_lddw_and_empty_program():
    with pytest.raises(CfgError) as caught:
        build_cfg(assemble("r1 = 1 ll\nexit"), entries=[1])
    assert caught.value.where.insn == 1
    with pytest.raises(CfgError):
        build_cfg([])


@pytest.mark.parametrize("path", EXAMPLE_OBJECTS, ids=lambda p: p.name)
def test_every_example_has_a_cfg_covering_each_instruction_once(path):
    obj = read_object(path)
    for program in obj.programs:
        linked = obj.linked(program.name)
        cfg = build_cfg(linked.insns)
        covered = [slot for b in cfg.blocks for slot in range(b.start, b.end)]
        assert covered == list(range(cfg.slots))
        starts = [slot for b in cfg.blocks for slot, _ in b.ops]
        assert len(starts) == len(linked.insns) == len(set(starts))
        for block in cfg.blocks:
            fn = cfg.functions[block.function]
            assert fn.entry <= block.start < block.end <= fn.end
            for edge in block.succs:
                assert cfg.blocks[edge.target].function == block.function
        # libbpf's function table names the same entries the kernel's rule derives
        from bpforge.isa import slot_starts
        slots = slot_starts(linked.insns)
        assert {slots[i] for i in linked.functions} <= {f.entry for f in cfg.functions}
