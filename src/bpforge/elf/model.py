"""What a BPF object holds, as plain dataclasses: program sections, functions, relocations, maps, data.

Instruction indexes count instructions (an lddw is one), as in `isa.Insn` lists; byte offsets in the file
count 8-byte slots. Every relocation is keyed by the index of the instruction it patches, within the
container that holds it (a section, a function, a linked program).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ElfError
from ..isa import Insn
from ..isa.maptypes import MAP_TYPES, map_type_name  # noqa: F401  (used by the readers of objects)

if TYPE_CHECKING:
    from .btf import Btf
    from .btf_ext import BtfExt
    from .layout import ElfImage, Sym


@dataclass(frozen=True)
class Reloc:
    """A relocation of one instruction, as libbpf interprets it.

    kind: "map" (lddw of a map: target = map name), "data" (lddw of global data: target = section, `offset`
    = byte offset in it), "call" (bpf-to-bpf call: target = function name, `target_section`/`offset` = the
    callee's section and instruction index), "func" (lddw of a function's address, same fields as "call"),
    "extern" (a symbol the object does not define: kfuncs, ksyms, kconfig; target = its name), "arena" (lddw
    of an __arena variable: target = the object's arena map, `offset` = byte offset in `.addr_space.1`; the
    arena holds that section at `maps.arena_data_offset`)."""

    insn: int
    type: str  # R_BPF_64_64 or R_BPF_64_32
    symbol: str  # the symbol named by the ELF relocation (the section's name for a section symbol)
    kind: str
    target: str
    offset: int = 0
    target_section: str | None = None


# The kinds a loader resolves to a map (the map itself, a value of global data, an arena global).
MAP_RELOC_KINDS = ("map", "data", "arena")


@dataclass(frozen=True)
class DataReloc:
    """A relocation in a non-executable section (.maps, .BTF, .BTF.ext, debug info): kept, not interpreted."""

    section: str
    offset: int
    type: str
    symbol: str


@dataclass
class ProgramSection:
    """An executable section: its instructions, the functions it defines and its relocations."""

    name: str
    index: int  # ELF section index
    insns: list[Insn]
    functions: dict[int, str] = field(default_factory=dict)  # instruction index -> function name
    relocations: dict[int, Reloc] = field(default_factory=dict)
    # Sorted function starts, kept for the dict they were computed from: lookups stay O(log n) in an object
    # of thousands of functions (replace `functions` rather than re-keying it in place).
    _starts: tuple[int, int, list[int]] | None = field(default=None, init=False, repr=False, compare=False)

    def function_starts(self) -> list[int]:
        """The instruction indexes where functions start, in order."""
        key = (id(self.functions), len(self.functions))
        if self._starts is None or self._starts[:2] != key:
            self._starts = (*key, sorted(self.functions))
        return self._starts[2]

    def function_at(self, index: int) -> tuple[int, str]:
        """(start, name) of the function containing instruction `index`."""
        starts = self.function_starts()
        at = bisect.bisect_right(starts, index) - 1
        if at < 0:
            raise ElfError(f"instruction {index} lies before the first function", section=self.name)
        return starts[at], self.functions[starts[at]]

    def function_range(self, start: int) -> tuple[int, int]:
        """[start, end) of the function that starts at `start`."""
        starts = self.function_starts()
        later = bisect.bisect_right(starts, start)
        return start, starts[later] if later < len(starts) else len(self.insns)


@dataclass
class Program:
    """One function of a section: an entry program (outside .text, or the only function of the object) or a
    subprogram (in .text).

    `insns` are the function's own instructions; `relocations` are keyed by index within them."""

    name: str
    section: str
    start: int  # index of the first instruction in the section
    start_slot: int  # slot of the first instruction in the section (llvm-objdump's numbering)
    insns: list[Insn]
    relocations: dict[int, Reloc] = field(default_factory=dict)
    is_global: bool = True
    # libbpf's prog_is_subprog: a .text function, unless it is the object's only function (then libbpf
    # loads it as the program; see reader._programs).
    is_subprogram: bool = False


@dataclass
class LinkedProgram:
    """A program as libbpf hands it to the kernel: its function, then every .text subprogram it calls
    (transitively, in libbpf's depth-first order), calls and function addresses rewritten pc-relative.

    `relocations` lists the map/data/extern references still to resolve; `functions` names the function
    starting at each index; `origins` gives (section, index in section) of every instruction."""

    name: str
    section: str
    insns: list[Insn]
    relocations: list[tuple[int, Reloc]]
    functions: dict[int, str]
    origins: list[tuple[str, int]]


@dataclass
class MapDef:
    """A map the object declares. source: "btf" (.maps), "legacy" (maps, struct bpf_map_def) or "data"
    (the array libbpf makes of a global data section; `initial` holds its contents). An arena's `initial`,
    set by `maps.with_arena_data`, is the object's `.addr_space.1`: its __arena globals."""

    name: str
    type: int
    type_name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    source: str = "btf"
    section: str = ".maps"
    offset: int = 0  # of the definition within its section
    pinning: int = 0
    numa_node: int | None = None
    map_extra: int = 0
    key_type: int | None = None  # BTF type ids when declared with __type()
    value_type: int | None = None
    inner: MapDef | None = None  # map-in-map: the inner map's template
    values: dict[int, str] = field(default_factory=dict)  # initial slots of map-in-map / prog arrays
    initial: bytes | None = None


@dataclass
class DataSection:
    """A global data section (.data, .rodata, .bss and their .name variants)."""

    name: str
    size: int
    data: bytes  # zeros for .bss
    readonly: bool
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size)


@dataclass
class BpfObject:
    filename: str
    sections: list[ProgramSection]
    programs: list[Program]
    subprograms: list[Program]
    maps: list[MapDef]
    data: list[DataSection]
    license: str | None
    kernel_version: int | None
    btf: Btf | None
    btf_ext: BtfExt | None
    symbols: list[Sym]
    data_relocations: list[DataReloc]
    image: ElfImage

    @property
    def btf_bytes(self) -> bytes | None:
        """The raw .BTF section (None without one)."""
        return self._raw(".BTF")

    @property
    def btf_ext_bytes(self) -> bytes | None:
        """The raw .BTF.ext section (None without one)."""
        return self._raw(".BTF.ext")

    def _raw(self, name: str) -> bytes | None:
        index = self.image.index(name)
        return None if index is None else self.image.sections[index].data

    def section(self, name: str) -> ProgramSection:
        for sec in self.sections:
            if sec.name == name:
                return sec
        raise ElfError(f"no program section '{name}' (sections: {', '.join(s.name for s in self.sections)})",
                       file=self.filename)

    def program(self, name: str | None = None) -> Program:
        """The program named `name` (a function or section name); None: the only or first program
        (or, in an object with only .text, its first function)."""
        candidates = self.programs or self.subprograms
        if name is None:
            if not candidates:
                raise ElfError("object holds no programs", file=self.filename)
            return candidates[0]
        everything = self.programs + self.subprograms
        for prog in everything:
            if prog.name == name:
                return prog
        in_section = [p for p in everything if p.section == name]
        if len(in_section) == 1:
            return in_section[0]
        if in_section:
            names = ", ".join(p.name for p in in_section)
            raise ElfError(f"section '{name}' holds several programs, pick one by name: {names}", file=self.filename)
        names = ", ".join(f"{p.name} ({p.section})" for p in candidates) or "none"
        raise ElfError(f"no program or section named '{name}'; available: {names}", file=self.filename)

    def linked(self, program: Program | str | None = None) -> LinkedProgram:
        from .link import link

        return link(self, program if isinstance(program, Program) else self.program(program))
