"""Rejections explained (verifier/explain.py): every message the verifier raises and the kernel's wording of
the rules it is tested on get plain words; the reason and hint carry the concrete registers, offsets and
sizes; the failure slice holds what the failing values depend on and nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bpforge.elf.btf_ext import LineInfo
from bpforge.isa import Insn, assemble
from bpforge.isa.maptypes import MapSpec
from bpforge.verifier.check import verify_program
from bpforge.verifier.explain import explain, explain_message, failure_slice

SOURCE = Path(__file__).resolve().parent.parent / "src" / "bpforge"
FALLBACK = "is refused:"  # the generic sentence of a message no rule knows


def _rejected(source: str, prog_type: str = "xdp", maps=()):
    insns = assemble(source)
    verdict = verify_program(insns, prog_type, list(maps))
    assert not verdict.accepted, "the program was meant to be rejected"
    return insns, verdict, explain(verdict, insns, prog_type=prog_type, maps=list(maps))


def _slice_texts(explanation) -> list[str]:
    return [step.text for step in explanation.slice]


# ---- every message has words -------------------------------------------------------------------------------

def _sample(node: ast.AST) -> str | None:
    """A message a `raise X(f"...")` can produce: each placeholder filled with 1 (or a conditional's first
    constant), enough for the table's patterns, which read numbers and words."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not isinstance(node, ast.JoinedStr):
        return None
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(value.value)
        elif isinstance(value.value, ast.IfExp) and isinstance(value.value.body, ast.Constant):
            parts.append(str(value.value.body.value))
        else:
            parts.append("1")
    return "".join(parts)


def _raised_messages() -> list[str]:
    """The messages of every Rejected and CfgError the verifier and the CFG raise, and of every rejection
    the walk makes itself (`_reject(message, ...)`, and the combined-stack check's returned sentence)."""
    found = []
    for path in [*sorted((SOURCE / "verifier").glob("*.py")), SOURCE / "analysis" / "cfg.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name in ("Rejected", "CfgError", "_reject"):
                message = _sample(node.args[0])
                if message is not None:
                    found.append(message)
    return found


def test_every_message_the_verifier_raises_has_plain_words():
    messages = _raised_messages()
    assert len(messages) > 60  # the walk, its helpers and the CFG: a collector that found them
    missing = [m for m in messages if FALLBACK in explain_message(m, "xdp")[0]]
    assert not missing, missing
    reason, hint = explain_message("combined stack size of 3 calls is 528. Too large")
    assert "528 bytes" in reason and "3 calls" in reason and hint


def _kernel_cases():
    """Programs breaking the rules issue 8 tests against the kernel, each as the kernel sees it."""
    exit_ = Insn.make("exit")
    return [
        ("uninitialised register", assemble("r0 = r3\nexit"), "xdp"),
        ("packet past the checked range", assemble(
            "r2 = *(u32 *)(r1 + 0)\nr3 = *(u32 *)(r1 + 4)\nr4 = r2\nr4 += 14\nif r4 > r3 goto +2\n"
            "r0 = *(u8 *)(r2 + 20)\nexit\nr0 = 1\nexit"), "xdp"),
        ("stack out of bounds", assemble("*(u64 *)(r10 - 520) = r1\nr0 = 0\nexit"), "xdp"),
        ("write to r10", assemble("r10 = 0\nr0 = 0\nexit"), "xdp"),
        ("unbounded loop", assemble("r0 = 0\nl:\ngoto l"), "xdp"),
        ("jump out of range", [Insn.make("mov64_imm", dst=0, imm=0), Insn.make("ja", off=5), exit_], "xdp"),
        ("jump into an lddw", [Insn.make("ja", off=1), Insn.make("lddw", dst=0, imm=1), exit_], "xdp"),
        ("division by zero", assemble("r0 = 1\nr0 /= 0\nexit"), "xdp"),
        ("ctx write", assemble("r2 = 1\n*(u32 *)(r1 + 0) = r2\nr0 = 0\nexit"), "xdp"),
        ("bad ctx offset", assemble("r0 = *(u32 *)(r1 + 2)\nexit"), "xdp"),
        ("pointer arithmetic", assemble("r1 *= 2\nr0 = 0\nexit"), "xdp"),
        ("helper argument type", assemble("r1 = 5\nr2 = 0\ncall 1\nr0 = 0\nexit"), "xdp"),
        ("missing exit", assemble("r0 = 0\nr0 += 1"), "xdp"),
        ("return value range", assemble("r0 = 7\nexit"), "cgroup_skb"),
        ("LD_ABS in XDP", assemble("r6 = r1\nr0 = *(u16 *)skb[12]\nexit"), "xdp"),
        ("misaligned access", assemble("*(u32 *)(r10 - 6) = 0\nr0 = 0\nexit"), "xdp"),
        ("too deep calls", assemble("call f\nr0 = 0\nexit\nf:\ncall f\nr0 = 0\nexit"), "xdp"),
        ("too big stack", assemble("call f\nr0 = 0\nexit\nf:\n*(u64 *)(r10 - 512) = r1\ncall g\nr0 = 0\nexit\n"
                                   "g:\n*(u64 *)(r10 - 16) = r1\nr0 = 0\nexit"), "xdp"),
        ("dereference of a number", assemble("r2 = 5\nr0 = *(u8 *)(r2 + 0)\nexit"), "xdp"),
        ("unreachable code", assemble("r0 = 0\nexit\nr0 = 1\nexit"), "xdp"),
    ]


@pytest.mark.parametrize("what, insns, prog_type", _kernel_cases(), ids=[c[0] for c in _kernel_cases()])
def test_the_kernels_wording_of_each_rule_has_plain_words(kernel, what, insns, prog_type):
    verdict = kernel.verify_insns(insns, prog_type)
    assert not verdict.accepted, f"{what}: the kernel accepts it"
    reason, _ = explain_message(verdict.message, prog_type)
    assert FALLBACK not in reason, verdict.message


def test_the_kernels_words_carry_their_numbers():
    reason, hint = explain_message("At program exit the register R0 has smin=7 smax=7 should have been in [0, 1]",
                                   "cgroup_skb")
    assert "[0, 1]" in reason and hint.startswith("return a value in [0, 1]")
    reason, hint = explain_message("invalid access to packet, off=20 size=1, R1(id=0,off=20,r=14); R1 offset is "
                                   "outside of the packet", "xdp")
    assert "packet offset 20" in reason and "only 14 bytes" in reason and "data + 21" in hint
    reason, hint = explain_message("invalid indirect read from stack R2 off -8+0 size 4", "xdp")
    assert "4 bytes at fp-8" in reason and hint == "initialise the 4 bytes at fp-8 before passing them"


# ---- reasons and hints with the numbers of the program ------------------------------------------------------

PACKET = """
    r0 = 2
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r5 = 7
    r4 = r2
    r4 += 14
    if r4 > r3 goto out
    r0 = *(u8 *)(r2 + 20)
out:
    exit
"""


def test_a_missing_data_end_check():
    insns, verdict, e = _rejected(PACKET)
    assert (e.insn, e.message) == (7, verdict.message)
    assert e.reason == ("reads 1 byte at packet offset 20, but only 14 bytes past the packet start were checked "
                        "against data_end")
    assert e.hint.startswith("compare data + 21 with data_end before this access")
    assert e.registers == {"r2": "pkt(r=14)"}
    assert "R3=pkt_end()" in e.state
    assert [(s.insn, s.text, s.taken) for s in e.path] == [(6, "if r4 > r3 goto +1", False)]
    # The packet start, data_end, the checked pointer and the check: not r0 = 2, not r5 = 7.
    assert [s.insn for s in e.slice] == [1, 2, 4, 5, 6, 7]
    assert "r5 = 7" not in _slice_texts(e) and "r0 = 2" not in _slice_texts(e)
    assert len(e.log) == len(verdict.trace) and e.log[-1][1] == e.state


def test_lines_name_the_source():
    insns = assemble(PACKET)
    verdict = verify_program(insns, "xdp")
    lines = [LineInfo(i, "/src/x.c", 10 + i, 1, "") for i in range(len(insns))]
    e = explain(verdict, insns, lines=lines, prog_type="xdp")
    assert e.line == "x.c:17" and e.path[0].line == "x.c:16" and e.slice[0].line == "x.c:11"


MAP_LOOKUP = """
    r6 = *(u32 *)(r1 + 12)
    r1 = 0
    *(u32 *)(r10 - 4) = r1
    r2 = r10
    r2 += -4
    r1 = map_fd(0) ll
    call 1
"""


def test_a_null_map_value():
    _, _, e = _rejected(MAP_LOOKUP + "r1 = *(u64 *)(r0 + 0)\nr0 = 0\nexit", maps=[MapSpec.of("hash", 4, 8, 16,
                                                                                               name="counts")])
    assert e.insn == 8 and e.message == "R0 invalid mem access 'map_value_or_null'"
    assert e.reason == ("reads 8 bytes through r0, which may be NULL: bpf_map_lookup_elem at insn 7 returns NULL "
                        "when it finds nothing")
    assert e.hint.startswith("check that the pointer bpf_map_lookup_elem returned (r0 at insn 7) is not NULL")
    assert [s.insn for s in e.slice] == [7, 8]  # the key's set-up does not matter to the failure


def test_a_map_value_index_bounded_through_a_copy():
    program = MAP_LOOKUP + """
        if r0 == 0 goto out
        r5 = 7
        r2 = r6
        if r2 > 20 goto out
        r0 += r6
        r0 = *(u8 *)(r0 + 0)
    out:
        r0 = 0
        exit
    """
    _, _, e = _rejected(program, maps=[MapSpec.of("array", 4, 16, 4, name="vals")])
    assert e.reason == ("reads 1 byte at an offset from 0 to 20 of a 16-byte map value of map vals, which may go "
                        "past its end")
    assert "at most 15" in e.hint and "if (i < N)" in e.hint
    # r2 is a copy of r6 (the same id): the check on r2 bounds r6, so it belongs to the slice; r5 does not.
    assert [s.insn for s in e.slice] == [0, 7, 8, 10, 11, 12, 13]
    assert [s.taken for s in e.path] == [False, False]


def test_an_uninitialised_register_after_a_call():
    _, _, e = _rejected("r1 = 1\ncall 7\nr0 = r1\nexit")
    assert e.reason == "reads r1, which has no value here: the call at insn 1 left r1-r5 without values"
    assert "r6-r9" in e.hint and e.registers == {"r1": "not_init"}
    assert [s.insn for s in e.slice] == [1, 2]


def test_an_uninitialised_register():
    _, _, e = _rejected("r0 = 1\nr2 = r4\nexit")
    assert e.insn == 1 and e.reason.startswith("reads r4, which is never given a value")
    assert e.hint == "set r4 before insn 1"


def test_a_bad_return_value():
    _, _, e = _rejected("r1 = *(u32 *)(r1 + 0)\nr0 = 7\nif r1 > 100 goto +1\nr0 = 1\nexit", "cgroup_skb")
    assert e.reason == "returns 7, but a cgroup_skb program must return a value in [0, 1]"
    assert e.hint == ("return a value in [0, 1] (1 lets the packet through, 0 drops it); r0 gets its value at "
                      "insn 1")
    assert [s.insn for s in e.path] == [2] and e.path[0].taken
    assert [s.insn for s in e.slice] == [1, 4]


def test_stack_out_of_bounds_and_division_by_zero():
    _, _, e = _rejected("r1 = 3\n*(u64 *)(r10 - 520) = r1\nr0 = 0\nexit")
    assert e.reason == "writes 8 bytes at fp-520 through r10, outside the 512-byte stack (fp-512 to fp-1)"
    assert "map" in e.hint
    _, _, e = _rejected("r0 = *(u32 *)(r1 + 12)\nr0 /= 0\nexit")
    assert e.reason == "divides r0 by the constant 0" and "non-zero constant" in e.hint


def test_a_context_offset_and_a_packet_pointer_lost_to_a_helper():
    _, _, e = _rejected("r0 = *(u32 *)(r1 + 2)\nexit")
    assert e.reason == "reads 4 bytes at offset 2 of the context (struct xdp_md), which xdp programs may not read"
    assert e.hint == "read the whole 4-byte field at offset 0 of struct xdp_md"
    _, _, e = _rejected("""
        r6 = r1
        r7 = *(u32 *)(r6 + 0)
        r8 = *(u32 *)(r6 + 4)
        r2 = r7
        r2 += 1
        if r2 > r8 goto out
        r1 = r6
        r2 = 0
        call 44
        r0 = *(u8 *)(r7 + 0)
        exit
    out:
        r0 = 2
        exit
    """)
    assert "r7 stopped being a packet pointer at insn 8: bpf_xdp_adjust_head may move the packet" in e.reason
    assert [s.insn for s in e.slice] == [8, 9]


def test_the_slice_follows_spills_and_fills():
    _, _, e = _rejected("""
        r2 = *(u32 *)(r1 + 0)
        r3 = *(u32 *)(r1 + 4)
        *(u64 *)(r10 - 8) = r2
        *(u64 *)(r10 - 16) = r3
        r4 = 9
        *(u64 *)(r10 - 24) = r4
        r5 = *(u64 *)(r10 - 8)
        r0 = *(u32 *)(r5 + 2)
        exit
    """)
    assert e.reason.startswith("reads 4 bytes at packet offset 2, but the packet's length was not checked")
    # data -> spilled to fp-8 -> filled into r5: the other spills and their values stay out.
    assert [s.insn for s in e.slice] == [0, 2, 6, 7]


def test_failure_slice_without_states_still_follows_the_frame_pointer():
    from bpforge.isa.ops import decode_ops

    insns = assemble("r2 = 1\nr3 = 2\n*(u64 *)(r10 - 8) = r2\nr4 = *(u64 *)(r10 - 8)\nr0 = r4\nexit")
    assert failure_slice([0, 1, 2, 3, 4], decode_ops(insns)) == [0, 2, 3, 4]


def test_a_rejection_without_an_instruction_and_an_acceptance():
    _, verdict, e = _rejected("call f\nr0 = 0\nexit\nf:\n*(u64 *)(r10 - 512) = r1\ncall g\nr0 = 0\nexit\n"
                              "g:\n*(u64 *)(r10 - 16) = r1\nr0 = 0\nexit")
    assert e.insn is None and e.slice == [] and "528 bytes" in e.reason
    accepted = verify_program(assemble("r0 = 2\nexit"), "xdp")
    with pytest.raises(ValueError):
        explain(accepted, assemble("r0 = 2\nexit"), prog_type="xdp")


def test_a_packet_pointer_moved_by_a_variable_offset():
    _, _, e = _rejected("""
        r2 = *(u32 *)(r1 + 0)
        r3 = *(u32 *)(r1 + 4)
        r4 = *(u32 *)(r1 + 12)
        r4 &= 7
        r6 = 1
        r2 += r4
        r5 = r2
        r5 += 4
        if r5 > r3 goto out
        r0 = *(u8 *)(r2 + 6)
        exit
    out:
        r0 = 2
        exit
    """)
    assert e.reason == ("reads 1 byte at offset 6 past r2 (data plus a variable offset of up to 7), but only 4 bytes "
                        "past it were checked against data_end")
    assert e.hint.startswith("compare r2 + 7 with data_end before this access")
    assert [s.insn for s in e.slice] == [0, 1, 2, 3, 5, 6, 7, 8, 9]  # not r6 = 1
