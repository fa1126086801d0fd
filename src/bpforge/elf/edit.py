"""Edits of one program section, as the writer consumes them: the new instructions, where each came from,
and where each old position went.

The helpers here (remove, insert, splice) keep every pc-relative reference of the section right: jumps,
local calls and function addresses that cross the edit are retargeted; a reference to a removed
instruction moves to its successor in the same function, and is refused when there is none. Calls and
function addresses resolved through relocations are left alone: the writer recomputes those from the
symbols, for every section that refers into this one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..errors import EncodeError, ElfError
from ..isa import Insn, branch_target, retarget, slot_starts
from .model import ProgramSection, Reloc
from .relocs import slot_index


@dataclass
class SectionEdit:
    """New contents of the program section `section`.

    `origins[j]` is the index of the old instruction new instruction j came from (None for a new one): its
    relocation goes with it, and so do CO-RE records. `positions[k]`, for every old index k and the end
    (k = old length), is the new index that took old position k: where jumps to k, function symbols at k
    and line info of k now point (None: nothing did; such a position may not be referenced). Without
    `positions`, an old position goes to the first new instruction from it, else to its successor's."""

    section: str
    insns: list[Insn]
    origins: list[int | None]
    positions: list[int | None] | None = None

    def position_map(self, old_count: int) -> list[int | None]:
        if self.positions is not None:
            if len(self.positions) != old_count + 1:
                raise ElfError(f"edit of {self.section} maps {len(self.positions)} positions, the section has "
                               f"{old_count} instructions (+1 for the end)", section=self.section)
            for k, new in enumerate(self.positions):
                if new is not None and not 0 <= new <= len(self.insns):
                    raise ElfError(f"edit of {self.section} sends position {k} to {new}, beyond its "
                                   f"{len(self.insns)} instructions", section=self.section)
            return list(self.positions)
        first: dict[int, int] = {}
        for j, origin in enumerate(self.origins):
            if origin is not None:
                first.setdefault(origin, j)
        out: list[int | None] = [None] * (old_count + 1)
        out[old_count] = len(self.insns)
        for k in range(old_count - 1, -1, -1):
            out[k] = first.get(k, out[k + 1])
        return out


def remove_insns(section: ProgramSection, indices: Iterable[int]) -> SectionEdit:
    """The section without the instructions at `indices` (instruction indexes, not slots)."""
    removed = set(indices)
    n = len(section.insns)
    for i in removed:
        if not 0 <= i < n:
            raise ElfError(f"cannot remove instruction {i}: the section has {n}", section=section.name)
    kept = [i for i in range(n) if i not in removed]
    new_index = {old: new for new, old in enumerate(kept)}
    positions: list[int | None] = [None] * (n + 1)
    positions[n] = len(kept)
    for start in section.functions:
        _, end = section.function_range(start)
        successor = None  # a removed instruction's place goes to the next kept one of its own function
        for i in range(end - 1, start - 1, -1):
            successor = new_index.get(i, successor)
            positions[i] = successor
    return _rebuild(section, [(i, section.insns[i]) for i in kept], positions)


def insert_insns(section: ProgramSection, index: int | Mapping[int, Sequence[Insn]],
                 insns: Sequence[Insn] = ()) -> SectionEdit:
    """The section with `insns` inserted before instruction `index` (= length: at the end), or with several
    blocks inserted at once: `insert_insns(sec, {3: [a], 10: [b, c]})`. Jumps, calls and symbols that
    referred to an index now refer to the first instruction inserted there. Offsets inside a block are
    taken as they are: relative to the block itself."""
    blocks = dict(index) if isinstance(index, Mapping) else {index: insns}
    n = len(section.insns)
    for at in blocks:
        if not 0 <= at <= n:
            raise ElfError(f"cannot insert before instruction {at}: the section has {n}", section=section.name)
    pieces: list[tuple[int | None, Insn]] = []
    positions: list[int | None] = []
    for k in range(n + 1):
        positions.append(len(pieces))
        pieces += [(None, insn) for insn in blocks.get(k, ())]
        if k < n:
            pieces.append((k, section.insns[k]))
    positions[n] = len(pieces)  # the end stays the end: a block appended there extends the last function
    return _rebuild(section, pieces, positions)


def splice(section: ProgramSection, start: int, stop: int, insns: Sequence[Insn]) -> SectionEdit:
    """The section with instructions [start, stop) replaced by `insns` (new, with offsets relative to their
    own block). References to `start` go to the block; references strictly inside the range are refused."""
    n = len(section.insns)
    if not 0 <= start <= stop <= n:
        raise ElfError(f"cannot replace instructions [{start}, {stop}): the section has {n}", section=section.name)
    if not insns:
        return remove_insns(section, range(start, stop))
    delta = len(insns) - (stop - start)

    def position(k: int) -> int | None:
        if k == n:
            return n + delta  # the end stays the end (an appended block extends the last function)
        if k <= start:
            return k
        return None if k < stop else k + delta

    positions = [position(k) for k in range(n + 1)]
    pieces = [(i, section.insns[i]) for i in range(start)] + [(None, insn) for insn in insns]
    pieces += [(i, section.insns[i]) for i in range(stop, n)]
    return _rebuild(section, pieces, positions)


def _rebuild(section: ProgramSection, pieces: list[tuple[int | None, Insn]],
             positions: list[int | None]) -> SectionEdit:
    """Lay out `pieces` (origin, instruction) and retarget the carried pc-relative instructions."""
    old_starts = slot_starts(section.insns)
    old_index = slot_index(section.insns)
    new_starts = slot_starts([insn for _, insn in pieces])
    new_starts.append(new_starts[-1] + pieces[-1][1].slots if pieces else 0)  # the end
    insns: list[Insn] = []
    for j, (origin, insn) in enumerate(pieces):
        if origin is not None and insn.form.target_field is not None and origin not in section.relocations:
            old_target = old_index.get(branch_target(insn, old_starts[origin]))
            if old_target is None or old_target >= len(section.insns):
                raise ElfError(f"{insn.form.name} targets slot {branch_target(insn, old_starts[origin])}, which "
                               "is not an instruction of the section", section=section.name,
                               insn=old_starts[origin])
            target = positions[old_target]
            if target is None:
                raise ElfError(f"instruction {old_target} (slot {old_starts[old_target]}), the target of the "
                               f"{insn.form.name} at slot {old_starts[origin]}, is removed and has no successor "
                               "in its function", section=section.name, insn=old_starts[origin])
            try:
                insn = retarget(insn, new_starts[j], new_starts[target])
            except EncodeError as err:
                raise ElfError(err.message, section=section.name, insn=old_starts[origin]) from None
        insns.append(insn)
    return SectionEdit(section.name, insns, [origin for origin, _ in pieces], positions)


def edited_view(section: ProgramSection, edit: SectionEdit) -> ProgramSection:
    """The section as it reads after `edit`: instructions, functions at their new places, relocations carried
    by origin (new indexes). Useful to inspect an edit, or to chain another one on top of it."""
    positions = edit.position_map(len(section.insns))
    functions = {}
    for start, name in section.functions.items():
        if positions[start] is None:
            raise ElfError(f"function '{name}' is removed entirely", section=section.name)
        functions[positions[start]] = name
    relocations: dict[int, Reloc] = {}
    for j, origin in enumerate(edit.origins):
        if origin is not None and origin in section.relocations:
            relocations[j] = replace(section.relocations[origin], insn=j)
    return ProgramSection(section.name, section.index, list(edit.insns), dict(sorted(functions.items())), relocations)
