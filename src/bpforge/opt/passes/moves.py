"""Memory moved through registers, redone with wider accesses: a run of loads and register stores with
constant offsets (a MAC address swap, an IPv6 address swap through stack temporaries, clang's inlined
memcpy from a map value into the packet two bytes at a time) only moves bytes around. Replaying it byte by
byte gives where each byte ends up; the replacement loads every moved run of consecutive bytes in the
widest pieces that fit (registers dead after the run hold them), then stores them — proposed when that is
shorter. Stores that leave a byte as it was are dropped, and so are stack bytes dead after the run.

Aliasing is exact: one base register, or several that `analysis.frame` knows to point into pairwise
different kinds of memory (the stack, the packet, a map value), which never overlap — the prover assumes
exactly that and no more. A load may overwrite a base as long as the run does not use that base again.
Stack accesses stay aligned to their size (the stack is strict); the gate has the last word on the rest."""

from __future__ import annotations

from ...analysis.liveness import slot_bit
from ...isa import Insn
from ...isa.ops import Load, Reg, Store
from ..rewrite import Rewrite
from .build import store
from .view import ProgramView

SIZES = (8, 4, 2, 1)
MIN_RUN = 3

Byte = tuple[int, int]  # (base register, offset)


def _movable(op) -> bool:
    return (isinstance(op, Load) and not op.signed and not op.acquire) or (
        isinstance(op, Store) and isinstance(op.value, Reg) and not op.release)


def _segments(view: ProgramView) -> list[list[int]]:
    """Maximal runs (slots) of loads and register stores inside one block through bases that cannot alias
    one another, none used again after a load overwrote it."""
    out: list[list[int]] = []
    for block in view.cfg.blocks:
        run: list[int] = []
        kinds: dict[int, str | None] = {}  # base -> its kind of memory (None: unknown, only as the sole base)
        retired: set[int] = set()  # bases a load of the run overwrote
        loaded: set[int] = set()  # registers a load of the run wrote

        def fits(slot: int, op) -> bool:
            if not _movable(op) or op.base in retired or (op.base in loaded and op.base not in kinds):
                return False
            if isinstance(op, Store) and op.value.n not in loaded:
                return False  # a register the run did not load: not a byte move
            if op.base in kinds:
                return True
            kind = view.regions_at(run[0] if run else slot).get(op.base)
            known = list(kinds.values())
            if not known:
                return True
            return kind is not None and None not in known and kind not in known

        def close(run: list[int]) -> None:
            while run and isinstance(view.ops[run[-1]], Load):
                run = run[:-1]  # loads after the last store move nothing (their registers may be live)
            if len(run) >= MIN_RUN:
                out.append(run)

        for slot, op in block.ops:
            if not fits(slot, op):
                close(run)
                run, kinds, retired, loaded = [], {}, set(), set()
                if not (isinstance(op, Load) and fits(slot, op)):
                    continue  # a run starts with a load
            if op.base not in kinds:
                kinds[op.base] = view.regions_at(run[0] if run else slot).get(op.base)
            run.append(slot)
            if isinstance(op, Load):
                loaded.add(op.dst)
                if op.dst in kinds:
                    retired.add(op.dst)
        close(run)
    return out


def _final_bytes(view: ProgramView, run: list[int]) -> dict[Byte, Byte] | None:
    """Destination byte -> the original byte that ends up there (only bytes that changed place)."""
    memory: dict[Byte, Byte] = {}
    registers: dict[int, list[Byte]] = {}
    for slot in run:
        op = view.ops[slot]
        if isinstance(op, Load):
            registers[op.dst] = [memory.get((op.base, op.off + i), (op.base, op.off + i)) for i in range(op.size)]
        else:
            tokens = registers.get(op.value.n)
            if tokens is None or len(tokens) < op.size:
                return None  # a register the run did not load, or bytes a zero-extension made up
            for i in range(op.size):
                memory[(op.base, op.off + i)] = tokens[i]
    return {dst: src for dst, src in memory.items() if dst != src}


def _pieces(moved: dict[Byte, Byte]) -> list[tuple[Byte, Byte, int]]:
    """(destination, source, size) accesses covering the moved bytes, widest first; stack pieces aligned."""
    out = []
    order = sorted(moved)
    k = 0
    while k < len(order):
        (db, d), (sb, s) = order[k], moved[order[k]]
        n = 1
        while k + n < len(order) and order[k + n] == (db, d + n) and moved[order[k + n]] == (sb, s + n):
            n += 1
        while n:
            size = next(z for z in SIZES if z <= n and (10 not in (db, sb) or (d % z == 0 and s % z == 0)))
            out.append(((db, d), (sb, s), size))
            d, s, n = d + size, s + size, n - size
            k += size
    return out


def _dead_stack_dropped(moved: dict[Byte, Byte], live: int) -> dict[Byte, Byte]:
    return {(b, off): src for (b, off), src in moved.items()
            if not (b == 10 and slot_bit(off - off % 8) and not live & slot_bit(off - off % 8))}


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for run in _segments(view):
        if not view.reached(run[0]):
            continue
        moved = _final_bytes(view, run)
        if moved is None:
            continue
        live = view.live_after(run[-1])
        loaded = {view.ops[s].dst for s in run if isinstance(view.ops[s], Load)}
        if any(live >> r & 1 for r in loaded):
            continue
        pieces = _pieces(_dead_stack_dropped(moved, live))
        if 2 * len(pieces) >= len(run):
            continue
        bases = {view.ops[s].base for s in run}
        free = [r for r in range(10) if r not in bases and not live >> r & 1]
        if len(pieces) > len(free):
            continue
        loads = [Insn.make(f"ldx{8 * size}", dst=reg, src=sb, off=s) for (_, (sb, s), size), reg in zip(pieces, free)]
        stores = [store(size, db, d, src=reg) for ((db, d), _, size), reg in zip(pieces, free)]
        names = ", ".join(f"r{b}" for b in sorted(bases))
        out.append(Rewrite(run[0], view.next_slot(run[-1]), tuple(loads + stores),
                           f"moves: {len(run)} loads and stores through {names} as {len(pieces)} wider moves"))
    return out


__all__ = ["propose"]
