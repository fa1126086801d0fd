"""Dead code and dead store elimination: an instruction whose only effect is a register no path reads
again, or a store to a stack slot no path reads again before writing it (liveness), is removed."""

from __future__ import annotations

from ...analysis.liveness import slot_bit
from ...isa.ops import Alu, Load, LoadImm64, Store, Unary
from ..rewrite import Rewrite
from .view import ProgramView

_PURE = (Alu, Unary, LoadImm64, Load)


def propose(view: ProgramView) -> list[Rewrite]:
    out = []
    for slot, op in enumerate(view.ops):
        if op is None or not view.reached(slot):
            continue
        live = view.live_after(slot)
        if isinstance(op, _PURE) and op.dst != 10 and not (isinstance(op, Load) and op.acquire):
            if not live >> op.dst & 1:
                out.append(Rewrite(slot, view.next_slot(slot), (), f"dce: r{op.dst} is dead after"))
        elif isinstance(op, Store) and op.base == 10 and not op.release:
            first, last = op.off, op.off + op.size - 1
            slots = {first - first % 8, last - last % 8}
            if all(slot_bit(s) and not live & slot_bit(s) for s in slots):
                out.append(Rewrite(slot, view.next_slot(slot), (), f"dse: stack at r10{op.off:+d} is dead after"))
    return out


__all__ = ["propose"]
