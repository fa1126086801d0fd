"""The window API (verifier/window.py): rewritten windows of real programs checked against the verifier states
that reach them, what they guarantee to the rest of the program, and the spliced programs against our
verifier and the kernel's."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bpforge.elf import read_object
from bpforge.errors import BpforgeError
from bpforge.isa import FORMS_BY_NAME, Insn, assemble, slot_starts
from bpforge.isa.ops import Alu, Imm, Reg as R, Store
from bpforge.isa.progtypes import prog_type_of_section
from bpforge.kernel import kernel_available
from bpforge.verifier import assertions as A
from bpforge.verifier.check import Unsupported, linked_inputs, verify_program
from bpforge.verifier.regs import Reg
from bpforge.verifier.state import entry_state
from bpforge.verifier.window import (
    PROGRAM_END, ExitTarget, ProgramSites, check_window, guarantees, replace_window, window_of, window_site,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "obj"


# ---- programs, their states and the kernel ---------------------------------------------------------------

class Program:
    """An example's program with its maps resolved to indexes (as verify_linked_program does), the states
    our verifier sees at every slot, and what windows need of it."""

    def __init__(self, insns: list[Insn], specs: list, prog_type: str) -> None:
        self.insns, self.specs, self.prog_type = insns, specs, prog_type
        self.sites = ProgramSites(insns)
        verdict = verify_program(insns, prog_type, specs, collect=range(len(self.sites.ops)))
        assert verdict.accepted, verdict.message
        self.collected = verdict.collected

    def check(self, start: int, end: int, new: list[Insn]):
        """(site, original result, candidate result) for replacing slots [start, end) by `new`."""
        site = self.sites.site(start, end)
        pre = site.pre_states(self.collected[start])
        options = dict(prog_type=self.prog_type, maps=self.specs)
        return site, check_window(site.window(), pre, **options), check_window(new, pre, **options)

    def ours(self, insns: list[Insn]):
        return verify_program(insns, self.prog_type, self.specs)

    def kernel(self, insns: list[Insn]):
        from bpforge.kernel import KernelMap, verify_insns

        maps = [KernelMap.create(spec) for spec in self.specs]
        try:
            return verify_insns(insns, self.prog_type, maps=maps)
        finally:
            for kmap in maps:
                kmap.close()


@lru_cache(maxsize=None)
def example(name: str) -> Program:
    obj = read_object(EXAMPLES / f"{name}.o")
    program = obj.programs[0]
    insns, specs = linked_inputs(obj, obj.linked(program.name))
    return Program(insns, specs, prog_type_of_section(program.section))


def kernel_reason() -> str | None:
    return kernel_available()


def assert_kernel(program: Program, insns: list[Insn], accepted: bool) -> None:
    """The kernel's verdict on `insns`, or a skip saying why there is none (after our own checks ran)."""
    reason = kernel_reason()
    if reason is not None:
        pytest.skip(reason)
    verdict = program.kernel(insns)
    assert verdict.accepted == accepted, verdict.message


def S(source: str) -> list[Insn]:
    """A window (or program) in assembly: its jumps may leave it."""
    return assemble(source, check_jumps=False)


# ---- windows picked automatically --------------------------------------------------------------------------

def store_immediate_windows(program: Program):
    """`rX = K; *(uN *)(r10 - N) = rX` with rX dead afterwards -> `*(uN *)(r10 - N) = K` (N <= 4 bytes: a
    64-bit store of a register is a spill, which a store of an immediate is not)."""
    sites = program.sites
    for slot, op in enumerate(sites.ops):
        store = sites.ops[slot + 1] if slot + 1 < len(sites.ops) else None
        if not (isinstance(op, Alu) and op.op == "mov" and isinstance(op.src, Imm) and isinstance(store, Store)):
            continue
        live = sites.live[sites.cfg.function_at(slot).index]
        if store.base == 10 and store.value == R(op.dst) and store.size <= 4 and \
                not live.is_live_after(slot + 1, op.dst):
            value = op.src.value - (1 << 64) if op.src.value >> 63 else op.src.value
            yield slot, slot + 2, [Insn.make(f"st{8 * store.size}", dst=10, off=store.off, imm=value)]


def dead_register_points(program: Program):
    """Straight-line points where a register other than r0 is dead: where a dead instruction (or a move no one
    reads) may go in and come out again."""
    sites = program.sites
    for slot, op in enumerate(sites.ops):
        if op is None or slot == 0 or sites.predecessors.get(slot) != [slot - 1]:
            continue
        live = sites.live[sites.cfg.function_at(slot).index].before_mask(slot)
        dead = [n for n in range(1, 10) if not live >> n & 1]
        if dead:
            yield slot, dead[0]


def redundant_move_points(program: Program):
    """A register copy `rA = rB` in a straight line, followed by an instruction that writes neither: a second
    copy of it right after is redundant (the window API proves inserting and removing it safe)."""
    sites = program.sites
    for slot, op in enumerate(sites.ops):
        after = slot + 1
        if not (isinstance(op, Alu) and op.op == "mov" and op.width == 64 and isinstance(op.src, R)) or \
                after >= len(sites.ops) or sites.predecessors.get(after) != [slot] or op.src.n == op.dst:
            continue
        yield after, Insn.make("mov64_reg", dst=op.dst, src=op.src.n)


@pytest.mark.parametrize("name", ["xdp_firewall", "tc_classifier"])
def test_store_immediate_rewrites_keep_the_proof(name):
    program = example(name)
    windows = list(store_immediate_windows(program))
    assert windows, "the example has a zero-into-register-then-store pattern"
    insns = program.insns
    for start, end, new in windows:
        site, original, candidate = program.check(start, end, new)
        assert original.safe and candidate.safe, (start, candidate.failure)
        assert guarantees(original, candidate, site), (start, [str(i) for i in site.window()])
        spliced = replace_window(insns, start, end, new)
        assert len(spliced) == len(insns) - 1
        verdict = program.ours(spliced)
        assert verdict.accepted, (start, verdict.message)
    # All of them at once, back to front so that the slots of the others stay put.
    for start, end, new in sorted(windows, reverse=True):
        insns = replace_window(insns, start, end, new)
    assert program.ours(insns).accepted
    assert_kernel(program, insns, accepted=True)


def test_inserting_and_removing_a_dead_instruction_keeps_the_proof():
    program = example("xdp_counter")
    points = list(dead_register_points(program))
    assert points
    for slot, dead in points[:6]:
        dead_insn = Insn.make("mov64_imm", dst=dead, imm=7)
        site, original, candidate = program.check(slot, slot, [dead_insn])  # an empty window gets one insn
        assert original.safe and candidate.safe
        assert guarantees(original, candidate, site), slot
        grown = replace_window(program.insns, slot, slot, [dead_insn])
        assert program.ours(grown).accepted
        # ... and in the grown program, the dead instruction is a window whose removal keeps the proof.
        back = Program(grown, program.specs, program.prog_type)
        site, original, candidate = back.check(slot, slot + 1, [])
        assert guarantees(original, candidate, site), slot
        assert replace_window(grown, slot, slot + 1, []) == program.insns
    assert_kernel(program, grown, accepted=True)


def test_a_redundant_move_goes_in_and_out_with_the_proof_kept():
    program = example("xdp_counter")
    points = list(redundant_move_points(program))
    assert points
    for slot, move in points[:4]:
        site, original, candidate = program.check(slot, slot, [move])
        assert guarantees(original, candidate, site), (slot, str(move))
        grown = replace_window(program.insns, slot, slot, [move])
        back = Program(grown, program.specs, program.prog_type)
        site, original, candidate = back.check(slot, slot + 1, [])
        assert guarantees(original, candidate, site), (slot, str(move))
    assert_kernel(program, grown, accepted=True)


# ---- unsafe rewrites: refuted, with the assertion they break ----------------------------------------------

def test_a_packet_load_past_the_checked_range_is_refuted():
    program = example("xdp_counter")  # 5: if r1 > r6 goto +30 (r1 = data + 14); 6: r4 = *(u8 *)(r2 + 12)
    assert str(program.insns[6]) == "r4 = *(u8 *)(r2 + 12)"
    new = S("r4 = *(u8 *)(r2 + 14)")
    site, original, candidate = program.check(6, 7, new)
    assert original.safe and not candidate.safe
    failure = candidate.failure
    assert failure.slot == 0 and failure.pre_state == 0
    assert failure.message.startswith("invalid access to packet, off=14 size=1")
    assert failure.assertion.kind == A.IN_BOUNDS
    assert failure.assertion.text == "packet access [14, 15) of r2 is within the range checked against data_end"
    assert not guarantees(original, candidate, site)
    spliced = replace_window(program.insns, 6, 7, new)
    assert not program.ours(spliced).accepted
    assert_kernel(program, spliced, accepted=False)


def test_a_read_of_an_uninitialised_register_is_refuted():
    program = example("xdp_counter")  # 3: r1 = r2
    new = S("r1 = r7")
    _, original, candidate = program.check(3, 4, new)
    assert original.safe and not candidate.safe
    assert candidate.failure.message == "R7 !read_ok"
    assert candidate.failure.assertion == A.Assertion(0, A.INITIALISED, "r7", "r7 is initialised")
    statuses = {c.assertion.text: c.status for c in candidate.assertions}
    assert statuses["r7 is initialised"] == A.REFUTED
    spliced = replace_window(program.insns, 3, 4, new)
    assert not program.ours(spliced).accepted
    assert_kernel(program, spliced, accepted=False)


def test_a_null_map_value_dereference_is_refuted():
    program = example("xdp_counter")  # 43: if r0 == 0 goto +6; 44: r1 = *(u64 *)(r0 + 0)
    assert [str(i) for i in window_of(program.insns, 43, 45)] == ["if r0 == 0 goto +6", "r1 = *(u64 *)(r0 + 0)"]
    new = S("r1 = *(u64 *)(r0 + 0)")  # the null check dropped
    _, original, candidate = program.check(43, 45, new)
    assert original.safe and not candidate.safe
    assert candidate.failure.message == "R0 invalid mem access 'map_value_or_null'"
    assert candidate.failure.assertion.kind == A.NOT_NULL and candidate.failure.assertion.subject == "r0"
    spliced = replace_window(program.insns, 43, 45, new)
    assert not program.ours(spliced).accepted
    assert_kernel(program, spliced, accepted=False)


@lru_cache(maxsize=None)
def cgroup_program() -> Program:
    return Program(S("""
        r0 = *(u32 *)(r1 + 0)
        if r0 > 100 goto big
        r0 = 1
        exit
    big:
        r0 = 0
        exit
    """), [], "cgroup_skb")


def test_a_bad_return_value_in_an_exit_window_is_refuted():
    CGROUP = cgroup_program()
    new = S("r0 = 2\nexit")
    site, original, candidate = CGROUP.check(4, 6, new)
    assert original.safe and not candidate.safe
    assert candidate.failure.message.startswith("At program exit the register R0 has")
    assert candidate.failure.assertion.kind == A.RETURN_VALUE
    assert candidate.failure.assertion.text == "r0 is a number known to lie in [0, 1], what a cgroup_skb program " \
        "may return"
    assert set(original.exits) == {PROGRAM_END} and not site.needed
    spliced = replace_window(CGROUP.insns, 4, 6, new)
    assert not CGROUP.ours(spliced).accepted
    assert_kernel(CGROUP, spliced, accepted=False)


# ---- safe, but not enough for the rest --------------------------------------------------------------------

def test_a_rewrite_that_drops_a_bound_the_rest_needs_guarantees_nothing():
    program = example("xdp_counter")  # 3-5: r1 = r2; r1 += 14; if r1 > r6 goto +30 -- the rest reads data[13]
    new = S("r1 = r2\nr1 += 13\nif r1 > r6 goto +30")
    site, original, candidate = program.check(3, 6, new)
    assert original.safe and candidate.safe  # nothing in the window reads the packet
    after = ExitTarget("after", 0)
    [before] = original.exits[after]
    [weaker] = candidate.exits[after]
    assert (before.regs[2].kind, before.regs[2].range) == ("pkt", 14)
    assert (weaker.regs[2].kind, weaker.regs[2].range) == ("pkt", 13)
    assert not guarantees(original, candidate, site)
    spliced = replace_window(program.insns, 3, 6, new)
    verdict = program.ours(spliced)
    assert not verdict.accepted and verdict.message.startswith("invalid access to packet, off=13 size=1")
    assert_kernel(program, spliced, accepted=False)


def test_dropping_the_only_jump_to_code_makes_no_guarantee():
    program = example("xdp_counter")  # 59: if r0 == 0 goto +2 -- the only way to 62 besides 61's fall-through
    site, original, candidate = program.check(59, 60, [])
    assert candidate.safe
    assert ExitTarget("after", 2) in site.needed and not guarantees(original, candidate, site)


def test_a_jump_out_of_the_function_makes_no_guarantee():
    program = example("xdp_counter")  # 3: r1 = r2 -> goto far beyond the program's end
    site, original, candidate = program.check(3, 4, S("r1 = r2\nif r1 == 0 goto +500"))
    assert candidate.safe and not site.lands(ExitTarget("after", 499), candidate.length)
    assert not guarantees(original, candidate, site)


def test_a_dead_store_can_go_once_the_stack_slot_is_dead():
    program = S("""
        r1 = 5
        *(u64 *)(r10 - 8) = r1
        *(u64 *)(r10 - 16) = r1
        r0 = *(u64 *)(r10 - 16)
        *(u64 *)(r10 - 8) = r0
        r0 = 0
        exit
    """)
    prog = Program(program, [], "xdp")
    site, original, candidate = prog.check(1, 2, [])  # fp-8 is written again before anyone reads it
    assert guarantees(original, candidate, site)
    site, original, candidate = prog.check(2, 3, [])  # fp-16 is read: the fill loses its value
    assert not guarantees(original, candidate, site)


def test_a_candidate_may_not_rely_on_a_number_the_walk_did_not_keep_exact():
    """The walk that collected the pre-states pruned the path with r4 = 2 at `join` against the one with
    r4 = 1: nothing after needed r4 exactly. A window there that uses r4 as a packet offset would be safe
    with r4 = 1 only; it needs r4 exactly where the original did not, so it guarantees nothing."""
    program = Program(S("""
        r6 = *(u32 *)(r1 + 0)
        r7 = *(u32 *)(r1 + 4)
        r2 = r6
        r2 += 8
        if r2 > r7 goto out
        call 7
        r4 = 1
        if r0 > 5 goto two
        goto join
    two:
        r4 = 2
    join:
        r5 = 0
        r0 = *(u8 *)(r6 + 0)
        r0 = r4
        exit
    out:
        r0 = 1
        exit
    """), [], "xdp")
    new = S("r5 = r6\nr5 += r4\nr0 = *(u8 *)(r5 + 6)")
    site, original, candidate = program.check(10, 11, new)
    if [s.regs[4].var.umax for s in site.pre_states(program.collected[10])] == [1]:  # r4 = 2 was pruned
        assert candidate.safe and candidate.demanded[0] & 1 << 4 and not original.demanded[0] & 1 << 4
    assert not guarantees(original, candidate, site)
    spliced = replace_window(program.insns, 10, 11, new)
    assert not program.ours(spliced).accepted
    assert_kernel(program, spliced, accepted=False)
    # Moving where the number goes, not what it is, is fine: r4 flows to r0 in both.
    site, original, candidate = program.check(11, 13, S("r0 = r4\nr3 = *(u8 *)(r6 + 0)"))
    assert guarantees(original, candidate, site)


def test_comparing_the_context_pointer_with_zero_is_not_decided():
    program = example("tc_classifier")  # found by the property test below: the kernel says infinite loop
    new = S("if r1 == 0 goto -2")
    site, original, candidate = program.check(41, 42, new)
    spliced = replace_window(program.insns, 41, 42, new)
    assert not (candidate.safe and guarantees(original, candidate, site)) or not program.ours(spliced).accepted


def test_a_shift_by_a_negative_constant_is_refused():
    program = example("xdp_counter")  # found by the property test below
    new = S("w1 <<= -8\n*(u64 *)(r0 + 8) = r1")
    site, original, candidate = program.check(48, 50, new)
    assert not candidate.safe and candidate.failure.assertion.kind == A.SHIFT


# ---- the walk of a window ------------------------------------------------------------------------------------

def test_exits_are_named_so_windows_of_other_lengths_compare():
    program = example("xdp_counter")
    site, original, candidate = program.check(3, 6, S("r1 = r2\nr1 += 14\nr1 += 0\nif r1 > r6 goto +30"))
    assert set(original.exits) == set(candidate.exits) == {ExitTarget("after", 0), ExitTarget("after", 30)}
    assert original.edges == candidate.edges and original.length == 3 and candidate.length == 4
    assert ExitTarget("after", 30).slot(3) == 33 and ExitTarget("after", 30).slot(4) == 34
    assert guarantees(original, candidate, site)
    spliced = replace_window(program.insns, 3, 6, S("r1 = r2\nr1 += 14\nr1 += 0\nif r1 > r6 goto +30"))
    assert program.ours(spliced).accepted


def test_every_assertion_gets_a_status():
    program = example("xdp_counter")
    _, original, _ = program.check(42, 50, [])
    statuses = {c.status for c in original.assertions}
    assert statuses == {A.PROVEN}
    kinds = {c.assertion.kind for c in original.assertions}
    assert {A.HELPER, A.HELPER_ARGUMENT, A.NOT_NULL, A.IN_BOUNDS, A.INITIALISED} <= kinds
    texts = [c.assertion.text for c in original.assertions]
    assert "map value access [0, 8) of r0 lies within the 16-byte value of map class_stats" in texts
    # A side no pre-state takes is unreached; explore_all gives each failure its own refutation.
    pre = [entry_state()]
    both = check_window(S("r2 = 1\nif r2 == 1 goto +1\nr0 = r7\nr0 = r8\nexit"), pre, prog_type="xdp",
                        explore_all=True)
    assert not both.safe and [f.message for f in both.failures] == ["R8 !read_ok"]
    status = {(c.assertion.slot, c.assertion.subject): c.status for c in both.assertions
              if c.assertion.kind == A.INITIALISED}
    assert status == {(1, "r2"): A.PROVEN, (2, "r7"): A.UNREACHED, (3, "r8"): A.REFUTED, (4, "r0"): A.UNREACHED}


def test_the_shape_of_a_window_is_checked_before_any_state():
    pre = [entry_state()]
    lddw = check_window(S("r0 = 1 ll\nif r0 == 0 goto -2\nexit"), pre, prog_type="xdp")
    assert lddw.failure.message == "jump into the middle of ldimm64 insn 0" and lddw.failure.pre_state is None
    assert lddw.failure.assertion.kind == A.JUMP_TARGET
    dead = check_window(S("r0 = 0\nexit\nr0 = 1"), pre, prog_type="xdp")
    assert dead.failure.message == "unreachable insn 2" and dead.failure.assertion.kind == A.JUMP_TARGET


def test_loops_end_within_the_budget_or_get_no_verdict():
    pre = [entry_state()]
    bounded = check_window(S("r1 = 0\nloop:\nr1 += 1\nif r1 < 10 goto loop\nr0 = 0\nexit"), pre, prog_type="xdp")
    assert bounded.safe and bounded.processed > 20
    forever = check_window(S("r0 = 0\nloop:\ngoto loop"), pre, prog_type="xdp")
    assert forever.failure.message == "infinite loop detected at insn 1"
    assert forever.failure.assertion.kind == A.TERMINATES
    with pytest.raises(Unsupported, match="budget"):
        check_window(S("r1 = 0\nloop:\nr1 += 1\nif r1 < 100000 goto loop\nr0 = 0\nexit"), pre, prog_type="xdp",
                     budget=500)


def test_bpf2bpf_calls_inside_a_window_are_not_modelled():
    with pytest.raises(Unsupported, match="bpf2bpf call"):
        check_window(S("call fn\nexit\nfn:\nr0 = 0\nexit"), [entry_state()], prog_type="xdp")


def test_fresh_ids_start_above_the_pre_states():
    state = entry_state()
    state.regs[3] = Reg("pkt", id=41)
    result = check_window(S("r0 = *(u32 *)(r1 + 0)\nr4 = r0\nexit"), [state], prog_type="sched_cls")
    [end] = result.exits[PROGRAM_END]
    assert end.regs[4].id > 41 and end.regs[4].id == end.regs[0].id and end.regs[3].id == 41


def test_pre_states_forget_what_is_dead_at_the_window():
    program = example("xdp_counter")
    site = window_site(program.insns, 36, 40)
    [raw, *_] = program.collected[36]
    [clean, *_] = site.pre_states([raw])
    assert raw.regs[1].kind != "not_init" and clean.regs[1].kind == "not_init"  # r1 is set again at 40
    assert clean.regs[6] == raw.regs[6]
    _, original, candidate = program.check(36, 40, S("r6 -= r2\n*(u32 *)(r10 - 4) = r1\nr2 = r10\nr2 += -4"))
    assert candidate.failure.message == "R1 !read_ok"  # whatever r1 held where the walk came from


def test_a_window_has_one_entry():
    program = example("xdp_counter")
    with pytest.raises(BpforgeError, match="one entry"):
        program.sites.site(52, 54)  # 51 jumps to 53


# ---- splicing --------------------------------------------------------------------------------------------------

def test_replace_window_fixes_the_jumps_and_calls_that_cross_it():
    program = S("""
        r1 = 1
        if r1 == 0 goto out
        r2 = 2
        r3 = 3
        call fn
    out:
        r0 = 0
        exit
    fn:
        r0 = 1
        if r1 == 1 goto back
        r0 = 2
    back:
        exit
    """)
    grown = replace_window(program, 2, 4, S("r2 = 2\nr3 = 1 ll\nr3 = 3"))
    assert [str(i) for i in grown] == ["r1 = 1", "if r1 == 0 goto +5", "r2 = 2", "r3 = 1 ll", "r3 = 3",
                                       "call pc+2", "r0 = 0", "exit", "r0 = 1", "if r1 == 1 goto +1", "r0 = 2", "exit"]
    assert verify_program(grown, "xdp").accepted
    with pytest.raises(BpforgeError):
        replace_window(program, 4, 7, [])  # 1 jumps to 5, inside
    assert replace_window(program, 2, 4, window_of(program, 2, 4)) == program


# ---- the property: what the window API accepts, the verifiers accept ----------------------------------------

def _windows(program: Program, longest: int = 4):
    """Every single-entry window of 1..`longest` instructions whose original our window walk decides."""
    found = []
    starts = slot_starts(program.insns)
    for i, start in enumerate(starts):
        for j in range(i + 1, min(i + longest, len(starts)) + 1):
            end = starts[j] if j < len(starts) else starts[-1] + program.insns[-1].slots
            try:
                site, original, _ = program.check(start, end, [])
            except (BpforgeError, Unsupported):
                continue
            if original.safe and original.complete:
                found.append((start, end, i, j - i))
    return found


@lru_cache(maxsize=None)
def _property_setup(name: str):
    program = example(name)
    return program, _windows(program)


_SMALL = st.sampled_from([0, 1, 2, 4, 8, 13, 14, 16, 23, 34, -1, -4, -8])
_OFF = st.sampled_from([0, 1, 2, 4, 8, 12, 13, 14, 16, -4, -8, -16])
_REGS = st.integers(0, 10)
_FORMS = ["mov64_imm", "mov64_reg", "mov32_imm", "mov32_reg", "add64_imm", "add64_reg", "sub64_reg", "and64_imm",
          "or32_reg", "lsh32_imm", "rsh64_imm", "ldx8", "ldx16", "ldx32", "ldx64", "stx32", "stx64", "st32",
          "jeq_imm", "jgt_reg", "jne32_imm", "ja", "exit"]


@st.composite
def _replacement(draw, original: Insn) -> Insn:
    """K2's moves on one instruction: another operand, or another instruction of a few common forms."""
    if original.slots == 2 or draw(st.booleans()):
        form = draw(st.sampled_from(_FORMS))
    else:
        form = original.form.name
    fields = {}
    spec = FORMS_BY_NAME[form]
    for name in spec.operands:
        if name in ("dst", "src"):
            fields[name] = draw(st.one_of(_REGS, st.just(getattr(original, name))))
        elif name == "off":
            fields[name] = draw(st.sampled_from([-2, -1, 0, 1, 2, 3]) if spec.kind in ("jmp", "ja") else _OFF)
        elif name == "imm":
            fields[name] = draw(st.one_of(_SMALL, st.just(original.imm)))
    try:
        return Insn.make(form, **fields)
    except BpforgeError:
        return original


@pytest.mark.parametrize("name", ["xdp_counter", "tc_classifier"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_window_api_accepts_both_verifiers_accept(name, data):
    program, windows = _property_setup(name)
    start, end, first, count = data.draw(st.sampled_from(windows))
    window = list(program.insns[first:first + count])
    at = data.draw(st.integers(0, count - 1))
    window[at] = data.draw(_replacement(window[at]))
    try:
        site, original, candidate = program.check(start, end, window)
    except Unsupported:
        event("no verdict")
        return
    if not (candidate.safe and guarantees(original, candidate, site)):
        event("refused")
        return
    try:
        spliced = replace_window(program.insns, start, end, window)
    except BpforgeError:
        event("cannot splice")
        return
    event("accepted")
    try:
        ours = program.ours(spliced)
    except Unsupported:
        return
    assert ours.accepted, (start, [str(i) for i in window], ours.message)
    if kernel_reason() is None:
        verdict = program.kernel(spliced)
        assert verdict.accepted, ("UNSAFE ACCEPT", start, [str(i) for i in window], verdict.message)


def test_what_the_property_draws_from_is_not_empty():
    for name in ("xdp_counter", "tc_classifier"):
        program, windows = _property_setup(name)
        assert len(windows) > 50, name
        # Accepted replacements exist among the identities, at least: a window for itself.
        start, end, first, count = windows[0]
        site, original, candidate = program.check(start, end, list(program.insns[first:first + count]))
        assert guarantees(original, candidate, site)
