"""Shrink a mismatching generated program to a small reproducer by editing the decisions that made it.

The generator draws every decision from `Choices`; any list of decisions replays into a valid program (the
generator enforces its invariants whatever it draws: initialised registers and stack, pointers confined to
their blocks). So shrinking edits the list — deletes runs of decisions, zeroes or halves single ones (0 is
always the simplest choice: fewest statements, first alternative) — and keeps an edit when the replayed
program is still accepted by the verifier and the engines still split the same way on the same packet.
Deleting or editing instructions directly would not be sound: it can leave a pointer or uninitialised stack
bytes flowing into the result, which root may load and which differ between engines for no fault of theirs.
"""

from __future__ import annotations

import time

from .engines import Engine, Mismatch, Rejected, compare
from .generator import replay


def _split(mismatch: Mismatch) -> frozenset:
    """Which engines agree with which: the shape of the disagreement."""
    groups: dict = {}
    for name, outcome in mismatch.outcomes.items():
        groups.setdefault(outcome, set()).add(name)
    return frozenset(frozenset(g) for g in groups.values())


def shrink(choices: list[int], packet: bytes, engines: list[Engine], *, seconds: float = 30.0) -> Mismatch | None:
    """The smallest mismatch found within `seconds` by editing `choices` (a failing program's decisions);
    None if replaying them does not fail at all."""
    deadline = time.monotonic() + seconds

    def attempt(candidate: list[int]) -> tuple[Mismatch, list[int]] | None:
        generated = replay(candidate)
        try:
            found = compare(generated.program, packet, engines)
        except Rejected:
            return None
        if found is None or _split(found) != shape:
            return None
        return found, generated.choices

    generated = replay(choices)
    first = compare(generated.program, packet, engines)
    if first is None:
        return None
    shape = _split(first)
    best, seq = first, generated.choices
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for size in (32, 16, 8, 4, 2, 1):
            i = len(seq) - size
            while i >= 0 and time.monotonic() < deadline:
                result = attempt(seq[:i] + seq[i + size:])
                if result is not None and len(result[0].program.insns) <= len(best.program.insns):
                    best, seq, improved = result[0], result[1], True
                i -= size
        i = 0
        while i < len(seq) and time.monotonic() < deadline:
            for value in (0, seq[i] // 2):
                if value != seq[i]:
                    result = attempt(seq[:i] + [value] + seq[i + 1:])
                    if result is not None and len(result[0].program.insns) <= len(best.program.insns):
                        best, seq, improved = result[0], result[1], True
                        break
            i += 1
    best.program.seed = None
    best.program.name = "shrunk"
    return best
