"""Windows for the search, chosen from the program itself (no hand-made lists, unlike K2): runs of up to
`max_length` instructions with one entry, inside one function, without calls, may_goto or legacy packet
loads (what the prover cannot follow). A window may run past a conditional jump into the block after it
when nothing else jumps there: the prover follows every path, so the search may rewrite across blocks.

Windows of a run overlap by half their length, so a pattern cut by one window's edge lies inside the
next; longer runs come first (more room to improve), ties in program order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import BpforgeError
from ..isa import Insn
from ..isa.ops import Call, LegacyLoad, MayGoto, decode_ops
from ..verifier.window import ProgramSites, WindowSite

MAX_LENGTH = 6


@dataclass(frozen=True)
class SearchWindow:
    start: int  # slots [start, end)
    end: int
    length: int  # instructions
    site: WindowSite


def _stops(op) -> bool:
    return op is None or isinstance(op, (Call, LegacyLoad, MayGoto))


def search_windows(insns: Sequence[Insn], *, max_length: int = MAX_LENGTH, min_length: int = 2,
                   editable: Iterable[int] | None = None, sites: ProgramSites | None = None) -> list[SearchWindow]:
    """Windows of `insns` worth searching (see the module doc), restricted to `editable` slots if given."""
    sites = sites or ProgramSites(insns)
    allowed = None if editable is None else frozenset(editable)
    ops = decode_ops(insns)
    starts = [s for s, op in enumerate(ops) if op is not None]
    index = {s: i for i, s in enumerate(starts)}
    ends = starts[1:] + [len(ops)]

    def usable(slot: int) -> bool:
        return not _stops(ops[slot]) and (allowed is None or slot in allowed)

    # maximal runs of usable instructions with one entry
    runs: list[list[int]] = []
    run: list[int] = []
    for slot in starts:
        if not usable(slot):
            if run:
                runs.append(run)
            run = []
            continue
        if run:
            try:
                sites.site(run[0], ends[index[slot]])
            except BpforgeError:
                runs.append(run)
                run = []
        run.append(slot)
    if run:
        runs.append(run)
    out: list[SearchWindow] = []
    for run in sorted(runs, key=lambda r: (-len(r), r[0])):
        if len(run) < min_length:
            continue
        length = min(max_length, len(run))
        stride = max(1, length // 2)
        positions = list(range(0, len(run) - length + 1, stride))
        if positions[-1] != len(run) - length:
            positions.append(len(run) - length)
        for p in positions:
            first, last = run[p], run[p + length - 1]
            start, end = first, ends[index[last]]
            try:
                site = sites.site(start, end)
            except BpforgeError:
                continue
            out.append(SearchWindow(start, end, length, site))
    return out


__all__ = ["MAX_LENGTH", "SearchWindow", "search_windows"]
