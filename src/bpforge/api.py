"""The public Python API: `bpforge.load(path)` reads a program file in any format the CLI takes and returns a
`Program` that runs, disassembles and describes itself, with the same results the `bpforge` command prints
(the command is a thin layer over this module). Errors are `BpforgeError`s naming the file, section and slot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BpforgeError
from .formats import LoadedProgram, load_program
from .isa import Insn
from .runner import DEFAULT_TIME_BUDGET, RunReport, run_loaded
from .views import Info, disasm_rows, disasm_text, info_of

if TYPE_CHECKING:
    from .jit.listing import JitListing
    from .offload.check import OffloadReport
    from .offload.device import DeviceRunReport
    from .kernel.info import MapEntry, MapInfo, ProgInfo
    from .opt.fleet_report import FleetSummary
    from .opt.optimize import OptimizeOptions
    from .opt.report import OptimizeReport
    from .verifier.report import VerifyReport


def load(path: str | Path, *, section: str | None = None, prog_type: str | None = None) -> Program:
    """Read a program: an ELF object, assembly text (.s/.asm), a K2 trio, a word list or raw bytecode.

    `section` picks a program of an object or assembly file by section or function name (default: the
    first); `prog_type` sets the program type (`xdp`, `sched_cls`, ..., or `mem`), else it comes from the
    section name or K2's .desc, else `xdp`."""
    # The file is read as it is: linking (an object's function + the .text subprograms it calls) happens when
    # the program is run or its `insns` are asked for, so a listing never fails on a call it cannot resolve.
    loaded = load_program(path, section=section, prog_type=prog_type, link=False)
    return Program(loaded, section_given=section is not None, type_given=prog_type is not None)


class Program:
    """A program read from a file, with the rest of that file (`loaded`: every section, map, data section)."""

    def __init__(self, loaded: LoadedProgram, *, section_given: bool = False, type_given: bool = False):
        self.loaded = loaded
        self._section_given = section_given  # disasm then lists only the chosen program's section
        self._type_given = type_given  # info then gives every program that type

    def __repr__(self) -> str:
        return f"<bpforge.Program {self.name!r} ({self.prog_type}) from {self.filename!r}>"

    @property
    def name(self) -> str | None:
        return self.loaded.name

    @property
    def section(self) -> str | None:
        """Its section (None for raw bytecode, word lists and K2 programs, which have none)."""
        return self.loaded.section

    @property
    def prog_type(self) -> str:
        return self.loaded.prog_type

    @property
    def filename(self) -> str:
        return self.loaded.filename

    @property
    def format(self) -> str:
        """How the file was read: "elf", "asm", "k2", "words" or "raw"."""
        return self.loaded.kind

    @cached_property
    def insns(self) -> list[Insn]:
        """The instructions as libbpf hands them to the kernel: for an object its function, then the .text
        subprograms it calls (relocations not applied: they need maps, which exist only in a run)."""
        obj = self.loaded.object
        if obj is None:
            return self.loaded.insns
        try:
            return list(obj.linked(self.loaded.name).insns)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def run(self, data: bytes = b"", *, engine: str = "fast", repeat: int = 1, ctx: bytes | None = None,
            preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None, dump_maps: bool = False,
            seed: int = 0, budget: int | None = None, time_budget: float | None = DEFAULT_TIME_BUDGET,
            progress: Callable[[int, int], None] | None = None, arch: str = "x86_64",
            sandbox: bool = False, blind: bool = False) -> RunReport:
        """Run the program `repeat` times on one input as BPF_PROG_TEST_RUN does, in the fast tier, the
        reference interpreter, the JIT (`engine="jit"`: native x86-64; `sandbox` checks every access, for
        programs our verifier does not accept; `blind` blinds the program's constants) or the kernel (root). The report is what `bpforge run --json` prints
        (`RunReport.as_json()`).

        `ctx`: the context bytes (xdp_md, __sk_buff, ...); `preload`: map name -> (key, value) entries to
        write before the run; `dump_maps`: list every map afterwards; `seed`: of bpf_get_prandom_u32;
        `budget`: instructions each VM run may take (default 10 M); `time_budget`: seconds after which a VM
        repeat loop stops with the runs done (`report.stopped`); `progress(done, total)`: called along it.
        Each call starts from the file's maps and data: nothing carries over from one call to the next."""
        # memoryview: any bytes-like input, and a TypeError (not a zero-filled packet) for bytes(5) or a str
        data = memoryview(data).tobytes()
        ctx = None if ctx is None else memoryview(ctx).tobytes()
        try:
            return run_loaded(self.loaded, data, engine=engine, repeat=repeat, ctx=ctx, preload=preload,
                              dump_maps=dump_maps, seed=seed, budget=budget, time_budget=time_budget,
                              progress=progress, arch=arch, sandbox=sandbox, blind=blind)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def verify(self, *, kernel: bool = False, budget: float | None = None,
               progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Our verifier's verdict, as `bpforge verify` prints it (`.text()`, `.as_json()`): `.verdict`
        "accept", "reject" (then `.explanation`: instruction, source line, reason, hint, state, path and
        failure slice) or "unknown" (something our verifier does not model yet, or `budget` seconds ran
        out; `.message` says which). `kernel`: load it into the running kernel too and keep its verdict
        (`.kernel`) beside ours; `.disagreement` names a difference. `progress(processed)` is told the
        instructions processed along the way."""
        from .verifier.report import verify_loaded  # the verifier is loaded by the first verification only

        try:
            return verify_loaded(self.loaded, kernel=kernel, budget=budget, progress=progress)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def jit(self, *, arch: str = "x86_64", sandbox: bool = False, blind: bool = False,
            output: str | Path | None = None) -> JitListing:
        """The program compiled by the JIT for `arch`, as `bpforge jit` lists it (`.text()`, `.as_json()`):
        every native instruction under the BPF instruction it came from. Verified (our verifier's facts,
        accesses unchecked) unless `sandbox`; `blind`: constants blinded (never in the code as written); `output`: write the image (raw code) and `output`.json (entry
        points, relocations, control-block layout)."""
        from . import vm
        from .jit import compile_program, plan
        from .jit.listing import listing, write_image

        try:
            facts = plan(self.loaded, sandbox=sandbox)
            program = vm.from_loaded(self.loaded)
            image = compile_program(program, facts, arch=arch, blind=blind)
            mode = "sandbox" if facts is None else "verified"
            if output is not None:
                write_image(image, str(output), mode)
            return listing(image, program.insns, mode)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def optimize(self, *, output: str | Path | None = None, fmt: str | None = None, budget: float | None = 60.0,
                 cost: str = "size", jobs: int = 1, seed: int = 0, search: bool = True, kernel: bool = True,
                 rules_store: str | Path | None = None, ray: str | None = None,
                 checkpoint: str | Path | None = None, checkpoint_every: float | None = None,
                 progress: Callable[[str, int, float], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> OptimizeReport:
        """A smaller (`cost="size"`) or faster (`"latency"`) equivalent program, as `bpforge optimize`
        makes it: rule passes, then stochastic search for `budget` seconds (`jobs` chains, `seed`); every
        change proved by SMT and gated by our verifier, the result loaded into the kernel's (`kernel`) with
        a fall-back to the best version it accepts. Written to `output` (format `fmt`: elf, raw, asm, k2;
        default the input's) when given. The report has `.before`, `.after`, `.text()`, `.as_json()`,
        `.html()`; `.outcome.insns` is the program. `rules_store`: a rule store file (`bpforge rules`) to
        read the rules from and add the learned ones and the fired rules' hits to (default: the shipped
        rules, nothing kept). `ray`: run the search on that Ray cluster ("auto" or an address) instead of
        `jobs` local processes. `checkpoint`: a file the run saves its state to every `checkpoint_every`
        seconds (default 180) and at the end, and resumes from when it holds a run of this program (with
        what is left of `budget`). `progress(phase, best_slots, seconds)`; `stop()` true ends the run early
        with the best result so far."""
        from .opt.run import optimize_loaded  # the optimizer (and z3) load on first use

        options = _optimize_options(budget=budget, cost=cost, jobs=jobs, seed=seed, search=search, kernel=kernel,
                                    rules_store=rules_store, ray=ray, checkpoint=checkpoint,
                                    checkpoint_every=checkpoint_every)
        try:
            return optimize_loaded(self.loaded, options, output=output, fmt=fmt, progress=progress, stop=stop)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def offload_check(self, device: str, *, budget: float | None = 30.0,
                      cut: Sequence[int] | None = None) -> OffloadReport:
        """Can `device` (a shipped profile's name or a profile file) run this program: the verdict
        (offloadable / partly / host only), a reason with instruction and source line for everything it
        cannot take, suggested rewrites, where each map lives (`.text()`, `.as_json()`). `budget`: seconds
        for the multi-stage split's search; `cut`: its points chosen by hand (the explicit mode)."""
        from .offload.check import check
        from .offload.profile import profile

        try:
            return check(self.loaded, profile(device), budget=budget, points=cut)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def offload_run(self, device: str, data: bytes = b"", *, ctx: bytes | None = None,
                    preload: Mapping[str, list[tuple[bytes, bytes]]] | None = None,
                    report: OffloadReport | None = None, budget: float | None = 30.0,
                    explicit: bool = False, cut: Sequence[int] | None = None) -> DeviceRunReport:
        """Run once on `device`'s emulated core (JIT for its ISA, maps placed on it): retval, packet, maps
        and the device cycles by its profile. What the host runs instead (the host profile, a packet larger
        than the device holds) runs natively here and says why. Implicit (the default), bpforge decides
        what runs where (a multi-stage split for a partly offloadable program); `explicit`, the caller
        does: the device takes the program whole or, with `cut`, split at those points, else an error."""
        from .offload.check import check
        from .offload.device import DeviceRunReport, host_reason, run_on_device
        from .offload.profile import profile

        try:
            chosen = profile(device)
            report = report or check(self.loaded, chosen, budget=budget, points=cut)  # (offload_check's, if at hand)
            if explicit and report.verdict != "offloadable" and cut is None:
                first = report.reasons[0]
                raise BpforgeError(f"explicit offload: {report.program} does not run whole on {chosen.name}: "
                                   + (f"insn {first.insn}: " if first.insn is not None else "") + first.message
                                   + " (give the split's points with --cut, or let bpforge decide: --implicit)")
            why = host_reason(chosen, data)
            if why is None:
                return run_on_device(self.loaded, chosen, data, ctx=ctx, preload=preload, report=report)
            host = run_loaded(self.loaded, data, engine="jit", ctx=ctx, preload=preload, dump_maps=True,
                              time_budget=None)
            return DeviceRunReport(chosen.name, report.verdict, "host", host.retval, host.data_out, host.maps, None,
                                   None, None, host.ns_per_run, why)
        except BpforgeError as err:
            raise err.at(file=self.filename) from None

    def _listed_sections(self) -> list:
        # Given a section, a listing shows that program's section; else every program section of the file.
        return [s for s in self.loaded.sections if not self._section_given or s.name == self.loaded.section]

    def disasm(self, *, show_bytes: bool = False) -> str:
        """The listing `bpforge disasm` prints (llvm-objdump layout, valid input to `bpforge asm`)."""
        return disasm_text(self.loaded, self._listed_sections(), show_bytes)

    def disasm_json(self) -> list[dict]:
        """One object per instruction, as `bpforge disasm --json` prints them."""
        return disasm_rows(self._listed_sections())

    def info(self) -> Info:
        """Programs with their sizes, sections, maps, relocations, license and global data of the file, as
        `bpforge info` prints them (`.text()`; `.as_json()` for `--json`)."""
        return info_of(self.loaded, self.prog_type if self._type_given else None)


def optimize(path: str | Path, *, section: str | None = None, prog_type: str | None = None,
             **options) -> OptimizeReport:
    """`load(path, ...).optimize(**options)`: see `Program.optimize`."""
    return load(path, section=section, prog_type=prog_type).optimize(**options)


def optimize_many(source: str | Path, outdir: str | Path, *,
                  progress: Callable[[int, int, str, str, int | None], None] | None = None,
                  stop: Callable[[], bool] | None = None, **options) -> FleetSummary:
    """Optimize every program of every object of a fleet, as `bpforge optimize-many` does: `source` is a
    directory (its ELF objects `*.o` and K2 programs `*.insns`, recursively) or a manifest (one program file
    per line, relative to it, optionally followed by the sections to optimize and `type=NAME`; `#`
    comments). The outputs go to `outdir` at the same relative paths, every program of an object optimized;
    a state file there lets a later call skip the programs finished already (unless their input changed),
    go on from a partly optimized object, and resume the program a killed call was in the middle of from
    its checkpoint. `options` are `Program.optimize`'s (`budget` is per program; one Ray cluster or pool of
    worker processes serves the whole fleet); `rules_store` (default: the store `bpforge rules` uses) is
    shared by every program. The summary has `.rows` (one `FleetRow` a program: before, after, changes,
    proof, kernel verdict, status, reason), `.totals()`, `.text()`, `.as_json()`. `progress(i, n, program,
    phase, best_slots)`; `stop()` true ends the program being optimized with its best result and leaves the
    rest for the next call."""
    from .opt.fleet import optimize_fleet

    return optimize_fleet(source, outdir, _optimize_options(**options), progress=progress, stop=stop)


def _optimize_options(*, budget: float | None = 60.0, cost: str = "size", jobs: int = 1, seed: int = 0,
                      search: bool = True, kernel: bool = True, rules_store: str | Path | None = None,
                      ray: str | None = None, checkpoint: str | Path | None = None,
                      checkpoint_every: float | None = None) -> OptimizeOptions:
    """The optimizer's options from the API's keywords (one list of them for `optimize` and `optimize_many`)."""
    from .opt.optimize import OptimizeOptions

    return OptimizeOptions(budget=budget, cost=cost, jobs=jobs, seed=seed, search=search, kernel=kernel,
                           rules_store=None if rules_store is None else str(rules_store), ray=ray,
                           checkpoint=None if checkpoint is None else str(checkpoint),
                           **({} if checkpoint_every is None else {"checkpoint_every": checkpoint_every}))


def devices() -> list:
    """The device profiles the package ships (`offload.profile.DeviceProfile`: name, ISA, limits, costs)."""
    from .offload.profile import all_profiles

    return all_profiles()


def kernel_programs(*, prog_id: int | None = None, pinned: str | Path | None = None, name: str | None = None,
                    code: bool = False) -> list[ProgInfo]:
    """The programs loaded in the running kernel (root), as `bpforge prog show` lists them: all, or the one
    with `prog_id`, the one pinned at `pinned`, those named `name`. `code`: with their xlated and jited
    code, function and line info and BTF, for `offload.introspect.xlated_text` / `jited_text`."""
    from .kernel.info import find_programs

    return find_programs(prog_id=prog_id, pinned=None if pinned is None else str(pinned), name=name, code=code,
                         symbols=code)


def kernel_maps(*, map_id: int | None = None, pinned: str | Path | None = None,
                name: str | None = None) -> list[MapInfo]:
    """The maps in the running kernel, as `bpforge map show` lists them (selection as for kernel_programs)."""
    from .kernel.info import find_maps

    return [info for info, _ in find_maps(map_id=map_id, pinned=None if pinned is None else str(pinned), name=name)]


def kernel_map_entries(map_id: int) -> list[MapEntry]:
    """Every element of kernel map `map_id` (`bpforge map dump id N`): key and value bytes; a per-CPU
    value holds one 8-byte-aligned slot per possible CPU."""
    from .kernel.info import find_maps

    [(_, entries)] = find_maps(map_id=map_id, entries=True)
    return entries


__all__ = ["Info", "Program", "RunReport", "devices", "kernel_map_entries", "kernel_maps", "kernel_programs", "load",
           "optimize", "optimize_many"]
