"""Safety assertions as data (verifier/assertions.py): what each op needs, in plain words, and which assertion
each message of our verifier refutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bpforge.isa.helpers import helper_id
from bpforge.isa.maptypes import MapSpec
from bpforge.isa.ops import (
    OP_TYPES, AddrSpaceCast, Alu, Atomic, Call, Exit, Imm, Jump, LegacyLoad, Load, LoadImm64, MayGoto,
    Reg as R, Store, Unary,
)
from bpforge.verifier import assertions as A
from bpforge.verifier.assertions import Assertion, assertions_of, classify, refuted
from bpforge.verifier.regs import NOT_INIT, Reg

SRC = Path(__file__).resolve().parent.parent / "src" / "bpforge"
LOOKUP = helper_id("map_lookup_elem")

# At least one op of every type isa.ops has, with what it must be asked at least.
EXAMPLES = [
    (Alu("add", 64, 1, R(2)), {(A.INITIALISED, "r1"), (A.INITIALISED, "r2"), (A.POINTER_ARITHMETIC, "r1")}),
    (Alu("mov", 64, 10, Imm(0)), {(A.FRAME_POINTER, "r10")}),
    (Alu("div", 32, 3, Imm(0)), {(A.INITIALISED, "r3"), (A.DIVISOR, "imm 0"), (A.POINTER_ARITHMETIC, "r3")}),
    (Alu("lsh", 32, 1, Imm(-8 & (1 << 64) - 1)), {(A.SHIFT, "imm -8")}),
    (Unary("be", 16, 4), {(A.INITIALISED, "r4")}),
    (AddrSpaceCast(1, 2, 0, 1), {(A.INITIALISED, "r2")}),
    (Load(4, False, 0, 3, 8), {(A.INITIALISED, "r3"), (A.POINTER, "r3"), (A.NOT_NULL, "r3"), (A.IN_BOUNDS, "r3"),
                               (A.ALIGNED, "r3")}),
    (Store(8, 10, -8, R(1)), {(A.INITIALISED, "r1"), (A.POINTER, "r10"), (A.IN_BOUNDS, "r10"), (A.ALIGNED, "r10")}),
    (Store(4, 2, 0, Imm(7)), {(A.INITIALISED, "r2"), (A.IN_BOUNDS, "r2")}),
    (Atomic("cmpxchg", 8, True, 1, 0, 2), {(A.INITIALISED, "r0"), (A.INITIALISED, "r1"), (A.INITIALISED, "r2"),
                                           (A.POINTER, "r1"), (A.IN_BOUNDS, "r1")}),
    (Jump("ugt", 64, 1, R(2), 9), {(A.INITIALISED, "r1"), (A.INITIALISED, "r2"), (A.JUMP_TARGET, "insn 9")}),
    (Jump(None, 64, 0, Imm(0), 2), {(A.JUMP_TARGET, "insn 2"), (A.TERMINATES, "insn 2")}),
    (MayGoto(7), {(A.JUMP_TARGET, "insn 7")}),
    (Call("helper", LOOKUP), {(A.HELPER, "bpf_map_lookup_elem"), (A.INITIALISED, "r1"), (A.INITIALISED, "r2"),
                              (A.HELPER_ARGUMENT, "r1"), (A.HELPER_ARGUMENT, "r2")}),
    (Call("local", 20), {(A.JUMP_TARGET, "insn 20"), (A.CALL_DEPTH, "insn 20")}),
    (Call("indirect", 3), {(A.INITIALISED, "r3"), (A.SUPPORTED, "callx")}),
    (Call("kfunc", 1234), {(A.SUPPORTED, "kfunc 1234")}),
    (Exit(), {(A.INITIALISED, "r0"), (A.RETURN_VALUE, "r0")}),
    (LoadImm64("map", 1, 0), {(A.MAP_REFERENCE, "map 0")}),
    (LoadImm64("func", 2, 30), {(A.JUMP_TARGET, "insn 30")}),
    (LegacyLoad(2, 12, src=7), {(A.INITIALISED, "r7"), (A.LEGACY_LOAD, "r6")}),
]


def test_every_op_type_has_an_example():
    assert {op.__class__ for op, _ in EXAMPLES} == set(OP_TYPES)


@pytest.mark.parametrize("op, wanted", EXAMPLES, ids=[repr(op) for op, _ in EXAMPLES])
def test_every_op_type_gets_its_assertions(op, wanted):
    found = assertions_of(op, 5, prog_type="xdp")
    assert all(isinstance(a, Assertion) and a.slot == 5 and a.kind in A.KINDS and a.text for a in found)
    assert wanted <= {(a.kind, a.subject) for a in found}
    assert len(set(found)) == len(found)


def test_a_move_reads_only_its_source_and_r10_never_needs_initialising():
    kinds = {(a.kind, a.subject) for a in assertions_of(Alu("mov", 64, 1, R(10)), 0)}
    assert kinds == set()  # copying the frame pointer needs nothing: r10 always holds it
    assert {(a.kind, a.subject) for a in assertions_of(Alu("mov", 64, 1, R(2)), 0)} == {(A.INITIALISED, "r2")}


def test_the_words_name_the_region_the_base_points_into():
    regs = [NOT_INIT] * 11
    regs[1] = Reg("pkt", range=34)
    regs[10] = Reg("fp")
    spec = MapSpec("stats", "array", 4, 16, 1)
    regs[0] = Reg("map_value", map=spec)
    texts = {a.text for a in assertions_of(Load(1, False, 2, 1, 20), 3, regs=regs)}
    assert "packet access [20, 21) of r1 is within the range checked against data_end" in texts
    assert "r1 is initialised" in texts
    stack = [a.text for a in assertions_of(Store(4, 10, -4, Imm(0)), 3, regs=regs) if a.kind == A.IN_BOUNDS]
    assert stack == ["stack access [-4, 0) of r10 lies within the 512-byte frame (a spilled pointer is filled and "
                     "spilled only whole)"]
    value = [a.text for a in assertions_of(Load(8, False, 2, 0, 8), 3, regs=regs) if a.kind == A.IN_BOUNDS]
    assert value == ["map value access [8, 16) of r0 lies within the 16-byte value of map stats"]
    ctx = [a.text for a in assertions_of(Load(4, False, 2, 1, 0), 3, prog_type="xdp", regs=[Reg("ctx")] * 11)
           if a.kind == A.IN_BOUNDS]
    assert ctx == ["context access [0, 4) of r1 is a field xdp programs may read"]


def test_helper_arguments_follow_the_signature_and_the_map():
    regs = [NOT_INIT] * 11
    regs[1] = Reg("map_ptr", map=MapSpec("stats", "hash", 8, 16, 4))
    texts = [a.text for a in assertions_of(Call("helper", LOOKUP), 0, regs=regs) if a.kind == A.HELPER_ARGUMENT]
    assert texts == ["r1, argument 1 of bpf_map_lookup_elem, is a map pointer (an lddw of a map)",
                     "r2, argument 2 of bpf_map_lookup_elem, points to 8 readable bytes (the map's key)"]


def test_the_return_range_comes_from_the_program_type():
    [text] = [a.text for a in assertions_of(Exit(), 0, prog_type="cgroup_skb") if a.kind == A.RETURN_VALUE]
    assert text == "r0 is a number known to lie in [0, 1], what a cgroup_skb program may return"


# ---- classify: every message our verifier raises names a kind ----------------------------------------------

_RAISED = re.compile(r"(?:Rejected|CfgError|_reject)\(\s*(f?)(\"|')(.*?)(?<!\\)\2")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _sample(template: str) -> str:
    """An f-string's text with each placeholder filled: a quoted alternative in it, else a number."""
    def fill(match: re.Match) -> str:
        quoted = re.search(r"'([^']*)'", match.group(1))
        return quoted.group(1) if quoted else "1"
    return _PLACEHOLDER.sub(fill, template)


def raised_messages() -> list[str]:
    """The first literal of every Rejected / CfgError / rejection our verifier and CFG builder raise."""
    found = []
    for path in sorted((SRC / "verifier").glob("*.py")) + [SRC / "analysis" / "cfg.py"]:
        for f, _, text in _RAISED.findall(path.read_text()):
            found.append(_sample(text) if f else text)
    return sorted(set(found))


def test_the_message_list_is_read_from_the_source():
    messages = raised_messages()
    assert len(messages) > 40
    assert "frame pointer is read only" in messages and "unreachable insn 1" in messages


@pytest.mark.parametrize("message", raised_messages())
def test_classify_names_a_kind_for_every_message_our_verifier_raises(message):
    assert classify(message) in A.KINDS, message


@pytest.mark.parametrize("message, kind", [
    ("R3 !read_ok", A.INITIALISED),
    ("frame pointer is read only", A.FRAME_POINTER),
    ("div by zero", A.DIVISOR),
    ("invalid shift -8", A.SHIFT),
    ("R0 invalid mem access 'map_value_or_null'", A.NOT_NULL),
    ("R1 invalid mem access 'scalar'", A.POINTER),
    ("invalid access to packet, off=14 size=1, R2(id=0,off=0,r=14)", A.IN_BOUNDS),
    ("invalid read from stack R10 off=-520 size=4", A.IN_BOUNDS),
    ("invalid access to map value, value_size=16 off=16 size=8", A.IN_BOUNDS),
    ("invalid bpf_context access off=2 size=4", A.IN_BOUNDS),
    ("misaligned stack access off (0x0; 0x0)+-3+0 size 4", A.ALIGNED),
    ("R1 pointer arithmetic with *= operator prohibited", A.POINTER_ARITHMETIC),
    ("R1 pointer arithmetic on map_value_or_null prohibited, null-check it first", A.POINTER_ARITHMETIC),
    ("R2 type=scalar expected=fp, pkt, pkt_meta, map_key, map_value, mem, ringbuf_mem, buf, trusted_ptr_",
     A.HELPER_ARGUMENT),
    ("invalid indirect access to stack R2 off=-520 size=4", A.HELPER_ARGUMENT),
    ("program of this type cannot use helper bpf_skb_load_bytes#26", A.HELPER),
    ("At program exit the register R0 has smin=2 smax=2 should have been in [0, 1]", A.RETURN_VALUE),
    ("infinite loop detected at insn 3", A.TERMINATES),
    ("BPF program is too large. Processed 1000001 insn", A.TERMINATES),
    ("jump out of range from insn 3 to 100", A.JUMP_TARGET),
    ("unreachable insn 7", A.JUMP_TARGET),
    ("the call stack of 9 frames is too deep !", A.CALL_DEPTH),
    ("combined stack size of 2 calls is 544. Too large", A.CALL_DEPTH),
    ("fd 3 is not pointing to valid bpf_map", A.MAP_REFERENCE),
    ("BPF_LD_[ABS|IND] instructions not allowed for this program type", A.LEGACY_LOAD),
    ("at the time of BPF_LD_ABS|IND R6 != pointer to skb", A.LEGACY_LOAD),
    ("unknown opcode 8d", A.SUPPORTED),
    ("R0 leaks addr as return value", A.RETURN_VALUE),
    ("R1 leaks addr into map", A.POINTER),
    ("back-edge from insn 5 to 2", A.TERMINATES),
    ("invalid stack off=-520 size=8", A.IN_BOUNDS),
    ("something nobody says", A.OTHER),
])
def test_classify_in_the_kernels_words(message, kind):
    assert classify(message) == kind


def test_refuted_picks_the_instructions_assertion_about_the_named_register():
    mine = assertions_of(Alu("add", 64, 1, R(7)), 4)
    assert refuted(mine, "R7 !read_ok", 4) == Assertion(4, A.INITIALISED, "r7", "r7 is initialised")
    load = assertions_of(Load(8, False, 1, 0, 0), 2)
    assert refuted(load, "R0 invalid mem access 'map_value_or_null'", 2).kind == A.NOT_NULL
    # A helper's memory argument is checked as an access through it: the argument is what fails.
    call = assertions_of(Call("helper", LOOKUP), 9)
    assert refuted(call, "invalid access to packet, off=0 size=4, R2(id=0,off=0,r=0)", 9) == \
        next(a for a in call if a.kind == A.HELPER_ARGUMENT and a.subject == "r2")
    # What no assertion of the instruction states gets one in the message's words.
    odd = refuted(load, "BPF program is too large. Processed 1000001 insn", 2)
    assert (odd.kind, odd.slot, odd.text) == (A.TERMINATES, 2, "BPF program is too large. Processed 1000001 insn")
