"""Read a clang BPF object into a `BpfObject`: program sections and their functions, relocations, maps,
global data, license, BTF and BTF.ext. Anything malformed is an ElfError (or the DecodeError of the
instruction at fault) naming the file and, where known, the section and instruction.

The file is read through `layout.read_image` (every header and offset bounds-checked), and every table is
indexed once (symbols by section, sections by name), so the cost is linear in sections and symbols: an object
of 20,000 sections reads in about a second.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from dataclasses import replace

from ..errors import BpforgeError, ElfError
from ..files import read_input
from ..isa import decode, slot_starts
from ..isa.maptypes import MapSpec
from .btf import Btf, parse_btf
from .btf_ext import BtfExt, parse_ext
from .layout import (EHDR, EM_BPF, ET_REL, R_BPF_NONE, RELOC_NAMES, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS,
                     SHT_PROGBITS, SHT_RELA, SHT_REL, SHT_SYMTAB, STB_LOCAL, STB_GLOBAL, STB_WEAK, STT_FUNC,
                     STT_NOTYPE, STT_SECTION, SYM, ElfImage, Sym, read_image, unpack_rels, unpack_syms)
from .bpfobject import BpfObject
from .maps import btf_maps, data_map, legacy_maps, link_legacy_maps
from .model import DataReloc, DataSection, Program, ProgramSection
from .names import is_data_section, is_legacy_map_section
from .relocs import classify, slot_index

EM_NONE = 0  # what LLVM before 3.9 (2016) wrote into BPF objects; libbpf still accepts it

# Zero-filled sections (.bss) are materialized as bytes; no kernel map value comes near this size.
_MAX_NOBITS = 1 << 26


def read_object(source: str | os.PathLike | bytes, *, filename: str | None = None) -> BpfObject:
    """Read a BPF ELF object from a path or from its bytes (`filename` names it in errors)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, filename = bytes(source), filename or "<bytes>"
    else:
        filename = filename or os.fspath(source)
        data = read_input(source, what="object", error=ElfError)
    try:
        return _Reader(data, filename).read()
    except BpforgeError as err:
        raise err.at(file=filename) from None
    except RecursionError:
        raise ElfError("object nests too deeply to read", file=filename) from None
    except Exception as err:  # a safety net: no exception but ours may leave the reader, whatever the bytes
        raise ElfError(f"corrupt ELF file ({type(err).__name__}: {err})", file=filename) from None


class _Reader:
    def __init__(self, data: bytes, filename: str) -> None:
        self.data = data
        self.filename = filename

    def fail(self, message: str, **where) -> ElfError:
        return ElfError(message, file=self.filename, **where)

    def read(self) -> BpfObject:
        self._check_header()
        image = read_image(self.data)
        names = [s.name for s in image.sections]
        self.first_index: dict[str, int] = {}  # name -> first section of that name (as ElfImage.index)
        for i, name in enumerate(names):
            self.first_index.setdefault(name, i)
        syms = self._symbols(image)
        by_section: dict[int, list[Sym]] = defaultdict(list)
        for sym in syms:
            by_section[sym.shndx].append(sym)

        sections = self._program_sections(image)
        by_name = {s.name: s for s in sections}
        tables = {s.name: slot_index(s.insns) for s in sections}
        self._functions(sections, by_section)

        btf = self._btf(image)
        data_sections = self._data_sections(image, by_section)
        relocs = list(self._relocation_entries(image, syms))
        maps = self._maps(image, by_section, btf, relocs, names)
        maps += [data_map(d) for d in data_sections]

        def locate(section: str, byte: int) -> int | None:
            table = tables.get(section, {})
            index = table.get(byte // 8) if byte % 8 == 0 else None
            return None if index is None or index >= len(by_name[section].insns) else index

        data_relocations = []
        for target, offset, rtype, sym in relocs:
            if target in by_name:
                sec = by_name[target]
                index = locate(target, offset)
                if index is None:
                    raise self.fail(f"relocation at byte {offset} is not at the start of an instruction",
                                    section=target, insn=offset // 8)
                if index in sec.relocations:
                    raise self.fail("two relocations patch the same instruction", section=target, insn=offset // 8)
                sec.relocations[index] = classify(sec, index, rtype, sym, names.__getitem__, by_name, locate, maps,
                                                  offset // 8, self.filename)
            else:
                name = sym.name if sym.type != STT_SECTION else names[sym.shndx] if sym.shndx < len(names) else ""
                data_relocations.append(DataReloc(target, offset, RELOC_NAMES.get(rtype, str(rtype)), name))

        btf_ext = self._btf_ext(image, btf, locate)
        programs, subprograms = self._programs(sections, syms)
        return BpfObject(
            filename=self.filename, sections=sections, programs=programs, subprograms=subprograms, maps=maps,
            data=data_sections, license=self._license(image), kernel_version=self._version(image), btf=btf,
            btf_ext=btf_ext, symbols=syms, data_relocations=data_relocations, image=image)

    def _section(self, image: ElfImage, name: str):
        index = self.first_index.get(name)
        return None if index is None else image.sections[index]

    # ---- file-level checks ---------------------------------------------------------------------------

    def _check_header(self) -> None:
        data = self.data
        if not data:
            raise self.fail("empty file")
        if data[:4] != b"\x7fELF":
            raise self.fail("not an ELF file (no \\x7fELF magic)")
        if len(data) >= 5 and data[4] != 2:
            raise self.fail(f"{'32-bit' if data[4] == 1 else f'class {data[4]}'} ELF; BPF objects are 64-bit")
        if len(data) >= 6 and data[5] != 1:
            raise self.fail("big-endian ELF; only little-endian BPF objects are supported")
        if len(data) < EHDR.size:
            raise self.fail(f"truncated ELF header ({len(data)} of {EHDR.size} bytes)")
        e_type, machine = EHDR.unpack_from(data)[1:3]
        # libbpf's bpf_object__elf_init: EM_BPF, or EM_NONE as old LLVM wrote it; and a relocatable object.
        if machine not in (EM_BPF, EM_NONE):
            raise self.fail(f"not a BPF object: ELF machine {machine}, expected {EM_BPF} (EM_BPF)")
        if e_type != ET_REL:
            raise self.fail(f"not a relocatable object: ELF type {e_type}, expected {ET_REL} (ET_REL, what "
                            "clang -c writes)")

    def _symbols(self, image: ElfImage) -> list[Sym]:
        """The symbol table (libbpf: the one SHT_SYMTAB section, with its string table in sh_link)."""
        tables = [i for i, s in enumerate(image.sections) if s.header.type == SHT_SYMTAB]
        if not tables:
            return []
        if len(tables) > 1:
            raise self.fail(f"{len(tables)} symbol tables (sections {', '.join(map(str, tables))}); an object "
                            "has one")
        table = image.sections[tables[0]]
        h = table.header
        if h.entsize not in (0, SYM.size):
            raise self.fail(f"symbol table entries of {h.entsize} bytes, expected {SYM.size}", section=table.name)
        if h.size % SYM.size:
            raise self.fail(f"symbol table of {h.size} bytes is not a whole number of {SYM.size}-byte symbols",
                            section=table.name)
        if not 0 < h.link < len(image.sections) or image.sections[h.link].header.type == SHT_NOBITS:
            raise self.fail(f"symbol table names string table section {h.link}, which is not one",
                            section=table.name)
        return unpack_syms(table.data, image.sections[h.link].data)

    # ---- code ----------------------------------------------------------------------------------------

    def _program_sections(self, image: ElfImage) -> list[ProgramSection]:
        out = []
        for index, raw in enumerate(image.sections):
            h = raw.header
            if h.type != SHT_PROGBITS or not h.flags & SHF_EXECINSTR or h.size == 0:
                continue
            if h.size % 8:
                raise self.fail(f"executable section size {h.size} is not a multiple of 8 (8-byte instructions)",
                                section=raw.name)
            try:
                insns = decode(raw.data)
            except BpforgeError as err:
                raise err.at(file=self.filename, section=raw.name) from None
            out.append(ProgramSection(raw.name, index, insns))
        return out

    def _functions(self, sections: list[ProgramSection], by_section: dict[int, list[Sym]]) -> None:
        """Function symbols (STT_FUNC; also global untyped labels, which llvm-mc makes of `.globl` names)."""
        for sec in sections:
            table = slot_index(sec.insns)
            rank: dict[int, tuple] = {}
            for sym in by_section.get(sec.index, ()):
                if not sym.name:
                    continue
                if not (sym.type == STT_FUNC or sym.type == STT_NOTYPE and sym.bind in (STB_GLOBAL, STB_WEAK)):
                    continue
                index = table.get(sym.value // 8) if sym.value % 8 == 0 else None
                if index is None or index >= len(sec.insns):
                    raise self.fail(f"function '{sym.name}' at byte {sym.value} is not at an instruction",
                                    section=sec.name, insn=sym.value // 8)
                key = (sym.type != STT_FUNC, sym.bind == STB_LOCAL, sym.index)  # prefer typed, global, first
                if index not in rank or key < rank[index]:
                    rank[index] = key
                    sec.functions[index] = sym.name
            if 0 not in sec.functions:
                sec.functions[0] = sec.name  # code before any symbol: name it after its section
            sec.functions = dict(sorted(sec.functions.items()))

    def _programs(self, sections: list[ProgramSection], syms: list[Sym]) -> tuple[list[Program], list[Program]]:
        """Entry programs and subprograms, by libbpf's prog_is_subprog (libbpf 1.1, as bpftool here uses):
        a .text function is a subprogram unless it is the only function of the object, which libbpf then
        loads as the program (libbpf 1.5 made every .text function a subprogram; we keep the rule that lets
        such objects load)."""
        local = {(s.shndx, s.name) for s in syms if s.bind == STB_LOCAL}
        only_function = sum(len(sec.functions) for sec in sections) == 1
        programs, subprograms = [], []
        for sec in sections:
            starts = slot_starts(sec.insns)
            bounds = sec.function_starts() + [len(sec.insns)]
            by_function: dict[int, dict] = defaultdict(dict)
            for i, r in sec.relocations.items():
                start, _ = sec.function_at(i)
                by_function[start][i - start] = replace(r, insn=i - start)
            for k, (start, name) in enumerate(sec.functions.items()):
                end = bounds[k + 1]
                subprogram = sec.name == ".text" and not only_function
                prog = Program(name, sec.name, start, starts[start], sec.insns[start:end], by_function[start],
                               (sec.index, name) not in local, subprogram)
                (subprograms if subprogram else programs).append(prog)
        return programs, subprograms

    def _relocation_entries(self, image: ElfImage, syms: list[Sym]):
        """(target section, r_offset, type, symbol) of every REL entry; RELA is refused where it matters."""
        for index, sec in enumerate(image.sections):
            h = sec.header
            if h.type not in (SHT_REL, SHT_RELA):
                continue
            if not 0 < h.info < len(image.sections):
                raise self.fail(f"relocation section targets section index {h.info}", section=sec.name)
            target = image.sections[h.info]
            if h.type == SHT_RELA:
                if target.header.flags & SHF_EXECINSTR:
                    raise self.fail("RELA relocations of code are not produced by the BPF backend",
                                    section=sec.name)
                continue
            if h.size % 16:
                raise self.fail(f"relocation section of {h.size} bytes is not a whole number of 16-byte entries",
                                section=sec.name)
            for n, rel in enumerate(unpack_rels(sec.data)):
                if rel.type == R_BPF_NONE:
                    continue
                if rel.sym >= len(syms):
                    raise self.fail(f"relocation {n} names symbol {rel.sym} of {len(syms)}", section=sec.name)
                if target.header.type != SHT_NOBITS and rel.offset >= target.header.size:
                    raise self.fail(f"relocation {n} at byte {rel.offset} is beyond its section "
                                    f"({target.header.size} bytes)", section=sec.name)
                yield target.name, rel.offset, rel.type, syms[rel.sym]

    # ---- maps and data -------------------------------------------------------------------------------

    def _btf(self, image: ElfImage) -> Btf | None:
        section = self._section(image, ".BTF")
        if section is None:
            return None
        try:
            return parse_btf(section.data)
        except BpforgeError as err:
            raise err.at(file=self.filename, section=".BTF") from None

    def _btf_ext(self, image: ElfImage, btf: Btf | None, locate) -> BtfExt | None:
        section = self._section(image, ".BTF.ext")
        if section is None or btf is None:
            return None
        known = self.first_index

        def insn_index(section: str, byte: int) -> int | None:
            if section not in known:
                raise ElfError(f".BTF.ext refers to section '{section}', which the object lacks",
                               section=".BTF.ext")
            return locate(section, byte)

        try:
            return parse_ext(section.data, btf, insn_index)
        except BpforgeError as err:
            raise err.at(file=self.filename, section=".BTF.ext") from None

    def _data_sections(self, image: ElfImage, by_section: dict[int, list[Sym]]) -> list[DataSection]:
        out = []
        for index, raw in enumerate(image.sections):
            h = raw.header
            if not is_data_section(raw.name) or not h.flags & SHF_ALLOC or h.flags & SHF_EXECINSTR or h.size == 0:
                continue
            if h.type == SHT_NOBITS and h.size > _MAX_NOBITS:
                raise self.fail(f"{raw.name} of {h.size} bytes is implausibly large for global data (more than "
                                f"{_MAX_NOBITS} bytes)", section=raw.name)
            body = bytes(h.size) if h.type == SHT_NOBITS else raw.data
            symbols = {s.name: (s.value, s.size) for s in by_section.get(index, ()) if s.name
                       and s.type != STT_SECTION}
            out.append(DataSection(raw.name, h.size, body, not h.flags & SHF_WRITE, symbols))
        return out

    def _maps(self, image: ElfImage, by_section: dict[int, list[Sym]], btf: Btf | None, relocs,
              names: list[str]) -> list[MapSpec]:
        maps: list[MapSpec] = []
        legacy: list[MapSpec] = []
        for index, raw in enumerate(image.sections):  # `maps` and `maps/NAME`: struct bpf_map_def and kin
            if is_legacy_map_section(raw.name) and raw.header.size and raw.header.type != SHT_NOBITS:
                legacy += legacy_maps(raw.data, by_section.get(index, []), raw.name, index, self.filename)
        maps += link_legacy_maps(legacy, self.filename)
        btf_index = self.first_index.get(".maps")
        if btf_index is not None:
            values = {offset: (sym.name if sym.type != STT_SECTION else names[sym.shndx])
                      for target, offset, _, sym in relocs if target == ".maps"}
            symbols = {s.name: (s.value, s.size) for s in by_section.get(btf_index, ())
                       if s.name and s.type != STT_SECTION}
            try:
                maps += btf_maps(btf, ".maps", image.sections[btf_index].header.size, symbols, values,
                                 self.filename)
            except BpforgeError as err:
                raise err.at(file=self.filename, section=".maps") from None
        return maps

    def _license(self, image: ElfImage) -> str | None:
        section = self._section(image, "license")
        if section is None:
            return None
        return section.data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _version(self, image: ElfImage) -> int | None:
        section = self._section(image, "version")
        if section is None or len(section.data) < 4:
            return None
        return struct.unpack_from("<I", section.data)[0]
