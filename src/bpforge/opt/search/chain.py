"""The Metropolis-Hastings chain of one window search (K2's, without its hand-picked windows).

The chain starts at the original window. Each step proposes a move (`moves.propose`), scores the proposal
(`error_weight` x its error on the tests + its performance `cost`) and accepts it with probability
min(1, exp(-beta x delta)). A proposal with no error that is cheaper than the best proved so far goes to
a cheap filter (`reads_only_defined`), `safe` (if given) and then to `prove`; a refutation's counterexample becomes a test at once (first in the
order, where it rejects the most neighbours of the refuted candidate). Only what `prove` proved is ever
returned.

The error of a candidate is computed in test order and stops at the first failing test: the tests it did
not pass plus the bits that test shows wrong (scaled so a test counts about one slot). That keeps most
proposals to one short run (they fail the all-zero or all-ones state), and still ranks candidates by how
far through the tests they get.

Reproducible: the chain's randomness comes from `seed` alone, so with `SearchParams.max_iterations` bounding
the steps (rather than the clock) the same seed gives the same result.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import BpforgeError
from ...analysis.effects import effects_of
from ...isa import Insn
from ...isa.ops import decode_ops
from ...verifier.window import ExitTarget
from ..cost import size_cost as slots
from ..rewrite import KnownBits
from ..smt.equiv import PROVED, REFUTED, Proof
from .cells import Cells, cells_of, compact
from .evaluate import Judge, Outcome, TestCase, Unsearchable, compile_cell, run
from .inputs import from_counterexample, random_tests
from .moves import MoveWeights, Pool, propose

_CACHE_LIMIT = 200_000  # candidates whose score is remembered (cleared when full or when the tests change)


@dataclass(frozen=True)
class SearchTask:
    window: tuple[Insn, ...]  # the original window (no calls, acyclic, forward jumps)
    live_in: int  # registers/stack slots live at entry (liveness bitmask)
    live_out: Mapping[ExitTarget, int]  # what is live at each exit the original window has
    assumes: Mapping[int, KnownBits]  # facts at entry (registers), true on every path
    prog_type: str = "xdp"


@dataclass(frozen=True)
class SearchParams:
    beta: float = 1.0  # acceptance: min(1, exp(-beta * delta cost))
    moves: MoveWeights = field(default_factory=MoveWeights)
    max_window: int = 16  # windows of more instructions are not searched
    error_weight: float = 1.0  # cost of one failed test (bits on the failing one add up to one more)
    tests: int = 16  # random tests at the start (counterexamples come on top)
    max_tests: int = 64  # counterexamples stop being added beyond this many tests
    max_iterations: int | None = None  # steps of the chain (None: until the budget ends)
    restart_after: int = 20_000  # steps without a new lowest cost before the chain restarts at the best


@dataclass
class SearchResult:
    best: tuple[Insn, ...] | None  # the cheapest candidate `prove` proved (None: nothing better)
    best_cost: float
    original_cost: float
    evaluated: int = 0
    accepted: int = 0
    proofs: int = 0
    counterexamples: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (seconds, best proved cost)
    seconds: float = 0.0
    tests: int = 0  # tests at the end (random + counterexamples)
    reason: str = ""  # why the window was not searched, if it was not


class _Scorer:
    """Errors of candidates on the current tests, with compiled cells and scores cached."""

    def __init__(self, original: Cells, judge: Judge, tests: list[TestCase]) -> None:
        self.judge = judge
        self.functions: dict = {}
        self.original = self.compiled(original)
        self.tests: list[TestCase] = []
        self.expected: list[Outcome] = []
        self.scores: dict[Cells, float] = {}
        for test in tests:
            self.add(test)

    def compiled(self, cells: Cells) -> list:
        functions = self.functions
        out = []
        for cell in cells:
            fn = functions.get(cell)
            if fn is None:
                if len(functions) > _CACHE_LIMIT:
                    functions.clear()
                fn = functions[cell] = compile_cell(cell)
            out.append(fn)
        return out

    def add(self, test: TestCase, *, first: bool = False) -> None:
        target, regs, mem = run(self.original, test)
        outcome = self.judge.outcome(target, regs, mem)
        if first:
            self.tests.insert(0, test)
            self.expected.insert(0, outcome)
        else:
            self.tests.append(test)
            self.expected.append(outcome)
        self.scores.clear()

    def distinguishes(self, cells: Cells, test: TestCase) -> bool:
        expected = self.judge.outcome(*run(self.original, test))
        target, regs, mem = run(self.compiled(cells), test)
        return self.judge.distance(expected, target, regs, mem) > 0

    def error(self, cells: Cells) -> float:
        score = self.scores.get(cells)
        if score is not None:
            return score
        functions = self.compiled(cells)
        judge, expected = self.judge, self.expected
        score = 0.0
        count = len(self.tests)
        for k, test in enumerate(self.tests):
            target, regs, mem = run(functions, test)
            bits = judge.distance(expected[k], target, regs, mem)
            if bits:
                score = (count - k) + min(bits, 64) / 64
                break
        if len(self.scores) > _CACHE_LIMIT:
            self.scores.clear()
        self.scores[cells] = score
        return score


def reads_only_defined(candidate: Sequence[Insn], live_in: int) -> bool:
    """Whether `candidate` reads only registers live at the entry (or r10) or written before, in order:
    a candidate reading a register that holds nothing meaningful there can only be equivalent by ignoring
    its value, and the kernel refuses the read when the register was never written (R2 !read_ok). Writes
    on any path count (a cheap filter ahead of `safe`, not a proof)."""
    defined = {n for n in range(11) if live_in >> n & 1} | {10}
    for op in decode_ops(candidate):
        if op is None:
            continue
        effects = effects_of(op)
        if not effects.reads <= defined:
            return False
        defined |= effects.writes
    return True


def search(task: SearchTask, *, budget: float, seed: int, prove: Callable[[tuple[Insn, ...]], Proof],
           cost: Callable[[Sequence[Insn]], float] = slots, safe: Callable[[tuple[Insn, ...]], bool] | None = None,
           params: SearchParams = SearchParams(), stop: Callable[[], bool] | None = None) -> SearchResult:
    """Search for a cheaper window equivalent to `task.window` for `budget` seconds (see the module doc)."""
    began = time.perf_counter()
    deadline = began + budget
    original_cost = float(cost(task.window))
    result = SearchResult(None, original_cost, original_cost)
    rng = random.Random(seed)
    try:
        original = cells_of(task.window)
        if len(original) > params.max_window:
            raise Unsearchable(f"a window of {len(original)} instructions (at most {params.max_window})")
        judge = Judge(task.live_out)
        scorer = _Scorer(original, judge, random_tests(params.tests, task.assumes, rng))
    except BpforgeError as why:
        result.reason = why.message if hasattr(why, "message") else str(why)
        return result
    pool = Pool(original, task.live_in, task.live_out)
    performance: dict[Cells, float] = {}
    judged: dict[tuple[Insn, ...], str] = {tuple(task.window): PROVED}

    def perf_of(cells: Cells) -> float:
        value = performance.get(cells)
        if value is None:
            if len(performance) > _CACHE_LIMIT:
                performance.clear()
            value = performance[cells] = float(cost(compact(cells)))
        return value

    def judge_candidate(cells: Cells) -> str:
        """PROVED (now the best), "retest" (a counterexample joined the tests) or "no" (unsafe, refuted by
        a state the tests do not tell apart, unknown, or asked before)."""
        candidate = compact(cells)
        if candidate in judged:
            return "no"
        if not reads_only_defined(candidate, task.live_in):
            judged[candidate] = "reads a register the window's entry does not define"
            return "no"
        if safe is not None and not safe(candidate):
            judged[candidate] = "unsafe"
            return "no"
        proof = prove(candidate)
        result.proofs += 1
        judged[candidate] = proof.status
        if proof.status == PROVED:
            result.best, result.best_cost = candidate, perf_of(cells)
            result.history.append((time.perf_counter() - began, result.best_cost))
            return PROVED
        if proof.status == REFUTED and proof.counterexample is not None:
            result.counterexamples += 1
            test = from_counterexample(proof.counterexample, task.assumes, rng)
            # (a state the concrete runs do not tell apart: the prover models something they do not, such
            # as a context field that holds a pointer; the candidate is not asked about again anyway)
            if len(scorer.tests) < params.max_tests and scorer.distinguishes(cells, test):
                scorer.add(test, first=True)
                return "retest"
        return "no"

    current: Cells = original
    best_cells: Cells = original
    current_total = perf_of(current)
    lowest, since_lowest = current_total, 0
    weights, beta, error_weight = params.moves, params.beta, params.error_weight
    step = 0
    while params.max_iterations is None or step < params.max_iterations:
        if step & 31 == 0 and (time.perf_counter() >= deadline or (stop is not None and stop())):
            break
        step += 1
        proposal = propose(current, pool, weights, rng)
        if proposal is None:
            continue
        result.evaluated += 1
        error = scorer.error(proposal)
        perf = perf_of(proposal)
        if error == 0 and perf < result.best_cost:
            verdict = judge_candidate(proposal)
            if verdict == PROVED:
                best_cells = proposal
            elif verdict == "retest":
                error = scorer.error(proposal)
                current_total = error_weight * scorer.error(current) + perf_of(current)
            if stop is not None and stop():
                break
        total = error_weight * error + perf
        delta = total - current_total
        if delta <= 0 or rng.random() < math.exp(-beta * delta):
            current, current_total = proposal, total
            result.accepted += 1
        if current_total < lowest:
            lowest, since_lowest = current_total, 0
        else:
            since_lowest += 1
            if since_lowest >= params.restart_after:
                current = best_cells
                current_total = error_weight * scorer.error(current) + perf_of(current)
                lowest, since_lowest = current_total, 0
    result.seconds = time.perf_counter() - began
    result.tests = len(scorer.tests)
    return result


__all__ = ["SearchParams", "SearchResult", "SearchTask", "reads_only_defined", "search", "slots"]
