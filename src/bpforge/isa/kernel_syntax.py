"""Instructions in the kernel's own spelling (kernel/bpf/disasm.c `print_bpf_insn`): what the verifier log
and `bpftool prog dump xlated` print, `(b7) r0 = 0`, `if w1 == 0x86dd goto pc+14`.

It reads raw 8-byte slots, not `Insn`s: the kernel's xlated code holds encodings no loader may send (helper
calls whose imm is an address offset, BPF_ST|BPF_NOSPEC, per-CPU moves with off -1), which the form table
rightly refuses. Names the instruction alone cannot give (helper addresses, map ids, called functions)
come from the caller's `call_name` / `imm_name`, as disasm.c's callbacks do.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import opcodes as op
from .helpers import helper_name

_SLOT = struct.Struct("<BBhi")


@dataclass(frozen=True)
class RawInsn:
    """One 8-byte slot's fields (`imm_hi`: the second slot's imm of a 64-bit immediate load)."""

    code: int
    dst: int
    src: int
    off: int
    imm: int
    imm_hi: int = 0

    @property
    def is_lddw(self) -> bool:
        return self.code == (op.LD | op.IMM | op.SIZES[8])


def raw_insns(code: bytes) -> list[tuple[int, RawInsn]]:
    """(slot, instruction) of every instruction in `code`; an lddw takes its second slot along."""
    out = []
    count = len(code) // 8
    slot = 0
    while slot < count:
        opcode, regs, off, imm = _SLOT.unpack_from(code, slot * 8)
        insn = RawInsn(opcode, regs & 0x0F, regs >> 4, off, imm)
        if insn.is_lddw and slot + 1 < count:
            insn = RawInsn(opcode, regs & 0x0F, regs >> 4, off, imm, _SLOT.unpack_from(code, slot * 8 + 8)[3])
            out.append((slot, insn))
            slot += 2
            continue
        out.append((slot, insn))
        slot += 1
    return out


_ALU = {0x00: "+=", 0x10: "-=", 0x20: "*=", 0x30: "/=", 0x40: "|=", 0x50: "&=", 0x60: "<<=", 0x70: ">>=",
        0x80: "neg", 0x90: "%=", 0xa0: "^=", 0xb0: "=", 0xc0: "s>>=", 0xd0: "endian"}
_ALU_SIGNED = {0x30: "s/=", 0x90: "s%="}
_MOVSX = {8: "(s8)", 16: "(s16)", 32: "(s32)"}
_ATOMIC_ALU = {0x00: "add", 0x50: "and", 0x40: "or", 0xa0: "xor"}
_SIZE = {0x00: "u32", 0x08: "u16", 0x10: "u8", 0x18: "u64"}
_SIZE_SIGNED = {0x00: "s32", 0x08: "s16", 0x10: "s8"}
_JMP = {0x00: "jmp", 0x10: "==", 0x20: ">", 0xa0: "<", 0x30: ">=", 0xb0: "<=", 0x40: "&", 0x50: "!=",
        0x60: "s>", 0xc0: "s<", 0x70: "s>=", 0xd0: "s<=", 0x80: "call", 0x90: "exit"}
_CLASS = ("ld", "ldx", "st", "stx", "alu", "jmp", "jmp32", "alu64")
_FETCH, _XCHG, _CMPXCHG = op.FETCH, op.XCHG, op.CMPXCHG
_MEM, _MEMSX, _ATOMIC, _ABS, _IND, _IMM, _NOSPEC = 0x60, 0x80, 0xc0, 0x20, 0x40, 0x00, 0xc0
_ADDR_SPACE_CAST = 1


def _signed(value: int) -> str:
    return f"{value:+d}"


def kernel_text(insn: RawInsn, *, call_name: Callable[[RawInsn], str | None] | None = None,
                imm_name: Callable[[RawInsn, int], str | None] | None = None) -> str:
    """The instruction as print_bpf_insn prints it, opcode byte first, without the trailing newline.

    `call_name(insn)`: the name after `call` for a call whose imm is not a known helper id (bpftool: the
    kallsyms name of the address, `pc+N#name` for a bpf-to-bpf call); `imm_name(insn, imm64)`: the operand
    of an lddw (bpftool: `map[id:N]`); either returning None keeps the kernel's default."""
    code, cls = insn.code, insn.code & 0x07
    head = f"({code:02x})"
    if cls in (op.ALU, op.ALU64):
        reg = "w" if cls == op.ALU else "r"
        opc = code & 0xf0
        if opc == 0xd0:  # BPF_END: to_le/to_be, or bswap in ALU64
            if cls == op.ALU64:
                return f"{head} r{insn.dst} = bswap{insn.imm} r{insn.dst}"
            return f"{head} r{insn.dst} = {'be' if code & 0x08 else 'le'}{insn.imm} r{insn.dst}"
        if opc == 0x80:
            return f"{head} {reg}{insn.dst} = -{reg}{insn.dst}"
        if code == (op.ALU64 | 0xb0 | 0x08) and insn.off == _ADDR_SPACE_CAST:
            return (f"{head} r{insn.dst} = addr_space_cast(r{insn.src}, {(insn.imm & 0xFFFFFFFF) >> 16}, "
                    f"{insn.imm & 0xFFFF})")
        name = _ALU_SIGNED[opc] if opc in _ALU_SIGNED and insn.off == 1 else _ALU.get(opc, "?")
        if code & 0x08:
            ext = _MOVSX.get(insn.off, "") if opc == 0xb0 else ""
            return f"{head} {reg}{insn.dst} {name} {ext}{reg}{insn.src}"
        return f"{head} {reg}{insn.dst} {name} {insn.imm}"
    mode, size = code & 0xe0, code & 0x18
    if cls == op.STX:
        where = f"*({_SIZE[size]} *)(r{insn.dst} {_signed(insn.off)})"
        if mode == _MEM:
            return f"{head} {where} = r{insn.src}"
        if mode == _ATOMIC:
            imm = insn.imm
            if imm in _ATOMIC_ALU:
                return f"{head} lock {where} {_ALU[imm]} r{insn.src}"
            wide = "64" if size == 0x18 else ""
            inner = f"({_SIZE[size]} *)(r{insn.dst} {_signed(insn.off)})"
            if imm & ~_FETCH in _ATOMIC_ALU and imm & _FETCH and imm not in (_XCHG, _CMPXCHG):
                return (f"{head} r{insn.src} = atomic{wide}_fetch_{_ATOMIC_ALU[imm & ~_FETCH]}({inner}, "
                        f"r{insn.src})")
            if imm == _CMPXCHG:
                return f"{head} r0 = atomic{wide}_cmpxchg({inner}, r0, r{insn.src})"
            if imm == _XCHG:
                return f"{head} r{insn.src} = atomic{wide}_xchg({inner}, r{insn.src})"
            if imm == op.LOAD_ACQ:
                return f"{head} r{insn.dst} = load_acquire(({_SIZE[size]} *)(r{insn.src} {_signed(insn.off)}))"
            if imm == op.STORE_REL:
                return f"{head} store_release({inner}, r{insn.src})"
        return f"BUG_{code:02x}"
    if cls == op.ST:
        if mode == _MEM:
            return f"{head} *({_SIZE[size]} *)(r{insn.dst} {_signed(insn.off)}) = {insn.imm}"
        if mode == _NOSPEC:
            return f"{head} nospec"
        return f"BUG_st_{code:02x}"
    if cls == op.LDX:
        if mode not in (_MEM, _MEMSX):
            return f"BUG_ldx_{code:02x}"
        kind = _SIZE[size] if mode == _MEM else _SIZE_SIGNED.get(size, "?")
        return f"{head} r{insn.dst} = *({kind} *)(r{insn.src} {_signed(insn.off)})"
    if cls == op.LD:
        if mode == _ABS:
            return f"{head} r0 = *({_SIZE[size]} *)skb[{insn.imm}]"
        if mode == _IND:
            return f"{head} r0 = *({_SIZE[size]} *)skb[r{insn.src} + {insn.imm}]"
        if mode == _IMM and size == 0x18:
            imm64 = ((insn.imm_hi & 0xFFFFFFFF) << 32) | (insn.imm & 0xFFFFFFFF)
            text = imm_name(insn, imm64) if imm_name is not None else None
            return f"{head} r{insn.dst} = {text if text is not None else hex(imm64)}"
        return f"BUG_ld_{code:02x}"
    # BPF_JMP / BPF_JMP32
    opc = code & 0xf0
    if opc == 0x80:
        named = helper_name(insn.imm) if insn.src == 0 else None
        if named is None and call_name is not None:
            named = call_name(insn)
        if insn.src == op.PSEUDO_CALL:
            return f"{head} call pc{named if named is not None else _signed(insn.imm)}"
        if named is None:
            named = "kernel-function" if insn.src == op.PSEUDO_KFUNC_CALL else "unknown"
        return f"{head} call {named}#{insn.imm}"
    if code == op.JMP | 0x00:
        return f"{head} goto pc{_signed(insn.off)}"
    if code == op.JMP | 0xe0 and insn.src == 0:  # BPF_JCOND, BPF_MAY_GOTO
        return f"{head} may_goto pc{_signed(insn.off)}"
    if code == op.JMP32 | 0x00:
        return f"{head} gotol pc{_signed(insn.imm)}"
    if code == op.JMP | 0x90:
        return f"{head} exit"
    reg = "w" if cls == op.JMP32 else "r"
    cmp = _JMP.get(opc, "?")
    if code & 0x08:
        return f"{head} if {reg}{insn.dst} {cmp} {reg}{insn.src} goto pc{_signed(insn.off)}"
    return f"{head} if {reg}{insn.dst} {cmp} {insn.imm & 0xFFFFFFFF:#x} goto pc{_signed(insn.off)}"


__all__ = ["RawInsn", "kernel_text", "raw_insns"]
