"""The `bpforge` command. Thin: parses arguments, calls the library, prints text or --json.

Exit codes: 0 ok, 1 a clean negative answer (e.g. "verifier rejects"), 2 bad input (any BpforgeError or an
unreadable file, printed as ONE line on stderr: `bpforge: <file>: section S: insn N: message`), 3 a bug.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from typer import TyperException

from . import __version__, load
from .errors import BpforgeError
from .files import read_input
from .formats import assemble_file, output_kind
from .isa.progtypes import check_prog_type
from .runner import DEFAULT_TIME_BUDGET, read_map_file

MAX_PACKET = 1 << 20  # more than any test run takes (XDP: 3,520 linear bytes and 17 fragment pages)

EXIT_REJECTED = 1
EXIT_BAD_INPUT = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT; here: stopped early, the same command again goes on

app = typer.Typer(
    name="bpforge", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="A toolchain for eBPF programs: load, verify, optimize, JIT/offload and partition.",
)

Prog = Annotated[str, typer.Argument(
    metavar="PROG", show_default=False,
    help="Program: ELF object, assembly (.s/.asm), K2 .insns, word list (.words) or raw bytecode.")]
Section = Annotated[str | None, typer.Option(
    "--section", "-s", metavar="NAME", help="Program section or function of an object (default: the first).")]
ProgType = Annotated[str | None, typer.Option(
    "--type", "-t", metavar="TYPE",
    help="Program type: xdp, socket_filter, sched_cls, mem, ... (default: from the section name, else xdp).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bpforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """A toolchain for eBPF programs: load, verify, optimize, JIT/offload and partition."""


# ---- disasm ------------------------------------------------------------------------------------------------

@app.command()
def disasm(prog: Prog, section: Section = None, prog_type: ProgType = None, json_out: Json = False,
           show_bytes: Annotated[bool, typer.Option("--bytes", help="Show each instruction's bytes.")] = False,
           ) -> None:
    """Disassemble a program in llvm-objdump style (re-assemblable by `bpforge asm`), or as JSON."""
    program = load(prog, section=section, prog_type=prog_type)
    if json_out:
        _emit_json(program.disasm_json())
    else:
        _emit_text(program.disasm(show_bytes=show_bytes))


# ---- asm ---------------------------------------------------------------------------------------------------

@app.command()
def asm(file: Annotated[str, typer.Argument(metavar="FILE.s", show_default=False, help="Assembly text.")],
        output: Annotated[str, typer.Option(
            "--output", "-o", metavar="OUT", show_default=False,
            help="Output: OUT.o is an ELF object, OUT.words a word list, anything else raw bytecode.")],
        license: Annotated[str, typer.Option(help="License string of an ELF object.")] = "GPL",
        prog_type: ProgType = None) -> None:
    """Assemble llvm-style BPF assembly (or `bpforge disasm` output) into an object or bytecode."""
    if prog_type is not None:
        check_prog_type(prog_type)  # accepted for symmetry with the other verbs; validated now
    blob = assemble_file(file, output_kind(output), license=license)
    try:
        with open(output, "wb") as out:
            out.write(blob)
    except OSError as err:
        raise BpforgeError(f"cannot write the output: {err.strerror or err}", file=output) from None


# ---- info --------------------------------------------------------------------------------------------------

@app.command()
def info(prog: Prog, section: Section = None, prog_type: ProgType = None, json_out: Json = False) -> None:
    """Programs with their sizes, maps, relocations, license and global data of a program file."""
    report = load(prog, section=section, prog_type=prog_type).info()
    if json_out:
        _emit_json(report.as_json())
    else:
        _emit_text(report.text())


# ---- run ---------------------------------------------------------------------------------------------------

@app.command()
def run(prog: Prog,
        data: Annotated[str | None, typer.Option("--data", metavar="HEX", help="Packet (or memory) bytes in hex.")] = None,
        data_file: Annotated[str | None, typer.Option("--data-file", metavar="FILE", help="Packet bytes from a file.")] = None,
        engine: Annotated[str, typer.Option(help="fast (compiled interpreter), interp (reference), jit (native code) "
                                            "or kernel.")] = "fast",
        arch: Annotated[str, typer.Option(help="The jit engine's architecture: x86_64 (native), arm64 or riscv64 (an "
                                          "emulated device).")] = "x86_64",
        sandbox: Annotated[bool, typer.Option("--sandbox", help="jit: check every memory access (programs our "
                                              "verifier does not accept).")] = False,
        blind: Annotated[bool, typer.Option("--blind", help="jit: blind the program's constants (loaded xor a "
                                            "random key, as the kernel's bpf_jit_harden does).")] = False,
        repeat: Annotated[int, typer.Option(help="Runs on the same input; maps carry over, time is averaged.")] = 1,
        ctx: Annotated[str | None, typer.Option("--ctx", metavar="HEX", help="Context (xdp_md / __sk_buff) in hex.")] = None,
        map_files: MapFiles = None,
        dump_maps: Annotated[bool, typer.Option("--dump-maps", help="Print every map's contents after the run.")] = False,
        seed: Annotated[int, typer.Option(help="Seed of bpf_get_prandom_u32 in the interpreter.")] = 0,
        budget: Annotated[float, typer.Option(
            metavar="SECONDS", help="Stop a VM --repeat loop after this long, reporting the runs done.")
        ] = DEFAULT_TIME_BUDGET,
        section: Section = None, prog_type: ProgType = None, json_out: Json = False) -> None:
    """Run a program on a packet in the interpreter or the kernel; print retval, data_out and time per run."""
    packet = _input_bytes(data, data_file)
    preload = _preload(map_files)
    if not budget > 0:
        raise BpforgeError(f"--budget must be a positive number of seconds, not {budget}")
    program = load(prog, section=section, prog_type=prog_type)
    with _progress(f"running {program.name or prog}", repeat, engine) as progress:
        report = program.run(packet, engine=engine, repeat=repeat,
                             ctx=_hex(ctx, "--ctx") if ctx is not None else None, preload=preload,
                             dump_maps=dump_maps, seed=seed, time_budget=budget, progress=progress, arch=arch,
                             sandbox=sandbox, blind=blind)
    if report.stopped:
        why = f"--budget of {budget:g} s reached" if report.stopped == "budget" else "interrupted"
        _note(f"{prog}: stopped after {report.repeat} of {report.requested} runs ({why}); the results are "
              "those of the last run")
    if json_out:
        _emit_json(report.as_json())
        return
    lines = [f"retval: {report.retval}", f"data_out: {report.data_out.hex()}",
             f"ns_per_run: {report.ns_per_run:.0f} ({report.engine}, {report.repeat} runs)"]
    lines += [f"trace: {line}" for line in report.trace]
    for m in report.maps:
        if "unlisted" in m:
            lines.append(f"map {m['name']} ({m['type']}): {m['unlisted']}")
            continue
        lines.append(f"map {m['name']} ({m['type']}): {len(m['entries'])} entries")
        lines += [f"  {e['key']}: {e['value']}" for e in m["entries"]]
    _emit_lines(lines)


def _preload(map_files: list[str] | None) -> dict[str, list[tuple[bytes, bytes]]]:
    """--map NAME=FILE options: the entries to write into each map before the run."""
    preload = {}
    for item in map_files or []:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise BpforgeError(f"--map takes NAME=FILE, not '{item}'")
        preload[name] = read_map_file(path)
    return preload


MapFiles = Annotated[list[str] | None, typer.Option("--map", metavar="NAME=FILE",
                     help='Preload map NAME from a JSON list of {"key": hex, "value": hex}.')]


def _numbers(text: str, option: str, what: str) -> list[int]:
    """OPTION N[,N...]: the numbers, or a one-line error naming the option and what they are."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise BpforgeError(f"{option} takes {what} separated by commas, not '{text}'") from None


def _points(text: str | None) -> list[int] | None:
    """--cut N[,N...]: instruction indexes."""
    return None if text is None else _numbers(text, "--cut", "instruction indexes")


def _hex(text: str, what: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(" ", "").replace(":", ""))
    except ValueError:
        raise BpforgeError(f"{what} must be hex bytes, not '{text[:40]}'") from None


def _input_bytes(data: str | None, data_file: str | None) -> bytes:
    if (data is None) == (data_file is None):
        raise BpforgeError("give the input with exactly one of --data HEX or --data-file FILE")
    if data is not None:
        return _hex(data, "--data")
    return read_input(data_file, what="packet", limit=MAX_PACKET)


@contextmanager
def _progress(what: str, total: int, engine: str):
    """A progress bar on stderr for a long repeat loop (only on a terminal); yields the update callback."""
    if total < 1000 or engine == "kernel" or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=total)
        yield lambda done, _total: bar.update(task, completed=done)


# ---- verify ------------------------------------------------------------------------------------------------

@app.command()
def verify(prog: Prog, section: Section = None, prog_type: ProgType = None, json_out: Json = False,
           log: Annotated[bool, typer.Option(
               "--log", help="Our state before each instruction of the failing path.")] = False,
           kernel: Annotated[bool, typer.Option(
               "--kernel", help="Also load it into the running kernel and show its verdict beside ours.")] = False,
           budget: Annotated[float | None, typer.Option(
               metavar="SECONDS", help="Give up (verdict unknown) after this long.")] = None) -> int:
    """Check a program with bpforge's verifier; on a rejection say where, why and what to change.
    Exit 0 accepted, 1 rejected (with --kernel: as the kernel decides), 2 bad input or undecided."""
    if budget is not None and not budget > 0:
        raise BpforgeError(f"--budget must be a positive number of seconds, not {budget}")
    program = load(prog, section=section, prog_type=prog_type)
    with _spinner(f"verifying {program.name or prog}", "{} insns processed") as progress:
        report = program.verify(kernel=kernel, budget=budget, progress=progress)
    undecided = report.outcome == "unknown"
    if json_out:
        _emit_json(report.as_json(log=log))
    elif not undecided or kernel:
        _emit_text(report.text(log=log))
    if report.disagreement and json_out:
        _note(f"{report.where}: {report.disagreement}")  # never only inside the JSON
    if report.kernel is not None and not report.kernel.decided:
        _note(f"{report.where}: --kernel: {report.kernel.message}")
    if undecided:
        _fail(report.undecided_line())
        return EXIT_BAD_INPUT
    return 0 if report.outcome == "accept" else EXIT_REJECTED


@contextmanager
def _spinner(what: str, status: str = "{}"):
    """A spinner on stderr (only on a terminal) naming the work and its status: yields the function that
    sets the status (our verifier's instructions processed, the partitioner's step)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    column = TextColumn(status.replace("{}", "{task.fields[status]}"))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), column, TimeElapsedColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(what, total=None, status="")
        yield lambda value: bar.update(task, status=value)


# ---- jit ---------------------------------------------------------------------------------------------------

@app.command()
def jit(prog: Prog,
        arch: Annotated[str, typer.Option(help="Target architecture.")] = "x86_64",
        output: Annotated[str | None, typer.Option(
            "--output", "-o", metavar="IMAGE", help="Write the image (raw code) and IMAGE.json (entry points, "
            "relocations, control-block layout).")] = None,
        sandbox: Annotated[bool, typer.Option("--sandbox", help="Check every memory access (programs our "
                                              "verifier does not accept).")] = False,
        blind: Annotated[bool, typer.Option("--blind", help="Blind the program's constants (loaded xor a "
                                            "random key, as the kernel's bpf_jit_harden does).")] = False,
        section: Section = None, prog_type: ProgType = None, json_out: Json = False) -> None:
    """Compile a program with the JIT and list the native code under the BPF instruction it came from."""
    result = load(prog, section=section, prog_type=prog_type).jit(arch=arch, sandbox=sandbox, blind=blind,
                                                                  output=output)
    if json_out:
        _emit_json(result.as_json())
    else:
        _emit_text(result.text())


# ---- offload -----------------------------------------------------------------------------------------------

offload_app = typer.Typer(help="Offload to devices: their profiles, what a device can run, runs on a device.",
                          no_args_is_help=True)
app.add_typer(offload_app, name="offload")
Device = Annotated[str, typer.Option("--device", "-d", metavar="D",
                                     help="A device: a profile's name (bpforge offload devices) or a .toml file.")]


@offload_app.command("devices")
def offload_devices(json_out: Json = False) -> None:
    """List the device profiles: name, ISA, limits."""
    from . import devices

    found = devices()
    if json_out:
        _emit_json([d.as_json() for d in found])
        return
    lines = [f"{'device':<18}{'isa':<9}{'kind':<6}{'insns':>8}{'stack':>7}{'map memory':>12}  maps / prog types"]
    for d in found:
        memory = f"{d.limits.map_memory >> 20} MiB" if d.limits.map_memory else "-"
        lines.append(f"{d.name:<18}{d.isa:<9}{d.kind:<6}{d.limits.insns:>8}{d.limits.stack:>7}{memory:>12}  "
                     f"{','.join(sorted(d.map_types))} / {','.join(sorted(d.prog_types))}")
        lines.append(f"{'':<18}{d.description}")
    _emit_lines(lines)


@offload_app.command("check")
def offload_check(prog: Prog, device: Device, section: Section = None, prog_type: ProgType = None,
                  budget: Annotated[float, typer.Option(metavar="SECONDS", help="Time for the multi-stage "
                                                        "split's search.")] = 30.0,
                  cut: Annotated[str | None, typer.Option("--cut", metavar="N[,N...]", help="Check the split at "
                                 "these points (instruction indexes) instead of searching for one.")] = None,
                  json_out: Json = False) -> int:
    """Can the device run the program: a reason (instruction, source line) for everything it cannot take,
    suggested rewrites, where each map lives. Exit 0 offloadable, 1 partly or host only, 2 bad input."""
    if not budget > 0:
        raise BpforgeError(f"--budget must be a positive number of seconds, not {budget}")
    report = load(prog, section=section, prog_type=prog_type).offload_check(device, budget=budget, cut=_points(cut))
    if json_out:
        _emit_json(report.as_json())
    else:
        _emit_text(report.text() + "\n")
    return 0 if report.verdict == "offloadable" else EXIT_REJECTED


@offload_app.command("run")
def offload_run(prog: Prog, device: Device,
                data: Annotated[str | None, typer.Option("--data", metavar="HEX", help="Packet bytes in hex.")] = None,
                data_file: Annotated[str | None, typer.Option("--data-file", metavar="FILE",
                                                              help="Packet bytes from a file.")] = None,
                ctx: Annotated[str | None, typer.Option("--ctx", metavar="HEX", help="Context in hex.")] = None,
                map_files: MapFiles = None, section: Section = None, prog_type: ProgType = None,
                explicit: Annotated[bool, typer.Option("--explicit/--implicit", help="Explicit: the device takes "
                                    "the program whole, or split at --cut; implicit (default): bpforge decides.")] = False,
                cut: Annotated[str | None, typer.Option("--cut", metavar="N[,N...]", help="The multi-stage split's "
                               "points (instruction indexes), chosen by hand.")] = None,
                json_out: Json = False) -> None:
    """Run the program once on the device's emulated core (JIT for its ISA, maps placed on it; a partly
    offloadable XDP program split into a device part and a host part): retval, packet, maps, and the device
    cycles by its profile."""
    packet = _input_bytes(data, data_file)
    program = load(prog, section=section, prog_type=prog_type)
    report = program.offload_run(device, packet, ctx=_hex(ctx, "--ctx") if ctx is not None else None,
                                 preload=_preload(map_files), explicit=explicit, cut=_points(cut))
    if json_out:
        _emit_json(report.as_json())
    else:
        _emit_text(report.text() + "\n")


# ---- partition ---------------------------------------------------------------------------------------------

def _paths_option(text: str | None, option: str) -> frozenset[int]:
    return frozenset() if text is None else frozenset(_numbers(text, option, "path numbers"))


@app.command(context_settings={"allow_interspersed_args": True})
def partition(
        args: Annotated[list[str], typer.Argument(
            metavar="APP.py | run DIR [-- APP-ARGS...]", show_default=False,
            help="The application to partition; or `run DIR` to deploy a partition (arguments after -- go "
                 "to the application's main).")],
        output: Annotated[str | None, typer.Option("--output", "-o", metavar="DIR",
                                                   help="Write the BPF object, the user module and the report here.")] = None,
        handler: Annotated[str | None, typer.Option(metavar="NAME", help="The handler (default: the one marked "
                                                    "@bpforge.offload).")] = None,
        trace: Annotated[str | None, typer.Option(metavar="FILE", help="Profile on this pcap or requests file.")] = None,
        report: Annotated[str | None, typer.Option(metavar="FILE.html", help="Write the report as HTML.")] = None,
        force_offload: Annotated[str | None, typer.Option(metavar="N[,N...]", help="Offload these paths whatever "
                                                          "the cost model says.")] = None,
        keep_user: Annotated[str | None, typer.Option(metavar="N[,N...]", help="Keep these paths in user space.")] = None,
        budget: Annotated[float, typer.Option(metavar="SECONDS", help="The optimizer's time for the BPF half "
                                              "(0: verify only).")] = 20.0,
        dev: Annotated[str | None, typer.Option(metavar="IFACE", help="run: attach the BPF half here.")] = None,
        mode: Annotated[str, typer.Option(metavar="MODE", help="run: XDP mode (native, generic).")] = "native",
        json_out: Json = False) -> int:
    """Split a Python UDP application into an XDP fast path and the user-space rest (its handler marked
    @bpforge.offload): the cut with a reason per path, the predicted speedup, both halves written to -o DIR.
    `bpforge partition run DIR --dev IFACE [-- ARGS]` deploys it and runs the application."""
    from .partition.build import partition as build_partition
    from .partition.build import report_html

    if args and args[0] == "run":
        from .partition.deploy import run_partition

        if len(args) < 2 or dev is None:
            raise BpforgeError("usage: bpforge partition run DIR --dev IFACE [-- APP-ARGS...]")
        return run_partition(args[1], dev, args[2:], mode=mode)
    if len(args) != 1:
        raise BpforgeError("usage: bpforge partition APP.py -o DIR [options] (one application)")
    if budget < 0:
        raise BpforgeError(f"--budget must be 0 or a positive number of seconds, not {budget}")
    with _spinner(f"partitioning {args[0]}") as step:
        result = build_partition(args[0], handler=handler, trace=trace, out_dir=output,
                                 force_offload=_paths_option(force_offload, "--force-offload"),
                                 keep_user=_paths_option(keep_user, "--keep-user"), optimize_budget=budget,
                                 progress=step)
    if report is not None:
        try:
            with open(report, "w", encoding="utf-8") as handle:
                handle.write(report_html(result))
        except OSError as err:
            raise BpforgeError(f"{report}: {err.strerror or err}") from None
    if json_out:
        _emit_json(result.as_json())
    else:
        _emit_text(result.text() + "\n")
    return 0


# ---- optimize ----------------------------------------------------------------------------------------------

# The options `optimize` and `optimize-many` share (one program, or each program of a fleet).
Budget = Annotated[float, typer.Option(
    metavar="SECONDS", help="Time for each program; Ctrl-C stops early and keeps the best.")]
Cost = Annotated[str, typer.Option(help="What to minimise: size (slots) or latency.")]
Jobs = Annotated[int, typer.Option(help="Search chains in parallel processes.")]
Seed = Annotated[int, typer.Option(help="Seed of the search (same seed, same result).")]
Ray = Annotated[str | None, typer.Option(
    metavar="auto|ADDRESS", help="Search on a Ray cluster, one chain per CPU, instead of --jobs local processes "
    "(pip install 'bpforge[ray]'): auto, the one RAY_ADDRESS or a running local instance names, else a new local "
    "one.")]
NoKernel = Annotated[bool, typer.Option(
    "--no-kernel", help="Do not load the result into the running kernel's verifier.")]
NoSearch = Annotated[bool, typer.Option("--no-search", help="Rule passes only (milliseconds), no stochastic search.")]
DEFAULT_STORE = "$BPFORGE_RULES, else ~/.cache/bpforge/rules.sqlite"  # opt.store.default_path, in words


@app.command()
def optimize(prog: Prog,
             output: Annotated[str | None, typer.Option(
                 "--output", "-o", metavar="OUT", help="Write the optimized program here.")] = None,
             section: Section = None, prog_type: ProgType = None, json_out: Json = False,
             budget: Budget = 60.0, cost: Cost = "size", jobs: Jobs = 1, ray: Ray = None, seed: Seed = 0,
             checkpoint: Annotated[str | None, typer.Option(
                 metavar="FILE", help="Save the run's state here every few minutes and at the end; resume from "
                 "it when it holds a run of this program.")] = None,
             checkpoint_every: Annotated[float | None, typer.Option(
                 metavar="SECONDS", help="How often --checkpoint saves (default: every 3 minutes).")] = None,
             fmt: Annotated[str | None, typer.Option(
                 "--format", metavar="FMT", help="Output format: elf, raw, asm or k2 (default: the input's).")] = None,
             report: Annotated[str | None, typer.Option(
                 "--report", metavar="FILE.html", help="Also write an HTML report with the cost over time.")] = None,
             no_kernel: NoKernel = False, no_search: NoSearch = False,
             rules: Annotated[str | None, typer.Option(
                 "--rules", metavar="PATH|URL", help="A rule store (a file, sqlite:///PATH or file:PATH) to read "
                 "rules from and add what the run learned and which rules fired to (see 'bpforge rules').")
             ] = None) -> int:
    """Make a program smaller or faster: rule passes, then stochastic search; every change proved equivalent
    by SMT, the result checked by our verifier and the kernel's. Exit 0 done (improved or not), 1 when the
    kernel rejects even the original, 2 bad input."""
    program = load(prog, section=section, prog_type=prog_type)
    with _optimize_progress(f"optimizing {program.name or prog}") as (update, stop):
        progress = None if update is None else lambda phase, best, seconds: update(phase=phase, best=best)
        result = program.optimize(output=output, fmt=fmt, budget=budget, cost=cost, jobs=jobs, seed=seed,
                                  search=not no_search, kernel=not no_kernel, rules_store=rules, ray=ray,
                                  checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                  progress=progress, stop=stop)
    if report is not None:
        with open(report, "w", encoding="utf-8") as out:
            out.write(result.html())
    if json_out:
        _emit_json(result.as_json())
    else:
        _emit_text(result.text())
    return EXIT_REJECTED if result.kernel_accepted is False else 0


@app.command("optimize-many")
def optimize_many(
        source: Annotated[str, typer.Argument(
            metavar="DIR|MANIFEST", show_default=False,
            help="A directory (its ELF objects *.o and K2 programs *.insns, recursively) or a manifest: one "
                 "program file per line, relative to it, optionally followed by the sections to optimize and "
                 "type=NAME.")],
        output: Annotated[str, typer.Option(
            "--output", "-o", metavar="OUTDIR", show_default=False,
            help="Where the optimized objects go, at their paths under DIR (or the manifest's directory), with "
                 "the state that lets a rerun go on where a stopped or killed run ended.")],
        budget: Budget = 60.0, cost: Cost = "size", jobs: Jobs = 1, ray: Ray = None, seed: Seed = 0,
        no_kernel: NoKernel = False, no_search: NoSearch = False,
        rules: Annotated[str | None, typer.Option(
            "--rules", metavar="PATH|URL", help=f"The rule store every program reads and extends (default: "
            f"{DEFAULT_STORE}).")] = None,
        json_out: Json = False) -> int:
    """Optimize every program of every object of a fleet, sharing one rule store; resumable (programs
    finished by an earlier run are not redone). Prints one table: slots before -> after, changes, proof,
    kernel verdict, time. Exit 0 all done, 1 when some program failed (the rows say why), 2 bad input,
    130 stopped by Ctrl-C (the same command again goes on)."""
    from . import optimize_many as run_fleet

    with _optimize_progress(f"optimizing {source}") as (update, stop):
        progress = None if update is None else lambda i, n, name, phase, best: update(
            description=f"[{i}/{n}] {name}", phase=phase, best="?" if best is None else best)
        summary = run_fleet(source, output, budget=budget, cost=cost, jobs=jobs, ray=ray, seed=seed,
                            search=not no_search, kernel=not no_kernel, rules_store=rules, progress=progress,
                            stop=stop)
    if json_out:
        _emit_json(summary.as_json())
    else:
        _fleet_table(summary)
        _emit_lines(summary.notes())
    return EXIT_INTERRUPTED if summary.interrupted else EXIT_REJECTED if summary.failed else 0


def _fleet_table(summary) -> None:
    """The fleet's summary as a rich table on stdout (as wide as it needs when stdout is not a terminal)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    headers, rows, total = summary.table()
    numeric = {"slots", "saved", "changes", "rules", "seconds"}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*map(Text, row), style="red" if row[-1] == "FAILED" else None)
    table.add_section()
    table.add_row(*map(Text, total), style="bold")
    tty = sys.stdout.isatty()
    Console(file=sys.stdout, width=None if tty else 1000, highlight=False).print(table)


@contextmanager
def _optimize_progress(what: str):
    """(update, stop): `update(**fields)` sets the live line's fields (description, phase, best) on a
    terminal (None elsewhere); `stop()` turns true at the first Ctrl-C, which asks the run to stop and keep
    its best result; a second one interrupts at once."""
    import signal

    stopping = []

    def on_interrupt(signum, frame):
        if stopping:
            raise KeyboardInterrupt
        stopping.append(True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        if not sys.stderr.isatty():
            yield None, lambda: bool(stopping)
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[phase]}"),
                      TextColumn("best {task.fields[best]} slots"), TimeElapsedColumn(), transient=True,
                      console=Console(stderr=True)) as bar:
            task = bar.add_task(what, total=None, phase="", best="?")
            yield (lambda **fields: bar.update(task, **fields)), lambda: bool(stopping)
    finally:
        signal.signal(signal.SIGINT, previous)


rules_app = typer.Typer(help="The optimizer's rule cache.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("rebuild")
def rules_rebuild(
        output: Annotated[str | None, typer.Option(
            "--output", "-o", metavar="FILE", help="Where to write the rules (default: the package's data file).")] = None,
        budget: Annotated[float, typer.Option(metavar="SECONDS", help="Search time per program.")] = 30.0,
        k2: Annotated[str | None, typer.Option(metavar="DIR", help="K2's benchmark programs.")] = None) -> int:
    """Learn the shipped rules again: optimize the examples and K2's programs, keep what the search proved."""
    from pathlib import Path

    from .opt.learn import K2, SHIPPED, learn
    from .opt.rules import RuleBook

    k2_dir = Path(k2) if k2 else K2
    book = learn(budget, k2_dir if k2_dir.is_dir() else None, RuleBook(), report=_note)
    target = Path(output) if output else SHIPPED
    book.save(target)
    _emit_lines([f"{len(book)} rules -> {target}"])
    return 0


Store = Annotated[str | None, typer.Option(
    "--store", metavar="PATH|URL", help=f"The rule store (default: {DEFAULT_STORE}).")]


@rules_app.command("list")
def rules_list(store: Store = None, json_out: Json = False) -> int:
    """The stored rules: pattern, replacement, proof status, origin, hits."""
    from .opt.store import RuleStore

    with RuleStore(store) as opened:
        stored = list(opened.rules())
    if json_out:
        _emit_json({"store": str(opened.path), "rules": [s.as_json() for s in stored]})
        return 0
    lines = [f"{len(stored)} rules in {opened.path}"]
    for n, s in enumerate(stored):
        lines.append(f"#{n} {s.status}, {s.hits} hits, {s.origin}: {s.rule.why}")
        lines.extend(f"    {text}" for text in s.rule.pattern)
        lines.append("  ->")
        lines.extend(f"    {text}" for text in s.rule.replacement or ("(nothing)",))
    _emit_lines(lines)
    return 0


@rules_app.command("export")
def rules_export(
        output: Annotated[str, typer.Option("--output", "-o", metavar="FILE.json", help="Where to write the rules.")],
        store: Store = None) -> int:
    """Write the stored rules as a rule file (the format of the shipped rules.json)."""
    from .opt.store import RuleStore

    with RuleStore(store) as opened:
        count = opened.export(output)
    _emit_lines([f"{count} rules -> {output}"])
    return 0


@rules_app.command("import")
def rules_import(file: Annotated[str, typer.Argument(metavar="FILE.json", help="A rule file.")],
                 store: Store = None) -> int:
    """Add a rule file's rules to the store (origin imported:FILE); patterns stored already are kept."""
    from .opt.store import RuleStore

    with RuleStore(store) as opened:
        added, known = opened.import_file(file)
    _emit_lines([f"{added} rules added, {known} stored already -> {opened.path}"])
    return 0


@rules_app.command("verify")
def rules_verify(store: Store = None, json_out: Json = False) -> int:
    """Prove every stored rule again with z3 and store the status. Exit 1 when any fails."""
    from .opt.store import FAILED, RuleStore, status_of

    with RuleStore(store) as opened:
        results = opened.verify()
    rows = [(stored, status_of(proof), proof) for stored, proof in results]
    failed = sum(status == FAILED for _, status, _ in rows)
    if json_out:
        _emit_json({"store": str(opened.path), "failed": failed,
                    "rules": [{**stored.as_json(), "status": status, "reason": proof.reason, "seconds": proof.seconds}
                              for stored, status, proof in rows]})
    else:
        counts = {status: sum(s == status for _, s, _ in rows) for status in ("proved", "failed", "unproved")}
        lines = [f"#{n} {status}: {stored.rule.pattern[0]} ...{f' ({proof.reason})' if proof.reason else ''}"
                 for n, (stored, status, proof) in enumerate(rows) if status != "proved"]
        _emit_lines(lines + [f"{len(rows)} rules: " + ", ".join(f"{v} {k}" for k, v in counts.items())])
    return EXIT_REJECTED if failed else 0


# ---- prog / map: bpftool-style introspection of the running kernel -----------------------------------------

prog_app = typer.Typer(help="Programs loaded in the running kernel (bpftool's prog show / dump).",
                       no_args_is_help=True)
map_app = typer.Typer(help="Maps in the running kernel (bpftool's map show / dump).", no_args_is_help=True)
app.add_typer(prog_app, name="prog")
app.add_typer(map_app, name="map")

Selector = Annotated[list[str] | None, typer.Argument(
    metavar="[id N | pinned PATH | name NAME]", show_default=False,
    help="Which one, as bpftool names it (default: all).")]
Opcodes = Annotated[bool, typer.Option("--opcodes", help="Also print each instruction's bytes.")]
_SELECTORS = ("id", "pinned", "name")


def _selector(words: list[str] | None, what: str, *, required: bool = False) -> dict:
    """`id N` / `pinned PATH` / `name NAME` as keyword arguments of the kernel.info finders."""
    words = list(words or [])
    if not words:
        if required:
            raise BpforgeError(f"name the {what}: id N, pinned PATH or name NAME")
        return {}
    if len(words) != 2 or words[0] not in _SELECTORS:
        raise BpforgeError(f"expected id N, pinned PATH or name NAME, got '{' '.join(words)}'")
    kind, value = words
    if kind == "id":
        try:
            return {f"{what}_id": int(value, 0)}
        except ValueError:
            raise BpforgeError(f"can't parse {value!r} as an id") from None
    return {kind: value}


def _one_or_many(items: list, selector: dict):
    # bpftool prints one object for `id N` / `pinned P` or a single name match, else an array
    return items[0] if selector and len(items) == 1 else items


@prog_app.command("show")
def prog_show(which: Selector = None, json_out: Json = False) -> None:
    """Show loaded programs: `ID: TYPE  name NAME  tag TAG  gpl`, load time, sizes, maps, BTF."""
    from .kernel.info import find_programs
    from .offload import introspect

    selector = _selector(which, "prog")
    progs = find_programs(**selector)
    if json_out:
        _emit_json(_one_or_many([introspect.prog_show_json(p) for p in progs], selector))
    else:
        _emit_text("".join(introspect.prog_show_text(p) for p in progs))


@prog_app.command("dump")
def prog_dump(
        mode: Annotated[str, typer.Argument(metavar="xlated|jited", show_default=False,
                                            help="The kernel's rewritten instructions, or its native code.")],
        which: Annotated[list[str], typer.Argument(
            metavar="id N | pinned PATH | name NAME | PROG_FILE", show_default=False,
            help="A program in the kernel, or a program file (xlated: our linked instructions in the kernel's "
                 "spelling; jited: our JIT's listing).")],
        json_out: Json = False, opcodes: Opcodes = False,
        arch: Annotated[str | None, typer.Option(help="jited: the architecture to disassemble for (default: this "
                                                 "machine's; for a file x86_64).")] = None,
        section: Section = None, prog_type: ProgType = None) -> None:
    """Dump a program's xlated instructions (bpftool's syntax) or its JITed code (capstone)."""
    from .offload import introspect

    if mode not in ("xlated", "jited"):
        raise BpforgeError(f"expected 'xlated' or 'jited', got '{mode}'")
    if len(which) == 1 and which[0] not in _SELECTORS:
        _dump_file(mode, which[0], json_out=json_out, arch=arch, section=section, prog_type=prog_type)
        return
    from .kernel.info import find_programs

    selector = _selector(which, "prog", required=True)
    progs = find_programs(**selector, code=True, symbols=True)
    parts = []
    for p in progs:
        if mode == "xlated":
            body = introspect.xlated_json(p, opcodes=opcodes) if json_out else introspect.xlated_text(p, opcodes=opcodes)
        else:
            body = (introspect.jited_json(p, arch=arch, opcodes=opcodes) if json_out
                    else introspect.jited_text(p, arch=arch, opcodes=opcodes))
        if len(progs) == 1:
            parts.append(body)
        elif json_out:
            parts.append({**introspect.prog_header_json(p), "insns": body})
        else:
            parts.append(introspect.prog_header_text(p) + "\n" + body)
    if json_out:
        _emit_json(parts[0] if len(progs) == 1 else parts)
    else:
        _emit_text("\n".join(parts))


def _dump_file(mode: str, path: str, *, json_out: bool, arch: str | None, section: str | None,
               prog_type: str | None) -> None:
    """`prog dump` of a program file: its linked instructions, or our JIT's listing of it."""
    from .isa import encode
    from .offload import introspect

    program = load(path, section=section, prog_type=prog_type)
    if mode == "jited":
        listing = program.jit(arch=arch or "x86_64")
        if json_out:
            _emit_json(listing.as_json())
        else:
            _emit_text(listing.text() + "\n")
        return
    code = encode(program.insns)
    if json_out:
        _emit_json([{"disasm": line.split(": ", 1)[1]} for line in introspect.insns_text(code).splitlines()])
    else:
        _emit_text(introspect.insns_text(code))


@map_app.command("show")
def map_show(which: Selector = None, json_out: Json = False) -> None:
    """Show maps: `ID: TYPE  name NAME  flags F`, key/value sizes, entries, memlock, frozen."""
    from .kernel.info import find_maps
    from .offload import introspect

    selector = _selector(which, "map")
    maps = [info for info, _ in find_maps(**selector)]
    if json_out:
        _emit_json(_one_or_many([introspect.map_show_json(m) for m in maps], selector))
    else:
        _emit_text("".join(introspect.map_show_text(m) for m in maps))


@map_app.command("dump")
def map_dump(which: Annotated[list[str], typer.Argument(
                 metavar="id N | pinned PATH | name NAME", show_default=False, help="Which map.")],
             json_out: Json = False) -> None:
    """Dump a map's entries: key and value bytes (per-CPU maps: every possible CPU's value)."""
    from .kernel.info import find_maps
    from .offload import introspect

    found = find_maps(**_selector(which, "map", required=True), entries=True)
    if json_out:
        if len(found) == 1:
            _emit_json(introspect.map_dump_json(*found[0]))
        else:
            _emit_json([{**introspect.map_header_json(info), "elements": introspect.map_dump_json(info, entries)}
                        for info, entries in found])
        return
    if len(found) == 1:
        _emit_text(introspect.map_dump_text(*found[0]))
    else:
        _emit_text("\n".join(introspect.map_header_text(info) + "\n" + introspect.map_dump_text(info, entries)
                             for info, entries in found))


# ---- output and errors -------------------------------------------------------------------------------------

def _emit_text(text: str) -> None:
    sys.stdout.write(text)


def _emit_lines(lines: Iterable[str]) -> None:
    _emit_text("".join(line + "\n" for line in lines))


def _emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _fail(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    sys.stderr.write("bpforge: " + (" ".join(message.split()) or "error (no description)") + "\n")


def _note(message: str) -> None:
    _fail(message)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every error becomes one line on stderr and an exit code, never a traceback.
    A bare `bpforge` prints the help and exits 0; usage errors are bad input (exit 2) like any other."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = 0
    try:
        if not args:
            args = ["--help"]
        result = app(prog_name="bpforge", args=args, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except BpforgeError as err:
        _fail(str(err))
        code = EXIT_BAD_INPUT
    except TyperException as err:  # usage: unknown verb or option, a missing or malformed argument
        command = getattr(getattr(err, "ctx", None), "command_path", None) or "bpforge"
        _fail(f"{err.format_message()} (see '{command} --help')")
        code = getattr(err, "exit_code", EXIT_BAD_INPUT) or EXIT_BAD_INPUT
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", None) if isinstance(err, typer.Exit) else err.code
        code = code if isinstance(code, int) else 0
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        _quiet_stdout()
        code = 0
    except OSError as err:  # e.g. stdout on a full disk
        where = err.filename if err.filename else "<stdout>"
        _fail(f"{where}: {err.strerror or err}")
        code = EXIT_BAD_INPUT
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as err:  # a bug: still one line, with the traceback only on request
        if os.environ.get("BPFORGE_DEBUG"):
            traceback.print_exc()
        what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        _fail(f"internal error: {what} (BPFORGE_DEBUG=1 shows the traceback)")
        code = EXIT_BUG
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    except OSError as err:
        _fail(f"<stdout>: {err.strerror or err}")
        code = code or EXIT_BAD_INPUT
    sys.exit(code)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's exit does not complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    main()
