"""A64 instruction encodings: pure functions from operands to the 4 little-endian bytes of one instruction.

Only the instructions a BPF JIT needs, as the kernel's arch/arm64/net/bpf_jit.h names them (ALU with
register, immediate and logical-immediate forms, moves of 16-bit chunks, bitfield moves for shifts and
extensions, byte reversal, loads and stores with scaled, unscaled and register offsets, pairs for the
prologue, exclusive and acquire/release accesses, LSE atomics, branches, barriers, traps).

Registers are numbers 0-30; 31 is XZR/WZR or SP as the instruction defines it (`SP` and `ZR` name it).
`width` is 32 (W registers) or 64 (X registers). Branch offsets are byte offsets from the branch itself.
An operand out of its field's range raises ValueError: `fits_*` say beforehand whether a value fits, so a
caller materializes it in a scratch register instead.
"""

from __future__ import annotations

from functools import lru_cache

SP = 31  # as base or destination of ADD/SUB immediate and of loads/stores
ZR = 31  # as operand of everything else
LR = 30
FP = 29

# Condition codes of B.cond and CSEL.
COND = {"eq": 0, "ne": 1, "hs": 2, "lo": 3, "mi": 4, "pl": 5, "vs": 6, "vc": 7,
        "hi": 8, "ls": 9, "ge": 10, "lt": 11, "gt": 12, "le": 13, "al": 14}

_SIZE_BITS = {1: 0, 2: 1, 4: 2, 8: 3}  # access size in bytes -> the `size` field


def _word(value: int) -> bytes:
    return (value & 0xFFFFFFFF).to_bytes(4, "little")


def _sf(width: int) -> int:
    if width not in (32, 64):
        raise ValueError(f"width {width} is neither 32 nor 64")
    return 1 if width == 64 else 0


def _reg(n: int) -> int:
    if not 0 <= n <= 31:
        raise ValueError(f"x{n} is not an A64 register")
    return n


def _field(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value} does not fit {bits} bits")
    return value


def _signed_field(value: int, bits: int, what: str) -> int:
    if not -(1 << (bits - 1)) <= value < 1 << (bits - 1):
        raise ValueError(f"{what} {value} does not fit {bits} signed bits")
    return value & ((1 << bits) - 1)


# ---- what fits -----------------------------------------------------------------------------------------

def fits_add_imm(value: int) -> bool:
    """ADD/SUB immediate: 12 bits, optionally shifted left by 12."""
    return 0 <= value < 1 << 12 or (value & 0xFFF == 0 and 0 <= value >> 12 < 1 << 12)


def fits_scaled_offset(offset: int, size: int) -> bool:
    """LDR/STR (unsigned offset): a non-negative multiple of the size, up to 4095 units."""
    return offset >= 0 and offset % size == 0 and offset // size < 1 << 12


def fits_unscaled_offset(offset: int) -> bool:
    """LDUR/STUR: a signed 9-bit byte offset."""
    return -256 <= offset < 256


def fits_branch(offset: int, bits: int) -> bool:
    """A branch offset (bytes) in an immediate of `bits` words: 26 (B/BL), 19 (B.cond, CBZ)."""
    return offset % 4 == 0 and -(1 << (bits - 1)) <= offset // 4 < 1 << (bits - 1)


@lru_cache(maxsize=4096)
def logical_immediate(value: int, width: int) -> tuple[int, int, int] | None:
    """(N, immr, imms) encoding `value` as an A64 bitmask immediate of `width` bits, or None.

    A bitmask immediate is an element of 2, 4, ..., 64 bits holding one rotated run of ones, replicated
    across the register; all-zeros and all-ones are not encodable."""
    _sf(width)
    value &= (1 << width) - 1
    if width == 32:
        value |= value << 32
    if value in (0, (1 << 64) - 1):
        return None
    size = 64
    while size > 2:  # the smallest period of the pattern
        half = size // 2
        if (value ^ (value >> half)) & ((1 << half) - 1):
            break
        size = half
    element = value & ((1 << size) - 1)
    ones = bin(element).count("1")
    run = (1 << ones) - 1
    for rotation in range(size):
        rotated = ((run >> rotation) | (run << (size - rotation))) & ((1 << size) - 1)
        if rotated == element:
            imms = ((~(size - 1) << 1) & 0x3F) | (ones - 1)
            return (1 if size == 64 else 0), rotation, imms
    return None


def fits_logical_imm(value: int, width: int) -> bool:
    return logical_immediate(value, width) is not None


# ---- data processing: immediate ------------------------------------------------------------------------

def _add_sub_imm(op: int, s: int, width: int, rd: int, rn: int, imm: int) -> bytes:
    if not fits_add_imm(imm):
        raise ValueError(f"immediate {imm} does not fit ADD/SUB")
    shift = 0 if imm < 1 << 12 else 1
    imm12 = imm >> 12 if shift else imm
    return _word(_sf(width) << 31 | op << 30 | s << 29 | 0b100010 << 23 | shift << 22 | imm12 << 10
                 | _reg(rn) << 5 | _reg(rd))


def add_imm(width: int, rd: int, rn: int, imm: int) -> bytes:
    """rd = rn + imm (rd, rn may be SP)."""
    return _add_sub_imm(0, 0, width, rd, rn, imm)


def sub_imm(width: int, rd: int, rn: int, imm: int) -> bytes:
    return _add_sub_imm(1, 0, width, rd, rn, imm)


def cmp_imm(width: int, rn: int, imm: int) -> bytes:
    """SUBS zr, rn, #imm."""
    return _add_sub_imm(1, 1, width, ZR, rn, imm)


def cmn_imm(width: int, rn: int, imm: int) -> bytes:
    """ADDS zr, rn, #imm: compares rn with -imm."""
    return _add_sub_imm(0, 1, width, ZR, rn, imm)


_LOGICAL_OPC = {"and": 0, "orr": 1, "eor": 2, "ands": 3}


def logical_imm(op: str, width: int, rd: int, rn: int, value: int) -> bytes:
    """rd = rn <op> #value for op in and, orr, eor, ands (a bitmask immediate; rd may be SP but for ands)."""
    enc = logical_immediate(value, width)
    if enc is None:
        raise ValueError(f"{value:#x} is not a {width}-bit bitmask immediate")
    n, immr, imms = enc
    return _word(_sf(width) << 31 | _LOGICAL_OPC[op] << 29 | 0b100100 << 23 | n << 22 | immr << 16 | imms << 10
                 | _reg(rn) << 5 | _reg(rd))


def tst_imm(width: int, rn: int, value: int) -> bytes:
    return logical_imm("ands", width, ZR, rn, value)


_MOVE_WIDE_OPC = {"movn": 0, "movz": 2, "movk": 3}


def move_wide(op: str, width: int, rd: int, imm16: int, shift: int = 0) -> bytes:
    """MOVN/MOVZ/MOVK rd, #imm16, LSL #shift (shift a multiple of 16 below `width`)."""
    if shift % 16 or not 0 <= shift < width:
        raise ValueError(f"shift {shift} is not a 16-bit chunk of a {width}-bit register")
    return _word(_sf(width) << 31 | _MOVE_WIDE_OPC[op] << 29 | 0b100101 << 23 | (shift // 16) << 21
                 | _field(imm16, 16, "imm16") << 5 | _reg(rd))


def movz(width: int, rd: int, imm16: int, shift: int = 0) -> bytes:
    return move_wide("movz", width, rd, imm16, shift)


def movn(width: int, rd: int, imm16: int, shift: int = 0) -> bytes:
    return move_wide("movn", width, rd, imm16, shift)


def movk(width: int, rd: int, imm16: int, shift: int = 0) -> bytes:
    return move_wide("movk", width, rd, imm16, shift)


def mov_imm(width: int, rd: int, value: int) -> list[bytes]:
    """The shortest sequence this module knows that sets rd to `value` (as the kernel's emit_a64_mov_i64:
    MOVZ or MOVN of the first chunk, then MOVK for each chunk that differs; or one ORR of a bitmask)."""
    mask = (1 << width) - 1
    value &= mask
    chunks = [(value >> s) & 0xFFFF for s in range(0, width, 16)]
    zeros, ones = chunks.count(0), chunks.count(0xFFFF)
    if value and value != mask and zeros < len(chunks) - 1 and ones < len(chunks) - 1 \
            and fits_logical_imm(value, width):
        return [logical_imm("orr", width, rd, ZR, value)]
    inverted = ones > zeros
    fill = 0xFFFF if inverted else 0
    seq: list[bytes] = []
    for i, chunk in enumerate(chunks):
        if chunk == fill:
            continue
        if not seq:
            seq.append(movn(width, rd, chunk ^ 0xFFFF, 16 * i) if inverted else movz(width, rd, chunk, 16 * i))
        else:
            seq.append(movk(width, rd, chunk, 16 * i))
    if not seq:  # every chunk is the fill: 0 or all ones
        seq.append(movn(width, rd, 0) if inverted else movz(width, rd, 0))
    return seq


_BITFIELD_OPC = {"sbfm": 0, "bfm": 1, "ubfm": 2}


def bitfield(op: str, width: int, rd: int, rn: int, immr: int, imms: int) -> bytes:
    sf = _sf(width)
    return _word(sf << 31 | _BITFIELD_OPC[op] << 29 | 0b100110 << 23 | sf << 22 | _field(immr, 6, "immr") << 16
                 | _field(imms, 6, "imms") << 10 | _reg(rn) << 5 | _reg(rd))


def lsl_imm(width: int, rd: int, rn: int, shift: int) -> bytes:
    """rd = rn << shift: UBFM rd, rn, #(-shift mod width), #(width-1-shift)."""
    shift = _field(shift, 6, "shift") % width
    return bitfield("ubfm", width, rd, rn, (width - shift) % width, width - 1 - shift)


def lsr_imm(width: int, rd: int, rn: int, shift: int) -> bytes:
    return bitfield("ubfm", width, rd, rn, _field(shift, 6, "shift") % width, width - 1)


def asr_imm(width: int, rd: int, rn: int, shift: int) -> bytes:
    return bitfield("sbfm", width, rd, rn, _field(shift, 6, "shift") % width, width - 1)


def sxt(width: int, rd: int, rn: int, bits: int) -> bytes:
    """SXTB/SXTH/SXTW: rd = rn's low `bits` bits sign-extended to `width`."""
    return bitfield("sbfm", width, rd, rn, 0, bits - 1)


def uxt(rd: int, rn: int, bits: int) -> bytes:
    """UXTB/UXTH (32-bit UBFM, which clears bits 32-63 as every W write does)."""
    return bitfield("ubfm", 32, rd, rn, 0, bits - 1)


def adr(rd: int, offset: int) -> bytes:
    """rd = the address `offset` bytes from this instruction (±1 MiB)."""
    imm = _signed_field(offset, 21, "ADR offset")
    return _word((imm & 3) << 29 | 0b10000 << 24 | (imm >> 2) << 5 | _reg(rd))


# ---- data processing: register -------------------------------------------------------------------------

_SHIFT_TYPE = {"lsl": 0, "lsr": 1, "asr": 2, "ror": 3}


def _add_sub_reg(op: int, s: int, width: int, rd: int, rn: int, rm: int, shift: str, amount: int) -> bytes:
    return _word(_sf(width) << 31 | op << 30 | s << 29 | 0b01011 << 24 | _SHIFT_TYPE[shift] << 22 | _reg(rm) << 16
                 | _field(amount, 6, "shift amount") << 10 | _reg(rn) << 5 | _reg(rd))


def add_reg(width: int, rd: int, rn: int, rm: int, shift: str = "lsl", amount: int = 0) -> bytes:
    return _add_sub_reg(0, 0, width, rd, rn, rm, shift, amount)


def sub_reg(width: int, rd: int, rn: int, rm: int, shift: str = "lsl", amount: int = 0) -> bytes:
    return _add_sub_reg(1, 0, width, rd, rn, rm, shift, amount)


def cmp_reg(width: int, rn: int, rm: int) -> bytes:
    return _add_sub_reg(1, 1, width, ZR, rn, rm, "lsl", 0)


def neg(width: int, rd: int, rm: int) -> bytes:
    return sub_reg(width, rd, ZR, rm)


_LOGICAL_REG = {"and": (0, 0), "bic": (0, 1), "orr": (1, 0), "orn": (1, 1), "eor": (2, 0), "eon": (2, 1),
                "ands": (3, 0), "bics": (3, 1)}


def logical_reg(op: str, width: int, rd: int, rn: int, rm: int, shift: str = "lsl", amount: int = 0) -> bytes:
    """rd = rn <op> (rm shifted) for and, bic, orr, orn, eor, eon, ands, bics."""
    opc, n = _LOGICAL_REG[op]
    return _word(_sf(width) << 31 | opc << 29 | 0b01010 << 24 | _SHIFT_TYPE[shift] << 22 | n << 21 | _reg(rm) << 16
                 | _field(amount, 6, "shift amount") << 10 | _reg(rn) << 5 | _reg(rd))


def mov_reg(width: int, rd: int, rm: int) -> bytes:
    """ORR rd, zr, rm (a 32-bit move zero-extends). Neither may be SP: use add_imm(…, 0) for that."""
    return logical_reg("orr", width, rd, ZR, rm)


def tst_reg(width: int, rn: int, rm: int) -> bytes:
    return logical_reg("ands", width, ZR, rn, rm)


def mvn(width: int, rd: int, rm: int) -> bytes:
    return logical_reg("orn", width, rd, ZR, rm)


_TWO_SOURCE = {"udiv": 0b000010, "sdiv": 0b000011, "lslv": 0b001000, "lsrv": 0b001001, "asrv": 0b001010,
               "rorv": 0b001011}


def two_source(op: str, width: int, rd: int, rn: int, rm: int) -> bytes:
    """udiv, sdiv (by zero: 0; INT_MIN / -1: INT_MIN), lslv, lsrv, asrv, rorv (amount mod width)."""
    return _word(_sf(width) << 31 | 0b11010110 << 21 | _reg(rm) << 16 | _TWO_SOURCE[op] << 10 | _reg(rn) << 5
                 | _reg(rd))


def _three_source(width: int, o0: int, rd: int, rn: int, rm: int, ra: int) -> bytes:
    return _word(_sf(width) << 31 | 0b11011 << 24 | _reg(rm) << 16 | o0 << 15 | _reg(ra) << 10 | _reg(rn) << 5
                 | _reg(rd))


def madd(width: int, rd: int, rn: int, rm: int, ra: int) -> bytes:
    """rd = ra + rn * rm."""
    return _three_source(width, 0, rd, rn, rm, ra)


def msub(width: int, rd: int, rn: int, rm: int, ra: int) -> bytes:
    """rd = ra - rn * rm (the remainder after a division)."""
    return _three_source(width, 1, rd, rn, rm, ra)


def mul(width: int, rd: int, rn: int, rm: int) -> bytes:
    return madd(width, rd, rn, rm, ZR)


def rev(width: int, rd: int, rn: int) -> bytes:
    """Reverse the bytes of the whole register (REV w / REV x)."""
    return _one_source(width, 0b000010 if width == 32 else 0b000011, rd, rn)


def rev16(width: int, rd: int, rn: int) -> bytes:
    """Reverse the bytes of each halfword."""
    return _one_source(width, 0b000001, rd, rn)


def rev32(rd: int, rn: int) -> bytes:
    """Reverse the bytes of each word of an X register."""
    return _one_source(64, 0b000010, rd, rn)


def _one_source(width: int, opcode: int, rd: int, rn: int) -> bytes:
    return _word(_sf(width) << 31 | 1 << 30 | 0b11010110 << 21 | opcode << 10 | _reg(rn) << 5 | _reg(rd))


_CSEL = {"csel": (0, 0), "csinc": (0, 1), "csinv": (1, 0), "csneg": (1, 1)}


def csel(op: str, width: int, rd: int, rn: int, rm: int, cond: str) -> bytes:
    """rd = cond ? rn : f(rm) with f the identity (csel), +1 (csinc), ~ (csinv) or - (csneg)."""
    o, o2 = _CSEL[op]
    return _word(_sf(width) << 31 | o << 30 | 0b11010100 << 21 | _reg(rm) << 16 | COND[cond] << 12 | o2 << 10
                 | _reg(rn) << 5 | _reg(rd))


# ---- loads and stores ----------------------------------------------------------------------------------

# opc of a load/store: store, zero-extending load, sign-extending load into an X register.
_LDST_OPC = {"str": 0, "ldr": 1, "ldrs": 2}


def _ldst_size(size: int) -> int:
    if size not in _SIZE_BITS:
        raise ValueError(f"access size {size} is not 1, 2, 4 or 8")
    return _SIZE_BITS[size]


def _check_signed_load(kind: str, size: int) -> None:
    if kind == "ldrs" and size == 8:
        raise ValueError("a sign-extending load of 8 bytes is a plain load")


def ldst_scaled(kind: str, size: int, rt: int, rn: int, offset: int) -> bytes:
    """LDR/STR/LDRS* rt, [rn, #offset] with a non-negative offset scaled by the size (rn may be SP)."""
    _check_signed_load(kind, size)
    if not fits_scaled_offset(offset, size):
        raise ValueError(f"offset {offset} does not fit a scaled {size}-byte access")
    bits = _ldst_size(size)
    return _word(bits << 30 | 0b111001 << 24 | _LDST_OPC[kind] << 22 | (offset >> bits) << 10 | _reg(rn) << 5
                 | _reg(rt))


def ldst_unscaled(kind: str, size: int, rt: int, rn: int, offset: int) -> bytes:
    """LDUR/STUR/LDURS* rt, [rn, #offset] with a signed 9-bit byte offset."""
    _check_signed_load(kind, size)
    return _word(_ldst_size(size) << 30 | 0b111000 << 24 | _LDST_OPC[kind] << 22
                 | _signed_field(offset, 9, "unscaled offset") << 12 | _reg(rn) << 5 | _reg(rt))


def ldst_reg(kind: str, size: int, rt: int, rn: int, rm: int) -> bytes:
    """LDR/STR/LDRS* rt, [rn, rm] (register offset, not shifted)."""
    _check_signed_load(kind, size)
    return _word(_ldst_size(size) << 30 | 0b111000 << 24 | _LDST_OPC[kind] << 22 | 1 << 21 | _reg(rm) << 16
                 | 0b011 << 13 | 0b10 << 10 | _reg(rn) << 5 | _reg(rt))


def ldst_indexed(kind: str, size: int, rt: int, rn: int, offset: int, pre: bool) -> bytes:
    """LDR/STR rt, [rn, #offset]! (pre-index) or [rn], #offset (post-index): rn += offset."""
    _check_signed_load(kind, size)
    return _word(_ldst_size(size) << 30 | 0b111000 << 24 | _LDST_OPC[kind] << 22
                 | _signed_field(offset, 9, "indexed offset") << 12 | (0b11 if pre else 0b01) << 10
                 | _reg(rn) << 5 | _reg(rt))


_PAIR_MODE = {"post": 0b001, "offset": 0b010, "pre": 0b011}


def ldst_pair(load: bool, rt: int, rt2: int, rn: int, offset: int, mode: str = "offset") -> bytes:
    """STP/LDP of two X registers at [rn, #offset] (mode offset), [rn, #offset]! (pre) or [rn], #offset
    (post); the offset a multiple of 8 in -512..504."""
    if offset % 8:
        raise ValueError(f"pair offset {offset} is not a multiple of 8")
    return _word(0b10 << 30 | 0b101 << 27 | _PAIR_MODE[mode] << 23 | int(load) << 22
                 | _signed_field(offset // 8, 7, "pair offset") << 15 | _reg(rt2) << 10 | _reg(rn) << 5 | _reg(rt))


def _exclusive(size: int, o2: int, load: int, o1: int, rs: int, o0: int, rt: int, rn: int) -> bytes:
    return _word(_ldst_size(size) << 30 | 0b001000 << 24 | o2 << 23 | load << 22 | o1 << 21 | _reg(rs) << 16
                 | o0 << 15 | ZR << 10 | _reg(rn) << 5 | _reg(rt))


def ldxr(size: int, rt: int, rn: int, acquire: bool = False) -> bytes:
    """LDXR / LDAXR rt, [rn] (4 or 8 bytes for the JIT, all sizes encodable)."""
    return _exclusive(size, 0, 1, 0, ZR, int(acquire), rt, rn)


def stxr(size: int, rs: int, rt: int, rn: int, release: bool = False) -> bytes:
    """STXR / STLXR ws, rt, [rn]: ws = 0 when the store happened."""
    return _exclusive(size, 0, 0, 0, rs, int(release), rt, rn)


def ldar(size: int, rt: int, rn: int) -> bytes:
    """LDAR / LDARB / LDARH: load-acquire."""
    return _exclusive(size, 1, 1, 0, ZR, 1, rt, rn)


def stlr(size: int, rt: int, rn: int) -> bytes:
    """STLR / STLRB / STLRH: store-release."""
    return _exclusive(size, 1, 0, 0, ZR, 1, rt, rn)


def cas(size: int, rs: int, rt: int, rn: int, acquire: bool = True, release: bool = True) -> bytes:
    """CAS(A)(L) rs, rt, [rn] (LSE): if [rn] == rs then [rn] = rt; rs = the old [rn]."""
    return _exclusive(size, 1, int(acquire), 1, rs, int(release), rt, rn)


_LSE_OP = {"ldadd": (0, 0b000), "ldclr": (0, 0b001), "ldeor": (0, 0b010), "ldset": (0, 0b011), "swp": (1, 0b000)}


def lse(op: str, size: int, rs: int, rt: int, rn: int, acquire: bool = False, release: bool = False) -> bytes:
    """LSE atomic memory operation: rt = [rn]; [rn] = [rn] <op> rs (ldadd, ldclr = and-not, ldeor, ldset = or,
    swp); rt = ZR discards the old value (STADD and friends)."""
    o3, opc = _LSE_OP[op]
    return _word(_ldst_size(size) << 30 | 0b111000 << 24 | int(acquire) << 23 | int(release) << 22 | 1 << 21
                 | _reg(rs) << 16 | o3 << 15 | opc << 12 | _reg(rn) << 5 | _reg(rt))


# ---- branches, barriers, traps -------------------------------------------------------------------------

def b(offset: int) -> bytes:
    if not fits_branch(offset, 26):
        raise ValueError(f"branch offset {offset} does not fit B")
    return _word(0b000101 << 26 | (offset >> 2) & 0x3FFFFFF)


def bl(offset: int) -> bytes:
    if not fits_branch(offset, 26):
        raise ValueError(f"branch offset {offset} does not fit BL")
    return _word(0b100101 << 26 | (offset >> 2) & 0x3FFFFFF)


def b_cond(cond: str, offset: int) -> bytes:
    if not fits_branch(offset, 19):
        raise ValueError(f"branch offset {offset} does not fit B.cond")
    return _word(0b01010100 << 24 | ((offset >> 2) & 0x7FFFF) << 5 | COND[cond])


def cbz(width: int, rt: int, offset: int, nonzero: bool = False) -> bytes:
    """CBZ / CBNZ rt, offset."""
    if not fits_branch(offset, 19):
        raise ValueError(f"branch offset {offset} does not fit CBZ")
    return _word(_sf(width) << 31 | 0b011010 << 25 | int(nonzero) << 24 | ((offset >> 2) & 0x7FFFF) << 5 | _reg(rt))


def br(rn: int) -> bytes:
    return _word(0xD61F0000 | _reg(rn) << 5)


def blr(rn: int) -> bytes:
    return _word(0xD63F0000 | _reg(rn) << 5)


def ret(rn: int = LR) -> bytes:
    return _word(0xD65F0000 | _reg(rn) << 5)


def brk(imm16: int = 0) -> bytes:
    return _word(0xD4200000 | _field(imm16, 16, "BRK immediate") << 5)


def svc(imm16: int = 0) -> bytes:
    return _word(0xD4000001 | _field(imm16, 16, "SVC immediate") << 5)


def nop() -> bytes:
    return _word(0xD503201F)


def dmb_ish() -> bytes:
    """DMB ISH: the full barrier the kernel puts around LL/SC atomics that return a value."""
    return _word(0xD5033BBF)
