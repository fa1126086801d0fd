"""riscv64 machine ops for the shared load/store selector (`jit.risc`): RV64IMA encodings for each operation
the selector asks for. Compare-and-branch without flags (32-bit compares on sign-extended copies, which
keep both the signed and the unsigned order), W operations whose sign-extended results are zero-extended
where the MIR needs it (slli/srli pairs), DIV/REM (the semantics' zero and -1 guards are in the MIR), byte
swaps as shift/mask sequences (the base ISA has no REV8; Zbb is not assumed of the device), and the A
extension: AMOs, and an LR/SC loop for cmpxchg."""

from __future__ import annotations

from ...isa.numbers import signed
from ...isa.semantics import NEGATED
from .. import abi
from ..image import Image
from ..lower import Lowered
from ..risc import compile_risc
from . import encode as R
from .encode import RA, SP, ZERO

_WORD_OPS = {"add": "add", "sub": "sub", "mul": "mul", "shl": "sll", "lshr": "srl", "ashr": "sra",
             "udiv": "divu", "urem": "remu", "sdiv": "div", "srem": "rem"}
_LOGICAL = {"and": "and", "or": "or", "xor": "xor"}
_IMM = {"add": "addi", "and": "andi", "or": "ori", "xor": "xori"}
_SHIFT_IMM = {"shl": "slli", "lshr": "srli", "ashr": "srai"}
# name -> (branch, operands swapped)
_BRANCH = {"eq": ("beq", False), "ne": ("bne", False), "ult": ("bltu", False), "uge": ("bgeu", False),
           "ugt": ("bltu", True), "ule": ("bgeu", True), "slt": ("blt", False), "sge": ("bge", False),
           "sgt": ("blt", True), "sle": ("bge", True)}
_AMO = {"add": "amoadd", "and": "amoand", "or": "amoor", "xor": "amoxor", "xchg": "amoswap"}


class Riscv64Ops:
    arch = "riscv64"
    regs = abi.RISCV64
    zero = ZERO
    ret_reg = R.A0
    alu32_exact = False  # W operations sign-extend their 32-bit result

    def __init__(self) -> None:
        self.I0, self.I1 = self.regs.internal

    # ---- moves and constants -----------------------------------------------------------------------------

    def li(self, rd: int, value: int) -> bytes:
        return b"".join(R.li(rd, value))

    def mov(self, rd: int, rs: int) -> bytes:
        return b"" if rd == rs else R.mv(rd, rs)

    def get_sp(self, rd: int) -> bytes:
        return R.mv(rd, SP)

    def set_sp(self, rs: int) -> bytes:
        return R.mv(SP, rs)

    def add_const(self, rd: int, rn: int, value: int) -> bytes:
        value = signed(value, 64)
        if value == 0:
            return self.mov(rd, rn)
        if R.fits_imm12(value):
            return R.op_imm("addi", rd, rn, value)
        return self.li(self.I0, value) + R.op("add", rd, rn, self.I0)

    def add_shifted(self, rd: int, rn: int, rm: int, shift: int) -> bytes:
        return R.shift_imm("slli", self.I0, rm, shift) + R.op("add", rd, rn, self.I0)

    # ---- ALU ---------------------------------------------------------------------------------------------

    def alu(self, op: str, w: int, rd: int, rn: int, rm: int) -> bytes:
        if op in _LOGICAL:  # no W forms: the low 32 bits are right either way
            return R.op(_LOGICAL[op], rd, rn, rm)
        if op in _WORD_OPS:  # shifts take the count modulo the width, as the semantics masks it
            return R.op(_WORD_OPS[op], rd, rn, rm, word=w == 32)
        raise ValueError(f"no riscv64 operation {op}")

    def alu_imm(self, op: str, w: int, rd: int, rn: int, imm: int) -> bytes | None:
        imm &= (1 << w) - 1
        if op in _SHIFT_IMM:
            return R.shift_imm(_SHIFT_IMM[op], rd, rn, imm & (w - 1), word=w == 32)
        value = signed(imm, w)
        if op == "sub":
            op, value = "add", -value
        if op not in _IMM or not R.fits_imm12(value):
            return None
        if op == "add" and w == 32:
            return R.addiw(rd, rn, value)
        return R.op_imm(_IMM[op], rd, rn, value)

    def zext(self, rd: int, rs: int, bits: int) -> bytes:
        if bits == 64:
            return self.mov(rd, rs)
        if bits == 8:
            return R.op_imm("andi", rd, rs, 0xFF)
        return R.shift_imm("slli", rd, rs, 64 - bits) + R.shift_imm("srli", rd, rd, 64 - bits)

    def sext(self, rd: int, rs: int, bits: int, w: int) -> bytes:
        if bits >= w:
            return self.zext(rd, rs, w)
        code = R.addiw(rd, rs, 0) if bits == 32 else \
            R.shift_imm("slli", rd, rs, 64 - bits) + R.shift_imm("srai", rd, rd, 64 - bits)
        return code + (self.zext(rd, rd, 32) if w == 32 else b"")

    def bswap(self, w: int, rd: int, rs: int) -> bytes:
        """Each byte shifted into its mirrored place, accumulated apart from rs (rd may be rs)."""
        n = w // 8
        I0, I1 = self.I0, self.I1
        out = R.op_imm("andi", I0, rs, 0xFF) + R.shift_imm("slli", I1, I0, 8 * (n - 1))
        for i in range(1, n):
            out += R.shift_imm("srli", I0, rs, 8 * i)
            if i < 7:
                out += R.op_imm("andi", I0, I0, 0xFF)
            if n - 1 - i:
                out += R.shift_imm("slli", I0, I0, 8 * (n - 1 - i))
            out += R.op("or", I1, I1, I0)
        return out + R.mv(rd, I1)

    # ---- memory ------------------------------------------------------------------------------------------

    def load(self, size: int, rd: int, base: int, off: int) -> bytes:
        if R.fits_imm12(off):
            return R.load(size, rd, base, off)
        return self.li(self.I1, off) + R.op("add", self.I1, base, self.I1) + R.load(size, rd, self.I1, 0)

    def store(self, size: int, rs: int, base: int, off: int) -> bytes:
        if R.fits_imm12(off):
            return R.store(size, base, rs, off)
        return self.li(self.I1, off) + R.op("add", self.I1, base, self.I1) + R.store(size, self.I1, rs, 0)

    def push(self, regs: list[int]) -> bytes:
        room = -(-len(regs) * 8 // 16) * 16
        return R.op_imm("addi", SP, SP, -room) + b"".join(R.store(8, SP, r, 8 * i) for i, r in enumerate(regs))

    def pop(self, regs: list[int]) -> bytes:
        room = -(-len(regs) * 8 // 16) * 16
        return b"".join(R.load(8, r, SP, 8 * i) for i, r in enumerate(regs)) + R.op_imm("addi", SP, SP, room)

    # ---- control -----------------------------------------------------------------------------------------

    def fits_jump(self, offset: int) -> bool:
        return R.fits_jal(offset)

    def fits_cond(self, offset: int) -> bool:
        return R.fits_branch(offset)

    def jump(self, offset: int) -> bytes:
        return R.jal(ZERO, offset)

    def call(self, offset: int) -> bytes:
        return R.jal(RA, offset)

    def call_reg(self, rn: int) -> bytes:
        return R.jalr(RA, rn, 0)

    def jump_reg(self, rn: int) -> bytes:
        return R.jalr(ZERO, rn, 0)

    def ret(self) -> bytes:
        return R.ret()

    def trap(self) -> bytes:
        return R.ebreak()

    def compare_branch(self, name: str, w: int, a: int, b: int | None, imm: int):
        """(the operands put in shape, short branch(offset), inverted branch(offset)) for `a` <name>
        b-or-imm (`imm` a w-bit value when `b` is None)."""
        I0, I1 = self.I0, self.I1
        prefix = b""
        if b is None:
            value = signed(imm, w)
            if value == 0:
                b = ZERO
            else:
                prefix, b = self.li(I1, value), I1  # sign-extended: as the 32-bit operands are below
        if name in ("set", "clear"):
            prefix += R.op("and", I0, a, b)
            if w == 32:
                prefix += R.shift_imm("slli", I0, I0, 32)
            test = "bne" if name == "set" else "beq"
            inverse = "beq" if name == "set" else "bne"
            return prefix, lambda off: R.branch(test, I0, ZERO, off), lambda off: R.branch(inverse, I0, ZERO, off)
        if w == 32:  # sign-extended copies compare as the 32-bit values do, signed and unsigned
            prefix += R.addiw(I0, a, 0)
            a = I0
            if b != ZERO:
                prefix += R.addiw(I1, b, 0)
                b = I1
        test, swap = _BRANCH[name]
        inverse, inverse_swap = _BRANCH[NEGATED[name]]
        x, y = (b, a) if swap else (a, b)
        ix, iy = (b, a) if inverse_swap else (a, b)
        return prefix, lambda off: R.branch(test, x, y, off), lambda off: R.branch(inverse, ix, iy, off)

    # ---- atomics -----------------------------------------------------------------------------------------

    def atomic(self, op: str, size: int, addr: int, src: int, r0: int, fetch: bool, spare: int) -> bytes:
        """One BPF atomic at [addr]: an AMO (a fetch writes the old value into src, zero-extended for 32
        bits as the interpreter does), or for cmpxchg an LR/SC loop: r0 gets the old value, src is stored
        when it equals r0 (compared as the sign-extended words LR.W gives)."""
        I0, I1 = self.I0, self.I1
        if op == "cmpxchg":
            code = R.addiw(I0, r0, 0) if size == 4 else R.mv(I0, r0)
            code += (R.lr(size, I1, addr, aq=True) + R.branch("bne", I1, I0, 12) + R.sc(size, spare, addr, src, rl=True)
                     + R.branch("bne", spare, ZERO, -12))
            return code + (self.zext(r0, I1, 32) if size == 4 else R.mv(r0, I1))
        code = R.amo(_AMO[op], size, src if fetch else ZERO, addr, src, aq=fetch, rl=fetch)
        return code + (self.zext(src, src, 32) if fetch and size == 4 else b"")


OPS = Riscv64Ops()


def compile_riscv64(lowered: Lowered) -> Image:
    return compile_risc(lowered, OPS)
