"""Rewrites applied to a program, with where every instruction came from: what the ELF writer needs to keep
relocations, function symbols, line info and CO-RE records on the right instructions.

`origins[j]`: the index in the ORIGINAL program of current instruction j (None for a new one).
`positions[k]`, for every original index k and the end (k = original length): the current index that took
original position k (None when it was removed). Both as `elf.edit.SectionEdit` means them, composed over
every batch applied so far. A new instruction equal to one of the window it replaces keeps that one's
origin, so an lddw of a map that a rewrite moved still carries its relocation.

A batch of rewrites is laid out in one pass over the program, so each rewrite's jumps that leave its
window land where they would have landed in the program the rewrites were computed against (applying
them one after another would shift the targets of the ones applied later), and every jump, local call
and function address of the rest is retargeted to where its target went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BpforgeError, EncodeError
from ..isa import Insn, branch_target, retarget, slot_starts
from .rewrite import Rewrite


@dataclass(frozen=True)
class _Piece:
    insn: Insn
    carried: int | None  # index in the program before the batch, for an instruction kept as it was
    origin: int | None  # index in the original program
    exit_to: int | None  # for a new jump that leaves its window: the index it lands on, before the batch


@dataclass(frozen=True, eq=False)
class Transformation:
    """A program as rewritten so far: `insns`, `origins[j]` and `positions[k]` (see the module docstring).
    Immutable in use: `apply` returns a new one."""

    insns: list[Insn]
    origins: list[int | None]
    positions: list[int | None]

    @staticmethod
    def start(insns: Sequence[Insn]) -> "Transformation":
        n = len(insns)
        return Transformation(list(insns), list(range(n)), list(range(n + 1)))

    def apply(self, rewrites: Sequence[Rewrite]) -> "Transformation":
        """This program with `rewrites` (non-overlapping, all in this program's slots) applied.
        ValueError when two overlap or one does not start and end at instructions; BpforgeError when a jump
        would land inside a replaced window or beyond what an offset reaches."""
        ordered = sorted(rewrites, key=lambda r: r.start)
        for earlier, later in zip(ordered, ordered[1:]):
            if later.overlaps(earlier):
                raise ValueError(f"rewrites of [{earlier.start}, {earlier.end}) and [{later.start}, {later.end}) "
                                 "overlap")
        insns = self.insns
        starts = slot_starts(insns)
        total = sum(insn.slots for insn in insns)
        index = {slot: i for i, slot in enumerate(starts)}
        index[total] = len(insns)
        pieces: list[_Piece] = []
        moved: list[int | None] = [None] * (len(insns) + 1)  # index before the batch -> piece index
        k = 0
        for rewrite in ordered:
            if rewrite.start not in index or rewrite.end not in index:
                raise ValueError(f"rewrite [{rewrite.start}, {rewrite.end}) does not start and end at instructions")
            i, j = index[rewrite.start], index[rewrite.end]
            for m in range(k, i):
                if moved[m] is None:  # an insertion just before m already gave its place to its new window
                    moved[m] = len(pieces)
                pieces.append(_Piece(insns[m], m, self.origins[m], None))
            if moved[i] is None:  # (two insertions at one place overlap, so only one window starts here)
                moved[i] = len(pieces)
            pieces.extend(self._window(rewrite, i, j, index))
            k = j
        for m in range(k, len(insns)):
            if moved[m] is None:
                moved[m] = len(pieces)
            pieces.append(_Piece(insns[m], m, self.origins[m], None))
        moved[len(insns)] = len(pieces)  # the end stays the end (an insertion there extends the last function)
        return Transformation(self._laid_out(pieces, starts, index, moved), [p.origin for p in pieces],
                              [None if p is None else moved[p] for p in self.positions])

    def _window(self, rewrite: Rewrite, i: int, j: int, index: dict[int, int]) -> list[_Piece]:
        """The pieces of one rewrite's new window: its jumps out resolved to the instructions they land on."""
        equal = {self.insns[m]: self.origins[m] for m in range(i, j) if self.origins[m] is not None}
        length = sum(insn.slots for insn in rewrite.new)
        out, slot = [], 0
        for insn in rewrite.new:
            target = branch_target(insn, slot)
            exit_to = None
            if target is not None and not 0 <= target < length:
                landing = rewrite.start + target if target < 0 else rewrite.end + target - length
                exit_to = index.get(landing)
                if exit_to is None:
                    raise BpforgeError(f"the rewrite at insn {rewrite.start} jumps to slot {landing}, which is not an "
                                       "instruction", insn=rewrite.start)
            out.append(_Piece(insn, None, equal.get(insn), exit_to))
            slot += insn.slots
        return out

    @staticmethod
    def _laid_out(pieces: list[_Piece], starts: list[int], index: dict[int, int],
                  moved: list[int | None]) -> list[Insn]:
        new_starts = slot_starts([p.insn for p in pieces])
        new_starts.append(new_starts[-1] + pieces[-1].insn.slots if pieces else 0)
        out: list[Insn] = []
        for n, piece in enumerate(pieces):
            insn, target = piece.insn, None
            if piece.carried is not None and insn.form.target_field is not None:
                old = index.get(branch_target(insn, starts[piece.carried]))
                target = None if old is None else moved[old]
                if target is None:
                    raise BpforgeError(f"the {insn.form.name} at slot {starts[piece.carried]} lands inside a replaced "
                                       "window", insn=starts[piece.carried])
            elif piece.exit_to is not None:
                target = moved[piece.exit_to]
                if target is None:
                    raise BpforgeError("a rewrite's jump lands inside another replaced window")
            if target is not None:
                try:
                    insn = retarget(insn, new_starts[n], new_starts[target])
                except EncodeError as err:
                    raise BpforgeError(err.message) from None
            out.append(insn)
        return out


def apply_rewrites(insns: Sequence[Insn], rewrites: Sequence[Rewrite]) -> list[Insn]:
    """`insns` with the non-overlapping `rewrites` (all computed against `insns`) applied."""
    return Transformation.start(insns).apply(rewrites).insns


__all__ = ["Transformation", "apply_rewrites"]
