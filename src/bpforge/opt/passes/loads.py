"""Redundant loads: `rA = *(size *)(rB + o)` loaded again from the same base, offset and size in the same
block, with rB unchanged and nothing in between that may write memory (a store, an atomic, a call), and rA
still holding the first value -> the second load becomes `rC = rA` (or goes, when rC is rA).

A context field the kernel rewrites (xdp_md.data and friends) is a load like any other here: both loads
read the same field, and the verifier follows a pointer through a move."""

from __future__ import annotations

from ...analysis.effects import effects_of
from ...isa.ops import Load
from ..rewrite import Rewrite
from .build import alu
from .view import ProgramView

MAX_DISTANCE = 16


def _writes_memory(op) -> bool:
    fx = effects_of(op)
    return bool(fx.memory_writes or fx.stack_writes or fx.clobbers)


def _again(view: ProgramView, slot: int, first: Load) -> Rewrite | None:
    a, base = first.dst, first.base
    if a == base or first.acquire:
        return None
    s = view.next_slot(slot)
    for _ in range(MAX_DISTANCE):
        if s >= len(view.ops) or view.ops[s] is None or not view.same_block(slot, s):
            return None
        op = view.ops[s]
        if isinstance(op, Load) and not op.acquire and (op.base, op.off, op.size, op.signed) == \
                (base, first.off, first.size, first.signed):
            window = [view.insn_at(t) for t in range(slot, s) if view.ops[t] is not None]
            new = window if op.dst == a else window + [alu("mov", 64, op.dst, src=a)]
            return Rewrite(slot, view.next_slot(s), tuple(new),
                           f"loads: insn {s} loads what r{a} got from r{base}{first.off:+d} at insn {slot}")
        fx = effects_of(op)
        if _writes_memory(op) or {a, base} & (fx.writes | fx.clobbers):
            return None
        s = view.next_slot(s)
    return None


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for slot, op in enumerate(view.ops):
        if isinstance(op, Load) and view.reached(slot):
            rewrite = _again(view, slot, op)
            if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
                out.append(rewrite)
    return out


__all__ = ["propose"]
