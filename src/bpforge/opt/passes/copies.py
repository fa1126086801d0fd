"""Copies from one memory into another, redone with wider accesses: a run of loads through one base register
and stores through another (clang's inlined memcpy of a MAC address from a map value into the packet, two
bytes at a time) becomes the fewest load/store pairs of the widest pieces that fit, through one register
the run leaves dead.

Proposed only where `analysis.frame` knows the two bases to point into different kinds of memory (a map
value and the packet), which the prover may assume apart; it decides the rest.
Stack accesses stay aligned to their size (the stack is strict); the gate has the last word on the rest."""

from __future__ import annotations

from ...isa import Insn
from ...isa.ops import Load, Reg, Store
from ..rewrite import Rewrite
from .build import store
from .moves import _pieces
from .view import ProgramView


def _runs(view: ProgramView) -> list[tuple[int, int, list[int]]]:
    """(source base, destination base, slots): maximal runs in one block of loads through the source and
    stores of registers through the destination, neither base written."""
    out = []
    for block in view.cfg.blocks:
        run: list[int] = []
        bases: tuple[int | None, int | None] = (None, None)
        for slot, op in block.ops:
            src, dst = bases
            if isinstance(op, Load) and not op.signed and not op.acquire and op.base != dst and \
                    (src is None or op.base == src) and op.dst not in (op.base, dst):
                bases = (op.base, dst)
                run.append(slot)
                continue
            if isinstance(op, Store) and isinstance(op.value, Reg) and not op.release and src is not None and \
                    op.base != src and (dst is None or op.base == dst):
                bases = (src, op.base)
                run.append(slot)
                continue
            if len(run) >= 4 and None not in bases:
                out.append((*bases, run))
            run, bases = [], (None, None)
            if isinstance(op, Load) and not op.signed and not op.acquire and op.dst != op.base:
                run, bases = [slot], (op.base, None)
        if len(run) >= 4 and None not in bases:
            out.append((*bases, run))
    return out


def _copied(view: ProgramView, run: list[int]) -> dict[int, int] | None:
    """Destination offset -> the source offset whose byte the run leaves there."""
    registers: dict[int, list[int]] = {}
    memory: dict[int, int] = {}
    for slot in run:
        op = view.ops[slot]
        if isinstance(op, Load):
            registers[op.dst] = [op.off + i for i in range(op.size)]
        else:
            tokens = registers.get(op.value.n)
            if tokens is None or len(tokens) < op.size:
                return None  # a register the run did not load, or bytes a zero-extension made up
            for i in range(op.size):
                memory[op.off + i] = tokens[i]
    return memory


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for source, target, run in _runs(view):
        if not view.reached(run[0]):
            continue
        kinds = view.regions_at(run[0])
        if kinds.get(source) is None or kinds.get(target) in (None, kinds[source]):
            continue  # the bases might overlap: the prover would refuse
        copied = _copied(view, run)
        if not copied:
            continue
        live = view.live_after(run[-1])
        loaded = [view.ops[s].dst for s in run if isinstance(view.ops[s], Load)]
        if any(live >> r & 1 for r in loaded):
            continue
        pieces = _pieces(copied, stack=10 in (source, target))
        if 2 * len(pieces) >= len(run):
            continue
        reg = loaded[0]
        new: list[Insn] = []
        for dst, src, size in pieces:
            new += [Insn.make(f"ldx{8 * size}", dst=reg, src=source, off=src), store(size, target, dst, src=reg)]
        out.append(Rewrite(run[0], view.next_slot(run[-1]), tuple(new),
                           f"copies: {len(run)} loads and stores from r{source} to r{target} as {len(pieces)} "
                           "wider copies"))
    return out


__all__ = ["propose"]
