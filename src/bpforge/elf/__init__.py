"""BPF ELF objects: read clang output (programs, subprograms, maps, relocations, BTF), link a program the way
libbpf does, edit a section's instructions and write the object back, or build one from assembly."""

from ..isa.maptypes import MapSpec
from .bpfobject import BpfObject
from .build import build_object
from .edit import SectionEdit, edited_view, insert_insns, remove_insns, splice
from .model import DataReloc, DataSection, LinkedProgram, Program, ProgramSection, Reloc
from .reader import read_object
from .writer import write_object

__all__ = [
    "BpfObject", "DataReloc", "DataSection", "LinkedProgram", "MapSpec", "Program", "ProgramSection", "Reloc",
    "SectionEdit", "build_object", "edited_view", "insert_insns", "read_object", "remove_insns", "splice",
    "write_object",
]
