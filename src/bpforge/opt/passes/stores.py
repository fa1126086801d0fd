"""Adjacent stores of constants merged into one wider store: two stores of `size` bytes (immediates, or
registers known to hold constants) to offsets o and o + size from one base, o a multiple of 2 * size
(the stack is strict about alignment; elsewhere the gate asks the verifier), become one store of 2 * size
bytes — of an immediate when the combined value is one a sign-extended imm32 gives, else of a register
already holding it. Up to 8 bytes.

Runs of more than two consecutive constant stores through one base (clang zeroes a key or a struct field
by field, in any order) are rewritten as a whole: the bytes they leave, stored again in the fewest
naturally aligned pieces, when that is fewer stores."""

from __future__ import annotations

from ...isa.ops import Imm, Reg, Store
from ..rewrite import KnownBits, Rewrite
from .build import fits_imm, store
from .view import ProgramView


def _value(view: ProgramView, slot: int, op: Store) -> tuple[int | None, dict[int, int]]:
    if isinstance(op.value, Imm):
        return op.value.value & ((1 << 8 * op.size) - 1), {}
    value = view.facts.constant(slot, op.value.n) if op.value.n != 10 else None
    if value is None:
        return None, {}
    return value & ((1 << 8 * op.size) - 1), {op.value.n: value}


def _merge(view: ProgramView, a_slot: int, a: Store, b_slot: int, b: Store) -> Rewrite | None:
    if a.size != b.size or a.size > 4 or a.base != b.base or a.release or b.release:
        return None
    size = a.size
    low, high = (a, b) if b.off == a.off + size else (b, a) if a.off == b.off + size else (None, None)
    if low is None or low.off % (2 * size):
        return None
    low_slot, high_slot = (a_slot, b_slot) if low is a else (b_slot, a_slot)
    low_value, uses_low = _value(view, low_slot, low)
    high_value, uses_high = _value(view, high_slot, high)
    if low_value is None or high_value is None:
        return None
    combined = low_value | high_value << 8 * size
    width = 16 * size
    assumes = {**uses_low, **uses_high}
    same = isinstance(a.value, Reg) and a.value == b.value and view.facts.constant(a_slot, a.value.n) == combined
    if same:  # a register store stays one (a context takes no BPF_ST)
        new = store(2 * size, low.base, low.off, src=a.value.n)
    elif low.base != 10 and low.base in view.facts.may_context(a_slot):
        return None  # the kernel takes no BPF_ST into the context
    elif width < 64 or fits_imm(combined, 64):
        new = store(2 * size, low.base, low.off, imm=combined)
    else:
        holder = next((r for r in range(10) if view.facts.constant(a_slot, r) == combined), None)
        if holder is None:
            return None
        assumes[holder] = combined
        new = store(2 * size, low.base, low.off, src=holder)
    return Rewrite(a_slot, view.next_slot(b_slot), (new,),
                   f"stores: two u{8 * size} stores at r{low.base}{low.off:+d} as one u{16 * size}",
                   {r: KnownBits.constant(v) for r, v in assumes.items()})


def _pieces(placed: dict[int, int]) -> list[tuple[int, int, int]]:
    """Naturally aligned stores (offset, size, value) writing exactly the bytes `placed` (offset -> byte),
    widest first (an 8-byte one only where a sign-extended imm32 gives its value)."""
    out = []
    offsets = sorted(placed)
    o, end = offsets[0], offsets[-1] + 1
    while o < end:
        if o not in placed:
            o += 1
            continue
        for size in (8, 4, 2, 1):
            if o % size or any(o + i not in placed for i in range(size)):
                continue
            value = sum(placed[o + i] << 8 * i for i in range(size))
            if size == 8 and not fits_imm(value, 64):
                continue
            out.append((o, size, value))
            o += size
            break
    return out


def _run_rewrite(view: ProgramView, run: list[tuple[int, Store, int, dict[int, int]]]) -> Rewrite | None:
    """A run of consecutive stores of constants through one base as the fewest aligned stores."""
    if len(run) < 2:
        return None
    placed: dict[int, int] = {}
    assumes: dict[int, int] = {}
    for _, op, value, uses in run:
        for i in range(op.size):
            placed[op.off + i] = value >> 8 * i & 0xFF
        assumes.update(uses)
    pieces = _pieces(placed)
    if len(pieces) >= len(run):
        return None
    base = run[0][1].base
    new = tuple(store(size, base, off, imm=value) for off, size, value in pieces)
    first, last = run[0][0], run[-1][0]
    return Rewrite(first, view.next_slot(last), new,
                   f"stores: {len(run)} constant stores at r{base} as {len(pieces)}",
                   {r: KnownBits.constant(v) for r, v in assumes.items()})


def _runs(view: ProgramView) -> list[Rewrite]:
    """Runs of consecutive constant stores through one base in one block. Only the stack and bases that
    cannot be the context (whose fields take accesses of their own size only)."""
    out = []
    for block in view.cfg.blocks:
        if not view.reached(block.start):
            continue
        run: list = []
        for slot, op in list(block.ops) + [(None, None)]:
            value = None
            if isinstance(op, Store) and not op.release and \
                    (op.base == 10 or op.base not in view.facts.may_context(slot)):
                value, uses = _value(view, slot, op)
            if value is not None and run and run[0][1].base == op.base:
                run.append((slot, op, value, uses))
                continue
            rewrite = _run_rewrite(view, run)
            if rewrite is not None:
                out.append(rewrite)
            run = [(slot, op, value, uses)] if value is not None else []
    return out


def propose(view: ProgramView) -> list[Rewrite]:
    out = _runs(view)
    slots = [s for s, op in enumerate(view.ops) if op is not None]
    for a_slot, b_slot in zip(slots, slots[1:]):
        a, b = view.ops[a_slot], view.ops[b_slot]
        if not (isinstance(a, Store) and isinstance(b, Store)) or not view.same_block(a_slot, b_slot):
            continue
        if not view.reached(a_slot):
            continue
        rewrite = _merge(view, a_slot, a, b_slot, b)
        if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
            out.append(rewrite)
    return out


__all__ = ["propose"]
