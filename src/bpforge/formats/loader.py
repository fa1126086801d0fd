"""`load_program`: any program file -> one `LoadedProgram`, whatever its format. The CLI loads nothing else.

Every error names the file (and where known the section, slot, line and column), so the CLI can print it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import elf
from ..analysis.inner_maps import inner_templates
from ..errors import BpforgeError, DecodeError, FormatError
from ..files import read_input
from ..isa import Insn, Relocation, check_targets, decode, parse
from ..isa.maptypes import MapSpec
from ..isa.progtypes import DEFAULT_PROG_TYPE, check_prog_type, prog_type_of_section
from .detect import detect_format
from .k2 import K2Desc, k2_paths, parse_k2_desc, parse_k2_maps
from .words import parse_words


@dataclass
class LoadedSection:
    """A run of instructions as stored: an object's program section, an assembly section, or the whole file.
    (An object's own sections, with ELF details, are `elf.ProgramSection`.)"""

    name: str | None
    insns: list[Insn]
    functions: dict[int, str] = field(default_factory=dict)  # instruction index -> symbol that starts there
    relocations: list[Relocation] = field(default_factory=list)  # .insn is an instruction index


@dataclass
class ProgramEntry:
    """An entry point (a program the kernel could load), for listings such as `info`."""

    name: str
    section: str | None
    insns: list[Insn]


@dataclass
class LoadedProgram:
    """The program a command works on (`insns`, picked by --section), plus what else the file holds."""

    filename: str
    kind: str  # "elf", "asm", "k2", "words" or "raw" (see detect.py)
    insns: list[Insn]
    name: str | None
    section: str | None
    prog_type: str  # --type if given, else what the section name or K2's .desc says, else "xdp"
    functions: dict[int, str] = field(default_factory=dict)
    relocations: list[Relocation] = field(default_factory=list)
    sections: list[LoadedSection] = field(default_factory=list)  # every program section of the file
    programs: list[ProgramEntry] = field(default_factory=list)
    maps: list[MapSpec] = field(default_factory=list)  # an object's, or K2's NAME.maps (with `ref`)
    license: str | None = None
    data: list[elf.DataSection] = field(default_factory=list)  # global data of an object
    k2: K2Desc | None = None
    object: elf.BpfObject | None = None  # for ELF input: everything the object holds


def load_program(path: str | Path, *, section: str | None = None, prog_type: str | None = None,
                 link: bool = True) -> LoadedProgram:
    """Read a program in any supported format (see detect.py). `section` picks a program section or function
    of an object or assembly file; `prog_type` overrides the program type the file implies.

    For an object, `insns` is the program as libbpf would load it (its .text subprograms appended); with
    `link=False` it is the function alone, for commands that only look at the file (a call libbpf could not
    resolve then does not stop a listing)."""
    filename = str(path)
    explicit_type = check_prog_type(prog_type) if prog_type is not None else None
    try:
        data = _read(Path(path), filename)
        kind = detect_format(path, data)
        loaded = _load_elf(data, filename, section, link) if kind == "elf" else _LOADERS[kind](data, filename, section)
        for sec in loaded.sections:
            if not sec.insns:
                raise FormatError("no instructions", section=sec.name)
            try:
                check_targets(sec.insns, external=[r.insn for r in sec.relocations])
            except BpforgeError as err:
                raise err.at(section=sec.name) from None
    except BpforgeError as err:
        raise err.at(file=filename) from None
    loaded.prog_type = (explicit_type or prog_type_of_section(loaded.section)
                        or (loaded.k2.prog_type if loaded.k2 else None) or DEFAULT_PROG_TYPE)
    return loaded


def _read(path: Path, filename: str, what: str = "program") -> bytes:
    # Missing file, a directory, a device or FIFO, no permission, too big: bad input like any other.
    data = read_input(path, what=what)
    if not data:
        raise FormatError("empty file", file=filename)
    return data


def _single(filename: str, kind: str, insns: list[Insn], **extra) -> LoadedProgram:
    """A format that holds exactly one program and no sections (raw, words, K2)."""
    name = Path(filename).stem
    return LoadedProgram(filename, kind, insns, name, None, DEFAULT_PROG_TYPE,
                         sections=[LoadedSection(None, insns)], programs=[ProgramEntry(name, None, insns)],
                         **extra)


def _load_raw(data: bytes, filename: str, section: str | None) -> LoadedProgram:
    try:
        insns = decode(data)
    except DecodeError as err:
        if data and _is_text(data):  # the usual cause: assembly or a word list under an unexpected name
            err.message += " (this looks like text: name assembly FILE.s, a word list FILE.words)"
        raise
    return _single(filename, "raw", insns)


def _load_words(data: bytes, filename: str, section: str | None) -> LoadedProgram:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise FormatError(f"a word list must be ASCII text (byte {err.start} is not)") from None
    return _single(filename, "words", decode(parse_words(text, filename=filename)))


def _load_k2(data: bytes, filename: str, section: str | None) -> LoadedProgram:
    insns_path, maps_path, desc_path = k2_paths(filename)
    maps = _k2_file(maps_path, parse_k2_maps) or []
    desc = _k2_file(desc_path, parse_k2_desc)
    if Path(filename) != insns_path:  # named by its .maps or .desc companion
        data = _read(insns_path, str(insns_path))
    try:
        insns = decode(data)
        _check_map_refs(insns, maps, maps_path)
    except BpforgeError as err:
        raise err.at(file=str(insns_path)) from None
    return _single(filename, "k2", insns, maps=_with_inner_maps(insns, maps), k2=desc)


def _with_inner_maps(insns: list[Insn], maps: list[MapSpec]) -> list[MapSpec]:
    """K2's .maps name no inner map for a map of maps: take the ordinary map the program uses in its place
    (`analysis.inner_maps`) as the template, so the kernel can create the outer map and a verifier can
    type what its lookups return."""
    templates = inner_templates(insns, maps)
    by_ref = {spec.ref: spec for spec in maps}
    return [replace(spec, inner=replace(by_ref[templates[spec.ref]], ref=None))
            if spec.inner is None and spec.ref in templates else spec for spec in maps]


def _k2_file(path: Path, parser):
    """A companion file parsed, or None when it does not exist (K2 needs both; bpforge can do without)."""
    if not path.exists():
        return None
    try:
        text = _read(path, str(path), "K2 companion file").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("not text", file=str(path)) from None
    return parser(text, filename=str(path))


def _check_map_refs(insns: list[Insn], maps: list[MapSpec], maps_path: Path) -> None:
    """Every lddw of a map fd (or map value) must name a map of NAME.maps, as libbpf resolved it."""
    fds = {m.ref for m in maps}
    slot = 0
    for insn in insns:
        if insn.form.name in ("lddw_map_fd", "lddw_map_value") and insn.imm not in fds:
            where = f"{maps_path.name} has no map with fd {insn.imm}" if maps_path.exists() else \
                f"{maps_path.name} is missing"
            raise FormatError(f"instruction refers to map fd {insn.imm} but {where}", insn=slot)
        slot += insn.slots


def _load_asm(data: bytes, filename: str, section: str | None) -> LoadedProgram:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"assembly must be UTF-8 text (byte {err.start} is not)") from None
    program = parse(text, filename=filename)
    if not program.sections:
        raise FormatError("no instructions")
    sections = []
    for sec in program.sections:
        functions: dict[int, str] = {}
        for label, index in sorted(sec.functions.items(), key=lambda item: item[1]):
            functions.setdefault(index, label)
        sections.append(LoadedSection(sec.name, sec.insns, functions, list(sec.relocations)))
    chosen = _pick(sections, section)
    stem = Path(filename).stem  # the name of a program without a label at its start
    programs = [ProgramEntry(s.functions.get(0, stem), s.name, s.insns) for s in sections]
    return LoadedProgram(filename, "asm", chosen.insns, chosen.functions.get(0, stem), chosen.name,
                         DEFAULT_PROG_TYPE, dict(chosen.functions), list(chosen.relocations), sections, programs)


def _pick(sections: list[LoadedSection], wanted: str | None) -> LoadedSection:
    if wanted is None:
        return sections[0]
    for sec in sections:
        if wanted == sec.name or wanted in sec.functions.values():
            return sec
    names = ", ".join(s.name for s in sections)
    raise FormatError(f"no section or function named '{wanted}' (sections: {names})")


def _load_elf(data: bytes, filename: str, section: str | None, link: bool) -> LoadedProgram:
    obj = elf.read_object(data, filename=filename)
    prog = obj.program(section)
    if link:  # the program as libbpf hands it to the kernel: its function, then the subprograms it calls
        linked = obj.linked(prog)
        insns, functions, relocations = linked.insns, linked.functions, linked.relocations
    else:
        insns, functions, relocations = prog.insns, {0: prog.name}, sorted(prog.relocations.items())
    sections = [LoadedSection(s.name, list(s.insns), dict(s.functions),
                               [_relocation(i, r) for i, r in sorted(s.relocations.items())])
                for s in obj.sections]
    return LoadedProgram(
        filename, "elf", list(insns), prog.name, prog.section, DEFAULT_PROG_TYPE, dict(functions),
        [_relocation(i, r) for i, r in relocations], sections,
        [ProgramEntry(p.name, p.section, list(p.insns)) for p in obj.programs],
        list(obj.maps), obj.license, list(obj.data), object=obj)


def _relocation(index: int, rel) -> Relocation:
    """The ISA's view of an ELF reader relocation: which instruction, against which symbol, of which type."""
    return Relocation(index, rel.symbol, rel.type)


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


_LOADERS = {"asm": _load_asm, "k2": _load_k2, "words": _load_words, "raw": _load_raw}

__all__ = ["LoadedProgram", "LoadedSection", "ProgramEntry", "load_program"]
