"""Memory moved through registers, redone with wider accesses: a run of loads and register stores all
through one base register with constant offsets (a MAC address swap, a header copy) only permutes bytes
of that memory. Replaying it byte by byte (aliasing is exact: one base, constant offsets) gives where each
byte ends up; the replacement loads every moved run of consecutive bytes in the widest pieces that fit
(registers dead after the run hold them), then stores them — proposed when that is shorter. Stores that
leave a byte as it was are dropped. Stack runs keep their accesses aligned (the stack is strict)."""

from __future__ import annotations

from ...isa import Insn
from ...isa.ops import Load, Reg, Store
from ..rewrite import Rewrite
from .build import store
from .view import ProgramView

SIZES = (8, 4, 2, 1)


def _segments(view: ProgramView) -> list[list[int]]:
    """Maximal runs (slots) of loads and register stores through one base register, inside one block."""
    out: list[list[int]] = []
    for block in view.cfg.blocks:
        run: list[int] = []
        base = None
        for slot, op in block.ops:
            ok = (isinstance(op, Load) and not op.signed and not op.acquire and op.dst != op.base) or (
                isinstance(op, Store) and isinstance(op.value, Reg) and not op.release)
            if ok and (base is None or op.base == base):
                if isinstance(op, Load) and op.dst == base:
                    ok = False
            if ok and (base is None or op.base == base):
                base = op.base
                run.append(slot)
                continue
            if len(run) >= 3:
                out.append(run)
            run, base = [], None
            if ok:
                base = op.base
                run = [slot]
        if len(run) >= 3:
            out.append(run)
    return out


def _final_bytes(view: ProgramView, run: list[int]) -> dict[int, int] | None:
    """Destination offset -> the original offset whose byte ends up there (only bytes that changed place)."""
    memory: dict[int, int] = {}
    registers: dict[int, list[int]] = {}
    for slot in run:
        op = view.ops[slot]
        if isinstance(op, Load):
            registers[op.dst] = [memory.get(op.off + i, op.off + i) for i in range(op.size)]
        else:
            tokens = registers.get(op.value.n)
            if tokens is None or len(tokens) < op.size:
                return None  # a register the run did not load, or bytes a zero-extension made up
            for i in range(op.size):
                memory[op.off + i] = tokens[i]
    return {dst: src for dst, src in memory.items() if dst != src}


def _pieces(moved: dict[int, int], stack: bool) -> list[tuple[int, int, int]]:
    """(destination, source, size) accesses covering the moved bytes, widest first."""
    out = []
    offsets = sorted(moved)
    k = 0
    while k < len(offsets):
        d = offsets[k]
        s = moved[d]
        n = 1
        while k + n < len(offsets) and offsets[k + n] == d + n and moved[d + n] == s + n:
            n += 1
        while n:
            size = next(z for z in SIZES if z <= n and (not stack or (d % z == 0 and s % z == 0)))
            out.append((d, s, size))
            d, s, n = d + size, s + size, n - size
            k += size
    return out


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for run in _segments(view):
        if not view.reached(run[0]):
            continue
        first_op = view.ops[run[0]]
        base = first_op.base
        moved = _final_bytes(view, run)
        if moved is None:
            continue
        live = view.live_after(run[-1])
        loaded = {view.ops[s].dst for s in run if isinstance(view.ops[s], Load)}
        if any(live >> r & 1 for r in loaded):
            continue
        pieces = _pieces(moved, stack=base == 10)
        if 2 * len(pieces) >= len(run):
            continue
        free = [r for r in range(10) if r != base and not live >> r & 1]
        if len(pieces) > len(free):
            continue
        loads = [Insn.make(f"ldx{8 * size}", dst=reg, src=base, off=src) for (_, src, size), reg in zip(pieces, free)]
        stores = [store(size, base, dst, src=reg) for (dst, _, size), reg in zip(pieces, free)]
        out.append(Rewrite(run[0], view.next_slot(run[-1]), tuple(loads + stores),
                           f"moves: {len(run)} loads and stores through r{base} as {len(pieces)} wider moves"))
    return out


__all__ = ["propose"]
