"""Numbers: the widths and signs of BPF's integers, and literals as every text parser of bpforge reads them
(assembly, syntax templates, word lists, K2 files).

Widths: registers are 64 bits, subregisters, `imm` and most helper arguments 32; a value "as s32" is its low
32 bits read as two's complement. These helpers are the one definition of that arithmetic for the library.

Only ASCII digits are digits: Python's `\\d` and `int()` also take full-width and Arabic-Indic digits, which no
BPF tool writes and which would make `r０` a register. And a literal is refused for its length before `int()`
sees it, so a 5,000-digit number gets our message (it fits no field) rather than Python's conversion limit.
"""

from __future__ import annotations

import mmap
import re

M8, M16, M32, M64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF
U32_MAX = M32
# The kernel's page, which is the host's (the unit of arena and mmapable-array layouts, of test-run buffers).
PAGE_SIZE = mmap.PAGESIZE


def mask(bits: int) -> int:
    """The all-ones value of `bits` bits."""
    return (1 << bits) - 1


def signed(value: int, bits: int) -> int:
    """The low `bits` bits of `value` as a two's complement number."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def s32(value: int) -> int:
    """The low 32 bits as a signed number (an `imm`, an int helper argument)."""
    return signed(value, 32)


def s64(value: int) -> int:
    """The low 64 bits as a signed number (a register read as `long`)."""
    return signed(value, 64)


def fits_signed(value: int, bits: int) -> bool:
    """Whether `value` (taken as a 64-bit register value, so negative numbers and their unsigned spelling
    alike) survives truncation to `bits` bits and sign extension back."""
    return bits >= 64 or signed(value, bits) == signed(value, 64)


DECIMAL = r"[0-9]+"
HEX = r"0[xX][0-9a-fA-F]+"
UNSIGNED = rf"(?:{HEX}|{DECIMAL})"  # pattern text for parsers that embed a number in a larger pattern

# More significant digits than any 64-bit field can need (2^64 has 20 decimal digits, 17 hex with a carry):
# anything longer is out of range whatever its value, and never reaches int().
_MAX_DIGITS = {8: 23, 10: 21, 16: 17}

_LITERAL = re.compile(r"([+-]?)\s*(?:0([xX])([0-9a-fA-F]+)|([0-9]+))", re.ASCII)


class NumberError(ValueError):
    """Text that is not an ASCII number literal, or one too long for any 64-bit field."""


def parse_number(text: str, *, octal: bool = False) -> int:
    """The value of a decimal or 0x-hex literal with an optional sign (blanks allowed after the sign).
    `octal`: a decimal-looking literal with a leading 0 is octal, as llvm-mc (and C) read `010`.

    NumberError when `text` is not such a literal (in ASCII digits) or has more digits than a 64-bit value."""
    m = _LITERAL.fullmatch(text.strip())
    if m is None:
        raise NumberError(f"'{_short(text)}' is not a number")
    sign, hex_mark, hex_digits, dec_digits = m.groups()
    digits, base = (hex_digits, 16) if hex_mark else (dec_digits, 10)
    if octal and base == 10 and len(digits) > 1 and digits[0] == "0":
        if not set(digits) <= set("01234567"):
            raise NumberError(f"'{_short(text)}' is not an octal number (a leading 0 means octal)")
        base = 8
    significant = digits.lstrip("0")
    if len(significant) > _MAX_DIGITS[base]:
        raise NumberError(f"number of {len(significant)} digits ({_short(text)}) does not fit in 64 bits")
    value = int(significant or "0", base)
    return -value if sign == "-" else value


def is_number(text: str) -> bool:
    """Whether `text` is spelled as a literal `parse_number` reads (whatever its size)."""
    return _LITERAL.fullmatch(text.strip()) is not None


def _short(text: str, limit: int = 24) -> str:
    """A literal as quoted in a message: long ones cut in the middle so the message stays one short line."""
    text = text.strip()
    return text if len(text) <= limit else f"{text[:10]}...{text[-10:]}"


__all__ = ["DECIMAL", "HEX", "M16", "M32", "M64", "M8", "NumberError", "PAGE_SIZE", "U32_MAX", "UNSIGNED",
           "fits_signed", "is_number", "mask", "parse_number", "s32", "s64", "signed"]
