"""Byte-wise accesses clang leaves for unaligned or byte-order code, joined into one wider access:
- two loads of n bytes, a shift and an or (`a = *(u8 *)(p + o); c = *(u8 *)(p + o + 1); c <<= 8; c |= a`,
  or the high half loaded and shifted first; the other register dead after) -> one 2n-byte load (memory is
  little-endian): u8 pairs, u16 pairs, and the two u32 halves of an IPv6 address word;
- stores of a value's bytes, or of its halves, at consecutive offsets (`*(u8 *)(p + 4) = r1; r1 >>= 8;
  *(u8 *)(p + 5) = r1`) -> one store of the register holding the whole value, placed at the first of them
  (nothing in between may read memory, and the pointer may not change).
The kernel allows unaligned access to packets on this machine's architectures; the stack is strict, so
stack accesses must be aligned to their new size. The gate has the last word either way."""

from __future__ import annotations

from ...analysis.effects import effects_of
from ...isa import Insn
from ...isa.ops import Alu, Imm, Load, Reg, Store
from ..rewrite import Rewrite
from .build import store
from .view import ProgramView


_WIDER = {1: "ldx16", 2: "ldx32", 4: "ldx64"}


def _load_pair(view: ProgramView, slots: list[int]) -> Rewrite | None:
    """Two loads of `n` bytes at adjacent offsets, the higher one shifted left by 8n and or-ed into the other
    (in either order: both loads first, or the high one loaded and shifted before the low one): one load of
    2n bytes into the or's destination, when the other register is dead after."""
    ops = [view.ops[s] for s in slots]
    if isinstance(ops[1], Load):
        first, second, shift, join = ops
    else:
        first, shift, second, join = ops
    if not (isinstance(first, Load) and isinstance(second, Load) and first.size == second.size in _WIDER
            and not first.signed and not second.signed and first.base == second.base):
        return None
    n = first.size
    low, high = (first, second) if second.off == first.off + n else (second, first) if first.off == second.off + n \
        else (None, None)
    if low is None or len({low.dst, high.dst, low.base}) != 3:
        return None
    if shift is ops[1] and high is not first:
        return None  # a shift between the loads must be of the first one loaded
    if not (isinstance(shift, Alu) and shift.op == "lsh" and shift.width == 64 and shift.dst == high.dst
            and shift.src == Imm(8 * n)):
        return None
    if not (isinstance(join, Alu) and join.op == "or" and join.width == 64 and isinstance(join.src, Reg)
            and {join.dst, join.src.n} == {low.dst, high.dst}):
        return None
    other = low.dst if join.dst == high.dst else high.dst
    if view.live_after(slots[-1]) >> other & 1:
        return None
    if low.base == 10 and low.off % (2 * n):
        return None
    insn = Insn.make(_WIDER[n], dst=join.dst, src=low.base, off=low.off)
    return Rewrite(slots[0], view.next_slot(slots[-1]), (insn,),
                   f"bytes: two u{8 * n} loads at r{low.base}{low.off:+d} as one u{16 * n}")


def _token_moves(op, values: dict, slot: int) -> None:
    """Track `reg -> (token, shift)`: the value a register holds as a defining instruction's result shifted
    right by `shift` bits (copies and right shifts by whole bytes keep the token)."""
    if isinstance(op, Alu) and op.width == 64 and op.op == "mov" and isinstance(op.src, Reg):
        src = values.get(op.src.n)
        if src is not None:
            values[op.dst] = src
            return
    if isinstance(op, Alu) and op.width == 64 and op.op == "rsh" and isinstance(op.src, Imm) \
            and op.src.value % 8 == 0 and op.src.value < 64 and op.dst in values:
        token, shift = values[op.dst]
        values[op.dst] = (token, shift + op.src.value)
        return
    for reg in effects_of(op).writes | effects_of(op).clobbers:
        values[reg] = ((slot, reg), 0)


def _store_groups(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for block in view.cfg.blocks:
        if not view.reached(block.start):
            continue
        values: dict = {}
        group: list[tuple[int, Store, tuple]] = []  # (slot, store, token) since the group began
        holders_at_first: dict = {}

        def close() -> None:
            rewrite = _merged(view, group, holders_at_first)
            if rewrite is not None:
                out.append(rewrite)
            group.clear()

        for slot, op in block.ops:
            fx = effects_of(op)
            if isinstance(op, Store) and not op.release and isinstance(op.value, Reg) and op.size <= 4 \
                    and op.value.n in values:
                token, shift = values[op.value.n]
                if group and (group[0][1].base != op.base or group[0][2][0] != token):
                    close()
                if not group:
                    holders_at_first.clear()
                    holders_at_first.update({r: v for r, v in values.items() if v == (token, 0)})
                group.append((slot, op, (token, shift)))
                continue
            if group and (fx.memory_reads or fx.stack_reads or fx.memory_writes or fx.stack_writes
                          or group[0][1].base in fx.writes | fx.clobbers):
                close()
            _token_moves(op, values, slot)
        if group:
            close()
    return out


def _merged(view: ProgramView, group, holders: dict) -> Rewrite | None:
    if len(group) < 2:
        return None
    base = group[0][1].base
    token = group[0][2][0]
    placed: dict[int, int] = {}  # destination offset -> byte of the token
    for _, st, (_, shift) in group:
        for i in range(st.size):
            placed[st.off + i] = shift // 8 + i
    start = min(placed)
    size = len(placed)
    if size not in (2, 4, 8) or sorted(placed) != list(range(start, start + size)):
        return None
    if any(placed[start + i] != i for i in range(size)):
        return None
    if base == 10 and start % size:
        return None
    holder = next(iter(sorted(holders)), None)
    if holder is None:
        return None
    first, last = group[0][0], group[-1][0]
    # The window starts right after the instruction that made the token, so the copies and shifts that
    # relate the stored registers to it are inside it: a proof of the window alone needs them.
    begin = view.next_slot(token[0])
    stores = {slot for slot, _, _ in group}
    kept = [s for s in range(begin, view.next_slot(last)) if view.ops[s] is not None and s not in stores]
    merged = store(size, base, start, src=holder)
    new = [view.insn_at(s) for s in kept if s < first] + [merged] + [view.insn_at(s) for s in kept if s > first]
    return Rewrite(begin, view.next_slot(last), tuple(new),
                   f"bytes: {len(group)} stores of r{holder}'s bytes at r{base}{start:+d} as one u{8 * size}")


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    slots = [s for s, op in enumerate(view.ops) if op is not None]
    for k in range(len(slots) - 3):
        window = slots[k:k + 4]
        if not view.same_block(window[0], window[-1]) or not view.reached(window[0]):
            continue
        rewrite = _load_pair(view, window)
        if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
            out.append(rewrite)
    for rewrite in _store_groups(view):
        if not any(rewrite.overlaps(o) for o in out):
            out.append(rewrite)
    return out


__all__ = ["propose"]
