"""64-bit ALU operations done in 32 bits where that computes the same register: the operands' upper
halves are known zero and the operation cannot carry into the upper half (and, or, xor, a right shift by
less than 32, unsigned division and modulo, a move), so the 32-bit form's zeroed upper half is the 64-bit
result's. It saves no slot: only a latency model (a JIT whose 32-bit forms are shorter or cheaper) can
prefer it, so it is not in `PASSES` and every proposal's `why` starts with "alu32" for the pipeline to
rank. Each assumes exactly the upper halves it relies on."""

from __future__ import annotations

from ...isa import Insn
from ...isa.ops import Alu, Imm, Reg
from ..rewrite import KnownBits, Rewrite
from .view import ProgramView

M64 = (1 << 64) - 1
UPPER = M64 ^ 0xFFFFFFFF
ZERO_UPPER = KnownBits(UPPER, 0)
_BOTH_ZERO = ("or", "xor", "div", "mod")  # zero upper halves in, zero upper half out
_OPS = _BOTH_ZERO + ("and", "rsh", "mov")


def _upper_zero(view: ProgramView, slot: int, reg: int) -> bool:
    return reg != 10 and view.facts.at(slot).get(reg, KnownBits(0, 0)).implies(ZERO_UPPER)


def _needs(view: ProgramView, slot: int, op: Alu) -> set[int] | None:
    """The registers whose zero upper halves make the 32-bit form compute the same, or None."""
    if isinstance(op.src, Imm):
        k = op.src.value
        if op.op == "rsh" and k >= 32:
            return None
        if op.op != "and" and k >> 32:  # a 64-bit immediate is sign-extended: a negative one sets the upper half
            return None
        return set() if op.op == "mov" else {op.dst}
    src = op.src.n
    if op.op == "rsh":
        return None  # the shift amount is masked by 63 in one form and 31 in the other
    if op.op == "mov":
        return {src}
    if op.op == "and":  # either operand's zero upper half clears the result's
        return {op.dst} if _upper_zero(view, slot, op.dst) else {src}
    return {op.dst, src}


def _narrowed(view: ProgramView, slot: int, op: Alu) -> tuple[Insn, dict[int, KnownBits]] | None:
    if op.width != 64 or op.op not in _OPS:
        return None
    needs = _needs(view, slot, op)
    if needs is None or not all(_upper_zero(view, slot, r) for r in needs):
        return None
    insn = view.insn_at(slot)
    fields = {"dst": op.dst}
    if isinstance(op.src, Reg):
        fields["src"] = op.src.n
    else:
        fields["imm"] = insn.imm
    return Insn.make(insn.form.name.replace("64", "32", 1), **fields), {r: ZERO_UPPER for r in sorted(needs)}


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for slot, op in enumerate(view.ops):
        if not isinstance(op, Alu) or not view.reached(slot):
            continue
        found = _narrowed(view, slot, op)
        if found is not None:
            insn, assumes = found
            out.append(Rewrite(slot, view.next_slot(slot), (insn,),
                               f"alu32: r{op.dst}'s operation has zero upper halves in and out", assumes))
    return out


__all__ = ["propose"]
