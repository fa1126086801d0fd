"""Word lists: one instruction slot per number, the convention of uBPF's test files.

Each number is the little-endian u64 of one 8-byte slot, so `exit` (bytes 95 00 00 00 00 00 00 00) is
0x0000000000000095 and `r0 = 1` (b7 00 00 00 01 00 00 00) is 0x00000001000000b7. Numbers are hex (`0x...`) or
decimal, separated by whitespace, commas or newlines; `#` starts a comment that runs to the end of the line.
An lddw takes two numbers, like it takes two slots.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import FormatError
from ..isa import Insn, encode, format_insn
from ..isa.numbers import DECIMAL, HEX, NumberError, parse_number

_TOKEN = re.compile(r"[^\s,#]+", re.ASCII)
_NUMBER = re.compile(rf"{HEX}|{DECIMAL}", re.ASCII)  # ASCII digits only, no sign: a slot is a u64


def _is_number(token: str) -> bool:
    return _NUMBER.fullmatch(token) is not None


def _tokens(text: str):
    """(line, column, token) of every number-shaped word outside comments."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _TOKEN.finditer(line.split("#", 1)[0]):
            yield lineno, m.start() + 1, m.group()


def parse_words(text: str, *, filename: str | None = None) -> bytes:
    """The slots a word list spells, as bytes for `isa.decode`."""
    out = bytearray()
    for line, col, token in _tokens(text):
        if not _is_number(token):
            shown = token if len(token) <= 24 else token[:10] + "..." + token[-10:]
            raise FormatError(f"'{shown}' is not a number (a word list holds one 64-bit slot per number)",
                              file=filename, line=line, col=col)
        try:
            value = parse_number(token)
        except NumberError as err:  # too many digits for any slot: refused before it is converted
            raise FormatError(str(err).replace("64 bits", "a 64-bit slot"), file=filename, line=line,
                              col=col) from None
        if value >> 64:
            raise FormatError(f"{token} does not fit in a 64-bit slot", file=filename, line=line, col=col)
        out += value.to_bytes(8, "little")
    return bytes(out)


def looks_like_words(data: bytes) -> bool:
    """ASCII text made only of numbers, separators and comments, with at least one number.

    Raw bytecode practically never passes: almost every program has zero bytes (unused registers, offsets)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    found = False
    for _, _, token in _tokens(text):
        if not _is_number(token):
            return False
        found = True
    return found


def format_words(insns: Sequence[Insn]) -> str:
    """A word list for these instructions, each first slot annotated with its assembly."""
    lines = []
    for insn in insns:
        data = encode([insn])
        for slot in range(0, len(data), 8):
            word = f"0x{int.from_bytes(data[slot:slot + 8], 'little'):016x}"
            lines.append(f"{word}  # {format_insn(insn)}" if slot == 0 else word)
    return "".join(line + "\n" for line in lines)


__all__ = ["format_words", "looks_like_words", "parse_words"]
