"""A BPF object as read (`reader.read_object`): everything `model` describes, put together, with the lookups
commands make in it (a program by name or section, a program linked for loading).

It sits above `link` (linking needs only the object's sections), so that the data model and the linker do
not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ElfError
from ..isa.maptypes import MapSpec
from .link import link
from .model import DataReloc, DataSection, LinkedProgram, Program, ProgramSection

if TYPE_CHECKING:
    from .btf import Btf
    from .btf_ext import BtfExt
    from .layout import ElfImage, Sym


@dataclass
class BpfObject:
    """A read object: its code (sections, entry programs, .text subprograms), maps and global data, BTF,
    symbols, and the ELF image it came from (kept for the writer)."""

    filename: str
    sections: list[ProgramSection]
    programs: list[Program]
    subprograms: list[Program]
    maps: list[MapSpec]
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
        """`program` (a Program, or a name as `program()` takes it) linked as libbpf links it."""
        return link(self, program if isinstance(program, Program) else self.program(program))


__all__ = ["BpfObject"]
