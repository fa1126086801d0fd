"""Syntax templates: one string per spelling, used both to print and (as a derived regex) to parse.

A template such as ``"{rd} = *(u32 *)({rs}{off})"`` mixes literal text with placeholders. Each placeholder
names an encoding field and knows how to render it and how to parse it back. Whitespace in the literal text
is optional when parsing, so ``*(u32*)(r1 +4)`` (kernel log) and ``*(u32 *)(r1 + 0x4)`` (llvm) both match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from .helpers import helper_id
from .numbers import NumberError, parse_number, s32, s64

# Patterns are compiled with re.ASCII: only ASCII digits are digits and only ASCII letters make names
# (Python's \d would take a full-width `０`, so `r０` would name a register).
NUMBER = r"[+-]?\s*(?:0[xX][0-9a-fA-F]+|[0-9]+)"
IDENT = r"(?![rw][0-9]+\b)[A-Za-z_.$][\w.$]*"  # never a register name

S16 = (-(1 << 15), (1 << 15) - 1)
S32 = (-(1 << 31), (1 << 31) - 1)


class OperandError(ValueError):
    """An operand that matched the pattern but whose value is not acceptable (range, register number).

    `pos` is the operand's offset in the parsed text, once the template knows it."""

    pos: int | None = None


def parse_int(text: str) -> int:
    """A number operand as llvm-mc reads it (decimal, 0x hex, a leading 0 for octal); OperandError otherwise,
    or when it has more digits than any field could hold."""
    try:
        return parse_number(text.replace(" ", "").replace("\t", ""), octal=True)
    except NumberError as err:
        raise OperandError(str(err)) from None


def wrap_s32(value: int, what: str) -> int:
    """Accept [-2^31, 2^32) like llvm-mc and store it as the signed 32-bit field value."""
    if not -(1 << 31) <= value < (1 << 32):
        raise OperandError(f"{what} {value:#x} does not fit in 32 bits")
    return s32(value)


def check_range(value: int, bounds: tuple[int, int], what: str) -> int:
    if not bounds[0] <= value <= bounds[1]:
        raise OperandError(f"{what} {value} is out of range [{bounds[0]}, {bounds[1]}]")
    return value


def signed_offset(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


@dataclass(frozen=True)
class Symbol:
    """A name standing where a number belongs: a label (jumps, calls) or a relocation target (lddw)."""

    name: str
    addend: int = 0


@dataclass(frozen=True)
class Placeholder:
    """A template hole bound to one encoding field (imm64 binds imm and imm_hi together)."""

    kind: str
    field: str

    @property
    def is_target(self) -> bool:
        return self.kind in ("target", "ltarget")

    @property
    def regex(self) -> str:
        return {
            "reg_r": r"(r\d+)", "reg_w": r"(w\d+)",
            "imm": f"({NUMBER})", "hi": f"({NUMBER})", "offn": f"({NUMBER})",
            "imm64": f"({NUMBER}|{IDENT}(?:\\s*[+-]\\s*(?:0[xX][0-9a-fA-F]+|[0-9]+))?)",
            "off": rf"(?:\s*([+-])\s*({NUMBER}))?",
            "ind": rf"(?:\s*([+-])\s*({NUMBER}))?",
            "target": rf"([+-]\s*(?:0[xX][0-9a-fA-F]+|[0-9]+)|{IDENT})",
            "ltarget": rf"([+-]\s*(?:0[xX][0-9a-fA-F]+|[0-9]+)|{IDENT})",
            "helper": rf"({NUMBER}|{IDENT}(?:#[0-9]+)?)",
        }[self.kind]

    @property
    def groups(self) -> int:
        return 2 if self.kind in ("off", "ind") else 1

    def render(self, value: int) -> str:
        k = self.kind
        if k == "reg_r":
            return f"r{value}"
        if k == "reg_w":
            return f"w{value}"
        if k in ("off", "ind"):
            if k == "ind" and value == 0:
                return ""
            return f" + {value}" if value >= 0 else f" - {-value}"
        if k in ("target", "ltarget"):
            return signed_offset(value)
        if k == "imm64":  # small values in decimal, addresses and masks in signed hex as llvm-objdump does
            return str(value) if -(1 << 16) <= value <= (1 << 16) else hex(value)
        return str(value)

    def parse(self, groups: tuple[str | None, ...]) -> int | Symbol:
        k, text = self.kind, groups[0]
        if k in ("reg_r", "reg_w"):
            number = int(text[1:]) if len(text) <= 4 else 99  # r0..r10; never convert a huge number
            if number >= 11:
                raise OperandError(f"invalid register {text if len(text) <= 12 else text[:6] + '...'} (r0-r10 exist)")
            return number
        if k in ("off", "ind"):
            if text is None:
                return 0
            value = parse_int(groups[1]) * (-1 if text == "-" else 1)
            return check_range(value, S16 if k == "off" else S32, "offset")
        if k in ("target", "ltarget"):
            if re.match(IDENT, text, re.ASCII) and not text[0] in "+-":
                return Symbol(text)
            return check_range(parse_int(text), S16 if k == "target" else S32, "jump offset")
        if k == "helper":
            if re.fullmatch(NUMBER, text, re.ASCII):
                return wrap_s32(parse_int(text), "helper id")
            name, _, number = text.partition("#")
            if number:
                return wrap_s32(parse_int(number), "helper id")
            hid = helper_id(name)
            return Symbol(name) if hid is None else hid  # not a helper: a function to call
        if k == "imm64":
            if re.fullmatch(NUMBER, text, re.ASCII):
                value = parse_int(text)
                if not -(1 << 63) <= value < (1 << 64):
                    raise OperandError(f"immediate {value:#x} does not fit in 64 bits")
                return s64(value)
            m = re.fullmatch(rf"({IDENT})(?:\s*([+-])\s*(\S+))?", text, re.ASCII)
            addend = parse_int(m.group(3)) * (-1 if m.group(2) == "-" else 1) if m.group(2) else 0
            return Symbol(m.group(1), addend)
        if k == "offn":
            return check_range(parse_int(text), S16, "offset")
        return wrap_s32(parse_int(text), "immediate")  # imm, hi


_PLACEHOLDERS = {
    "rd": Placeholder("reg_r", "dst"), "wd": Placeholder("reg_w", "dst"),
    "rs": Placeholder("reg_r", "src"), "ws": Placeholder("reg_w", "src"),
    "imm": Placeholder("imm", "imm"), "hi": Placeholder("hi", "imm_hi"), "imm64": Placeholder("imm64", "imm64"),
    "off": Placeholder("off", "off"), "offn": Placeholder("offn", "off"), "ind": Placeholder("ind", "imm"),
    "target": Placeholder("target", "off"), "ltarget": Placeholder("ltarget", "imm"),
    "helper": Placeholder("helper", "imm"),
}
_HOLE = re.compile(r"\{(\w+)\}")


def _literal_regex(text: str) -> str:
    out = []
    for ch in text:
        out.append(r"\s*" if ch.isspace() else re.escape(ch))
    return "".join(out)


@dataclass(frozen=True)
class Template:
    text: str

    @cached_property
    def parts(self) -> tuple[str | Placeholder, ...]:
        parts: list[str | Placeholder] = []
        pos = 0
        for m in _HOLE.finditer(self.text):
            if m.start() > pos:
                parts.append(self.text[pos:m.start()])
            parts.append(_PLACEHOLDERS[m.group(1)])
            pos = m.end()
        if pos < len(self.text):
            parts.append(self.text[pos:])
        return tuple(parts)

    @cached_property
    def placeholders(self) -> tuple[Placeholder, ...]:
        return tuple(p for p in self.parts if isinstance(p, Placeholder))

    @cached_property
    def fields(self) -> frozenset[str]:
        names: set[str] = set()
        for p in self.placeholders:
            names.update(("imm", "imm_hi") if p.field == "imm64" else (p.field,))
        return frozenset(names)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        body = "".join(_literal_regex(p) if isinstance(p, str) else p.regex for p in self.parts)
        return re.compile(r"\s*" + body + r"\s*$", re.ASCII)

    @cached_property
    def sample(self) -> str:
        """The template with every placeholder filled, used to file the template under its dispatch key."""
        samples = {"reg_r": "r1", "reg_w": "w1", "off": " + 0", "ind": "", "target": "+1", "ltarget": "+1"}
        return "".join(p if isinstance(p, str) else samples.get(p.kind, "1") for p in self.parts)

    def render(self, values: dict[str, int]) -> str:
        return "".join(p if isinstance(p, str) else p.render(values[p.field]) for p in self.parts)

    def match(self, text: str) -> dict[str, int | Symbol] | None:
        """Field values if `text` is spelled by this template; None if it is not.

        Raises OperandError when the spelling matches but an operand is unacceptable."""
        m = self.regex.match(text)
        if m is None:
            return None
        values: dict[str, int | Symbol] = {}
        groups = m.groups()
        i = 0
        for p in self.placeholders:
            try:
                value = p.parse(groups[i:i + p.groups])
            except OperandError as err:
                err.pos = m.start(i + 1) if groups[i] is not None else None
                raise
            i += p.groups
            if p.field in values and values[p.field] != value:
                raise OperandError(f"operands of '{self.text}' must name the same register")
            values[p.field] = value
        return values


def dispatch_key(text: str) -> str:
    """A cheap key that every spelling of a template shares: the leading word, or for register-led
    statements the register class and the operator that follows it (``r=``, ``w+=``, ``rs>>=``)."""
    m = re.match(r"\s*([rw])[0-9]+\s*(s?[^\s\w(]*=)", text, re.ASCII)
    if m:
        return m.group(1) + m.group(2)
    m = re.match(r"\s*([A-Za-z_]+|\S)", text, re.ASCII)
    return m.group(1) if m else ""
