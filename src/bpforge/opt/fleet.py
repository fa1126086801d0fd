"""`bpforge optimize-many`: every program of every object of a fleet optimized in turn, one rule store
shared by all, the outputs mirrored under OUTDIR, resumable after the run was stopped or killed.

The fleet is a directory (searched recursively for ELF objects `*.o` and K2 programs `*.insns`; nothing
else is read) or a manifest: a text file naming one program file per line, relative to the manifest's
directory, optionally followed by the sections or functions to optimize (default: every program) and by
`type=NAME` for a file that does not say its program type (raw code, K2's memory-input programs), with `#`
comments and blank lines. Each object's programs are the loader's (`LoadedProgram.programs`, as `bpforge
info` lists them); the output is OUTDIR/<its path under the directory or manifest>, in its own format.

Programs of one object are chained: after one is optimized and the object written, the next is loaded from
that partly optimized output, so the final object holds every program optimized. Each program gets the
whole budget of `OptimizeOptions`; all of them read and extend the same rule store (the default store of
`bpforge rules` unless one is named), so what one program taught the store helps the next.

Resuming (`fleet_state`): a program recorded done against the input's present sha256 is not run again (its
row comes from the state, `earlier`); an object some of whose programs are done continues from its output;
an input that changed starts over. A program stopped through `stop` keeps its best version in the output
and is run again (from there) next time. A program that cannot be loaded, written back or optimized (bad
input, the verifiers reject even the original) is a failed row with the reason; the fleet goes on.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BpforgeError
from ..files import read_input, write_atomic
from ..formats import k2_paths, load_program
from ..formats.k2 import INSNS_SUFFIXES
from ..formats.loader import LoadedProgram
from ..isa.progtypes import check_prog_type
from .backends import Backend, make_backend
from .fleet_report import DONE, FAILED, INTERRUPTED, FleetRow, FleetSummary
from .fleet_state import FleetState
from .optimize import OptimizeOptions
from .output import default_format, original_insns, write_optimized
from .report import OptimizeReport
from .run import check_options, optimize_loaded
from .store import RuleStore, default_path
from .track import Transformation

FLEET_SUFFIXES = (".o", *INSNS_SUFFIXES)  # what a directory's fleet is made of
FLEET_KINDS = ("elf", "k2")  # the formats written back whole, every program in place

# (program i of n, counted from 1; "object:program"; phase; best slots so far, None before it is known)
FleetProgress = Callable[[int, int, str, str, int | None], None]


@dataclass(frozen=True)
class FleetEntry:
    """One program file of the fleet."""

    path: Path  # as found or named (relative to the working directory, or absolute)
    relative: str  # its path under the fleet's directory or manifest: where its output goes under OUTDIR
    wanted: tuple[str, ...] = ()  # a manifest line's sections or functions (default: every program)
    line: int | None = None  # of the manifest naming it
    prog_type: str | None = None  # a manifest line's `type=NAME`: for files that do not say (raw, K2's mem input)


@dataclass(frozen=True)
class Fleet:
    source: Path  # the directory or the manifest
    root: Path  # the directory, or the manifest's
    entries: tuple[FleetEntry, ...]

    @property
    def manifest(self) -> Path | None:
        return None if self.source == self.root else self.source


def discover(source: str | Path, *, outdir: str | Path | None = None) -> Fleet:
    """The fleet of a directory or a manifest (module doc). `outdir`: where the outputs go, which must not
    be the fleet's own directory and whose files are not part of the fleet. BpforgeError for a missing
    source, a bad manifest line (naming the manifest and line), such an outdir or an empty fleet."""
    source = Path(source)
    if not source.exists():
        raise BpforgeError("no such directory or manifest", file=str(source))
    root = source if source.is_dir() else source.parent
    if outdir is not None and Path(outdir).resolve() == root.resolve():
        raise BpforgeError("the output directory is the fleet's own: the outputs would replace the inputs",
                           file=str(outdir))
    if source.is_dir():
        fleet = Fleet(source, root, tuple(_directory(source, outdir)))
    else:
        fleet = Fleet(source, root, tuple(_manifest(source)))
    if not fleet.entries:
        what = "ELF objects (*.o) or K2 programs (*.insns) under it" if source.is_dir() else "program files"
        raise BpforgeError(f"the fleet is empty: no {what}", file=str(source))
    return fleet


def _directory(root: Path, exclude: str | Path | None) -> list[FleetEntry]:
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in root.rglob("*"):
        if path.suffix not in FLEET_SUFFIXES or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(FleetEntry(path, path.relative_to(root).as_posix()))
    return sorted(found, key=lambda entry: entry.relative)


def _manifest(manifest: Path) -> list[FleetEntry]:
    where = str(manifest)
    try:
        text = read_input(manifest, what="manifest").decode("utf-8")
    except UnicodeDecodeError:
        raise BpforgeError("not a manifest (a text file naming one program file per line); give a directory "
                           "or a manifest", file=where) from None
    entries: dict[str, FleetEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise BpforgeError(f"cannot read the line ({err})", file=where, line=number) from None
        if not words:
            continue
        path = manifest.parent / words[0]  # an absolute name stays itself
        if not path.is_file():
            raise BpforgeError(f"{words[0]}: no such file", file=where, line=number)
        relative = Path(os.path.relpath(path, manifest.parent)).as_posix()
        if relative.startswith("../"):
            raise BpforgeError(f"{words[0]} is outside the manifest's directory, which the outputs mirror",
                               file=where, line=number)
        if relative in entries:
            raise BpforgeError(f"{words[0]} is listed already, on line {entries[relative].line}", file=where,
                               line=number)
        types = [w.removeprefix("type=") for w in words[1:] if w.startswith("type=")]
        try:
            prog_type = check_prog_type(types[-1]) if types else None
        except BpforgeError as err:
            raise BpforgeError(err.message, file=where, line=number) from None
        wanted = tuple(w for w in words[1:] if not w.startswith("type="))
        entries[relative] = FleetEntry(path, relative, wanted, number, prog_type)
    return list(entries.values())


# ---- the plan: every object read once, its programs listed -------------------------------------------------

@dataclass(frozen=True)
class ObjectPlan:
    entry: FleetEntry
    programs: tuple[str, ...] = ()  # names, in the object's order, as `load_program(section=)` takes them
    digest: str = ""  # sha256 of the input (a K2 program's companions too)
    error: str | None = None  # why it cannot be read: one failed row


def plan_object(entry: FleetEntry, manifest: Path | None = None) -> ObjectPlan:
    """The programs of `entry` to optimize; a plan with `error` when it is not a readable ELF object or K2
    program. A manifest's section that names no program of it is the manifest's mistake (BpforgeError)."""
    try:
        # linking is each program's own business, below
        loaded = load_program(entry.path, link=False, prog_type=entry.prog_type)
        if loaded.kind not in FLEET_KINDS:
            raise BpforgeError(f"not an ELF object or a K2 program (read as {loaded.kind}); optimize it alone "
                               "with bpforge optimize", file=str(entry.path))
        digest = _digest(loaded)
    except BpforgeError as err:
        return ObjectPlan(entry, error=str(err))
    programs = [(p.name, p.section) for p in loaded.programs]
    for wanted in entry.wanted:
        if not any(wanted in (name, section) for name, section in programs):
            names = ", ".join(f"{name} ({section})" if section else name for name, section in programs)
            raise BpforgeError(f"{entry.relative} has no program or section named '{wanted}' (programs: {names})",
                               file=str(manifest), line=entry.line)
    chosen = [name for name, section in programs if not entry.wanted or {name, section} & set(entry.wanted)]
    return ObjectPlan(entry, tuple(chosen), digest)


def _digest(loaded: LoadedProgram) -> str:
    files = [p for p in k2_paths(loaded.filename) if p.exists()] if loaded.kind == "k2" else [Path(loaded.filename)]
    digest = hashlib.sha256()
    for path in files:
        data = read_input(path)
        digest.update(f"{path.suffix}:{len(data)}:".encode() + data)
    return digest.hexdigest()


# ---- the run -----------------------------------------------------------------------------------------------

@dataclass
class _Counter:
    """Numbers the programs for the progress callback."""

    total: int
    progress: FleetProgress | None
    index: int = 0
    label: str = ""

    def next(self, label: str) -> None:
        self.index += 1
        self.label = label

    def tell(self, phase: str, best: int | None = None) -> None:
        if self.progress is not None:
            self.progress(self.index, self.total, self.label, phase, best)


def optimize_fleet(source: str | Path, outdir: str | Path, options: OptimizeOptions = OptimizeOptions(), *,
                   progress: FleetProgress | None = None, stop: Callable[[], bool] | None = None) -> FleetSummary:
    """Optimize every program of the fleet `source` into `outdir` (module doc), each with `options`;
    `options.rules_store` None means the default store (`store.default_path`). `stop()` true ends the
    program being optimized with its best version and leaves the rest for the next run. BpforgeError for
    bad usage (the fleet, the options, the store, the state); a program's own trouble is a failed row."""
    check_options(options)
    outdir = Path(outdir)
    fleet = discover(source, outdir=outdir)
    plans = [plan_object(entry, fleet.manifest) for entry in fleet.entries]
    store = options.rules_store or str(default_path())
    with RuleStore(store):  # opened (and seeded) once up front: an unusable store is bad usage, not a failed row
        pass
    options = replace(options, rules_store=store)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BpforgeError(f"cannot make the output directory: {err.strerror or err}", file=str(outdir)) from None
    state = FleetState.read(outdir)
    summary = FleetSummary(str(source), str(outdir), str(state.path), store)
    counter = _Counter(sum(max(1, len(plan.programs)) for plan in plans), progress)
    backend = make_backend(options.jobs, options.ray) if options.searches else None
    try:  # one backend for the whole fleet: a Ray cluster is joined once, worker processes started once
        for plan in plans:
            _run_object(plan, outdir, state, options, summary, counter, stop, backend)
    finally:
        if backend is not None:
            backend.close()
    return summary


def _run_object(plan: ObjectPlan, outdir: Path, state: FleetState, options: OptimizeOptions,
                summary: FleetSummary, counter: _Counter, stop: Callable[[], bool] | None,
                backend: Backend | None) -> None:
    obj = plan.entry.relative
    if plan.error is not None:
        counter.next(obj)
        counter.tell(FAILED)
        summary.rows.append(FleetRow.failed(obj, None, plan.error))
        return
    output = outdir / obj
    if not output.exists():
        state.forget(obj)  # what it says was done is not in any output any more
    recorded = state.rows(obj, plan.digest)
    source = output if recorded else plan.entry.path  # go on from the partly optimized object
    for name in plan.programs:
        counter.next(f"{obj}:{name}")
        previous = recorded.get(name)
        if previous is not None and previous.status == DONE:
            counter.tell("done earlier", previous.after)
            summary.rows.append(replace(previous, earlier=True))
            continue
        if stop is not None and stop():
            summary.pending.append((obj, name))
            continue
        counter.tell("loading")
        checkpoint = state.checkpoint_path(obj, name)  # a program killed mid-way goes on from where it was
        row, wrote = _run_program(plan, name, source, output, replace(options, checkpoint=str(checkpoint)), counter,
                                  stop, backend)
        if wrote:
            source = output
            if previous is not None and previous.status == INTERRUPTED:
                row = row.continuing(previous)
        state.record(obj, plan.digest, row)  # after the output: a row called done has its result written
        if row.status != INTERRUPTED:
            checkpoint.unlink(missing_ok=True)
        counter.tell(row.status, row.after)
        summary.rows.append(row)


def _run_program(plan: ObjectPlan, name: str, source: Path, output: Path, options: OptimizeOptions,
                 counter: _Counter, stop: Callable[[], bool] | None,
                 backend: Backend | None) -> tuple[FleetRow, bool]:
    """Optimize program `name` of `source` and write the object to `output`: its row, and whether the
    output was written."""
    obj = plan.entry.relative
    loaded = None
    try:
        loaded = load_program(source, section=name, prog_type=plan.entry.prog_type)
        unwritable = _cannot_write_back(loaded)
        if unwritable is not None:
            return FleetRow.failed(obj, name, f"not optimized: {unwritable}", loaded.prog_type), False
        report = optimize_loaded(loaded, options, progress=lambda phase, best, seconds: counter.tell(phase, best),
                                 stop=stop, backend=backend)
        data = write_optimized(loaded, report.outcome.transformation, default_format(loaded))
        output.parent.mkdir(parents=True, exist_ok=True)
        if loaded.kind == "k2":  # the output loads only with its .maps and .desc beside it
            _copy_companions(plan.entry.path, output)
        write_atomic(output, data)
    except BpforgeError as err:
        return FleetRow.failed(obj, name, str(err), None if loaded is None else loaded.prog_type), False
    except OSError as err:  # making the output's directory
        return FleetRow.failed(obj, name, f"{err.filename or output}: {err.strerror or err}"), False
    refused = _refused(report)
    cut_short = report.outcome.interrupted or (stop is not None and stop())
    status = FAILED if refused else INTERRUPTED if cut_short else DONE
    return FleetRow.of(obj, name, report, status=status, reason=refused), True


def _cannot_write_back(loaded: LoadedProgram) -> str | None:
    """Why an optimized version of the program could not be written back into its object (the ELF writer
    edits a section that holds this one program), found by writing it unchanged: before the budget is spent."""
    try:
        write_optimized(loaded, Transformation.start(original_insns(loaded)), default_format(loaded))
    except BpforgeError as err:
        return err.message
    return None


def _refused(report: OptimizeReport) -> str | None:
    """Why the program is a failure though the optimizer ran: the verifiers reject even the original."""
    verdicts = report.outcome.verdicts
    if verdicts is None:
        return None
    if verdicts.kernel is False:  # the optimizer falls back until the kernel accepts: here not even the original
        return f"the kernel rejects the original: {verdicts.kernel_message}"
    if verdicts.ours is False and verdicts.kernel is not True:
        return f"our verifier rejects the original and the kernel could not be asked: {verdicts.ours_message}"
    return None


def _copy_companions(insns: Path, output: Path) -> None:
    for companion, target in zip(k2_paths(insns)[1:], k2_paths(output)[1:]):
        if companion.exists():
            write_atomic(target, read_input(companion, what="K2 companion file"))


__all__ = ["FLEET_KINDS", "FLEET_SUFFIXES", "Fleet", "FleetEntry", "FleetProgress", "ObjectPlan", "discover",
           "optimize_fleet", "plan_object"]
