"""The ELF64 little-endian structures a BPF object is made of, and the byte layout of a whole file.

pyelftools only reads, so everything written (the rewritten object, a fresh one from assembly) goes through
these packers. `ElfImage` is a file as headers plus raw section contents; `serialize` lays it out again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from ..errors import ElfError

EM_BPF = 247
ET_REL = 1

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 0, 1, 2, 3, 4
SHT_NOBITS, SHT_REL = 8, 9
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK = 0x1, 0x2, 0x4, 0x40

STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
SHN_UNDEF, SHN_LORESERVE, SHN_ABS, SHN_COMMON = 0, 0xFF00, 0xFFF1, 0xFFF2

# Relocation types of the BPF backend (llvm/BinaryFormat/ELFRelocs/BPF.def).
R_BPF_NONE, R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32, R_BPF_64_32 = 0, 1, 2, 3, 4, 10
RELOC_NAMES = {R_BPF_NONE: "R_BPF_NONE", R_BPF_64_64: "R_BPF_64_64", R_BPF_64_ABS64: "R_BPF_64_ABS64",
               R_BPF_64_ABS32: "R_BPF_64_ABS32", R_BPF_64_NODYLD32: "R_BPF_64_NODYLD32", R_BPF_64_32: "R_BPF_64_32"}
RELOC_TYPES = {name: number for number, name in RELOC_NAMES.items()}

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
REL = struct.Struct("<QQ")
RELA = struct.Struct("<QQq")


@dataclass
class SectionHeader:
    name: int = 0  # offset of the name in the section-header string table
    type: int = SHT_NULL
    flags: int = 0
    addr: int = 0
    offset: int = 0
    size: int = 0
    link: int = 0
    info: int = 0
    addralign: int = 0
    entsize: int = 0

    def pack(self) -> bytes:
        return SHDR.pack(self.name, self.type, self.flags, self.addr, self.offset, self.size, self.link, self.info,
                         self.addralign, self.entsize)


@dataclass
class RawSection:
    """One section exactly as stored: its header and its bytes (empty for SHT_NOBITS)."""

    name: str
    header: SectionHeader
    data: bytes = b""


@dataclass
class ElfImage:
    """A relocatable ELF file as the writer needs it: the file header fields and the sections in index order."""

    ident: bytes
    type: int = ET_REL
    machine: int = EM_BPF
    version: int = 1
    entry: int = 0
    flags: int = 0
    shstrndx: int = 0
    sections: list[RawSection] = field(default_factory=list)
    shoff: int = 0  # where the section header table was, to keep its place in the layout

    def index(self, name: str) -> int | None:
        for i, sec in enumerate(self.sections):
            if sec.name == name:
                return i
        return None

    def copy(self) -> "ElfImage":
        return replace(self, sections=[RawSection(s.name, replace(s.header), s.data) for s in self.sections])


@dataclass(frozen=True)
class Sym:
    """An Elf64_Sym, with its index in the table and its resolved name."""

    index: int
    name: str
    name_off: int
    value: int
    size: int
    type: int
    bind: int
    other: int
    shndx: int

    def pack(self) -> bytes:
        return SYM.pack(self.name_off, self.bind << 4 | self.type, self.other, self.shndx, self.value, self.size)


@dataclass(frozen=True)
class Rel:
    offset: int
    sym: int
    type: int

    def pack(self) -> bytes:
        return REL.pack(self.offset, self.sym << 32 | self.type)


def unpack_syms(data: bytes, strtab: bytes) -> list[Sym]:
    syms = []
    for index in range(len(data) // SYM.size):
        name_off, info, other, shndx, value, size = SYM.unpack_from(data, index * SYM.size)
        syms.append(Sym(index, c_string(strtab, name_off), name_off, value, size, info & 0xF, info >> 4, other, shndx))
    return syms


def unpack_rels(data: bytes) -> list[Rel]:
    return [Rel(off, info >> 32, info & 0xFFFFFFFF) for off, info in REL.iter_unpack(data[:len(data) // 16 * 16])]


def c_string(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode("utf-8", "replace")


class StringTable:
    """Builds an ELF string table (offset 0 is the empty string); equal strings share one entry."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        if text not in self._offsets:
            self._offsets[text] = len(self.data)
            self.data += text.encode() + b"\0"
        return self._offsets[text]


# Gaps between sections are kept only up to this size, alignments only up to a page: a corrupt header
# must not make the writer allocate gigabytes.
_MAX_GAP = _MAX_ALIGN = 4096


def _align(value: int, alignment: int) -> int:
    if alignment > _MAX_ALIGN or alignment & (alignment - 1):
        alignment = 8
    return value if alignment <= 1 else (value + alignment - 1) // alignment * alignment


def serialize(image: ElfImage, *, keep_gaps: bool = True) -> bytes:
    """Lay the image out: the sections' bytes in their original file order, each aligned, keeping any extra
    gap the producer left, the section header table where it was in that order. An image read from a
    tightly packed file (what clang and llvm-mc write) comes back byte-identical. A new image (keep_gaps
    False) is laid out in section index order with the header table last."""
    if not keep_gaps:
        image = image.copy()
        for i, sec in enumerate(image.sections):
            sec.header.offset = i
        image.shoff = len(image.sections)
    secs = image.sections
    # Order of the pieces in the old file; the header table is a piece of its own (index None).
    pieces = [i for i in range(1, len(secs)) if secs[i].header.type != SHT_NULL] + [None]
    pieces.sort(key=lambda i: (image.shoff, 1, 0) if i is None else (secs[i].header.offset, 0, i))
    out = bytearray(EHDR.size)
    old_end = EHDR.size
    headers = [replace(s.header) for s in secs]
    shoff = 0
    for i in pieces:
        if i is None:
            align, old_off, size = 8, image.shoff, len(secs) * SHDR.size
        else:
            h = secs[i].header
            align, old_off = h.addralign, h.offset
            size = 0 if h.type == SHT_NOBITS else len(secs[i].data)
        gap = old_off - _align(old_end, align)
        gap = gap if 0 <= gap <= _MAX_GAP else 0
        start = _align(len(out) + gap, align)
        out += bytes(start - len(out))
        if i is None:
            shoff = start
            out += bytes(size)  # filled below, once every offset is known
        else:
            headers[i].offset = start
            headers[i].size = len(secs[i].data) if secs[i].header.type != SHT_NOBITS else secs[i].header.size
            out += secs[i].data if secs[i].header.type != SHT_NOBITS else b""
        old_end = old_off + (size if i is None or secs[i].header.type == SHT_NOBITS else secs[i].header.size)
    for i, h in enumerate(headers):
        out[shoff + i * SHDR.size: shoff + (i + 1) * SHDR.size] = h.pack()
    out[:EHDR.size] = EHDR.pack(image.ident, image.type, image.machine, image.version, image.entry, 0, shoff,
                                image.flags, EHDR.size, 0, 0, SHDR.size, len(secs), image.shstrndx)
    return bytes(out)


def elf_ident() -> bytes:
    """e_ident of a 64-bit little-endian System V object."""
    return b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)


def read_image(data: bytes) -> ElfImage:
    """Headers and raw section bytes of a 64-bit little-endian ELF file, every offset bounds-checked.

    Raises ElfError (without a file name; the caller adds it)."""
    if len(data) < EHDR.size:
        raise ElfError(f"truncated ELF header ({len(data)} of {EHDR.size} bytes)")
    (ident, e_type, machine, version, entry, _phoff, shoff, flags, _ehsize, _phentsize, phnum, shentsize, shnum,
     shstrndx) = EHDR.unpack_from(data)
    if phnum:
        raise ElfError(f"ELF file has {phnum} program headers: not a relocatable object (type {e_type})")
    if shnum == 0:
        raise ElfError("ELF file has no section headers (or uses extended section numbering, which BPF objects "
                       "never need)")
    if shentsize != SHDR.size:
        raise ElfError(f"section header size {shentsize}, expected {SHDR.size}")
    if shoff + shnum * SHDR.size > len(data):
        raise ElfError(f"section header table ({shnum} entries at offset {shoff}) runs past the end of the file "
                       f"({len(data)} bytes): truncated")
    headers = [SectionHeader(*SHDR.unpack_from(data, shoff + i * SHDR.size)) for i in range(shnum)]
    if not 0 < shstrndx < shnum:
        raise ElfError(f"section name string table index {shstrndx} is out of range")
    image = ElfImage(ident, e_type, machine, version, entry, flags, shstrndx, shoff=shoff)
    for i, h in enumerate(headers):
        if h.type not in (SHT_NULL, SHT_NOBITS) and h.offset + h.size > len(data):
            raise ElfError(f"section {i} ({h.size} bytes at offset {h.offset}) runs past the end of the file "
                           f"({len(data)} bytes): truncated")
    names = data[headers[shstrndx].offset: headers[shstrndx].offset + headers[shstrndx].size]
    for h in headers:
        if h.name >= max(len(names), 1):
            raise ElfError(f"section name offset {h.name} is beyond the section name table")
        body = b"" if h.type in (SHT_NULL, SHT_NOBITS) else data[h.offset:h.offset + h.size]
        image.sections.append(RawSection(c_string(names, h.name), h, body))
    return image
