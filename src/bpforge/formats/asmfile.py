"""Assembly file -> bytes in an output format chosen by the output's name (`bpforge asm FILE.s -o OUT`).

OUT ending in .o gives an ELF object (sections, relocations and all, via `elf.build_object`); .words gives a
word list; anything else raw bytecode, which holds one section and no relocations.
"""

from __future__ import annotations

from pathlib import Path

from .. import elf
from ..errors import BpforgeError, FormatError
from ..files import read_input
from ..isa import AsmProgram, assemble, encode, parse
from .detect import ELF_MAGIC
from .words import format_words


def output_kind(path: str | Path) -> str:
    """"elf", "words" or "raw", from the output file's name."""
    suffix = Path(path).suffix.lower()
    return {".o": "elf", ".words": "words"}.get(suffix, "raw")


def assemble_file(path: str | Path, kind: str, *, license: str = "GPL") -> bytes:
    """Assemble the text in `path` into `kind` ("elf", "words" or "raw"). Errors name the file."""
    filename = str(path)
    try:
        text = _read_text(Path(path))
        if kind == "elf":
            return _object(parse(text, filename=filename), license)
        insns = assemble(text, filename=filename)
        if not insns:
            raise FormatError("no instructions")
        return format_words(insns).encode() if kind == "words" else encode(insns)
    except BpforgeError as err:
        raise err.at(file=filename) from None


def _object(program: AsmProgram, license: str) -> bytes:
    if not program.sections:
        raise FormatError("no instructions")
    return elf.build_object(program, license=license)


def _read_text(path: Path) -> str:
    data = read_input(path, what="assembly file")
    if data[:4] == ELF_MAGIC:
        raise FormatError("this is an ELF object, not assembly text (disassemble it with `bpforge disasm`)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"assembly must be UTF-8 text (byte {err.start} is not)") from None


__all__ = ["assemble_file", "output_kind"]
