"""A scalar printed as the kernel's verifier log prints it (kernel/bpf/log.c: print_reg_state,
print_scalar_ranges), so that messages show states the way users know them and tests can compare with the
kernel's log; and the reverse, a log's scalar read back into a `Scalar`.

The kernel prints a constant as a plain number and anything else as `scalar(...)`: the bounds that say
something (not the type's extreme), each value once with the names that share it (`smax=umax=1000`),
never mixing a negative signed bound with a positive one, small numbers in decimal and large ones in hex,
then `var_off=(value; mask)` unless the tnum is unknown.
"""

from __future__ import annotations

import re

from ..isa.numbers import M32, M64, signed
from .scalar import S32_MAX, S32_MIN, S64_MAX, S64_MIN, U32_MAX, U64_MAX, Scalar
from .tnum import UNKNOWN, Tnum

# log.c prints numbers up to U16_MAX (unsigned) and within the s16 range (signed) in decimal.
_UNUM_DECIMAL_MAX = 0xFFFF
_SNUM_DECIMAL = range(-(1 << 15), 1 << 15)


def _snum_is_decimal(n: int) -> bool:
    return n in _SNUM_DECIMAL


def format_snum(n: int) -> str:
    """verbose_snum: a signed 64-bit number."""
    n = signed(n, 64)
    return str(n) if _snum_is_decimal(n) else f"{n & M64:#x}"


def format_unum(n: int) -> str:
    """verbose_unum: an unsigned 64-bit number."""
    n &= M64
    return str(n) if n <= _UNUM_DECIMAL_MAX else f"{n:#x}"


def format_scalar(s: Scalar, *, id: int = 0, delta: int | None = None) -> str:
    """The log's text for a scalar register (`id`: the register's link id, printed when non-zero, with the
    constant `delta` it is linked by, as `id=3+16`)."""
    if s.var_off.is_const():
        return format_snum(s.var_off.value)
    # In hex a 32-bit signed bound is printed as its u32 bits (sign extension would mislead), so it only
    # shares a value with a 64-bit bound when both are decimal.
    s32 = [v & M64 if _snum_is_decimal(v) else v & M32 for v in (s.s32_min, s.s32_max)]
    fields = [
        ["smin", s.smin & M64, s.smin == S64_MIN], ["smax", s.smax & M64, s.smax == S64_MAX],
        ["umin", s.umin, s.umin == 0], ["umax", s.umax, s.umax == U64_MAX],
        ["smin32", s32[0], s.s32_min == S32_MIN], ["smax32", s32[1], s.s32_max == S32_MAX],
        ["umin32", s.u32_min, s.u32_min == 0], ["umax32", s.u32_max, s.u32_max == U32_MAX],
    ]
    parts = [f"id={id}" + ("" if delta is None else f"{delta:+d}")] if id else []
    for i, (name, value, omit) in enumerate(fields):
        if omit:
            continue
        negative = name[0] == "s" and signed(value, 64) < 0
        names = [name]
        for other in fields[i + 2::2]:
            if other[2] or other[1] != value:
                continue
            if (other[0][0] == "s" and signed(other[1], 64) < 0) != negative:
                continue
            other[2] = True
            names.append(other[0])
        number = format_snum(value) if name[0] == "s" else format_unum(value)
        parts.append("=".join(names) + "=" + number)
    if not s.var_off.is_unknown():
        parts.append(f"var_off={s.var_off}")
    return f"scalar({','.join(parts)})"


# ---- reading a log's scalar back ------------------------------------------------------------------------

_VAR_OFF = re.compile(r"var_off=\((0x[0-9a-f]+); (0x[0-9a-f]+)\)")
_FIELD = re.compile(r"((?:[a-z0-9]+=)+)(-?(?:0x[0-9a-f]+|[0-9]+))")
_NUMBER = re.compile(r"P?(-?(?:0x[0-9a-f]+|[0-9]+))")


def parse_scalar(text: str) -> Scalar | None:
    """The Scalar a log prints as `text` (`P` precision marks and ids ignored); None when `text` is not a
    scalar (a pointer such as `ctx()` or `fp0`)."""
    text = text.strip()
    m = _NUMBER.fullmatch(text)
    if m:
        return Scalar.known(int(m.group(1), 0))
    text = text.removeprefix("P")
    if not (text.startswith("scalar(") and text.endswith(")")):
        return None
    body = text[len("scalar("):-1]
    var_off = UNKNOWN
    vm = _VAR_OFF.search(body)
    if vm:
        var_off = Tnum(int(vm.group(1), 16), int(vm.group(2), 16))
        body = body[:vm.start()] + body[vm.end():]
    values = {"smin": S64_MIN, "smax": S64_MAX, "umin": 0, "umax": U64_MAX, "smin32": S32_MIN, "smax32": S32_MAX,
              "umin32": 0, "umax32": U32_MAX}
    for fm in _FIELD.finditer(body):
        number = int(fm.group(2), 0)
        for name in fm.group(1).rstrip("=").split("="):
            if name in values:
                values[name] = number
    return Scalar.from_bounds(var_off=var_off, smin=values["smin"], smax=values["smax"], umin=values["umin"],
                              umax=values["umax"], s32_min=values["smin32"], s32_max=values["smax32"],
                              u32_min=values["umin32"], u32_max=values["umax32"], sync=False)
