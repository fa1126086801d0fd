"""arm64 machine ops for the shared load/store selector (`jit.risc`): which A64 encodings implement each
operation the selector asks for, and which immediates fit. Flags compare-and-branch (CMP/TST + B.cond),
W-register operations that zero-extend for free, UDIV/SDIV with MSUB for remainders, REV/REV16 for byte
swaps, and the LSE atomics (LDADD/LDCLR/LDSET/LDEOR/SWP/CAS; the device's core is an ARMv8.1+ one)."""

from __future__ import annotations

from ...isa.numbers import signed
from .. import abi
from ..image import Image
from ..lower import Lowered
from ..risc import compile_risc
from . import encode as A
from .encode import SP, ZR

_COND = {"eq": "eq", "ne": "ne", "ult": "lo", "ule": "ls", "ugt": "hi", "uge": "hs", "slt": "lt", "sle": "le",
         "sgt": "gt", "sge": "ge", "set": "ne", "clear": "eq"}
_INVERSE = {"eq": "ne", "ne": "eq", "lo": "hs", "hs": "lo", "ls": "hi", "hi": "ls", "lt": "ge", "ge": "lt",
            "le": "gt", "gt": "le"}
_LOGICAL = {"and": "and", "or": "orr", "xor": "eor"}
_VARIABLE_SHIFT = {"shl": "lslv", "lshr": "lsrv", "ashr": "asrv"}
_LSE = {"add": "ldadd", "or": "ldset", "xor": "ldeor", "xchg": "swp"}


class Arm64Ops:
    arch = "arm64"
    regs = abi.ARM64
    zero = ZR
    ret_reg = 0
    alu32_exact = True  # a W-register write clears bits 32-63

    def __init__(self) -> None:
        self.I0, self.I1 = self.regs.internal

    # ---- moves and constants -----------------------------------------------------------------------------

    def li(self, rd: int, value: int) -> bytes:
        return b"".join(A.mov_imm(64, rd, value))

    def mov(self, rd: int, rs: int) -> bytes:
        return b"" if rd == rs else A.mov_reg(64, rd, rs)

    def get_sp(self, rd: int) -> bytes:
        return A.add_imm(64, rd, SP, 0)

    def set_sp(self, rs: int) -> bytes:
        return A.add_imm(64, SP, rs, 0)

    def add_const(self, rd: int, rn: int, value: int) -> bytes:
        """rd = rn + value, any 64-bit value (rn never SP here)."""
        value = signed(value, 64)
        if value == 0:
            return self.mov(rd, rn)
        if A.fits_add_imm(value):
            return A.add_imm(64, rd, rn, value)
        if A.fits_add_imm(-value):
            return A.sub_imm(64, rd, rn, -value)
        return self.li(self.I0, value) + A.add_reg(64, rd, rn, self.I0)

    def add_shifted(self, rd: int, rn: int, rm: int, shift: int) -> bytes:
        return A.add_reg(64, rd, rn, rm, "lsl", shift)

    # ---- ALU ---------------------------------------------------------------------------------------------

    def alu(self, op: str, w: int, rd: int, rn: int, rm: int) -> bytes:
        if op == "add":
            return A.add_reg(w, rd, rn, rm)
        if op == "sub":
            return A.sub_reg(w, rd, rn, rm)
        if op == "mul":
            return A.mul(w, rd, rn, rm)
        if op in _LOGICAL:
            return A.logical_reg(_LOGICAL[op], w, rd, rn, rm)
        if op in _VARIABLE_SHIFT:  # the count is taken modulo the width, as the semantics masks it
            return A.two_source(_VARIABLE_SHIFT[op], w, rd, rn, rm)
        if op in ("udiv", "sdiv"):
            return A.two_source(op, w, rd, rn, rm)
        if op in ("urem", "srem"):  # q = n / m; rd = n - q * m (the quotient apart: rd may be n or m)
            return A.two_source("udiv" if op == "urem" else "sdiv", w, self.I0, rn, rm) + \
                A.msub(w, rd, self.I0, rm, rn)
        raise ValueError(f"no arm64 operation {op}")

    def alu_imm(self, op: str, w: int, rd: int, rn: int, imm: int) -> bytes | None:
        """The immediate form of `op` when `imm` (a w-bit value) fits one, else None."""
        imm &= (1 << w) - 1
        if op in ("shl", "lshr", "ashr"):
            shift = imm & (w - 1)
            return {"shl": A.lsl_imm, "lshr": A.lsr_imm, "ashr": A.asr_imm}[op](w, rd, rn, shift)
        if op in ("add", "sub"):
            if rn == ZR:  # register 31 is SP in the immediate forms
                return None
            value = signed(imm, w) if op == "add" else -signed(imm, w)
            if A.fits_add_imm(value):
                return A.add_imm(w, rd, rn, value)
            if A.fits_add_imm(-value):
                return A.sub_imm(w, rd, rn, -value)
            return None
        if op in _LOGICAL and A.fits_logical_imm(imm, w):
            return A.logical_imm(_LOGICAL[op], w, rd, rn, imm)
        return None

    def zext(self, rd: int, rs: int, bits: int) -> bytes:
        if bits == 32:
            return A.mov_reg(32, rd, rs)
        if bits == 64:
            return self.mov(rd, rs)
        return A.uxt(rd, rs, bits)

    def sext(self, rd: int, rs: int, bits: int, w: int) -> bytes:
        """rd = rs's low `bits` sign-extended to `w` bits (zero above w)."""
        if bits >= w:
            return self.zext(rd, rs, w)
        return A.sxt(w, rd, rs, bits)

    def bswap(self, w: int, rd: int, rs: int) -> bytes:
        if w == 16:
            return A.rev16(32, rd, rs) + A.uxt(rd, rd, 16)
        return A.rev(w, rd, rs)

    # ---- memory ------------------------------------------------------------------------------------------

    def _address(self, base: int, off: int, size: int) -> tuple[str, int, int]:
        if A.fits_scaled_offset(off, size):
            return "scaled", base, off
        if A.fits_unscaled_offset(off):
            return "unscaled", base, off
        return "reg", base, off

    def _ldst(self, kind: str, size: int, rt: int, base: int, off: int) -> bytes:
        form, base, off = self._address(base, off, size)
        if form == "scaled":
            return A.ldst_scaled(kind, size, rt, base, off)
        if form == "unscaled":
            return A.ldst_unscaled(kind, size, rt, base, off)
        return self.li(self.I1, off) + A.ldst_reg(kind, size, rt, base, self.I1)

    def load(self, size: int, rd: int, base: int, off: int) -> bytes:
        """rd = the `size` bytes at base + off, zero-extended."""
        return self._ldst("ldr", size, rd, base, off)

    def store(self, size: int, rs: int, base: int, off: int) -> bytes:
        return self._ldst("str", size, rs, base, off)

    def push(self, regs: list[int]) -> bytes:
        """SP -= 16-rounded room; the registers stored from the new SP up (pairs where possible)."""
        room = -(-len(regs) * 8 // 16) * 16
        out = A.sub_imm(64, SP, SP, room)
        for i in range(0, len(regs), 2):
            pair = regs[i:i + 2]
            out += A.ldst_pair(False, pair[0], pair[1], SP, 8 * i) if len(pair) == 2 else \
                A.ldst_scaled("str", 8, pair[0], SP, 8 * i)
        return out

    def pop(self, regs: list[int]) -> bytes:
        room = -(-len(regs) * 8 // 16) * 16
        out = b""
        for i in range(0, len(regs), 2):
            pair = regs[i:i + 2]
            out += A.ldst_pair(True, pair[0], pair[1], SP, 8 * i) if len(pair) == 2 else \
                A.ldst_scaled("ldr", 8, pair[0], SP, 8 * i)
        return out + A.add_imm(64, SP, SP, room)

    # ---- control -----------------------------------------------------------------------------------------

    def fits_jump(self, offset: int) -> bool:
        return A.fits_branch(offset, 26)

    def fits_cond(self, offset: int) -> bool:
        return A.fits_branch(offset, 19)

    def jump(self, offset: int) -> bytes:
        return A.b(offset)

    def call(self, offset: int) -> bytes:
        return A.bl(offset)

    def call_reg(self, rn: int) -> bytes:
        return A.blr(rn)

    def jump_reg(self, rn: int) -> bytes:
        return A.br(rn)

    def ret(self) -> bytes:
        return A.ret()

    def trap(self) -> bytes:
        return A.brk(1)

    def compare_branch(self, name: str, w: int, a: int, b: int | None, imm: int):
        """(the compare's code, short branch(offset), inverted branch(offset)) for `a` <name> b-or-imm
        (`imm` a w-bit value when `b` is None)."""
        if b is None and imm == 0 and name in ("eq", "ne"):
            return b"", lambda off: A.cbz(w, a, off, name == "ne"), lambda off: A.cbz(w, a, off, name == "eq")
        cond = _COND[name]
        prefix = b""
        if name in ("set", "clear"):
            if b is None and A.fits_logical_imm(imm, w):
                test = A.tst_imm(w, a, imm)
            else:
                if b is None:
                    prefix, b = self.li(self.I1, imm), self.I1
                test = A.tst_reg(w, a, b)
        elif b is None and A.fits_add_imm(imm):
            test = A.cmp_imm(w, a, imm)
        elif b is None and A.fits_add_imm(-signed(imm, w)):
            test = A.cmn_imm(w, a, -signed(imm, w))
        else:
            if b is None:
                prefix, b = self.li(self.I1, imm), self.I1
            test = A.cmp_reg(w, a, b)
        return prefix + test, lambda off: A.b_cond(cond, off), lambda off: A.b_cond(_INVERSE[cond], off)

    # ---- atomics -----------------------------------------------------------------------------------------

    def atomic(self, op: str, size: int, addr: int, src: int, r0: int, fetch: bool, spare: int) -> bytes:
        """The LSE instruction for one BPF atomic at [addr]; a fetch writes the old value into src (for
        cmpxchg: r0), which a W-register write zero-extends as the interpreter does."""
        if op == "cmpxchg":  # CAS compares r0, stores src on a match, r0 gets the old value either way
            return A.cas(size, r0, src, addr)
        rt = src if fetch else ZR
        if op == "and":  # LDCLR clears the bits set in its operand: and with src = clear ~src
            return A.mvn(64, self.I0, src) + A.lse("ldclr", size, self.I0, rt, addr, fetch, fetch)
        return A.lse(_LSE[op], size, src, rt, addr, fetch, fetch)


OPS = Arm64Ops()


def compile_arm64(lowered: Lowered) -> Image:
    return compile_risc(lowered, OPS)
