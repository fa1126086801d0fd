"""Read-modify-write of memory into one atomic add: `rX = *(u64 *)(rB + o); rX += rY; *(u64 *)(rB + o) = rX`
(rX dead after, up to two unrelated instructions in between) -> `lock *(u64 *)(rB + o) += rY`; an added
constant needs a register holding it: one known to hold it already, else rX set to it first. 4- and
8-byte accesses (the sizes BPF atomics take); the gate decides where the kernel allows them."""

from __future__ import annotations

from ...analysis.effects import effects_of
from ...isa.ops import Alu, Load, Reg, Store
from ..rewrite import KnownBits, Rewrite
from .build import atomic_add, mov_imm
from .view import ProgramView

MAX_BETWEEN = 2


def _unrelated(op, registers: set[int]) -> bool:
    """An instruction that may stay between: it neither touches `registers`, nor writes memory, nor calls
    (reading memory is fine: it happens before the atomic add in both versions)."""
    fx = effects_of(op)
    return not (fx.reads | fx.writes | fx.clobbers) & registers and not fx.memory_writes and not fx.stack_writes


def _rmw(view: ProgramView, slot: int, load: Load) -> Rewrite | None:
    x, base = load.dst, load.base
    if load.size not in (4, 8) or load.signed or x == base or load.acquire:
        return None
    between: list[int] = []
    s = view.next_slot(slot)
    add_slot = None
    while s < len(view.ops) and len(between) <= MAX_BETWEEN:
        op = view.ops[s]
        if not view.same_block(slot, s) or op is None:
            return None
        if isinstance(op, Alu) and op.op == "add" and op.width == 64 and op.dst == x:
            add_slot = s
            break
        if not _unrelated(op, {x, base}):
            return None
        between.append(s)
        s = view.next_slot(s)
    if add_slot is None:
        return None
    add = view.ops[add_slot]
    store_slot = view.next_slot(add_slot)
    if store_slot >= len(view.ops) or not view.same_block(slot, store_slot):
        return None
    st = view.ops[store_slot]
    if not (isinstance(st, Store) and st.size == load.size and st.base == base and st.off == load.off
            and st.value == Reg(x) and not st.release):
        return None
    if view.live_after(store_slot) >> x & 1:
        return None
    kept = [view.insn_at(b) for b in between]
    assumes = {}
    if isinstance(add.src, Reg):
        y = add.src.n
        if y in (x, base):
            return None
        new = kept + [atomic_add(load.size, base, load.off, y)]
    else:
        value = add.src.value
        holder = next((r for r in range(10) if r not in (x, base) and view.facts.constant(slot, r) == value
                       and not any(r in effects_of(view.ops[b]).writes for b in between)), None)
        if holder is not None:
            assumes = {holder: KnownBits.constant(value)}
            new = kept + [atomic_add(load.size, base, load.off, holder)]
        else:
            new = kept + [mov_imm(x, value), atomic_add(load.size, base, load.off, x)]
    end = view.next_slot(store_slot)
    return Rewrite(slot, end, tuple(new), f"atomic add: r{x} = *(u{8 * load.size} *)(r{base} {load.off:+d}) "
                   "incremented in place", assumes)


def propose(view: ProgramView) -> list[Rewrite]:
    out = []
    for slot, op in enumerate(view.ops):
        if isinstance(op, Load) and view.reached(slot):
            rewrite = _rmw(view, slot, op)
            if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
                out.append(rewrite)
    return out


__all__ = ["propose"]
