"""Bytes <-> instructions, exactly as the kernel lays them out (little-endian 8-byte slots)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from ..errors import DecodeError, EncodeError
from .insn import LDDW_OPCODE, Insn

_SLOT = struct.Struct("<BBhi")


def decode(data: bytes) -> list[Insn]:
    """Decode a sequence of slots. Errors name the slot index (`insn`) and the field at fault."""
    if len(data) % 8:
        raise DecodeError(f"truncated program: {len(data)} bytes is not a multiple of 8", insn=len(data) // 8)
    count = len(data) // 8
    insns: list[Insn] = []
    slot = 0
    while slot < count:
        opcode, regs, off, imm = _SLOT.unpack_from(data, slot * 8)
        dst, src = regs & 0x0F, regs >> 4
        imm_hi = 0
        if opcode == LDDW_OPCODE:
            if slot + 1 >= count:
                raise DecodeError("lddw is missing its second slot", insn=slot)
            op2, regs2, off2, imm_hi = _SLOT.unpack_from(data, slot * 8 + 8)
            if op2 or regs2 or off2:
                raise DecodeError(
                    f"second slot of lddw must have opcode, registers and offset 0 "
                    f"(has opcode {op2:#04x}, regs {regs2:#04x}, off {off2})", insn=slot + 1)
        insn = Insn(opcode, dst, src, off, imm, imm_hi)
        try:
            insn.form  # validates the fields, and keeps the form for every later use
        except DecodeError as err:
            raise err.at(insn=slot) from None
        insns.append(insn)
        slot += 2 if opcode == LDDW_OPCODE else 1
    return insns


def encode(insns: Iterable[Insn]) -> bytes:
    out = bytearray()
    for index, insn in enumerate(insns):
        try:
            insn.form
            out += _SLOT.pack(insn.opcode, insn.src << 4 | insn.dst, insn.off, insn.imm)
            if insn.slots == 2:
                out += _SLOT.pack(0, 0, 0, insn.imm_hi)
        except DecodeError as err:
            raise EncodeError(f"cannot encode {insn!r}: {getattr(err, 'message', err)}", insn=index) from None
    return bytes(out)


def slot_starts(insns: Sequence[Insn]) -> list[int]:
    """Slot index at which each instruction starts (lddw takes two slots)."""
    starts, slot = [], 0
    for insn in insns:
        starts.append(slot)
        slot += insn.slots
    return starts


def slot_count(insns: Sequence[Insn]) -> int:
    """Length of a program in 8-byte slots."""
    return sum(insn.slots for insn in insns)


def branch_target(insn: Insn, slot: int) -> int | None:
    """Slot a pc-relative instruction refers to (jumps, local calls, lddw of a function), else None."""
    name = insn.form.target_field
    if name is None:
        return None
    return slot + 1 + getattr(insn, name)


def retarget(insn: Insn, slot: int, target: int) -> Insn:
    """The pc-relative instruction at `slot` made to refer to slot `target` instead.

    EncodeError when the distance does not fit the form's offset field (16-bit `off`, 32-bit `imm`)."""
    name = insn.form.target_field
    if name is None:
        raise EncodeError(f"{insn.form.name} has no pc-relative target", insn=slot)
    delta = target - slot - 1
    bits = 16 if name == "off" else 32
    if not -(1 << bits - 1) <= delta < 1 << bits - 1:
        raise EncodeError(f"{insn.form.name} at slot {slot} cannot reach slot {target}: offset {delta} does not fit "
                          f"in the {bits}-bit {name} field", insn=slot)
    return insn.replace(**{name: delta})


def check_targets(insns: Sequence[Insn], *, external: Iterable[int] = ()) -> None:
    """Every jump, local call and function address must land on an instruction of this program.

    `external` lists instruction indexes whose targets lie elsewhere (calls resolved by relocations)."""
    starts = slot_starts(insns)
    valid = set(starts)
    total = slot_count(insns)
    skip = set(external)
    for index, (insn, slot) in enumerate(zip(insns, starts)):
        target = branch_target(insn, slot)
        if target is None or index in skip:
            continue
        if not 0 <= target < total:
            raise DecodeError(f"jump out of range: target slot {target} of {total}", insn=slot)
        if target not in valid:
            raise DecodeError(f"jump into the middle of lddw at slot {target - 1}", insn=slot)
