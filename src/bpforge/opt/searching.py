"""The search phase of the pipeline: windows of the current program (`windows.search_windows`) searched by
`search.search` chains, in this process or in `jobs` worker processes with different parameters and seeds,
each improvement proved against the window it replaces before it comes back.

Each worker takes every `jobs`-th window (round robin, longest runs first) and gives each the same share
of the time; a worker never sees SIGINT (the parent asks it to stop through an event and still collects
what it found), so Ctrl-C keeps the chains' best results.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..isa import Insn
from ..verifier.window import ExitTarget
from .cost import LatencyModel, latency_cost, size_cost
from .rewrite import KnownBits, Rewrite
from .search import SearchParams, SearchTask, search
from .smt.equiv import Proof, prove_equivalent

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


@dataclass(frozen=True)
class Found:
    job: WindowJob
    best: tuple[Insn, ...]
    cost: float
    original_cost: float
    chain: int


@dataclass(frozen=True)
class _Batch:
    jobs: tuple[WindowJob, ...]
    seconds_each: float
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


def _run_batch(batch: _Batch, stop: Callable[[], bool]) -> list[Found]:
    cost = _cost_function(batch.cost)
    params = CHAIN_PARAMS[batch.chain % len(CHAIN_PARAMS)]
    found: list[Found] = []
    for n, job in enumerate(batch.jobs):
        if stop():
            break
        live_out = dict(job.live_out)
        assumes = dict(job.assumes)

        def prove(candidate: tuple[Insn, ...], job=job, live_out=live_out, assumes=assumes) -> Proof:
            return prove_equivalent(job.window, candidate, live_out, assumes, contexts=job.contexts,
                                    regions=dict(job.regions), timeout_ms=batch.timeout_ms)

        task = SearchTask(job.window, job.live_in, live_out, assumes, batch.prog_type)
        result = search(task, budget=batch.seconds_each, seed=batch.seed * 7919 + job.start * 31 + n,
                        prove=prove, cost=cost, params=params, stop=stop)
        if result.best is not None and result.best_cost < result.original_cost:
            found.append(Found(job, tuple(result.best), result.best_cost, result.original_cost, batch.chain))
    return found


# ---- worker processes ------------------------------------------------------------------------------------------

_STOP = None


def _init_worker(event) -> None:
    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = event


def _worker(batch: _Batch) -> list[Found]:
    return _run_batch(batch, _STOP.is_set)


def run_search(jobs: Sequence[WindowJob], *, seconds: float, workers: int, seed: int, prog_type: str,
               cost: str, timeout_ms: int, stop: Callable[[], bool]) -> list[Found]:
    """Search every window of `jobs` within `seconds` of wall time on `workers` processes (1: here)."""
    if not jobs or seconds <= 0:
        return []
    workers = max(1, min(workers, len(jobs)))
    shares = [tuple(jobs[k::workers]) for k in range(workers)]
    batches = [_Batch(share, seconds / len(share), seed, k, prog_type, cost, timeout_ms) for k, share in
               enumerate(shares)]
    if workers == 1:
        deadline = time.monotonic() + seconds
        return _run_batch(batches[0], lambda: stop() or time.monotonic() >= deadline)
    context = multiprocessing.get_context("spawn")
    event = context.Event()
    with context.Pool(workers, initializer=_init_worker, initargs=(event,)) as pool:
        pending = [pool.apply_async(_worker, (batch,)) for batch in batches]
        deadline = time.monotonic() + seconds + 5.0  # the workers' own clocks end them; this is a backstop
        while not all(p.ready() for p in pending):
            if stop() or time.monotonic() >= deadline:
                event.set()
            time.sleep(0.05)
        found: list[Found] = []
        for p in pending:
            found.extend(p.get())
    return found


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


__all__ = ["CHAIN_PARAMS", "Found", "WindowJob", "rewrites_of", "run_search"]
