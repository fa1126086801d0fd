"""A fresh relocatable BPF object from assembled text: what `bpforge asm x.s -o x.o` writes.

One executable section per assembly section, a global STT_FUNC symbol per function, relocations against
the symbols they name (undefined ones stay undefined: maps and data the loader must provide), a license
section, and the symbol, string and section-name tables. No BTF: libbpf loads such objects as they are.
"""

from __future__ import annotations

from ..errors import AsmError, ElfError
from ..isa import AsmProgram, AsmSection, encode, slot_count, slot_starts
from .layout import (EM_BPF, ET_REL, R_BPF_64_32, R_BPF_64_64, RELOC_TYPES, SHF_ALLOC, SHF_EXECINSTR,
                     SHF_INFO_LINK, SHF_WRITE, SHN_LORESERVE, SHN_UNDEF, SHT_PROGBITS, SHT_REL, SHT_STRTAB,
                     SHT_SYMTAB, STB_GLOBAL, STT_FUNC, STT_NOTYPE, STT_OBJECT, ElfImage, RawSection, Rel, SectionHeader, StringTable, Sym,
                     elf_ident, serialize)
from .names import reserved_section_reason


def build_object(program: AsmProgram, *, license: str = "GPL", filename: str | None = None) -> bytes:
    """The bytes of an ELF object holding `program`'s sections."""
    _check_sections(program, filename)
    names = StringTable()  # section names
    strings = StringTable()  # symbol names
    image = ElfImage(elf_ident(), ET_REL, EM_BPF, 1)
    image.sections.append(RawSection("", SectionHeader()))

    def add(name: str, header: SectionHeader, data: bytes = b"") -> int:
        header.name = names.add(name)
        image.sections.append(RawSection(name, header, data))
        return len(image.sections) - 1

    code_index: dict[str, int] = {}
    for sec in program.sections:
        if sec.name in code_index:
            raise ElfError(f"section '{sec.name}' appears twice", file=filename)
        code_index[sec.name] = add(sec.name, SectionHeader(type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR,
                                                           addralign=8), encode(sec.insns))

    # Symbols: functions (and labels other sections call), LICENSE, then whatever stays undefined.
    symbols: list[Sym] = [Sym(0, "", 0, 0, 0, STT_NOTYPE, 0, 0, SHN_UNDEF)]
    by_name: dict[str, int] = {}
    called = {rel.symbol for sec in program.sections for rel in sec.relocations}
    for sec in program.sections:
        starts = slot_starts(sec.insns) + [slot_count(sec.insns)]
        entries = dict(sec.functions)
        entries.update({label: index for label, index in sec.labels.items() if label in called})
        bounds = sorted(set(entries.values()))
        for name, index in sorted(entries.items(), key=lambda item: item[1]):
            if name in by_name:
                raise ElfError(f"symbol '{name}' is defined in two sections", file=filename, section=sec.name)
            end = next((b for b in bounds if b > index), len(sec.insns))
            by_name[name] = len(symbols)
            symbols.append(Sym(len(symbols), name, strings.add(name), starts[index] * 8,
                               (starts[end] - starts[index]) * 8, STT_FUNC, STB_GLOBAL, 0, code_index[sec.name]))
    license_data = license.encode() + b"\0"
    license_index = add("license", SectionHeader(type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, addralign=1),
                        license_data)
    symbols.append(Sym(len(symbols), "LICENSE", strings.add("LICENSE"), 0, len(license_data), STT_OBJECT,
                       STB_GLOBAL, 0, license_index))
    for sec in program.sections:
        for rel in sec.relocations:
            if rel.symbol not in by_name:
                by_name[rel.symbol] = len(symbols)
                symbols.append(Sym(len(symbols), rel.symbol, strings.add(rel.symbol), 0, 0, STT_NOTYPE, STB_GLOBAL,
                                   0, SHN_UNDEF))

    symtab_index = len(image.sections) + sum(1 for s in program.sections if s.relocations)
    for sec in program.sections:
        if sec.relocations:
            add(".rel" + sec.name, SectionHeader(type=SHT_REL, flags=SHF_INFO_LINK, link=symtab_index,
                                                 info=code_index[sec.name], addralign=8, entsize=16),
                _relocations(sec, by_name, filename))
    strtab_index = symtab_index + 1
    add(".symtab", SectionHeader(type=SHT_SYMTAB, link=strtab_index, info=1, addralign=8, entsize=24),
        b"".join(s.pack() for s in symbols))  # info: index of the first global; all but the null one are
    add(".strtab", SectionHeader(type=SHT_STRTAB, addralign=1), bytes(strings.data))
    names.add(".shstrtab")
    image.shstrndx = add(".shstrtab", SectionHeader(type=SHT_STRTAB, addralign=1), b"")
    image.sections[image.shstrndx].data = bytes(names.data)
    return serialize(image, keep_gaps=False)


def _check_sections(program: AsmProgram, filename: str | None) -> None:
    """Refuse what would make an object that loaders (bpforge's own reader among them) misread: code under a
    name they give another meaning (.BTF, .maps, license, .data...), or more sections than ELF can number
    without extended indexes (SHN_LORESERVE; symbols could not name the sections beyond it)."""
    for sec in program.sections:
        reason = reserved_section_reason(sec.name)
        if reason is not None:
            raise AsmError(f"code cannot go in section '{sec.name}': {reason}", file=filename, line=sec.line)
    # null + code + their .rel sections + license + .symtab + .strtab + .shstrtab
    total = 1 + len(program.sections) + sum(1 for s in program.sections if s.relocations) + 4
    if total >= SHN_LORESERVE:
        raise AsmError(f"{len(program.sections)} sections make an object of {total} ELF sections; ELF numbers at "
                       f"most {SHN_LORESERVE - 1} without extended section indexes", file=filename)


def _relocations(sec: AsmSection, by_name: dict[str, int], filename: str | None) -> bytes:
    starts = slot_starts(sec.insns)
    out = []
    for rel in sec.relocations:
        insn = sec.insns[rel.insn]
        if rel.type:
            if rel.type not in RELOC_TYPES:
                raise AsmError(f"unknown relocation type {rel.type}", file=filename,
                               line=sec.lines[rel.insn] if rel.insn < len(sec.lines) else None)
            rtype = RELOC_TYPES[rel.type]
        else:
            rtype = R_BPF_64_64 if insn.form.kind == "lddw" else R_BPF_64_32
        out.append(Rel(starts[rel.insn] * 8, by_name[rel.symbol], rtype))
    return b"".join(r.pack() for r in sorted(out, key=lambda r: r.offset))
