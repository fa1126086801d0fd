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

from . import __version__
from .errors import BpforgeError
from .formats import LoadedProgram, ProgramSection, assemble_file, load_program, output_kind
from .isa import encode, format_insn, listing, slot_count, slot_starts
from .isa.progtypes import check_prog_type, prog_type_of_section
from .files import read_input
from .runner import DEFAULT_TIME_BUDGET, read_map_file, run_loaded

MAX_PACKET = 1 << 20  # more than any test run takes (XDP: 3,520 linear bytes and 17 fragment pages)

EXIT_BAD_INPUT = 2
EXIT_BUG = 3

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
    loaded = load_program(prog, section=section, prog_type=prog_type, link=False)
    sections = [s for s in loaded.sections if section is None or s.name == loaded.section]
    if json_out:
        _emit_json([row for sec in sections for row in _insn_rows(sec)])
    else:
        _emit_lines(_listing(loaded, sections, show_bytes))


def _listing(loaded: LoadedProgram, sections: Sequence[ProgramSection], show_bytes: bool) -> Iterable[str]:
    if loaded.kind == "elf":
        yield from ("", f"{loaded.filename}:\tfile format elf64-bpf", "")
    for sec in sections:
        if sec.name is not None:  # raw, word-list and K2 programs have no sections to name
            yield from (f"Disassembly of section {sec.name}:", "")
        relocations: dict[int, list[tuple[str, str]]] = {}
        for rel in sec.relocations:
            relocations.setdefault(rel.insn, []).append((rel.type or "R_BPF_64_64", rel.symbol))
        yield from listing(sec.insns, symbols=sec.functions, relocations=relocations, show_bytes=show_bytes)
        yield ""


def _insn_rows(sec: ProgramSection) -> Iterable[dict[str, Any]]:
    relocations: dict[int, list[dict[str, str]]] = {}
    for rel in sec.relocations:
        relocations.setdefault(rel.insn, []).append({"type": rel.type, "symbol": rel.symbol})
    function = None
    for index, (insn, slot) in enumerate(zip(sec.insns, slot_starts(sec.insns))):
        function = sec.functions.get(index, function)
        yield {
            "section": sec.name, "function": function, "index": slot, "opcode": insn.opcode,
            "name": insn.form.name, "dst": insn.dst, "src": insn.src, "off": insn.off, "imm": insn.imm,
            "imm64": insn.imm64 if insn.slots == 2 else None, "slots": insn.slots, "text": format_insn(insn),
            "bytes": encode([insn]).hex(), "relocations": relocations.get(index, []),
        }


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
    loaded = load_program(prog, section=section, prog_type=prog_type, link=False)
    explicit = check_prog_type(prog_type) if prog_type else None
    report = _info(loaded, explicit)
    if json_out:
        _emit_json(report)
    else:
        _emit_lines(_info_text(report))


def _info(loaded: LoadedProgram, explicit_type: str | None) -> dict[str, Any]:
    """Everything `info` reports, as the JSON it prints. Positions are slots, as in listings and errors."""

    def type_of(section: str | None) -> str:
        return explicit_type or prog_type_of_section(section) or loaded.prog_type

    def section(sec: ProgramSection) -> dict[str, Any]:
        starts = slot_starts(sec.insns)
        return {"name": sec.name, "insns": len(sec.insns), "slots": slot_count(sec.insns),
                "functions": [{"name": name, "index": starts[i]} for i, name in sorted(sec.functions.items())]}

    relocations = []
    for sec in loaded.sections:
        starts = slot_starts(sec.insns)
        relocations += [{"section": sec.name, "index": starts[r.insn], "symbol": r.symbol, "type": r.type}
                        for r in sec.relocations]
    k2 = loaded.k2
    return {
        "file": loaded.filename,
        "format": loaded.kind,
        "license": loaded.license,
        "programs": [{"name": p.name, "section": p.section, "type": type_of(p.section), "insns": len(p.insns),
                      "slots": slot_count(p.insns)} for p in loaded.programs],
        "sections": [section(s) for s in loaded.sections],
        "maps": [{"name": m.name, "type": m.type, "type_name": m.type_name, "key_size": m.key_size,
                  "value_size": m.value_size, "max_entries": m.max_entries, "flags": m.flags}
                 for m in loaded.maps],
        "relocations": relocations,
        "data": [{"name": d.name, "size": d.size} for d in loaded.data],
        "k2": None if k2 is None else {"pgm_input_type": k2.pgm_input_type, "input_type": k2.input_type_name,
                                       "max_pkt_sz": k2.max_pkt_sz},
    }


_FORMAT_NAMES = {"elf": "ELF object", "asm": "assembly", "k2": "K2 benchmark", "words": "word list",
                 "raw": "raw bytecode"}


def _info_text(report: dict[str, Any]) -> Iterable[str]:
    head = f"{report['file']}: {_FORMAT_NAMES[report['format']]}"
    if report["license"] is not None:
        head += f", license {report['license']}"
    yield head
    yield "programs:"
    yield from _table(["name", "section", "type", "insns", "slots"],
                      [[p["name"], p["section"] or "-", p["type"], p["insns"], p["slots"]]
                       for p in report["programs"]])
    if any(s["name"] is not None for s in report["sections"]):  # raw, words and K2 have no sections
        yield "sections:"
        yield from _table(["name", "insns", "slots", "functions"],
                          [[s["name"], s["insns"], s["slots"],
                            " ".join(f"{f['name']}@{f['index']}" for f in s["functions"]) or "-"]
                           for s in report["sections"]])
    if report["maps"]:
        yield "maps:"
        yield from _table(["name", "type", "key", "value", "max_entries", "flags"],
                          [[m["name"], m["type_name"], m["key_size"], m["value_size"], m["max_entries"],
                            m["flags"]] for m in report["maps"]])
    if report["relocations"]:
        yield f"relocations: {len(report['relocations'])}"
        groups: dict[tuple, list[int]] = {}  # one line per symbol; --json lists every relocation
        for r in report["relocations"]:
            groups.setdefault((r["section"], r["symbol"], r["type"]), []).append(r["index"])
        yield from _table(["section", "symbol", "type", "count", "at insn"],
                          [[*key, len(slots), " ".join(map(str, slots[:6])) + (" ..." if len(slots) > 6 else "")]
                           for key, slots in groups.items()])
    if report["data"]:
        yield "global data:"
        yield from _table(["name", "bytes"], [[d["name"], d["size"]] for d in report["data"]])
    if report["k2"]:
        k2 = report["k2"]
        yield f"k2: pgm_input_type {k2['pgm_input_type']} ({k2['input_type']}), max_pkt_sz {k2['max_pkt_sz']}"


def _table(headers: list[str], rows: list[list[Any]]) -> Iterable[str]:
    """Left-aligned text columns (numbers right-aligned), two spaces apart, indented by two."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        yield "  " + "  ".join(parts).rstrip()


# ---- run ---------------------------------------------------------------------------------------------------

@app.command()
def run(prog: Prog,
        data: Annotated[str | None, typer.Option("--data", metavar="HEX", help="Packet (or memory) bytes in hex.")] = None,
        data_file: Annotated[str | None, typer.Option("--data-file", metavar="FILE", help="Packet bytes from a file.")] = None,
        engine: Annotated[str, typer.Option(help="fast (compiled interpreter), interp (reference) or kernel.")] = "fast",
        repeat: Annotated[int, typer.Option(help="Runs on the same input; maps carry over, time is averaged.")] = 1,
        ctx: Annotated[str | None, typer.Option("--ctx", metavar="HEX", help="Context (xdp_md / __sk_buff) in hex.")] = None,
        map_files: Annotated[list[str] | None, typer.Option("--map", metavar="NAME=FILE",
                             help='Preload map NAME from a JSON list of {"key": hex, "value": hex}.')] = None,
        dump_maps: Annotated[bool, typer.Option("--dump-maps", help="Print every map's contents after the run.")] = False,
        seed: Annotated[int, typer.Option(help="Seed of bpf_get_prandom_u32 in the interpreter.")] = 0,
        budget: Annotated[float, typer.Option(
            metavar="SECONDS", help="Stop a VM --repeat loop after this long, reporting the runs done.")
        ] = DEFAULT_TIME_BUDGET,
        section: Section = None, prog_type: ProgType = None, json_out: Json = False) -> None:
    """Run a program on a packet in the interpreter or the kernel; print retval, data_out and time per run."""
    packet = _input_bytes(data, data_file)
    preload = {}
    for item in map_files or []:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise BpforgeError(f"--map takes NAME=FILE, not '{item}'")
        preload[name] = read_map_file(path)
    if not budget > 0:
        raise BpforgeError(f"--budget must be a positive number of seconds, not {budget}")
    loaded = load_program(prog, section=section, prog_type=prog_type)
    with _progress(f"running {loaded.name or prog}", repeat, engine) as progress:
        try:
            report = run_loaded(loaded, packet, engine=engine, repeat=repeat,
                                ctx=_hex(ctx, "--ctx") if ctx is not None else None, preload=preload,
                                dump_maps=dump_maps, seed=seed, time_budget=budget, progress=progress)
        except BpforgeError as err:
            raise err.at(file=prog) from None
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


# ---- output and errors -------------------------------------------------------------------------------------

def _emit_lines(lines: Iterable[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))


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
        code = 130
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
