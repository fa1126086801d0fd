"""Read a clang BPF object (pyelftools) into a `BpfObject`: program sections and their functions,
relocations, maps, global data, license, BTF and BTF.ext. Anything malformed is an ElfError (or the
DecodeError of the instruction at fault) naming the file and, where known, the section and instruction."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import replace

from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_ST_INFO_BIND, ENUM_ST_INFO_TYPE, ENUM_ST_SHNDX
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from ..errors import BpforgeError, ElfError
from ..isa import decode, slot_starts
from .btf import Btf, parse_btf
from .btf_ext import BtfExt, parse_ext
from .layout import (EHDR, EM_BPF, R_BPF_NONE, RELOC_NAMES, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS,
                     SHT_PROGBITS, SHT_RELA, SHT_REL, STB_LOCAL, STB_GLOBAL, STB_WEAK, STT_FUNC, STT_NOTYPE,
                     STT_SECTION, ElfImage, Sym, read_image)
from .maps import btf_maps, data_map, is_data_section, legacy_maps
from .model import BpfObject, DataReloc, DataSection, MapDef, Program, ProgramSection
from .relocs import classify, slot_index


# Zero-filled sections (.bss) are materialized as bytes; no kernel map value comes near this size.
_MAX_NOBITS = 1 << 26


def read_object(source: str | os.PathLike | bytes, *, filename: str | None = None) -> BpfObject:
    """Read a BPF ELF object from a path or from its bytes (`filename` names it in errors)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, filename = bytes(source), filename or "<bytes>"
    else:
        filename = filename or os.fspath(source)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ElfError(f"cannot read: {err.strerror or err}", file=filename) from None
    try:
        return _Reader(data, filename).read()
    except BpforgeError as err:
        raise err.at(file=filename) from None
    except Exception as err:  # pyelftools and struct raise many types on corrupt input; none may escape
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
        elf = ELFFile(io.BytesIO(self.data))
        names = [s.name for s in image.sections]
        syms = self._symbols(elf, names)

        sections = self._program_sections(image)
        by_name = {s.name: s for s in sections}
        tables = {s.name: slot_index(s.insns) for s in sections}
        self._functions(sections, syms)

        btf = self._btf(image)
        data_sections = self._data_sections(image, syms)
        relocs = list(self._relocation_entries(elf, image, syms))
        maps = self._maps(image, syms, btf, relocs, names)
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
        machine = EHDR.unpack_from(data)[2]
        if machine != EM_BPF:
            raise self.fail(f"not a BPF object: ELF machine {machine}, expected {EM_BPF} (EM_BPF)")

    def _symbols(self, elf: ELFFile, names: list[str]) -> list[Sym]:
        tables = [s for s in elf.iter_sections() if isinstance(s, SymbolTableSection) and s.name == ".symtab"]
        if not tables:
            return []
        out = []
        for index, sym in enumerate(tables[0].iter_symbols()):
            info = sym.entry["st_info"]
            shndx = sym.entry["st_shndx"]
            shndx = ENUM_ST_SHNDX.get(shndx, 0) if isinstance(shndx, str) else shndx
            kind = info["type"] if isinstance(info["type"], int) else ENUM_ST_INFO_TYPE[info["type"]]
            bind = info["bind"] if isinstance(info["bind"], int) else ENUM_ST_INFO_BIND[info["bind"]]
            out.append(Sym(index, sym.name, sym.entry["st_name"], sym.entry["st_value"], sym.entry["st_size"], kind,
                           bind, 0, shndx))
        return out

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

    def _functions(self, sections: list[ProgramSection], syms: list[Sym]) -> None:
        """Function symbols (STT_FUNC; also global untyped labels, which llvm-mc makes of `.globl` names)."""
        for sec in sections:
            table = slot_index(sec.insns)
            rank: dict[int, tuple] = {}
            for sym in syms:
                if sym.shndx != sec.index or not sym.name:
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
        local = {(s.shndx, s.name) for s in syms if s.bind == STB_LOCAL}
        programs, subprograms = [], []
        for sec in sections:
            starts = slot_starts(sec.insns)
            for start, name in sec.functions.items():
                _, end = sec.function_range(start)
                relocs = {i - start: replace(r, insn=i - start) for i, r in sec.relocations.items() if start <= i < end}
                prog = Program(name, sec.name, start, starts[start], sec.insns[start:end], relocs,
                               (sec.index, name) not in local)
                (subprograms if sec.name == ".text" else programs).append(prog)
        return programs, subprograms

    def _relocation_entries(self, elf: ELFFile, image: ElfImage, syms: list[Sym]):
        """(target section, r_offset, type, symbol) of every REL entry; RELA is refused where it matters."""
        for index, sec in enumerate(elf.iter_sections()):
            h = image.sections[index].header
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
            if not isinstance(sec, RelocationSection):
                continue
            for n, rel in enumerate(sec.iter_relocations()):
                rtype, sym_index = rel["r_info_type"], rel["r_info_sym"]
                if rtype == R_BPF_NONE:
                    continue
                if sym_index >= len(syms):
                    raise self.fail(f"relocation {n} names symbol {sym_index} of {len(syms)}", section=sec.name)
                if target.header.type != SHT_NOBITS and rel["r_offset"] >= target.header.size:
                    raise self.fail(f"relocation {n} at byte {rel['r_offset']} is beyond its section "
                                    f"({target.header.size} bytes)", section=sec.name)
                yield target.name, rel["r_offset"], rtype, syms[sym_index]

    # ---- maps and data -------------------------------------------------------------------------------

    def _btf(self, image: ElfImage) -> Btf | None:
        index = image.index(".BTF")
        if index is None:
            return None
        try:
            return parse_btf(image.sections[index].data)
        except BpforgeError as err:
            raise err.at(file=self.filename, section=".BTF") from None

    def _btf_ext(self, image: ElfImage, btf: Btf | None, locate) -> BtfExt | None:
        index = image.index(".BTF.ext")
        if index is None or btf is None:
            return None
        known = {s.name for s in image.sections}

        def insn_index(section: str, byte: int) -> int | None:
            if section not in known:
                raise ElfError(f".BTF.ext refers to section '{section}', which the object lacks",
                               section=".BTF.ext")
            return locate(section, byte)

        try:
            return parse_ext(image.sections[index].data, btf, insn_index)
        except BpforgeError as err:
            raise err.at(file=self.filename, section=".BTF.ext") from None

    def _data_sections(self, image: ElfImage, syms: list[Sym]) -> list[DataSection]:
        out = []
        for index, raw in enumerate(image.sections):
            h = raw.header
            if not is_data_section(raw.name) or not h.flags & SHF_ALLOC or h.flags & SHF_EXECINSTR or h.size == 0:
                continue
            if h.type == SHT_NOBITS and h.size > _MAX_NOBITS:
                raise self.fail(f"{raw.name} of {h.size} bytes is implausibly large for global data (more than "
                                f"{_MAX_NOBITS} bytes)", section=raw.name)
            body = bytes(h.size) if h.type == SHT_NOBITS else raw.data
            symbols = {s.name: (s.value, s.size) for s in syms if s.shndx == index and s.name
                       and s.type != STT_SECTION}
            out.append(DataSection(raw.name, h.size, body, not h.flags & SHF_WRITE, symbols))
        return out

    def _maps(self, image: ElfImage, syms: list[Sym], btf: Btf | None, relocs, names: list[str]) -> list[MapDef]:
        maps: list[MapDef] = []
        legacy = image.index("maps")
        if legacy is not None and image.sections[legacy].header.size:
            maps += legacy_maps(image.sections[legacy].data, syms, "maps", legacy, self.filename)
        btf_index = image.index(".maps")
        if btf_index is not None:
            values = {offset: (sym.name if sym.type != STT_SECTION else names[sym.shndx])
                      for target, offset, _, sym in relocs if target == ".maps"}
            symbols = {s.name: (s.value, s.size) for s in syms
                       if s.shndx == btf_index and s.name and s.type != STT_SECTION}
            try:
                maps += btf_maps(btf, ".maps", image.sections[btf_index].header.size, symbols, values,
                                 self.filename)
            except BpforgeError as err:
                raise err.at(file=self.filename, section=".maps") from None
        return maps

    def _license(self, image: ElfImage) -> str | None:
        index = image.index("license")
        if index is None:
            return None
        return image.sections[index].data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _version(self, image: ElfImage) -> int | None:
        index = image.index("version")
        if index is None or len(image.sections[index].data) < 4:
            return None
        return struct.unpack_from("<I", image.sections[index].data)[0]
