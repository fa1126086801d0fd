"""analysis/frame.py: which registers hold stack addresses, and what helper calls and loads through copies of
r10 read of the stack — by hand, in the liveness that uses it, and against the interpreter's registers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.analysis import build_cfg
from bpforge.analysis.frame import NOT_STACK, Const, Frame, MapHandle, Region, frame_states, stack_reads
from bpforge.analysis.liveness import LiveSet, program_liveness
from bpforge.isa import assemble, helper_id
from bpforge.isa.maptypes import MapSpec
from bpforge.vm.interp import decoded, run
from bpforge.vm.maps import create_map
from bpforge.vm.memory import VmFault
from bpforge.vm.program import VmProgram

LOOKUP, UPDATE, KTIME = helper_id("map_lookup_elem"), helper_id("map_update_elem"), helper_id("ktime_get_ns")
HASH = MapSpec("counts", 1, key_size=8, value_size=16, max_entries=4)

# Stores a key and a value, looks the key up, updates: the shape clang gives a per-flow counter.
COUNTER = f"""
r1 = 0
*(u64 *)(r10 - 8) = r1
*(u64 *)(r10 - 16) = r1
r1 = 7
*(u64 *)(r10 - 24) = r1
r2 = r10
r2 += -24
r1 = map_fd(0) ll
call {LOOKUP}
if r0 == 0 goto +3
r1 = *(u64 *)(r0 + 0)
r1 += 1
*(u64 *)(r0 + 0) = r1
r0 = 0
exit
"""


def _slots(live: int) -> frozenset[int]:
    return LiveSet.of(live).stack


def test_a_lookup_reads_exactly_its_key():
    insns = assemble(COUNTER)
    cfg = build_cfg(insns)
    states = frame_states(cfg)
    assert states[9][2] == Frame(-24) and states[9][1] == MapHandle(0)
    assert stack_reads(cfg, 0, {0: HASH})[9] == frozenset({-24})
    live = program_liveness(cfg, {0: HASH})[0]
    # -8 and -16 are written but no path reads them: the key is 8 bytes at -24.
    assert _slots(live.after_mask(2)) == frozenset() and _slots(live.after_mask(5)) == frozenset({-24})
    # A map value load through r0 reads no stack.
    assert stack_reads(cfg, 0, {0: HASH})[11] == frozenset()


def test_the_map_size_decides_what_the_key_covers():
    insns = assemble(COUNTER)
    cfg = build_cfg(insns)
    wide = MapSpec("wide", 1, key_size=24, value_size=16, max_entries=4)
    assert stack_reads(cfg, 0, {0: wide})[9] == frozenset({-24, -16, -8})
    live = program_liveness(cfg, {0: wide})[0]
    assert _slots(live.after_mask(1)) == frozenset({-8}) and _slots(live.after_mask(2)) == frozenset({-16, -8})
    # Without the map's spec nothing is narrowed: the call may read the whole frame but -24, written before it.
    assert 9 not in stack_reads(cfg, 0, {})
    everything = _slots(program_liveness(cfg)[0].after_mask(2))
    assert len(everything) == 63 and -24 not in everything


def test_an_update_reads_key_and_value():
    insns = assemble(f"""
    r1 = 1
    *(u64 *)(r10 - 8) = r1
    *(u64 *)(r10 - 16) = r1
    *(u64 *)(r10 - 24) = r1
    *(u64 *)(r10 - 32) = r1
    r2 = r10
    r2 += -8
    r3 = r10
    r3 += -32
    r1 = map_fd(0) ll
    r4 = 0
    call {UPDATE}
    exit
    """)
    assert stack_reads(build_cfg(insns), 0, {0: HASH})[12] == frozenset({-8, -32, -24})


def test_a_pointer_the_analysis_lost_reads_everything():
    insns = assemble(f"""
    r2 = r10
    r2 += -24
    *(u64 *)(r10 - 32) = r2
    r2 = *(u64 *)(r10 - 32)
    r1 = map_fd(0) ll
    call {LOOKUP}
    exit
    """)
    cfg = build_cfg(insns)
    states = frame_states(cfg)
    assert states[6][2] is None  # a filled spill may hold a stack address
    assert 6 not in stack_reads(cfg, 0, {0: HASH})


def test_scalars_and_other_pointers_name_no_stack():
    insns = assemble(f"""
    r2 = *(u32 *)(r1 + 0)
    w3 = w10
    r4 = r2
    r4 += r3
    call {KTIME}
    r5 = r0
    r5 += 8
    exit
    """)
    states = frame_states(build_cfg(insns))
    assert states[1][2] is NOT_STACK and states[1][1] == Region("ctx")  # r1: the context in the main function
    assert states[3][3] is NOT_STACK  # a 32-bit result is a scalar
    assert states[4][4] is NOT_STACK
    assert states[6][0] is NOT_STACK and states[7][5] is NOT_STACK


def test_packet_and_map_value_pointers():
    insns = assemble(f"""
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r2 += 14
    r1 = map_fd(0) ll
    call {LOOKUP}
    r4 = r0
    r4 += 8
    exit
    """)
    cfg = build_cfg(insns)
    xdp = frame_states(cfg, prog_type="xdp")
    assert xdp[2][2] == Region("packet") and xdp[2][3] is NOT_STACK  # data_end is never dereferenced
    assert xdp[3][2] == Region("packet")
    assert xdp[7][0] == Region("map_value") and xdp[8][4] == Region("map_value")
    assert frame_states(cfg)[2][2] is NOT_STACK  # without the program type, a context load is just not stack


# ---- against the interpreter: every claim about a register holds in every run --------------------------------

VOCABULARY = [
    "r{a} = r10", "r{a} += -8", "r{a} += 16", "r{a} -= 24", "r{a} = r{b}", "r{a} = 7", "w{a} += 3", "r{a} += r{b}",
    "*(u64 *)(r10 - 8) = r{a}", "r{a} = *(u64 *)(r10 - 8)", "r{a} = *(u32 *)(r10 - 16)", "r{a} ^= r{b}",
    f"call {KTIME}", "r{a} = be16 r{a}", "r{a} = *(u32 *)(r1 + 0)",
]


@st.composite
def programs(draw):
    n = draw(st.integers(2, 14))
    lines = []
    for i in range(n - 1):
        if draw(st.integers(0, 5)) == 0:
            off = draw(st.integers(i + 1, n - 1)) - i - 1
            lines.append(f"if r{draw(st.integers(0, 5))} > 5 goto +{off}")
            continue
        lines.append(draw(st.sampled_from(VOCABULARY)).format(a=draw(st.integers(0, 5)), b=draw(st.integers(0, 5))))
    lines.append("exit")
    return assemble("\n".join(lines))


@settings(max_examples=300, deadline=None)
@given(programs(), st.binary(min_size=14, max_size=40))
def test_frame_facts_hold_in_the_interpreter(insns, packet):
    states = frame_states(build_cfg(insns))
    program = VmProgram("p", insns, maps=[create_map(HASH)], map_names=["counts"])
    seen: list[tuple[int, list[int]]] = []
    table = decoded(program)
    for slot, entry in enumerate(table):
        if entry is None:
            continue
        execute, op, after = entry

        def record(interp, op, _slot=slot, _execute=execute):
            seen.append((_slot, list(interp.regs)))
            _execute(interp, op)

        table[slot] = (record, op, after)
    try:
        run(program, packet, "xdp")
    except VmFault:  # an access the verifier would refuse: the registers seen until then still count
        pass
    for slot, regs in seen:
        fp = regs[10]
        for n, claim in enumerate(states[slot]):
            if isinstance(claim, Frame):
                assert regs[n] == (fp + claim.offset) % 2**64, (slot, n, claim)
            elif isinstance(claim, Const):
                assert regs[n] == claim.value, (slot, n, claim)
            elif claim is NOT_STACK:
                assert not fp - 512 <= regs[n] <= fp, (slot, n)
