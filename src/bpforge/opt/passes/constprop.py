"""Constant propagation and folding: a register operand known constant becomes an immediate where a form
takes one, an ALU result known constant becomes `r = K`, and a jump whose outcome is known is folded
(`goto` when always taken, removed when never). A comparison with the constant on the left is turned
round (`if r2 > r1` with r2 = 5 -> `if r1 < 5`)."""

from __future__ import annotations

from ...isa.ops import Alu, Imm, Jump, Reg, Store
from ...isa.semantics import INT_OPS, Condition, holds
from ..facts import _alu_bits
from ..rewrite import KnownBits, Rewrite
from .build import SWAPPED, alu, fits_imm, goto, jump, mov_imm, store
from .view import ProgramView

M64 = (1 << 64) - 1


def _known(view: ProgramView, slot: int, reg: int) -> int | None:
    return None if reg == 10 else view.facts.constant(slot, reg)


def _one(slot: int, view: ProgramView, new, why: str, assumes: dict[int, int]) -> Rewrite:
    return Rewrite(slot, view.next_slot(slot), tuple(new), f"constprop: {why}",
                   {reg: KnownBits.constant(value) for reg, value in assumes.items()})


def _alu(view: ProgramView, slot: int, op: Alu) -> Rewrite | None:
    width = op.width
    dst = None if op.op in ("mov", "movsx") else _known(view, slot, op.dst)
    src = op.src.value if isinstance(op.src, Imm) else _known(view, slot, op.src.n)
    if (op.op in ("mov", "movsx") or dst is not None) and src is not None:
        before = view.facts.before[slot]
        bits = _alu_bits(op, before[op.dst], (M64, src))
        value = bits[1]
        if bits[0] == M64 and fits_imm(value, 64) and not (op.op == "mov" and isinstance(op.src, Imm)):
            uses = {} if isinstance(op.src, Imm) else {op.src.n: src}
            if dst is not None:
                uses[op.dst] = dst
            return _one(slot, view, [mov_imm(op.dst, value)], f"r{op.dst} is {value:#x} here", uses)
    if isinstance(op.src, Reg) and src is not None and op.op != "movsx" and fits_imm(src, width):
        return _one(slot, view, [alu(op.op, width, op.dst, imm=src)], f"r{op.src.n} is {src:#x} here", {op.src.n: src})
    return None


def _jump(view: ProgramView, slot: int, op: Jump) -> Rewrite | None:
    if op.cmp is None:
        return None
    width = op.width
    off = op.target - slot - 1
    dst = _known(view, slot, op.dst)
    src = op.src.value if isinstance(op.src, Imm) else _known(view, slot, op.src.n)
    uses = {} if isinstance(op.src, Imm) or src is None else {op.src.n: src}
    if dst is not None and src is not None:
        uses[op.dst] = dst
        taken = holds(INT_OPS, Condition(op.cmp, width, dst, src))
        new = [goto(off)] if taken else []
        return _one(slot, view, new, f"the jump is {'always' if taken else 'never'} taken", uses)
    if isinstance(op.src, Reg) and src is not None and fits_imm(src, width):
        return _one(slot, view, [jump(op.cmp, width, op.dst, off, imm=src)], f"r{op.src.n} is {src:#x} here", uses)
    if isinstance(op.src, Reg) and dst is not None and fits_imm(dst, width):
        return _one(slot, view, [jump(SWAPPED[op.cmp], width, op.src.n, off, imm=dst)],
                    f"r{op.dst} is {dst:#x} here", {op.dst: dst})
    return None


def _store(view: ProgramView, slot: int, op: Store) -> Rewrite | None:
    if not isinstance(op.value, Reg):
        return None
    value = _known(view, slot, op.value.n)
    if value is None or op.release:
        return None
    if op.base != 10 and op.base in view.facts.may_context(slot):
        return None  # the kernel takes no BPF_ST into the context (its stores are rewritten per field)
    if op.size == 8 and not fits_imm(value, 64):
        return None
    return _one(slot, view, [store(op.size, op.base, op.off, imm=value)], f"r{op.value.n} is {value:#x} here",
                {op.value.n: value})


def propose(view: ProgramView) -> list[Rewrite]:
    out = []
    for slot, op in enumerate(view.ops):
        if op is None or not view.reached(slot):
            continue
        rewrite = None
        if op.__class__ is Alu:
            rewrite = _alu(view, slot, op)
        elif op.__class__ is Jump:
            rewrite = _jump(view, slot, op)
        elif op.__class__ is Store:
            rewrite = _store(view, slot, op)
        if rewrite is not None:
            out.append(rewrite)
    return out


__all__ = ["propose"]
