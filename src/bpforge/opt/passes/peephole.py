"""Two-instruction idioms with a one-instruction form:
- `rX &= K; if rX != 0 goto L` (rX dead on both edges) -> `if rX & K goto L` (BPF_JSET tests the bits
  without keeping the masked value), and the same in 32 bits;
- `rX = K; if rX <op> rY goto L` (rX dead on both edges) -> `if rY <op'> K goto L` with the comparison
  turned round (constprop does the same when rX is known at the jump, which covers rX set earlier).
What makes these wrong is a register read later, which liveness rules out, so nothing is assumed."""

from __future__ import annotations

from ...isa.ops import Alu, Imm, Jump, Reg
from ..rewrite import Rewrite
from .build import SWAPPED, fits_imm, jump
from .view import ProgramView


def exit_offset(start: int, end: int, target: int, at: int = 0, length: int = 1) -> int:
    """The offset field of a jump at new slot `at` of a window of `length` slots replacing [start, end)
    that must land on program slot `target` (outside the old window, or its first slot): after the window
    its place is counted from the old end, before it from the start (`rewrite`'s convention)."""
    if target >= end:
        relative = length + target - end
    elif target <= start:
        relative = target - start
    else:
        raise ValueError(f"slot {target} is inside the window [{start}, {end})")
    return relative - at - 1


def _pair(view: ProgramView, slot: int) -> tuple[Alu, int, Jump] | None:
    op = view.ops[slot]
    after = view.next_slot(slot)
    if not isinstance(op, Alu) or after >= len(view.ops) or not view.same_block(slot, after):
        return None
    second = view.ops[after]
    if not isinstance(second, Jump) or second.cmp is None or view.live_after(after) >> op.dst & 1:
        return None
    return op, after, second


def _test_bits(view: ProgramView, slot: int) -> Rewrite | None:
    found = _pair(view, slot)
    if found is None:
        return None
    op, after, test = found
    if not (op.op == "and" and isinstance(op.src, Imm) and test.cmp == "ne" and test.dst == op.dst
            and test.src == Imm(0) and test.width == op.width):
        return None
    off = exit_offset(slot, view.next_slot(after), test.target)
    new = jump("set", op.width, op.dst, off, imm=op.src.value)
    return Rewrite(slot, view.next_slot(after), (new,), f"peephole: r{op.dst} & {op.src.value:#x} tested by jset")


def _constant_operand(view: ProgramView, slot: int) -> Rewrite | None:
    found = _pair(view, slot)
    if found is None:
        return None
    op, after, test = found
    if not (op.op == "mov" and op.width == 64 and isinstance(op.src, Imm) and test.dst == op.dst
            and isinstance(test.src, Reg) and test.src.n != op.dst and fits_imm(op.src.value, test.width)):
        return None
    off = exit_offset(slot, view.next_slot(after), test.target)
    new = jump(SWAPPED[test.cmp], test.width, test.src.n, off, imm=op.src.value)
    return Rewrite(slot, view.next_slot(after), (new,),
                   f"peephole: r{op.dst} = {op.src.value:#x} compared with r{test.src.n} directly")


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for slot, op in enumerate(view.ops):
        if not isinstance(op, Alu) or not view.reached(slot):
            continue
        rewrite = _test_bits(view, slot) or _constant_operand(view, slot)
        if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
            out.append(rewrite)
    return out


__all__ = ["propose"]
