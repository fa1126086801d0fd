"""x86-64 instruction encodings: pure functions from operands to the bytes of one instruction.

Only what a BPF JIT needs (the kernel's arch/x86/net/bpf_jit_comp.c uses the same handful): ALU with
register, immediate and memory operands, moves with zero and sign extension, multiply and divide, shifts,
byte swaps, locked read-modify-write, pushes and pops, calls, jumps and conditional jumps.

Registers are numbers 0-15 in the hardware's order (`RAX` ... `R15`); a memory operand is a `Mem` (base,
optional index and scale, displacement). `width` is the operand size in bits: 8, 16, 32 or 64.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...isa.numbers import signed

RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R8, R9, R10, R11, R12, R13, R14, R15 = range(8, 16)
NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")

# Condition codes (the low nibble of Jcc / SETcc).
CC = {"o": 0, "no": 1, "b": 2, "ae": 3, "e": 4, "ne": 5, "be": 6, "a": 7,
      "s": 8, "ns": 9, "p": 10, "np": 11, "l": 12, "ge": 13, "le": 14, "g": 15}

# The /digit of the group-1 ALU instructions (0x81 / 0x83) and the opcode of their reg, r/m forms.
_GROUP1 = {"add": 0, "or": 1, "adc": 2, "sbb": 3, "and": 4, "sub": 5, "xor": 6, "cmp": 7}
_SHIFT = {"rol": 0, "ror": 1, "shl": 4, "shr": 5, "sar": 7}


@dataclass(frozen=True, slots=True)
class Mem:
    """[base + index * scale + disp]."""

    base: int
    disp: int = 0
    index: int | None = None
    scale: int = 1


def fits_imm8(value: int) -> bool:
    return -128 <= value < 128


def fits_imm32(value: int) -> bool:
    """Whether a 64-bit operation may take `value` (as a signed 64-bit number) as a sign-extended imm32."""
    return -(1 << 31) <= value < 1 << 31


def _check_reg(r: int) -> int:
    if not 0 <= r < 16:
        raise ValueError(f"{r} is not an x86-64 register")
    return r


def _rm_bytes(reg: int, rm: int | Mem) -> tuple[int, int, bytes]:
    """(REX.R|X|B bits, ..., ModRM+SIB+disp) for a reg field and a register or memory operand."""
    reg = _check_reg(reg) if reg >= 0 else 0
    r = reg >> 3
    if isinstance(rm, int):
        _check_reg(rm)
        return r << 2 | rm >> 3, 0, bytes([0xC0 | (reg & 7) << 3 | rm & 7])
    base, disp = _check_reg(rm.base), rm.disp
    if not -(1 << 31) <= disp < 1 << 31:
        raise ValueError(f"displacement {disp} does not fit 32 bits")
    if disp == 0 and base & 7 != RBP:
        mod, tail = 0, b""
    elif fits_imm8(disp):
        mod, tail = 1, (disp & 0xFF).to_bytes(1, "little")
    else:
        mod, tail = 2, (disp & 0xFFFFFFFF).to_bytes(4, "little")
    rex = r << 2 | base >> 3
    if rm.index is None and base & 7 != RSP:
        return rex, 0, bytes([mod << 6 | (reg & 7) << 3 | base & 7]) + tail
    index = RSP if rm.index is None else _check_reg(rm.index)
    if index == RSP and rm.index is not None:
        raise ValueError("rsp cannot be an index")
    scale = {1: 0, 2: 1, 4: 2, 8: 3}[rm.scale]
    rex |= (index >> 3) << 1
    return rex, 0, bytes([mod << 6 | (reg & 7) << 3 | 4, scale << 6 | (index & 7) << 3 | base & 7]) + tail


def _insn(opcode: bytes, reg: int, rm: int | Mem, width: int, *, byte_regs: tuple[int, ...] = (),
          imm: bytes = b"", prefix: bytes = b"") -> bytes:
    """prefix, 0x66 for 16-bit, REX, opcode, ModRM..., immediate. `byte_regs`: registers used as 8-bit
    operands (spl, bpl, sil, dil need a REX prefix to be told from ah, ch, dh, bh)."""
    rex_bits, _, modrm = _rm_bytes(reg, rm)
    rex = rex_bits | (8 if width == 64 else 0)
    need = rex != 0 or any(4 <= r < 8 for r in byte_regs)
    return (prefix + (b"\x66" if width == 16 else b"") + (bytes([0x40 | rex]) if need else b"") + opcode + modrm
            + imm)


def _imm(value: int, size: int) -> bytes:
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _width(width: int) -> int:
    if width not in (8, 16, 32, 64):
        raise ValueError(f"width {width} is not 8, 16, 32 or 64")
    return width


# ---- ALU -----------------------------------------------------------------------------------------------

def alu_rr(op: str, width: int, dst: int | Mem, src: int) -> bytes:
    """`op dst, src` for add/or/adc/sbb/and/sub/xor/cmp (dst a register or memory), test and mov."""
    _width(width)
    byte = width == 8
    if op == "test":
        code = 0x84 if byte else 0x85
    elif op == "mov":
        code = 0x88 if byte else 0x89
    else:
        code = _GROUP1[op] << 3 | (0 if byte else 1)
    regs = (src,) + ((dst,) if isinstance(dst, int) else ()) if byte else ()
    return _insn(bytes([code]), src, dst, width, byte_regs=regs)


def alu_rm(op: str, width: int, dst: int, src: Mem) -> bytes:
    """`op dst, [mem]` (the r, r/m direction): group-1 operations and mov (a load)."""
    _width(width)
    code = 0x8B if op == "mov" else _GROUP1[op] << 3 | 3
    if width == 8:
        code -= 1
    return _insn(bytes([code]), dst, src, width, byte_regs=(dst,) if width == 8 else ())


def alu_ri(op: str, width: int, dst: int | Mem, imm: int) -> bytes:
    """`op dst, imm` for the group-1 operations, test and mov; the immediate is sign-extended from 8 or 32
    bits (a 64-bit mov of a wider constant is `mov_imm64`)."""
    _width(width)
    regs = (dst,) if width == 8 and isinstance(dst, int) else ()
    isize = 1 if width == 8 else 2 if width == 16 else 4
    if width == 64 and not fits_imm32(imm):
        raise ValueError(f"{imm} is not a sign-extended imm32")
    if op == "test":
        return _insn(b"\xf6" if width == 8 else b"\xf7", 0, dst, width, byte_regs=regs, imm=_imm(imm, isize))
    if op == "mov":
        return _insn(b"\xc6" if width == 8 else b"\xc7", 0, dst, width, byte_regs=regs, imm=_imm(imm, isize))
    digit = _GROUP1[op]
    if width == 8:
        return _insn(b"\x80", digit, dst, width, byte_regs=regs, imm=_imm(imm, 1))
    if fits_imm8(signed(imm, width)):
        return _insn(b"\x83", digit, dst, width, imm=_imm(imm, 1))
    return _insn(b"\x81", digit, dst, width, imm=_imm(imm, isize))


def mov_imm32(dst: int, imm: int) -> bytes:
    """mov r32, imm32: the register's upper half cleared."""
    _check_reg(dst)
    return (b"\x41" if dst >= 8 else b"") + bytes([0xB8 | dst & 7]) + _imm(imm, 4)


def mov_imm64(dst: int, imm: int) -> bytes:
    """movabs r64, imm64."""
    _check_reg(dst)
    return bytes([0x48 | dst >> 3, 0xB8 | dst & 7]) + _imm(imm, 8)


def mov_const(dst: int, value: int) -> bytes:
    """The shortest move of a 64-bit constant into a register."""
    value &= (1 << 64) - 1
    if value == 0:
        return alu_rr("xor", 32, dst, dst)
    if value < 1 << 32:
        return mov_imm32(dst, value)
    if fits_imm32(signed(value, 64)):
        return alu_ri("mov", 64, dst, signed(value, 64))
    return mov_imm64(dst, value)


def lea(width: int, dst: int, src: Mem) -> bytes:
    return _insn(b"\x8d", dst, src, width)


def imul_rr(width: int, dst: int, src: int | Mem) -> bytes:
    return _insn(b"\x0f\xaf", dst, src, width)


def imul_ri(width: int, dst: int, src: int, imm: int) -> bytes:
    """dst = src * imm (sign-extended imm32)."""
    if fits_imm8(imm):
        return _insn(b"\x6b", dst, src, width, imm=_imm(imm, 1))
    return _insn(b"\x69", dst, src, width, imm=_imm(imm, 4))


def unary_group3(op: str, width: int, operand: int | Mem) -> bytes:
    """not/neg/mul/imul/div/idiv r/m (group 3): mul and div work on rdx:rax."""
    digit = {"not": 2, "neg": 3, "mul": 4, "imul": 5, "div": 6, "idiv": 7}[op]
    regs = (operand,) if width == 8 and isinstance(operand, int) else ()
    return _insn(b"\xf6" if width == 8 else b"\xf7", digit, operand, width, byte_regs=regs)


def shift_cl(op: str, width: int, dst: int) -> bytes:
    """shl/shr/sar/rol/ror dst, cl (the count masked to 5 or 6 bits by the processor)."""
    return _insn(b"\xd3", _SHIFT[op], dst, width)


def shift_imm(op: str, width: int, dst: int, count: int) -> bytes:
    if count == 1:
        return _insn(b"\xd1", _SHIFT[op], dst, width)
    return _insn(b"\xc1", _SHIFT[op], dst, width, imm=_imm(count, 1))


def cqo(width: int) -> bytes:
    """Sign-extend rax into rdx (cdq for 32 bits)."""
    return b"\x48\x99" if width == 64 else b"\x99"


def bswap(width: int, reg: int) -> bytes:
    """bswap r32 / r64."""
    _check_reg(reg)
    rex = (8 if width == 64 else 0) | reg >> 3
    return (bytes([0x40 | rex]) if rex else b"") + bytes([0x0F, 0xC8 | reg & 7])


def movzx(dst: int, src: int | Mem, from_width: int) -> bytes:
    """movzx r32, r/m8 or r/m16 (the upper half of the 64-bit register cleared too)."""
    regs = (src,) if from_width == 8 and isinstance(src, int) else ()
    return _insn(b"\x0f\xb6" if from_width == 8 else b"\x0f\xb7", dst, src, 32, byte_regs=regs)


def movsx(dst: int, src: int | Mem, from_width: int, to_width: int = 64) -> bytes:
    """movsx/movsxd r, r/m of 8, 16 or 32 bits."""
    if from_width == 32:
        return _insn(b"\x63", dst, src, 64)
    regs = (src,) if from_width == 8 and isinstance(src, int) else ()
    return _insn(b"\x0f\xbe" if from_width == 8 else b"\x0f\xbf", dst, src, to_width, byte_regs=regs)


def load(dst: int, src: Mem, size: int) -> bytes:
    """dst = zero-extended `size` bytes at src."""
    if size in (1, 2):
        return movzx(dst, src, size * 8)
    return alu_rm("mov", size * 8, dst, src)


def store(dst: Mem, src: int, size: int) -> bytes:
    return alu_rr("mov", size * 8, dst, src)


def store_imm(dst: Mem, imm: int, size: int) -> bytes:
    return alu_ri("mov", size * 8, dst, signed(imm, min(size * 8, 32)))


# ---- atomics -------------------------------------------------------------------------------------------

LOCK = b"\xf0"


def lock_alu(op: str, width: int, dst: Mem, src: int) -> bytes:
    """lock add/and/or/xor [mem], src."""
    return LOCK + alu_rr(op, width, dst, src)


def xadd(width: int, dst: Mem, src: int) -> bytes:
    return LOCK + _insn(b"\x0f\xc1", src, dst, width)


def cmpxchg(width: int, dst: Mem, src: int) -> bytes:
    """lock cmpxchg [mem], src: compares with rax."""
    return LOCK + _insn(b"\x0f\xb1", src, dst, width)


def xchg(width: int, dst: Mem, src: int) -> bytes:
    """xchg [mem], src (locked by the processor)."""
    return _insn(b"\x87", src, dst, width)


# ---- stack and control ---------------------------------------------------------------------------------

def push(reg: int) -> bytes:
    _check_reg(reg)
    return (b"\x41" if reg >= 8 else b"") + bytes([0x50 | reg & 7])


def pop(reg: int) -> bytes:
    _check_reg(reg)
    return (b"\x41" if reg >= 8 else b"") + bytes([0x58 | reg & 7])


def push_mem(src: Mem) -> bytes:
    return _insn(b"\xff", 6, src, 32)


def pop_mem(dst: Mem) -> bytes:
    return _insn(b"\x8f", 0, dst, 32)


def inc_dec(op: str, width: int, operand: int | Mem) -> bytes:
    return _insn(b"\xff", 0 if op == "inc" else 1, operand, width)


def ret() -> bytes:
    return b"\xc3"


def call_rel32(rel: int) -> bytes:
    """call to `rel` bytes past the end of this 5-byte instruction."""
    return b"\xe8" + _imm(rel, 4)


def call_indirect(target: int | Mem) -> bytes:
    return _insn(b"\xff", 2, target, 32)


def jmp_indirect(target: int | Mem) -> bytes:
    return _insn(b"\xff", 4, target, 32)


def jmp(rel: int, short: bool) -> bytes:
    """jmp to `rel` bytes past the end of the instruction (2 bytes short, 5 near)."""
    return b"\xeb" + _imm(rel, 1) if short else b"\xe9" + _imm(rel, 4)


def jcc(cond: str, rel: int, short: bool) -> bytes:
    """jcc to `rel` bytes past the end of the instruction (2 bytes short, 6 near)."""
    code = CC[cond]
    return bytes([0x70 | code]) + _imm(rel, 1) if short else bytes([0x0F, 0x80 | code]) + _imm(rel, 4)


def rep_movsb() -> bytes:
    """Copy rcx bytes from [rsi] to [rdi] (the direction flag is clear, as the C ABI leaves it)."""
    return b"\xf3\xa4"


def ud2() -> bytes:
    return b"\x0f\x0b"


def int3() -> bytes:
    return b"\xcc"
