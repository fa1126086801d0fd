"""The parts of a BPF object, as plain dataclasses: program sections, functions, relocations, global data,
linked programs. (The object itself is `bpfobject.BpfObject`; its maps are `isa.maptypes.MapSpec`s.)

Instruction indexes count instructions (an lddw is one), as in `isa.Insn` lists; byte offsets in the file
count 8-byte slots. Every relocation is keyed by the index of the instruction it patches, within the
container that holds it (a section, a function, a linked program).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ..errors import ElfError
from ..isa import Insn


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
class DataSection:
    """A global data section (.data, .rodata, .bss and their .name variants)."""

    name: str
    size: int
    data: bytes  # zeros for .bss
    readonly: bool
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (offset, size)
