"""The optimizer's pipeline: rule passes to a fixpoint, then stochastic search over windows, every change
proved and gated, the best accepted program kept.

Each round asks every pass (`passes.PASSES`) for rewrites of the current program, proves them
(`prove.prove_rewrite`), takes a non-overlapping set of proved ones that do not make the program costlier,
and applies them as one batch when our verifier (and, if asked per batch, the kernel) accepts the result;
when the batch is refused, the rewrites are tried one at a time and only those accepted stay. The search
(`search`) then spends what is left of the budget on windows chosen from the CFG.

The program only ever moves from one accepted version to the next, so stopping at any point (the budget,
Ctrl-C through `stop`) leaves the best program found so far, and one that cannot be improved comes back
unchanged. The kernel has the last word: `finish` loads the result, and when the kernel refuses it,
drops changes (latest first) until it accepts, and says so.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BpforgeError
from ..isa import Insn, slot_count, slot_starts
from ..isa.disasm import format_insn
from ..verifier.window import window_of
from . import checkpoint
from .backends import Backend, Here, make_backend
from .checkpoint import EVERY_SECONDS, Batch, program_key
from .cost import LatencyModel, latency_cost
from .gate import Subject, Verdicts
from .passes import PASSES, ProgramView, unreachable
from .prove import ProofCache, prove_rewrite
from .rewrite import KnownBits, Rewrite
from .rules import Rule, RuleBook, canonical, made_by_rule, prove_rule
from .searching import WindowJob, rewrites_of, run_search, window_jobs
from .smt.equiv import PROVED
from .store import RuleStore, status_of
from .track import Transformation

MAX_ROUNDS = 64
FINISH_RESERVE = 0.05  # of the budget, kept for the kernel's verdict at the end
WINDOW_SECONDS = (0.5, 8.0)  # the search time one window gets in a round, at least and at most
ROUND_SECONDS = 180.0  # of wall time, at most, for one round of search


@dataclass(frozen=True)
class OptimizeOptions:
    budget: float | None = 60.0  # seconds for the whole run (None: passes to a fixpoint, no search)
    cost: str = "size"  # "size" (slots) or "latency"
    jobs: int = 1
    seed: int = 0
    search: bool = True
    kernel: bool = True  # ask the kernel at the end (and fall back if it refuses)
    timeout_ms: int = 2000  # per solver query
    rules_store: str | None = None  # a rule store file (`store.RuleStore`) to read the rules from and extend
    ray: str | None = None  # search on this Ray cluster ("auto" or an address) instead of `jobs` local processes
    checkpoint: str | None = None  # a file to save the run's state to and resume it from (`checkpoint`)
    checkpoint_every: float = EVERY_SECONDS

    @property
    def searches(self) -> bool:
        """Whether the run has a search phase (and so needs a backend): asked for, and a budget to spend."""
        return self.search and self.budget is not None


@dataclass(frozen=True)
class Change:
    """One applied rewrite: where (slots of the program as it was then), what it replaced, why, its proof."""

    round: int
    start: int
    before: tuple[Insn, ...]
    after: tuple[Insn, ...]
    why: str
    proof: str  # "proved"
    seconds: float  # when it was applied, since the run began
    assumes: tuple[tuple[int, KnownBits], ...] = ()

    @property
    def saved(self) -> int:
        return slot_count(self.before) - slot_count(self.after)


@dataclass
class Outcome:
    """What a run did: the original and final programs, every change, the verifiers' last word."""

    subject: Subject
    original: list[Insn]
    transformation: Transformation
    changes: list[Change] = field(default_factory=list)
    verdicts: Verdicts | None = None
    notes: list[str] = field(default_factory=list)  # fallbacks and what was not done, in words
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (seconds, slots) at each improvement
    history: list[tuple[int, Transformation]] = field(default_factory=list)  # (changes so far, program) per step
    batches: list[Batch] = field(default_factory=list)  # the rewrites of each step, for a checkpoint
    proofs: int = 0
    proof_cache_hits: int = 0
    units: int = 0  # search units (one chain over one window) that ran to their end
    chain_seconds: float = 0.0  # the time their chains ran, summed: the search's work
    lost: list[str] = field(default_factory=list)  # why, for each search unit whose worker died
    searched_on: str | None = None  # the backend's description, when the search ran
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def insns(self) -> list[Insn]:
        return self.transformation.insns

    @property
    def before(self) -> int:
        return slot_count(self.original)

    @property
    def after(self) -> int:
        return slot_count(self.insns)

    @property
    def time_to_best(self) -> float:
        return self.timeline[-1][0] if self.timeline else 0.0


Progress = Callable[[str, int, float], None]  # (phase, best slots so far, seconds)


@dataclass(eq=False)
class _Run:
    subject: Subject
    options: OptimizeOptions
    progress: Progress | None
    stop: Callable[[], bool] | None
    rules: RuleBook
    model: LatencyModel | None = None
    ours_decides: bool = True  # our verifier accepted the original, so its verdicts gate the changes
    began: float = field(default_factory=time.monotonic)
    cache: ProofCache = field(default_factory=ProofCache)
    backend: Backend = field(default_factory=Here)
    spent: dict[str, float] = field(default_factory=dict)  # window key -> seconds the search spent on it
    saved_at: float = 0.0  # elapsed seconds at the last checkpoint

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def out_of_time(self) -> bool:
        budget = self.options.budget
        return (self.stop is not None and self.stop()) or (budget is not None and self.elapsed() >= budget)

    def latency_model(self) -> LatencyModel:
        if self.model is None:
            self.model = LatencyModel.default()
        return self.model

    def editable(self, t: Transformation) -> frozenset[int] | None:
        """The slots of `t` a rewrite may touch: those that came from editable slots of the original."""
        allowed = self.subject.editable
        if allowed is None:
            return None
        old_slots = slot_starts(self.subject.insns)
        out = set()
        for slot, insn, origin in zip(slot_starts(t.insns), t.insns, t.origins):
            if origin is None or old_slots[origin] in allowed:
                out.update(range(slot, slot + insn.slots))
        return frozenset(out)

    def tell(self, phase: str, t: Transformation) -> None:
        if self.progress is not None:
            self.progress(phase, slot_count(t.insns), self.elapsed())


def optimize_subject(subject: Subject, options: OptimizeOptions = OptimizeOptions(), *,
                     rules: RuleBook | None = None, progress: Progress | None = None,
                     stop: Callable[[], bool] | None = None, backend: Backend | None = None) -> Outcome:
    """Optimize `subject`; see the module doc. `rules` (default: the store's when `options.rules_store`
    names one, else the shipped ones) are tried before the passes each round; what the run proves is
    added to them (`RuleBook.learn`) and, with a store, to the store, with the hits of the rules that fired.
    The search runs on `backend` (default: the one `options.jobs` and `options.ray` ask for, made here and
    closed at the end; a caller optimizing many programs passes its own and keeps it open)."""
    store = options.rules_store if rules is None else None
    if store is not None:
        with RuleStore(store) as opened:
            rules = opened.book()
    owned = backend is None and options.searches
    if owned:
        backend = make_backend(options.jobs, options.ray)
    run = _Run(subject, options, progress, stop, RuleBook.shipped() if rules is None else rules)
    if backend is not None:
        run.backend = backend
    known = set(run.rules.all())
    try:
        outcome = _optimize(run)
    finally:
        if owned:
            backend.close()
    if store is not None:
        _keep(store, run, outcome, known)
    return outcome


def _optimize(run: _Run) -> Outcome:
    subject, options = run.subject, run.options
    start = Transformation.start(subject.insns)
    outcome = Outcome(subject, list(subject.insns), start)
    outcome.timeline.append((0.0, slot_count(start.insns)))
    baseline = subject.judge(start, kernel=False)
    if baseline.ours is not True:
        theirs, why = subject.kernel(start)
        if theirs is not True:
            outcome.notes.append(f"neither verifier accepts the original (ours: {baseline.ours_message or 'no verdict'};"
                                 f" the kernel: {why or 'no verdict'}), so no change could be checked: returned "
                                 "unchanged")
            outcome.verdicts = Verdicts(baseline.ours, theirs, baseline.ours_message, why)
            outcome.seconds = run.elapsed()
            return outcome
        run.ours_decides = False
        if baseline.ours is False:
            outcome.notes.append(f"our verifier rejects the original ({baseline.ours_message}), the kernel "
                                 "accepts it: changes are gated by the kernel alone")
    if options.checkpoint is not None:
        _resume(run, outcome)
    try:
        _passes(run, outcome)
        if options.searches:
            outcome.searched_on = run.backend.where
            _search(run, outcome)
    except KeyboardInterrupt:
        outcome.interrupted = True
    outcome.interrupted = outcome.interrupted or (run.stop is not None and run.stop())
    outcome.proof_cache_hits = run.cache.hits
    if outcome.lost:
        outcome.notes.append(f"{len(outcome.lost)} window search(es) lost with their worker on {run.backend.where} "
                             f"({outcome.lost[0]}); each such window came first in the next round")
    if options.kernel:
        _finish(run, outcome)
    outcome.seconds = run.elapsed()
    _save(run, outcome, at_end=True)
    return outcome


def _checkpoint_key(run: _Run) -> str:
    return program_key(run.subject.insns, run.subject.prog_type, run.options.cost)


def _resume(run: _Run, outcome: Outcome) -> None:
    """Continue the run `options.checkpoint` saved, if it is of this program: its batches replayed, its
    clock and the search's time per window carried on. A replay our gate refuses (a checkpoint of an older
    bpforge, say) is dropped with a note and the run starts afresh."""
    saved = checkpoint.load(run.options.checkpoint, _checkpoint_key(run))
    if saved is None:
        return
    start = outcome.transformation
    try:
        for batch in saved.batches:
            t = outcome.transformation
            _record(run, outcome, t, t.apply(batch.rewrites), batch.rewrites, batch.round, now=batch.seconds)
    except (BpforgeError, ValueError) as err:
        replayed = False
        why = str(err)
    else:
        replayed = _accepted(run, outcome, outcome.transformation)
        why = "the verifier refuses the replayed program"
    if not replayed:
        outcome.changes, outcome.history, outcome.batches = [], [], []
        outcome.transformation, outcome.timeline = start, outcome.timeline[:1]
        outcome.notes.append(f"checkpoint {run.options.checkpoint} could not be replayed ({why}): started afresh")
        return
    run.began -= saved.elapsed
    run.saved_at = saved.elapsed
    run.spent.update(saved.spent)
    outcome.notes.append(f"resumed from checkpoint {run.options.checkpoint}: {len(outcome.changes)} change(s), "
                         f"{saved.elapsed:.0f} s in")


def _save(run: _Run, outcome: Outcome, *, at_end: bool = False) -> None:
    """A checkpoint, when asked for and `checkpoint_every` seconds have passed since the last (or at the end)."""
    path = run.options.checkpoint
    if path is None or (not at_end and run.elapsed() - run.saved_at < run.options.checkpoint_every):
        return
    run.saved_at = run.elapsed()
    checkpoint.save(path, _checkpoint_key(run), run.saved_at, outcome.batches, run.spent)


def _keep(path: str, run: _Run, outcome: Outcome, known: set[Rule]) -> None:
    """Into the store: the rules the run learned (proved out of context first, so the store says what they
    are worth), and a hit for every change a rule made that the result kept."""
    learned = [rule for rule in run.rules.all() if rule not in known]
    statuses = {rule: status_of(prove_rule(rule, timeout_ms=run.options.timeout_ms)) for rule in learned}
    hits: dict[tuple[str, ...], int] = {}
    for change in outcome.changes:
        if made_by_rule(change.why):
            pattern = tuple(format_insn(i) for i in canonical(change.before)[0])
            hits[pattern] = hits.get(pattern, 0) + 1
    subject = run.subject
    program = Path(subject.filename).name + (f":{subject.name}" if subject.name else "")
    with RuleStore(path) as store:
        store.add_many(learned, f"learned:{program}", statuses)
        store.record_hits(hits)


# ---- the rule passes -------------------------------------------------------------------------------------------

def _passes(run: _Run, outcome: Outcome) -> None:
    seen = {tuple(outcome.transformation.insns)}
    for round_number in range(MAX_ROUNDS):
        if run.out_of_time():
            outcome.interrupted = run.stop is not None and run.stop()
            return
        t = outcome.transformation
        proved = _proved_round(run, outcome, t)
        if not proved:
            return
        applied = _apply_gated(run, outcome, t, proved, round_number)
        if not applied or tuple(outcome.transformation.insns) in seen:
            return
        seen.add(tuple(outcome.transformation.insns))
        run.tell("passes", outcome.transformation)
        _save(run, outcome)


def _proved_round(run: _Run, outcome: Outcome, t: Transformation) -> list[Rewrite]:
    """The proved, non-overlapping rewrites the passes propose for `t`, in the order proposed."""
    insns = t.insns
    view = ProgramView(insns, run.subject.maps, run.subject.prog_type)
    sites, facts = view.sites, view.facts
    chosen: list[Rewrite] = []
    editable = run.editable(t)
    slower = _slower_test(run, insns)
    producers = [("rules", lambda view: run.rules.propose(insns)), *PASSES]
    for name, propose in producers:
        for rewrite in propose(view):
            if rewrite.saved < 0 or any(rewrite.overlaps(other) for other in chosen) or slower(rewrite):
                continue
            if editable is not None and not all(s in editable for s in range(rewrite.start, max(rewrite.end, rewrite.start + 1))):
                continue
            proof = prove_rewrite(insns, rewrite, sites=sites, facts=facts, regions=view.regions_at(rewrite.start),
                                  timeout_ms=run.options.timeout_ms, cache=run.cache)
            outcome.proofs += 1
            if proof.status == PROVED:
                chosen.append(rewrite)
            if run.out_of_time():
                return chosen
    return chosen


def _slower_test(run: _Run, insns: Sequence[Insn]) -> Callable[[Rewrite], bool]:
    """For `--cost latency`: whether a rewrite makes its window slower by the calibrated model (an atomic
    add saves slots but costs a locked instruction); for `size`, never."""
    if run.options.cost != "latency":
        return lambda rewrite: False
    model = run.latency_model()

    def slower(rewrite: Rewrite) -> bool:
        before = window_of(insns, rewrite.start, rewrite.end)
        return latency_cost(rewrite.new, model) > latency_cost(before, model)

    return slower


def _apply_gated(run: _Run, outcome: Outcome, t: Transformation, rewrites: Sequence[Rewrite],
                 round_number: int) -> bool:
    """Apply `rewrites` (all of `t`) if our verifier accepts the result; else halves of them, recursively,
    the later slots first (so the earlier ones' slots stay right), each part kept when accepted: a few bad
    rewrites among many cost a few verifier runs each, not one run per rewrite. Whether anything changed."""
    if _try(run, outcome, t, rewrites, round_number) is not None:
        return True
    changed, _ = _halves(run, outcome, sorted(rewrites, key=lambda r: r.start, reverse=True), round_number)
    return changed


def _halves(run: _Run, outcome: Outcome, group: list[Rewrite], round_number: int) -> tuple[bool, bool]:
    """(whether anything changed, whether the slots of rewrites below `group` may have moved): then the
    caller stops, and the next round proposes again what is left."""
    changed = False
    half = (len(group) + 1) // 2
    parts = [group[:half], group[half:]] if len(group) > 1 else []
    for n, part in enumerate(parts):
        if not part or run.out_of_time():
            break
        pruned_from = _try(run, outcome, outcome.transformation, part, round_number)
        if pruned_from is None:
            part_changed, moved = _halves(run, outcome, part, round_number)
            changed |= part_changed
        else:
            changed, moved = True, pruned_from < part[-1].start
        if moved:
            return changed, True
    return changed, False


def _try(run: _Run, outcome: Outcome, base: Transformation, rewrites: Sequence[Rewrite],
         round_number: int) -> float | None:
    """`rewrites` applied to `base`, with the code they leave unreachable removed at once (the kernel refuses
    unreachable instructions, so the two can only be judged together); kept if the gate accepts. None when
    not kept, else the first slot the removal of unreachable code touched (infinity: none)."""
    try:
        step = base.apply(rewrites)
    except BpforgeError:  # a jump the layout cannot encode: not this batch
        return None
    pruned = unreachable.propose(ProgramView(step.insns))
    final = step.apply(pruned) if pruned else step
    if not _accepted(run, outcome, final):
        return None
    _record(run, outcome, base, step, rewrites, round_number)
    if pruned:
        _record(run, outcome, step, final, pruned, round_number)
    return min((r.start for r in pruned), default=float("inf"))


def _accepted(run: _Run, outcome: Outcome, t: Transformation) -> bool:
    if run.ours_decides:
        ours, _ = run.subject.ours(t)
        if ours is not None:
            return ours
    theirs, _ = run.subject.kernel(t)  # our verifier cannot say: the kernel decides, or nothing changes
    return theirs is True


def _record(run: _Run, outcome: Outcome, before: Transformation, after: Transformation,
            rewrites: Sequence[Rewrite], round_number: int, now: float | None = None) -> None:
    now = run.elapsed() if now is None else now
    for rewrite in rewrites:
        old = tuple(window_of(before.insns, rewrite.start, rewrite.end))
        outcome.changes.append(Change(round_number, rewrite.start, old, tuple(rewrite.new), rewrite.why, PROVED, now,
                                      tuple(sorted(rewrite.assumes.items()))))
        if rewrite.why.startswith("search"):  # what the passes find they find again; the search's is worth keeping
            run.rules.learn(old, rewrite.new, rewrite.why, dict(rewrite.assumes))
    outcome.transformation = after
    outcome.history.append((len(outcome.changes), after))
    outcome.batches.append(Batch(round_number, now, tuple(rewrites)))
    slots = slot_count(after.insns)
    if slots < outcome.timeline[-1][1]:
        outcome.timeline.append((now, slots))


# ---- the search -----------------------------------------------------------------------------------------------

def _search(run: _Run, outcome: Outcome) -> None:
    """Rounds of search over the current program's windows until the budget is spent: the windows searched
    least so far first, each improvement gated like a pass's, the passes run again after every change."""
    spent = run.spent
    round_number = 1000  # rounds of the search are numbered apart from the passes'
    while True:
        remaining = run.options.budget * (1 - FINISH_RESERVE) - run.elapsed()
        if remaining < WINDOW_SECONDS[0] or run.out_of_time():
            return
        t = outcome.transformation
        jobs = window_jobs(ProgramView(t.insns, run.subject.maps, run.subject.prog_type), run.editable(t))
        if not jobs:
            return
        jobs.sort(key=lambda job: spent.get(_job_key(job), 0.0))
        least = spent.get(_job_key(jobs[0]), 0.0)
        jobs = [job for job in jobs if spent.get(_job_key(job), 0.0) == least]
        workers = run.backend.workers
        each = min(max(remaining * workers / len(jobs), WINDOW_SECONDS[0]), WINDOW_SECONDS[1])
        jobs = jobs[:max(1, int(min(remaining, _round_seconds(run)) * workers / each))]
        seconds = min(remaining, each * len(jobs) / workers)
        run.tell("search", t)
        searched = run_search(jobs, seconds=seconds, backend=run.backend, seed=run.options.seed + round_number,
                              prog_type=run.subject.prog_type, cost=run.options.cost,
                              timeout_ms=run.options.timeout_ms, stop=run.out_of_time, on_result=_streamed(run, t))
        lost = {_job_key(job) for job, _ in searched.lost}
        for job in jobs:
            if _job_key(job) not in lost:  # a window whose worker died is searched again first
                spent[_job_key(job)] = spent.get(_job_key(job), 0.0) + each
        outcome.lost.extend(why for _, why in searched.lost)
        outcome.units += len(jobs) - len(searched.lost)
        outcome.chain_seconds += searched.seconds
        rewrites = rewrites_of(searched.found)
        outcome.proofs += len(searched.found)
        if rewrites and _apply_gated(run, outcome, t, rewrites, round_number):
            run.tell("search", outcome.transformation)
            _passes(run, outcome)
        _save(run, outcome)
        round_number += 1


def _round_seconds(run: _Run) -> float:
    """How long one round of search may last: what it finds is merged, gated and checkpointed only at the
    round's end, so a large program's hundreds of windows are searched over several rounds, not one."""
    if run.options.checkpoint is None:
        return ROUND_SECONDS
    return min(ROUND_SECONDS, run.options.checkpoint_every)


def _streamed(run: _Run, t: Transformation) -> Callable[[int, int, object], None]:
    """The progress line while a round's units come back: how many, and the slots the improvements among
    them would save (an estimate until they are gated)."""
    gain = 0.0

    def on_result(done: int, total: int, result) -> None:
        nonlocal gain
        if result is not None:
            gain += result.original_cost - result.cost
        if run.progress is not None:
            run.progress(f"search {done}/{total}" + (f", {gain:g} to gain" if gain else ""), slot_count(t.insns),
                         run.elapsed())

    return on_result


def _job_key(job: WindowJob) -> str:
    """A window as the search sees it (its code, what is live after it, what it may assume), as a short
    string a checkpoint can keep."""
    return hashlib.sha1(repr((job.window, job.live_out, job.assumes)).encode()).hexdigest()


# ---- the kernel's last word ------------------------------------------------------------------------------------

def _finish(run: _Run, outcome: Outcome) -> None:
    """Ask both verifiers about the result; when the kernel refuses it, undo changes, latest first, until
    it accepts (the original, at worst)."""
    t = outcome.transformation
    verdicts = run.subject.judge(t)
    if verdicts.kernel is not False or not outcome.changes:
        outcome.verdicts = verdicts
        return
    refused = verdicts.kernel_message
    history = list(enumerate(outcome.history[:-1], 1))
    while True:
        steps, (kept, candidate) = history.pop() if history else (0, (0, Transformation.start(outcome.original)))
        verdicts = run.subject.judge(candidate)
        if verdicts.kernel is not False or not kept:
            outcome.notes.append(f"the kernel refused the optimized program ({refused}); fell back to the best "
                                 f"version it accepts: {len(outcome.changes) - kept} change(s) undone")
            outcome.changes = outcome.changes[:kept]
            outcome.history, outcome.batches = outcome.history[:steps], outcome.batches[:steps]
            outcome.transformation = candidate
            outcome.verdicts = verdicts
            return


__all__ = ["Change", "OptimizeOptions", "Outcome", "optimize_subject"]
