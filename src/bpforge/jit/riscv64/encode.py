"""RV64 instruction encodings (I, M, A; Zbb and Zba optional): pure functions from operands to the 4
little-endian bytes of one instruction.

Only what a BPF JIT needs, as the kernel's arch/riscv/net/bpf_jit.h names it: register-register and
register-immediate ALU (with the 32-bit "W" forms, which sign-extend their result), loads and stores,
LUI/AUIPC, branches and jumps, multiply/divide, AMOs and LR/SC, fences, traps; from Zbb the byte reversal
and the sign/zero extensions, from Zba zext.w — the selector uses those only when told the core has them.

Registers are x0-x31 by number (`ZERO`, `RA`, `SP`, ... name the ABI ones). Branch and jump offsets are
byte offsets from the instruction itself. An operand out of its field's range raises ValueError: `fits_*`
say beforehand whether a value fits.
"""

from __future__ import annotations

ZERO, RA, SP, GP, TP = 0, 1, 2, 3, 4
T0, T1, T2 = 5, 6, 7
S0, S1 = 8, 9
A0, A1, A2, A3, A4, A5, A6, A7 = range(10, 18)
S2, S3, S4, S5, S6, S7, S8, S9, S10, S11 = range(18, 28)
T3, T4, T5, T6 = range(28, 32)
FP = S0

_LOAD, _STORE, _OP_IMM, _OP_IMM_32, _OP, _OP_32 = 0x03, 0x23, 0x13, 0x1B, 0x33, 0x3B
_LUI, _AUIPC, _BRANCH, _JAL, _JALR, _SYSTEM, _AMO, _MISC_MEM = 0x37, 0x17, 0x63, 0x6F, 0x67, 0x73, 0x2F, 0x0F


def _word(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "little")


def _reg(n: int) -> int:
    if not 0 <= n <= 31:
        raise ValueError(f"x{n} is not an RV64 register")
    return n


def _signed(value: int, bits: int, what: str) -> int:
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"{what} {value} does not fit {bits} signed bits")
    return value & ((1 << bits) - 1)


# ---- what fits -----------------------------------------------------------------------------------------

def fits_imm12(value: int) -> bool:
    """I- and S-type immediates: signed 12 bits."""
    return -2048 <= value < 2048


def fits_branch(offset: int) -> bool:
    """B-type: a signed 13-bit even offset (±4 KiB)."""
    return offset % 2 == 0 and -(1 << 12) <= offset < 1 << 12


def fits_jal(offset: int) -> bool:
    """J-type: a signed 21-bit even offset (±1 MiB)."""
    return offset % 2 == 0 and -(1 << 20) <= offset < 1 << 20


def fits_auipc_pair(offset: int) -> bool:
    """AUIPC + a 12-bit immediate: a signed 32-bit offset (what a far call or address load reaches)."""
    return -(1 << 31) - 2048 <= offset < (1 << 31) - 2048


def split_offset(offset: int) -> tuple[int, int]:
    """(hi20, lo12) with offset == (hi20 << 12) + lo12 and lo12 in -2048..2047 (LUI/AUIPC + ADDI/JALR)."""
    lo = ((offset & 0xFFF) ^ 0x800) - 0x800
    return ((offset - lo) >> 12) & 0xFFFFF, lo


# ---- formats -------------------------------------------------------------------------------------------

def r_type(opcode: int, funct3: int, funct7: int, rd: int, rs1: int, rs2: int) -> bytes:
    return _word(funct7 << 25 | _reg(rs2) << 20 | _reg(rs1) << 15 | funct3 << 12 | _reg(rd) << 7 | opcode)


def i_type(opcode: int, funct3: int, rd: int, rs1: int, imm: int) -> bytes:
    return _word(_signed(imm, 12, "immediate") << 20 | _reg(rs1) << 15 | funct3 << 12 | _reg(rd) << 7 | opcode)


def s_type(opcode: int, funct3: int, rs1: int, rs2: int, imm: int) -> bytes:
    imm = _signed(imm, 12, "store offset")
    return _word((imm >> 5) << 25 | _reg(rs2) << 20 | _reg(rs1) << 15 | funct3 << 12 | (imm & 0x1F) << 7 | opcode)


def b_type(funct3: int, rs1: int, rs2: int, offset: int) -> bytes:
    if not fits_branch(offset):
        raise ValueError(f"branch offset {offset} does not fit 13 bits")
    imm = offset & 0x1FFF
    return _word((imm >> 12) << 31 | ((imm >> 5) & 0x3F) << 25 | _reg(rs2) << 20 | _reg(rs1) << 15 | funct3 << 12
                 | ((imm >> 1) & 0xF) << 8 | ((imm >> 11) & 1) << 7 | _BRANCH)


def u_type(opcode: int, rd: int, imm20: int) -> bytes:
    if not 0 <= imm20 < 1 << 20:
        raise ValueError(f"upper immediate {imm20} does not fit 20 bits")
    return _word(imm20 << 12 | _reg(rd) << 7 | opcode)


# ---- integer ALU ---------------------------------------------------------------------------------------

# (funct3, funct7) of the register-register operations; the same operation with a W suffix is OP-32.
_OPS = {
    "add": (0, 0), "sub": (0, 0x20), "sll": (1, 0), "slt": (2, 0), "sltu": (3, 0), "xor": (4, 0),
    "srl": (5, 0), "sra": (5, 0x20), "or": (6, 0), "and": (7, 0),
    "mul": (0, 1), "mulh": (1, 1), "mulhsu": (2, 1), "mulhu": (3, 1),
    "div": (4, 1), "divu": (5, 1), "rem": (6, 1), "remu": (7, 1),
}
_W_OPS = frozenset({"add", "sub", "sll", "srl", "sra", "mul", "div", "divu", "rem", "remu"})


def op(name: str, rd: int, rs1: int, rs2: int, word: bool = False) -> bytes:
    """rd = rs1 <name> rs2; `word`: the W form (32-bit operation, result sign-extended to 64 bits)."""
    funct3, funct7 = _OPS[name]
    if word and name not in _W_OPS:
        raise ValueError(f"{name} has no W form")
    return r_type(_OP_32 if word else _OP, funct3, funct7, rd, rs1, rs2)


_IMM_OPS = {"addi": 0, "slti": 2, "sltiu": 3, "xori": 4, "ori": 6, "andi": 7}


def op_imm(name: str, rd: int, rs1: int, imm: int) -> bytes:
    """addi, slti, sltiu, xori, ori, andi with a signed 12-bit immediate."""
    return i_type(_OP_IMM, _IMM_OPS[name], rd, rs1, imm)


def addiw(rd: int, rs1: int, imm: int) -> bytes:
    """rd = sext32(rs1 + imm); addiw rd, rs, 0 is sext.w."""
    return i_type(_OP_IMM_32, 0, rd, rs1, imm)


_SHIFT_IMM = {"slli": (1, 0), "srli": (5, 0), "srai": (5, 0x400)}


def shift_imm(name: str, rd: int, rs1: int, shamt: int, word: bool = False) -> bytes:
    """slli, srli, srai by 0-63 (W forms: 0-31)."""
    funct3, high = _SHIFT_IMM[name]
    if not 0 <= shamt < (32 if word else 64):
        raise ValueError(f"shift amount {shamt} out of range")
    return _word((high | shamt) << 20 | _reg(rs1) << 15 | funct3 << 12 | _reg(rd) << 7
                 | (_OP_IMM_32 if word else _OP_IMM))


def lui(rd: int, imm20: int) -> bytes:
    """rd = sext32(imm20 << 12)."""
    return u_type(_LUI, rd, imm20)


def auipc(rd: int, imm20: int) -> bytes:
    """rd = pc + sext32(imm20 << 12)."""
    return u_type(_AUIPC, rd, imm20)


def mv(rd: int, rs: int) -> bytes:
    return op_imm("addi", rd, rs, 0)


def li(rd: int, value: int) -> list[bytes]:
    """rd = the 64-bit `value` (taken as two's complement): the kernel's emit_imm recursion — a sign-extended
    32-bit part by LUI+ADDI(W), the rest by shifting in the upper part, trailing zeros folded into the
    shift."""
    value &= (1 << 64) - 1
    if value >> 63:
        value -= 1 << 64
    return _li(rd, value)


def _li(rd: int, value: int) -> list[bytes]:
    if -(1 << 31) <= value < 1 << 31:
        hi, lo = split_offset(value)
        if hi == 0:
            return [op_imm("addi", rd, ZERO, lo)]
        seq = [lui(rd, hi)]
        if lo:
            seq.append(addiw(rd, rd, lo))
        return seq
    lo = ((value & 0xFFF) ^ 0x800) - 0x800
    upper = (value - lo) >> 12
    shift = 12
    while upper & 1 == 0:  # fold trailing zeros of the upper part into the shift
        upper >>= 1
        shift += 1
    seq = _li(rd, upper)
    seq.append(shift_imm("slli", rd, rd, shift))
    if lo:
        seq.append(op_imm("addi", rd, rd, lo))
    return seq


# ---- Zbb / Zba -----------------------------------------------------------------------------------------

def rev8(rd: int, rs1: int) -> bytes:
    """Zbb: reverse the 8 bytes."""
    return _word(0x6B8 << 20 | _reg(rs1) << 15 | 5 << 12 | _reg(rd) << 7 | _OP_IMM)


def sext_b(rd: int, rs1: int) -> bytes:
    return _word(0x604 << 20 | _reg(rs1) << 15 | 1 << 12 | _reg(rd) << 7 | _OP_IMM)


def sext_h(rd: int, rs1: int) -> bytes:
    return _word(0x605 << 20 | _reg(rs1) << 15 | 1 << 12 | _reg(rd) << 7 | _OP_IMM)


def zext_h(rd: int, rs1: int) -> bytes:
    """Zbb (RV64): packw rd, rs1, zero."""
    return r_type(_OP_32, 4, 0b0000100, rd, rs1, ZERO)


def zext_w(rd: int, rs1: int) -> bytes:
    """Zba: add.uw rd, rs1, zero."""
    return r_type(_OP_32, 0, 0b0000100, rd, rs1, ZERO)


# ---- memory --------------------------------------------------------------------------------------------

_LOAD_FUNCT3 = {(1, True): 0, (2, True): 1, (4, True): 2, (8, False): 3, (8, True): 3,
                (1, False): 4, (2, False): 5, (4, False): 6}


def load(size: int, rd: int, rs1: int, offset: int, signed: bool = False) -> bytes:
    """lb/lh/lw/ld (signed) or lbu/lhu/lwu/ld: rd = *(size *)(rs1 + offset)."""
    if (size, signed) not in _LOAD_FUNCT3:
        raise ValueError(f"access size {size} is not 1, 2, 4 or 8")
    return i_type(_LOAD, _LOAD_FUNCT3[size, signed], rd, rs1, offset)


_STORE_FUNCT3 = {1: 0, 2: 1, 4: 2, 8: 3}


def store(size: int, rs1: int, rs2: int, offset: int) -> bytes:
    """sb/sh/sw/sd: *(size *)(rs1 + offset) = rs2."""
    if size not in _STORE_FUNCT3:
        raise ValueError(f"access size {size} is not 1, 2, 4 or 8")
    return s_type(_STORE, _STORE_FUNCT3[size], rs1, rs2, offset)


_AMO_FUNCT5 = {"lr": 0b00010, "sc": 0b00011, "amoswap": 0b00001, "amoadd": 0b00000, "amoxor": 0b00100,
        "amoand": 0b01100, "amoor": 0b01000}


def amo(name: str, size: int, rd: int, rs1: int, rs2: int, aq: bool = False, rl: bool = False) -> bytes:
    """A-extension on [rs1] of 4 or 8 bytes: lr (rs2 = zero), sc (rd = 0 on success), amoswap/add/xor/and/or
    (rd = the old value, sign-extended for .w)."""
    if size not in (4, 8):
        raise ValueError(f"atomics are 4 or 8 bytes, not {size}")
    funct7 = _AMO_FUNCT5[name] << 2 | int(aq) << 1 | int(rl)
    return r_type(_AMO, 2 if size == 4 else 3, funct7, rd, rs1, rs2)



def lr(size: int, rd: int, rs1: int, aq: bool = False, rl: bool = False) -> bytes:
    return amo("lr", size, rd, rs1, ZERO, aq, rl)


def sc(size: int, rd: int, rs1: int, rs2: int, aq: bool = False, rl: bool = False) -> bytes:
    return amo("sc", size, rd, rs1, rs2, aq, rl)


def fence(pred: str = "rw", succ: str = "rw") -> bytes:
    """FENCE pred, succ over i/o/r/w."""
    bits = lambda s: sum(1 << "wroi".index(c) for c in s)  # noqa: E731
    return _word(bits(pred) << 24 | bits(succ) << 20 | _MISC_MEM)


# ---- control -------------------------------------------------------------------------------------------

_BRANCH_FUNCT3 = {"beq": 0, "bne": 1, "blt": 4, "bge": 5, "bltu": 6, "bgeu": 7}


def branch(name: str, rs1: int, rs2: int, offset: int) -> bytes:
    """beq, bne, blt, bge, bltu, bgeu rs1, rs2, offset."""
    return b_type(_BRANCH_FUNCT3[name], rs1, rs2, offset)


def jal(rd: int, offset: int) -> bytes:
    if not fits_jal(offset):
        raise ValueError(f"jump offset {offset} does not fit JAL")
    imm = offset & 0x1FFFFF
    return _word((imm >> 20) << 31 | ((imm >> 1) & 0x3FF) << 21 | ((imm >> 11) & 1) << 20
                 | ((imm >> 12) & 0xFF) << 12 | _reg(rd) << 7 | _JAL)


def jalr(rd: int, rs1: int, offset: int = 0) -> bytes:
    return i_type(_JALR, 0, rd, rs1, offset)


def ret() -> bytes:
    return jalr(ZERO, RA, 0)


def ecall() -> bytes:
    return _word(0x00000073)


def ebreak() -> bytes:
    return _word(0x00100073)


def nop() -> bytes:
    return op_imm("addi", ZERO, ZERO, 0)
