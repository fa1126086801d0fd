"""The search phase of the pipeline: windows of the current program (`windows.search_windows`) searched by
`search.search` chains, one unit of work per window, on a `backends.Backend` (this process, local worker
processes or a Ray cluster) with different parameters and seeds, each improvement proved against the window
it replaces before it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..isa import Insn
from ..verifier.window import ExitTarget
from .backends import Backend, Lost
from .cost import LatencyModel, latency_cost, size_cost
from .passes import ProgramView
from .rewrite import KnownBits, Rewrite
from .search import SearchParams, SearchTask, search
from .smt.equiv import Proof, prove_equivalent
from .windows import search_windows

# Chains differ in how boldly they move (K2 ran its chains with different parameters the same way).
CHAIN_PARAMS = (SearchParams(), SearchParams(beta=0.5), SearchParams(beta=2.0), SearchParams(beta=1.0))


@dataclass(frozen=True)
class WindowJob:
    start: int
    end: int
    window: tuple[Insn, ...]
    live_in: int
    live_out: tuple[tuple[ExitTarget, int], ...]
    assumes: tuple[tuple[int, KnownBits], ...]
    contexts: frozenset[int] = frozenset(range(10))  # registers that may hold the context at entry
    regions: tuple[tuple[int, str], ...] = ()  # registers known to point into one kind of memory at entry


def window_jobs(view: ProgramView, editable: Iterable[int] | None = None) -> list[WindowJob]:
    """The windows of `view`'s program worth searching (`windows.search_windows`), each with what the
    search and the prover need to know about its place."""
    facts = view.facts
    jobs = []
    for w in search_windows(view.insns, editable=editable, sites=view.sites):
        live_out = tuple(sorted(w.site.live_out.items(), key=lambda kv: (kv[0].kind, kv[0].offset)))
        jobs.append(WindowJob(w.start, w.end, tuple(w.site.window()), w.site.live_in, live_out,
                              tuple(sorted(facts.at(w.start).items())), facts.may_context(w.start),
                              tuple(sorted(view.regions_at(w.start).items()))))
    return jobs


@dataclass(frozen=True)
class Found:
    job: WindowJob
    best: tuple[Insn, ...]
    cost: float
    original_cost: float
    chain: int


@dataclass(frozen=True)
class Unit:
    """One chain over one window: what a backend sends to a worker."""

    job: WindowJob
    seconds: float
    seed: int
    chain: int
    prog_type: str
    cost: str
    timeout_ms: int


def _cost_function(name: str) -> Callable[[Sequence[Insn]], float]:
    if name == "latency":
        model = LatencyModel.default()
        return lambda insns: latency_cost(insns, model)
    return size_cost


@dataclass(frozen=True)
class Searched:
    """What a unit brings back: its improvement (None: nothing cheaper was proved), and how long its chain ran."""

    found: Found | None
    seconds: float


def search_unit(unit: Unit, stop: Callable[[], bool]) -> Searched:
    """Run `unit`'s chain: its best candidate when cheaper than the window (proved equivalent), and its time."""
    job = unit.job
    live_out = dict(job.live_out)
    assumes = dict(job.assumes)

    def prove(candidate: tuple[Insn, ...]) -> Proof:
        return prove_equivalent(job.window, candidate, live_out, assumes, contexts=job.contexts,
                                regions=dict(job.regions), timeout_ms=unit.timeout_ms)

    task = SearchTask(job.window, job.live_in, live_out, assumes, unit.prog_type)
    result = search(task, budget=unit.seconds, seed=unit.seed, prove=prove, cost=_cost_function(unit.cost),
                    params=CHAIN_PARAMS[unit.chain % len(CHAIN_PARAMS)], stop=stop)
    found = None
    if result.best is not None and result.best_cost < result.original_cost:
        found = Found(job, tuple(result.best), result.best_cost, result.original_cost, unit.chain)
    return Searched(found, result.seconds)


def units_of(jobs: Sequence[WindowJob], *, seconds: float, workers: int, seed: int, prog_type: str, cost: str,
             timeout_ms: int) -> list[Unit]:
    """`jobs` as units for `workers` running at once within `seconds` of wall time: the k-th of every
    `workers` windows gets chain parameters k (K2 ran its chains with different parameters the same way),
    each window the same share of the time. A unit's seed depends on its window and place only, so a
    backend changes where a chain runs, never what it does."""
    workers = max(1, min(workers, len(jobs)))
    per_chain = [len(jobs[k::workers]) for k in range(workers)]
    return [Unit(job, seconds / per_chain[i % workers], seed * 7919 + job.start * 31 + i // workers, i % workers,
                 prog_type, cost, timeout_ms) for i, job in enumerate(jobs)]


@dataclass
class Round:
    """What one round of search brought back: the improvements, and the windows whose unit was lost (its
    worker died) with why."""

    found: list[Found] = field(default_factory=list)
    lost: list[tuple[WindowJob, str]] = field(default_factory=list)
    seconds: float = 0.0  # the chains' time, summed: the work the round did


def run_search(jobs: Sequence[WindowJob], *, seconds: float, backend: Backend, seed: int, prog_type: str,
               cost: str, timeout_ms: int, stop: Callable[[], bool],
               on_result: Callable[[int, int, Found | None], None] | None = None) -> Round:
    """Search every window of `jobs` within `seconds` of wall time on `backend`; `on_result(done, total,
    improvement or None)` as each unit finishes."""
    out = Round()
    if not jobs or seconds <= 0:
        return out
    units = units_of(jobs, seconds=seconds, workers=backend.workers, seed=seed, prog_type=prog_type, cost=cost,
                     timeout_ms=timeout_ms)
    deadline = time.monotonic() + seconds
    for done, (n, result) in enumerate(backend.run(search_unit, units, stop=stop, deadline=deadline), 1):
        found = None
        if isinstance(result, Lost):
            out.lost.append((units[n].job, result.why))
        else:
            out.seconds += result.seconds
            found = result.found
            if found is not None:
                out.found.append(found)
        if on_result is not None:
            on_result(done, len(units), found)
    return out


def rewrites_of(found: Sequence[Found]) -> list[Rewrite]:
    """The best improvement per window, then the non-overlapping ones, most saved first."""
    best: dict[tuple[int, int], Found] = {}
    for f in found:
        key = (f.job.start, f.job.end)
        if key not in best or f.original_cost - f.cost > best[key].original_cost - best[key].cost:
            best[key] = f
    chosen: list[Rewrite] = []
    for f in sorted(best.values(), key=lambda f: f.cost - f.original_cost):
        rewrite = Rewrite(f.job.start, f.job.end, f.best, f"search (chain {f.chain}): cost "
                          f"{f.original_cost:g} -> {f.cost:g}", dict(f.job.assumes))
        if not any(rewrite.overlaps(other) for other in chosen):
            chosen.append(rewrite)
    return chosen


__all__ = ["CHAIN_PARAMS", "Found", "Round", "Searched", "Unit", "WindowJob", "rewrites_of", "run_search", "search_unit",
           "units_of", "window_jobs"]
