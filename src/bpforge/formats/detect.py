"""Which format a program file is in. The one place that decides; everything else asks `detect_format`.

Order matters: content that cannot lie (the ELF magic) beats the file name, the file name beats sniffing.
  1. starts with \\x7fELF                      -> "elf"   (whatever the name)
  2. name ends in .s or .asm                  -> "asm"
  3. name ends in .insns/.ins, .maps or .desc -> "k2"    (the trio NAME.insns + NAME.maps + NAME.desc)
  4. name ends in .words or .txt, or the content is ASCII text of only numbers, separators and comments
                                              -> "words"
  5. anything else                            -> "raw"   (8-byte little-endian slots)
"""

from __future__ import annotations

from pathlib import Path

from .k2 import COMPANION_SUFFIXES, INSNS_SUFFIXES
from .words import looks_like_words

ELF_MAGIC = b"\x7fELF"
ASM_SUFFIXES = (".s", ".asm")
WORDS_SUFFIXES = (".words", ".txt")
KINDS = ("elf", "asm", "k2", "words", "raw")


def detect_format(path: str | Path, data: bytes) -> str:
    """One of KINDS for a file named `path` holding `data`."""
    if data[:4] == ELF_MAGIC:
        return "elf"
    suffix = Path(path).suffix.lower()
    if suffix in ASM_SUFFIXES:
        return "asm"
    if suffix in INSNS_SUFFIXES + COMPANION_SUFFIXES:
        return "k2"
    if suffix in WORDS_SUFFIXES or looks_like_words(data):
        return "words"
    return "raw"


__all__ = ["ASM_SUFFIXES", "ELF_MAGIC", "KINDS", "WORDS_SUFFIXES", "detect_format"]
