"""Program formats other than ELF (raw slots, word lists, K2's benchmark trio) and the one loader for all.

`load_program(path)` is how every command reads a program; `detect_format` is the only place that decides
what a file is (see detect.py for the rules).
"""

from ..files import MAX_DATA_FILE, MAX_PROGRAM_FILE, read_input
from .asmfile import assemble_file, output_kind
from .detect import KINDS, detect_format
from .k2 import K2Desc, format_k2_desc, format_k2_maps, k2_paths, parse_k2_desc, parse_k2_maps
from .loader import LoadedProgram, LoadedSection, ProgramEntry, load_program
from .words import format_words, looks_like_words, parse_words

__all__ = [
    "K2Desc", "KINDS", "LoadedProgram", "LoadedSection", "MAX_DATA_FILE", "MAX_PROGRAM_FILE", "ProgramEntry",
    "assemble_file", "detect_format", "format_k2_desc", "format_k2_maps", "format_words",
    "k2_paths", "load_program", "looks_like_words", "output_kind", "parse_k2_desc", "parse_k2_maps",
    "parse_words", "read_input",
]
