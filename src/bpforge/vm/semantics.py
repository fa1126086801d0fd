"""ALU, jump-condition and byte-swap semantics, written once against a small bit-vector interface.

`BitVector` is that interface. `IntOps` instantiates it with Python ints (the interpreter), `SourceOps`
with Python expression text (the fast tier compiles what it returns); an SMT encoder instantiates it with
z3 terms. Values are unsigned `width`-bit quantities; every operation's result is again reduced to its width.

Kernel behaviour where RFC 9669 leaves room (and the RFC where it does not):
- division by zero gives 0; modulo by zero leaves the dividend (for 32-bit operations zero-extended);
- signed division of INT_MIN by -1 gives INT_MIN, signed modulo by -1 gives 0 (the kernel rewrites both
  before they reach the CPU);
- shift amounts are masked to the operation width (63 or 31);
- 32-bit operations zero-extend their result into the 64-bit register.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from ..isa import Form

V = TypeVar("V")


class BitVector(Protocol[V]):
    def const(self, value: int, width: int) -> V: ...
    def add(self, a: V, b: V, width: int) -> V: ...
    def sub(self, a: V, b: V, width: int) -> V: ...
    def mul(self, a: V, b: V, width: int) -> V: ...
    def udiv(self, a: V, b: V, width: int) -> V: ...  # b != 0
    def urem(self, a: V, b: V, width: int) -> V: ...  # b != 0
    def sdiv(self, a: V, b: V, width: int) -> V: ...  # b != 0, not (INT_MIN, -1); truncates toward zero
    def srem(self, a: V, b: V, width: int) -> V: ...  # sign of the dividend
    def shl(self, a: V, b: V, width: int) -> V: ...  # b < width
    def lshr(self, a: V, b: V, width: int) -> V: ...
    def ashr(self, a: V, b: V, width: int) -> V: ...
    def and_(self, a: V, b: V, width: int) -> V: ...
    def or_(self, a: V, b: V, width: int) -> V: ...
    def xor(self, a: V, b: V, width: int) -> V: ...
    def neg(self, a: V, width: int) -> V: ...
    def zext(self, a: V, from_width: int, to_width: int) -> V: ...
    def sext(self, a: V, from_width: int, to_width: int) -> V: ...
    def trunc(self, a: V, to_width: int) -> V: ...
    def ite(self, cond, a: V, b: V) -> V: ...
    def cmp(self, op: str, a: V, b: V, width: int): ...  # op: eq ne ult ule ugt uge slt sle sgt sge
    def not_(self, cond): ...


_CONDITIONS = {
    "jeq": "eq", "jne": "ne", "jgt": "ugt", "jge": "uge", "jlt": "ult", "jle": "ule",
    "jsgt": "sgt", "jsge": "sge", "jslt": "slt", "jsle": "sle",
}


def alu(bv: BitVector[V], form: Form, dst: V, src: V) -> V:
    """The new 64-bit value of dst for an ALU/ALU64 form. `dst` is the 64-bit register value; `src` the
    64-bit source operand: the source register, or the immediate already sign-extended to 64 bits."""
    w = form.width
    op = form.op
    if w == 32:
        a, b = bv.trunc(dst, 32), bv.trunc(src, 32)
    else:
        a, b = dst, src
    zero = bv.const(0, w)
    if op == "mov":
        result = b
    elif op == "movsx":
        result = bv.sext(bv.trunc(src, form.size * 8), form.size * 8, w)
    elif op == "add":
        result = bv.add(a, b, w)
    elif op == "sub":
        result = bv.sub(a, b, w)
    elif op == "mul":
        result = bv.mul(a, b, w)
    elif op in ("div", "mod", "sdiv", "smod"):
        result = _division(bv, op, a, b, w)
    elif op == "or":
        result = bv.or_(a, b, w)
    elif op == "and":
        result = bv.and_(a, b, w)
    elif op == "xor":
        result = bv.xor(a, b, w)
    elif op in ("lsh", "rsh", "arsh"):
        amount = bv.and_(b, bv.const(w - 1, w), w)
        result = {"lsh": bv.shl, "rsh": bv.lshr, "arsh": bv.ashr}[op](a, amount, w)
    elif op == "neg":
        result = bv.sub(zero, a, w)
    else:
        raise ValueError(f"{form.name} is not an ALU form")
    return bv.zext(result, 32, 64) if w == 32 else result


def _division(bv: BitVector[V], op: str, a: V, b: V, w: int) -> V:
    zero = bv.const(0, w)
    is_zero = bv.cmp("eq", b, zero, w)
    if op == "div":
        return bv.ite(is_zero, zero, bv.udiv(a, b, w))
    if op == "mod":
        return bv.ite(is_zero, a, bv.urem(a, b, w))
    minus_one = bv.cmp("eq", b, bv.const((1 << w) - 1, w), w)
    if op == "sdiv":
        return bv.ite(is_zero, zero, bv.ite(minus_one, bv.neg(a, w), bv.sdiv(a, b, w)))
    return bv.ite(is_zero, a, bv.ite(minus_one, zero, bv.srem(a, b, w)))


def byte_swap(bv: BitVector[V], form: Form, dst: V) -> V:
    """le/be/bswap of the low `form.width` bits, zero-extended, on a little-endian machine (as the kernel
    runs BPF on x86 and arm64): `le` only truncates, `be` and `bswap` reverse the bytes."""
    w = form.width
    low = bv.trunc(dst, w) if w < 64 else dst
    if form.op != "le":
        low = _reverse_bytes(bv, low, w)
    return bv.zext(low, w, 64) if w < 64 else low


def _reverse_bytes(bv: BitVector[V], value: V, w: int) -> V:
    out = bv.const(0, w)
    for i in range(w // 8):
        byte = bv.and_(bv.lshr(value, bv.const(8 * i, w), w), bv.const(0xFF, w), w)
        out = bv.or_(out, bv.shl(byte, bv.const(w - 8 - 8 * i, w), w), w)
    return out


def condition(bv: BitVector[V], form: Form, dst: V, src: V):
    """Whether a conditional jump is taken; operands as for `alu` (JMP32 compares the low 32 bits)."""
    w = form.width
    a, b = (bv.trunc(dst, 32), bv.trunc(src, 32)) if w == 32 else (dst, src)
    if form.op == "jset":
        return bv.not_(bv.cmp("eq", bv.and_(a, b, w), bv.const(0, w), w))
    return bv.cmp(_CONDITIONS[form.op], a, b, w)


def imm_operand(imm: int) -> int:
    """The 64-bit unsigned value of an instruction's 32-bit immediate (sign-extended, as every form reads
    it; 32-bit operations then use its low half)."""
    return imm & 0xFFFFFFFFFFFFFFFF


class IntOps(Generic[V]):
    """The bit-vector interface over Python ints: the interpreter's arithmetic."""

    @staticmethod
    def _signed(a: int, w: int) -> int:
        return a - (1 << w) if a >> (w - 1) else a

    def const(self, value, width):
        return value & ((1 << width) - 1)

    def add(self, a, b, w):
        return (a + b) & ((1 << w) - 1)

    def sub(self, a, b, w):
        return (a - b) & ((1 << w) - 1)

    def mul(self, a, b, w):
        return (a * b) & ((1 << w) - 1)

    # Python evaluates both arms of `ite`, so the divisions are total here; the semantics never uses their
    # value for a zero divisor.
    def udiv(self, a, b, w):
        return a // b if b else 0

    def urem(self, a, b, w):
        return a % b if b else 0

    def sdiv(self, a, b, w):
        if not b:
            return 0
        x, y = self._signed(a, w), self._signed(b, w)
        q = abs(x) // abs(y)
        return (q if (x < 0) == (y < 0) else -q) & ((1 << w) - 1)

    def srem(self, a, b, w):
        if not b:
            return 0
        x, y = self._signed(a, w), self._signed(b, w)
        r = abs(x) % abs(y)
        return (-r if x < 0 else r) & ((1 << w) - 1)

    def shl(self, a, b, w):
        return (a << b) & ((1 << w) - 1)

    def lshr(self, a, b, w):
        return a >> b

    def ashr(self, a, b, w):
        return (self._signed(a, w) >> b) & ((1 << w) - 1)

    def and_(self, a, b, w):
        return a & b

    def or_(self, a, b, w):
        return a | b

    def xor(self, a, b, w):
        return a ^ b

    def neg(self, a, w):
        return -a & ((1 << w) - 1)

    def zext(self, a, from_width, to_width):
        return a

    def sext(self, a, from_width, to_width):
        return self._signed(a, from_width) & ((1 << to_width) - 1)

    def trunc(self, a, to_width):
        return a & ((1 << to_width) - 1)

    def ite(self, cond, a, b):
        return a if cond else b

    def cmp(self, op, a, b, w):
        if op[0] == "s":
            a, b, op = self._signed(a, w), self._signed(b, w), "u" + op[1:]
        return {"eq": a == b, "ne": a != b, "ult": a < b, "ule": a <= b, "ugt": a > b, "uge": a >= b}[op]

    def not_(self, cond):
        return not cond


class SourceOps:
    """The bit-vector interface over Python expression text: what the fast tier compiles. Operands are
    expressions whose values are already reduced to their width; so are the results."""

    def const(self, value, width):
        return str(value & ((1 << width) - 1))

    @staticmethod
    def _mask(w):
        return hex((1 << w) - 1)

    def _signed(self, a, w):
        return f"(({a}) ^ {1 << (w - 1):#x}) - {1 << (w - 1):#x}"

    def add(self, a, b, w):
        return f"(({a}) + ({b})) & {self._mask(w)}"

    def sub(self, a, b, w):
        return f"(({a}) - ({b})) & {self._mask(w)}"

    def mul(self, a, b, w):
        return f"(({a}) * ({b})) & {self._mask(w)}"

    def udiv(self, a, b, w):
        return f"({a}) // ({b})"

    def urem(self, a, b, w):
        return f"({a}) % ({b})"

    def sdiv(self, a, b, w):
        return f"_sdiv({a}, {b}, {w})"

    def srem(self, a, b, w):
        return f"_srem({a}, {b}, {w})"

    def shl(self, a, b, w):
        return f"(({a}) << ({b})) & {self._mask(w)}"

    def lshr(self, a, b, w):
        return f"({a}) >> ({b})"

    def ashr(self, a, b, w):
        return f"(({self._signed(a, w)}) >> ({b})) & {self._mask(w)}"

    def and_(self, a, b, w):
        return f"({a}) & ({b})"

    def or_(self, a, b, w):
        return f"({a}) | ({b})"

    def xor(self, a, b, w):
        return f"({a}) ^ ({b})"

    def neg(self, a, w):
        return f"-({a}) & {self._mask(w)}"

    def zext(self, a, from_width, to_width):
        return a

    def sext(self, a, from_width, to_width):
        return f"({self._signed(a, from_width)}) & {self._mask(to_width)}"

    def trunc(self, a, to_width):
        return f"({a}) & {self._mask(to_width)}"

    def ite(self, cond, a, b):
        return f"(({a}) if ({cond}) else ({b}))"

    def cmp(self, op, a, b, w):
        if op[0] == "s":
            a, b, op = self._signed(a, w), self._signed(b, w), "u" + op[1:]
        sym = {"eq": "==", "ne": "!=", "ult": "<", "ule": "<=", "ugt": ">", "uge": ">="}[op]
        return f"({a}) {sym} ({b})"

    def not_(self, cond):
        return f"not ({cond})"


INT_OPS = IntOps()
SOURCE_OPS = SourceOps()
