"""Candidates as the search edits them: a fixed number of cells, one instruction or a NOP hole each.

A window of n instructions becomes n cells (an lddw is one cell). Moves replace cells in place and never
shift them, so a jump names its target as a cell index (forward, inside) or as one of the window's exits
(`ExitTarget`), never as an offset: offsets are only computed by `compact`, when the holes are dropped and
the candidate becomes a real window (offsets relative within it, as `verifier.window` and `opt.rewrite`
expect). A jump to a hole lands on the next real instruction, or falls off the end (exit "after" 0) when
only holes follow, which is exactly what running the cells with holes as no-ops does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import BpforgeError
from ...isa import Insn
from ...isa.ops import Jump, decode_ops
from ...verifier.window import ExitTarget, exit_of

Target = int | ExitTarget  # a cell index (inside, forward) or an exit of the window


@dataclass(frozen=True, slots=True)
class Cell:
    """One instruction of a candidate. For a jump, `insn.off` is 0 and `target` says where it goes."""

    insn: Insn
    target: Target | None = None


Cells = tuple[Cell | None, ...]  # None: a NOP hole


def cells_of(window: Sequence[Insn]) -> Cells:
    """The window as cells. BpforgeError for a jump backwards or into the second slot of an lddw."""
    ops = decode_ops(window)
    starts = [s for s, op in enumerate(ops) if op is not None]
    cell_at = {s: i for i, s in enumerate(starts)}
    length = len(ops)
    out: list[Cell] = []
    for i, (slot, insn) in enumerate(zip(starts, window)):
        op = ops[slot]
        if op.__class__ is not Jump:
            out.append(Cell(insn))
            continue
        if op.target <= slot:
            raise BpforgeError(f"window insn {i} jumps backwards: the search takes acyclic windows", insn=slot)
        if op.target < length:
            if op.target not in cell_at:
                raise BpforgeError(f"window insn {i} jumps into an lddw", insn=slot)
            target: Target = cell_at[op.target]
        else:
            target = exit_of(op.target, length)
        out.append(Cell(_with_offset(insn, 0), target))
    return tuple(out)


def _with_offset(insn: Insn, off: int) -> Insn:
    if insn.form.name == "gotol":
        return Insn(insn.opcode, insn.dst, insn.src, 0, off)
    return Insn(insn.opcode, insn.dst, insn.src, off, insn.imm, insn.imm_hi)


def compact(cells: Cells) -> tuple[Insn, ...]:
    """The real window: holes dropped, every jump's offset computed for where it now lands."""
    kept = [i for i, c in enumerate(cells) if c is not None]
    slot_of: dict[int, int] = {}
    slot = 0
    for i in kept:
        slot_of[i] = slot
        slot += cells[i].insn.slots
    length = slot
    # where a jump to cell t lands: the first real cell at or after t (or the end)
    landing = [length] * (len(cells) + 1)
    for i in range(len(cells) - 1, -1, -1):
        landing[i] = slot_of[i] if i in slot_of else landing[i + 1]
    out: list[Insn] = []
    for i in kept:
        cell = cells[i]
        if cell.target is None:
            out.append(cell.insn)
            continue
        target = cell.target
        if target.__class__ is int:
            land = landing[target]
        else:
            land = target.slot(length)
        out.append(_with_offset(cell.insn, land - slot_of[i] - 1))
    return tuple(out)


__all__ = ["Cell", "Cells", "Target", "cells_of", "compact"]
