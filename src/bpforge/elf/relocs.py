"""Relocations of instructions, classified the way libbpf's bpf_program__record_reloc does.

R_BPF_64_64 patches an lddw: a map when the symbol lies in .maps/maps, global data when it lies in a data
section (byte offset = symbol value + the lddw's imm, which clang uses as addend for section symbols), a
function's address when it lies in an executable section (byte offset = symbol value + imm), an __arena
variable when it lies in `.addr_space.1` (libbpf's arena data relocation: a value load of the object's arena
map; byte offset in the section = symbol value + imm, placed at `maps.arena_data_offset` in the arena).
R_BPF_64_32 patches a bpf-to-bpf call: the callee is at symbol value + (imm + 1) * 8 bytes (function symbols
come with imm = -1, section symbols with the callee's slot - 1).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ElfError
from ..isa import Insn
from ..isa.maptypes import MapSpec
from .layout import R_BPF_64_32, R_BPF_64_64, RELOC_NAMES, SHN_UNDEF, STT_SECTION, Sym
from .maps import NO_ARENA_MAP, single_arena
from .model import ProgramSection, Reloc
from .names import ARENA_SECTION, is_data_section, is_map_section


def call_target_byte(rtype: int, insn: Insn, sym_value: int) -> int:
    """Byte offset, in the symbol's section, of what a call or function-address relocation refers to."""
    return sym_value + (insn.imm + 1) * 8 if rtype == R_BPF_64_32 else sym_value + insn.imm


def target_imm(rtype: int, target_byte: int, sym_value: int) -> int:
    """The imm that makes a call or function-address relocation refer to `target_byte` (inverse of the above)."""
    return (target_byte - sym_value) // 8 - 1 if rtype == R_BPF_64_32 else target_byte - sym_value


def function_label(sec: ProgramSection, index: int) -> str:
    if index in sec.functions:
        return sec.functions[index]
    start, name = sec.function_at(index)
    return f"{name}+{index - start}"


def classify(
    sec: ProgramSection, index: int, rtype: int, sym: Sym, section_name: Callable[[int], str],
    programs: dict[str, ProgramSection], locate: Callable[[str, int], int | None], maps: list[MapSpec], slot: int,
    filename: str,
) -> Reloc:
    """The meaning of relocation `rtype` against `sym` on instruction `index` of `sec`.

    `locate(section, byte)` is the index of the instruction starting at that byte (None if none does)."""
    insn = sec.insns[index]
    where = dict(file=filename, section=sec.name, insn=slot)
    type_name = RELOC_NAMES.get(rtype, str(rtype))
    form = insn.form
    if rtype == R_BPF_64_64 and form.kind != "lddw":
        raise ElfError(f"{type_name} relocation against '{sym.name}' on a {form.name} instruction (needs lddw)",
                       **where)
    if rtype == R_BPF_64_32 and form.kind != "call":
        raise ElfError(f"{type_name} relocation against '{sym.name}' on a {form.name} instruction (needs a call)",
                       **where)
    if rtype not in (R_BPF_64_64, R_BPF_64_32):
        raise ElfError(f"relocation type {type_name} cannot patch an instruction", **where)
    try:
        symbol = sym.name if sym.type != STT_SECTION else section_name(sym.shndx)
    except IndexError:
        symbol = f"section {sym.shndx}"
    make = lambda kind, target, offset=0, target_section=None: Reloc(  # noqa: E731
        index, type_name, symbol, kind, target, offset, target_section)
    if sym.shndx == SHN_UNDEF:
        return make("extern", sym.name)
    try:
        home = section_name(sym.shndx) if sym.shndx < 0xFF00 else None
    except IndexError:
        home = None
    if home is None:
        raise ElfError(f"relocation against '{sym.name}', which is in no section of the file (index "
                       f"{sym.shndx:#x})", **where)
    if home in programs:
        target_sec = programs[home]
        byte = call_target_byte(rtype, insn, sym.value)
        target = locate(home, byte)
        if target is None:
            raise ElfError(f"{type_name} relocation against '{symbol}' refers to byte {byte} of {home}, "
                           "which is not the start of an instruction", **where)
        return make("call" if rtype == R_BPF_64_32 else "func", function_label(target_sec, target), target, home)
    if rtype == R_BPF_64_32:
        raise ElfError(f"call relocation against '{symbol}' in non-executable section {home}", **where)
    if home == ARENA_SECTION:
        arena = single_arena(maps, filename)
        if arena is None:
            raise ElfError(f"relocation against '{symbol}': {NO_ARENA_MAP}", **where)
        return make("arena", arena.name, sym.value + insn.imm, home)
    if is_map_section(home):
        offset = sym.value + (insn.imm if sym.type == STT_SECTION else 0)
        for m in maps:
            if m.section == home and m.offset == offset:
                return make("map", m.name, 0, home)
        if sym.type == STT_SECTION:
            raise ElfError(f"map relocation against {home}+{offset}, where no map is defined", **where)
        return make("map", sym.name, 0, home)
    if is_data_section(home):
        return make("data", home, sym.value + insn.imm, home)
    raise ElfError(f"relocation against '{symbol}' in section {home}, which is neither maps, data nor code",
                   **where)


def slot_index(insns: list[Insn]) -> dict[int, int]:
    """slot -> instruction index, including the end slot (-> len(insns))."""
    table, slot = {}, 0
    for i, insn in enumerate(insns):
        table[slot] = i
        slot += insn.slots
    table[slot] = len(insns)
    return table
