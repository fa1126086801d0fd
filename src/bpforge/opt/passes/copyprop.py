"""Copy propagation: after `rA = rB`, a later read of rA in the same block (neither register written in
between; the reader does not write rA either) reads rB instead, so the copy may die (dce removes it). The window runs from the copy to the
instruction that reads, so the proof needs no fact from elsewhere."""

from __future__ import annotations

from ...analysis.effects import effects_of
from ...isa.ops import Alu, Reg
from ..rewrite import Rewrite
from .view import ProgramView

_REGISTER_FIELDS = ("dst", "src")
MAX_DISTANCE = 8


def _reads_through(insn, op, a: int, b: int):
    """`insn` reading rB where it read rA (as a source, a comparison's left side, a store's base), or None
    where it also writes rA."""
    fx = effects_of(op)
    if a not in fx.reads or a in fx.writes | fx.clobbers:
        return None
    fields = {f: b for f in _REGISTER_FIELDS if f in insn.form.operands and getattr(insn, f) == a}
    return insn.replace(**fields) if fields else None


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for slot, op in enumerate(view.ops):
        if not (isinstance(op, Alu) and op.op == "mov" and op.width == 64 and isinstance(op.src, Reg)):
            continue
        if not view.reached(slot):
            continue
        a, b = op.dst, op.src.n
        if a == b or b == 10:
            continue
        s = view.next_slot(slot)
        for _ in range(MAX_DISTANCE):
            if s >= len(view.ops) or not view.same_block(slot, s) or view.ops[s] is None:
                break
            insn = view.insn_at(s)
            new = _reads_through(insn, view.ops[s], a, b)
            if new is not None:
                window = [view.insn_at(t) for t in range(slot, s) if view.ops[t] is not None]
                rewrite = Rewrite(slot, view.next_slot(s), tuple(window + [new]),
                                  f"copyprop: r{a} is a copy of r{b} at insn {s}")
                if not any(rewrite.overlaps(o) for o in out):
                    out.append(rewrite)
                break
            fx = effects_of(view.ops[s])
            if {a, b} & (fx.writes | fx.clobbers):
                break
            s = view.next_slot(s)
    return out


__all__ = ["propose"]
