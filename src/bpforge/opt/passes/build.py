"""Instructions from their meaning, through the ISA table's form names (no encodings written here)."""

from __future__ import annotations

from ...isa import Insn
from ...isa.ops import CONDITIONS

M64 = (1 << 64) - 1
_JUMP_NAMES = {semantic: name for name, semantic in CONDITIONS.items()}


def fits_imm(value: int, width: int = 64) -> bool:
    """Whether `value` (unsigned, `width` bits) is what a sign-extended 32-bit immediate gives."""
    value &= (1 << width) - 1
    if width == 32:
        return True
    signed = value - (1 << 64) if value >> 63 else value
    return -(1 << 31) <= signed < (1 << 31)


def imm32(value: int) -> int:
    """The signed 32-bit immediate encoding the low 32 bits of `value`."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def alu(op: str, width: int, dst: int, *, src: int | None = None, imm: int | None = None) -> Insn:
    kind = "reg" if src is not None else "imm"
    return Insn.make(f"{op}{width}_{kind}", dst=dst, **({"src": src} if src is not None else {"imm": imm32(imm)}))


def mov_imm(dst: int, value: int, width: int = 64) -> Insn:
    return alu("mov", width, dst, imm=value)


def jump(cmp: str, width: int, dst: int, off: int, *, src: int | None = None, imm: int | None = None) -> Insn:
    name = _JUMP_NAMES[cmp] + ("32" if width == 32 else "")
    if src is not None:
        return Insn.make(f"{name}_reg", dst=dst, src=src, off=off)
    return Insn.make(f"{name}_imm", dst=dst, imm=imm32(imm), off=off)


def goto(off: int) -> Insn:
    return Insn.make("ja", off=off)


def store(size: int, base: int, off: int, *, src: int | None = None, imm: int | None = None) -> Insn:
    if src is not None:
        return Insn.make(f"stx{size * 8}", dst=base, src=src, off=off)
    return Insn.make(f"st{size * 8}", dst=base, off=off, imm=imm32(imm))


def atomic_add(size: int, base: int, off: int, src: int) -> Insn:
    return Insn.make(f"atomic_add{size * 8}", dst=base, src=src, off=off)


# A comparison with its operands swapped: `K op r` is `r swapped(op) K`.
SWAPPED = {"eq": "eq", "ne": "ne", "ugt": "ult", "uge": "ule", "ult": "ugt", "ule": "uge",
           "sgt": "slt", "sge": "sle", "slt": "sgt", "sle": "sge", "set": "set"}

__all__ = ["SWAPPED", "alu", "atomic_add", "fits_imm", "goto", "imm32", "jump", "mov_imm", "store"]
