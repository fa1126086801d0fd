"""One monotone dataflow solver for every analysis over a function's blocks (Kildall's worklist algorithm).

A `Problem` gives the direction, the value at the boundary (the entry for a forward problem, every exit
for a backward one), the initial value of the other blocks (the lattice's bottom), `join` and a block
`transfer`. The worklist is a priority queue keyed by the weak topological order (forward) or its reverse
(backward), so a loop body is finished before what follows it and each block is revisited only when one
of its inputs changed — the order PREVAIL and LLVM's dataflow frameworks iterate in. Only blocks reachable
from the function's entry are solved; others have no value. Values must compare with `==` (frozensets and
ints as bitsets are the usual choice). Transfer functions must be monotone for termination; no widening is
applied here (finite lattices: sets of registers, slots, definitions).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .cfg import ProgramCfg
from .loops import Wto, function_wto

T = TypeVar("T")
FORWARD, BACKWARD = "forward", "backward"


@dataclass(frozen=True)
class Problem(Generic[T]):
    direction: str  # forward | backward
    boundary: T
    bottom: T
    join: Callable[[T, T], T]
    transfer: Callable[[int, T], T]  # (block id, value flowing in) -> value flowing out


@dataclass(frozen=True)
class Solution(Generic[T]):
    """Values at the start (`before`) and the end (`after`) of every solved block, in program order
    whatever the direction (for a backward problem `after` is what flows in)."""

    before: dict[int, T]
    after: dict[int, T]
    visits: int  # transfer applications, a measure of the work done


def solve(cfg: ProgramCfg, function: int, problem: Problem[T], wto: Wto | None = None) -> Solution[T]:
    blocks = cfg.blocks
    wto = wto or function_wto(cfg, function)
    order = list(wto)
    forward = problem.direction == FORWARD
    if not forward:
        order.reverse()
    rank = {b: i for i, b in enumerate(order)}
    entry = cfg.functions[function].entry_block

    if forward:
        sources = lambda b: blocks[b].predecessors  # noqa: E731 - the two directions differ only here
        sinks = lambda b: blocks[b].successors  # noqa: E731
        at_boundary = lambda b: b == entry  # noqa: E731
    else:
        sources = lambda b: blocks[b].successors  # noqa: E731
        sinks = lambda b: blocks[b].predecessors  # noqa: E731
        at_boundary = lambda b: not blocks[b].succs  # noqa: E731

    inflow: dict[int, T] = {}
    outflow: dict[int, T] = {}
    queue = [(i, b) for i, b in enumerate(order)]
    queued = set(order)
    visits = 0
    join, bottom, transfer = problem.join, problem.bottom, problem.transfer
    while queue:
        _, b = heapq.heappop(queue)
        queued.discard(b)
        value = problem.boundary if at_boundary(b) else bottom
        for s in sources(b):
            if s in outflow:
                value = join(value, outflow[s])
        inflow[b] = value
        out = transfer(b, value)
        visits += 1
        if outflow.get(b, _MISSING) != out:
            outflow[b] = out
            for t in sinks(b):
                if t in rank and t not in queued:
                    queued.add(t)
                    heapq.heappush(queue, (rank[t], t))
    if forward:
        return Solution(inflow, outflow, visits)
    return Solution(outflow, inflow, visits)


_MISSING = object()

__all__ = ["BACKWARD", "FORWARD", "Problem", "Solution", "solve"]
