"""Branches that do nothing or go round: a jump to the next instruction (taken or not, it lands there) is
removed, and a jump to an unconditional `goto` goes straight to where that one goes (jump threading; the
`goto` may then become unreachable, which `unreachable` removes)."""

from __future__ import annotations

from ...isa.ops import Jump, Reg
from ..rewrite import Rewrite
from .build import goto, jump
from .view import ProgramView


def _final(view: ProgramView, target: int) -> int:
    """Where control ends up from `target` through a chain of unconditional jumps (cycles stop)."""
    seen = set()
    while target not in seen and 0 <= target < len(view.ops):
        seen.add(target)
        op = view.ops[target]
        if isinstance(op, Jump) and op.cmp is None and op.target != target:
            target = op.target
        else:
            break
    return target


def propose(view: ProgramView) -> list[Rewrite]:
    out = []
    for slot, op in enumerate(view.ops):
        if not isinstance(op, Jump) or not view.reached(slot):
            continue
        after = view.next_slot(slot)
        if op.target == after:
            out.append(Rewrite(slot, after, (), "branches: a jump to the next instruction"))
            continue
        final = _final(view, op.target)
        if final != op.target and view.cfg.function_at(final) is view.cfg.function_at(slot):
            off = final - after  # in the window's terms: past its end by this much (before it when < 0)
            if not -(1 << 15) <= off < (1 << 15):
                continue
            if op.cmp is None:
                new = goto(off)
            elif isinstance(op.src, Reg):
                new = jump(op.cmp, op.width, op.dst, off, src=op.src.n)
            else:
                new = jump(op.cmp, op.width, op.dst, off, imm=op.src.value)
            out.append(Rewrite(slot, after, (new,), f"branches: the jump to insn {op.target} goes on to {final}"))
    return out


__all__ = ["propose"]
