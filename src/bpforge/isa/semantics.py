"""What every instruction does, written once: one `step` over a small machine interface, its arithmetic
written against a small bit-vector interface.

`BitVector` is the arithmetic: `IntOps` instantiates it with Python ints (the interpreter), `SourceOps` with
Python expression text (the fast tier compiles what it returns); the prover instantiates it with z3 terms.
Values are unsigned `width`-bit quantities; every operation's result is again reduced to its width.

`Machine` is the rest of a machine: registers, memory, control flow, calls and what only a loader can
resolve (maps, functions, kernel objects). `step(machine, op)` executes one decoded instruction (`isa.ops`)
on it: every engine is a driver around this one function and has no dispatch of its own. Memory and
atomics go through it too: an atomic is load + the same binary operation as the ALU + store.

A jump's comparison is split from its evaluation: `step` hands the machine a `Condition` (comparison,
width, both operands), which an interpreter evaluates with `holds` and a verifier refines on both sides.

Kernel behaviour where RFC 9669 leaves room (and the RFC where it does not):
- division by zero gives 0; modulo by zero leaves the dividend (for 32-bit operations zero-extended);
- signed division of INT_MIN by -1 gives INT_MIN, signed modulo by -1 gives 0 (the kernel rewrites both
  before they reach the CPU);
- shift amounts are masked to the operation width (63 or 31);
- 32-bit operations zero-extend their result into the 64-bit register;
- a legacy packet load (LD_ABS/LD_IND) computes its offset in 32 bits and clobbers r1-r5, as the kernel's
  load helper call does (`Machine.clobber`: the VM zeroes them, the verifier marks them unreadable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from .numbers import M64, signed
from .ops import (
    AddrSpaceCast, Alu, Atomic, Call, Exit, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Op, Operand, Reg,
    Store, Unary,
)

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


# ---- conditions ----------------------------------------------------------------------------------------

NEGATED = {
    "eq": "ne", "ne": "eq", "ult": "uge", "uge": "ult", "ule": "ugt", "ugt": "ule",
    "slt": "sge", "sge": "slt", "sle": "sgt", "sgt": "sle", "set": "clear", "clear": "set",
}


@dataclass(frozen=True, slots=True)
class Condition(Generic[V]):
    """`lhs <cmp> rhs` in the low `width` bits of two 64-bit values: cmp is one of the bit-vector
    comparisons, `set` (lhs & rhs != 0, BPF_JSET) or `clear` (its negation)."""

    cmp: str
    width: int
    lhs: V
    rhs: V

    def negated(self) -> "Condition[V]":
        """The condition of the fall-through side."""
        return Condition(NEGATED[self.cmp], self.width, self.lhs, self.rhs)


def holds(bv: BitVector[V], cond: Condition[V]):
    """The truth of `cond` in `bv`'s terms (a bool, expression text, a z3 formula)."""
    w = cond.width
    a, b = (bv.trunc(cond.lhs, 32), bv.trunc(cond.rhs, 32)) if w == 32 else (cond.lhs, cond.rhs)
    if cond.cmp in ("set", "clear"):
        clear = bv.cmp("eq", bv.and_(a, b, w), bv.const(0, w), w)
        return clear if cond.cmp == "clear" else bv.not_(clear)
    return bv.cmp(cond.cmp, a, b, w)


# ---- arithmetic ----------------------------------------------------------------------------------------

_PLAIN = {"add": "add", "sub": "sub", "mul": "mul", "or": "or_", "and": "and_", "xor": "xor"}
_SHIFTS = {"lsh": "shl", "rsh": "lshr", "arsh": "ashr"}


def binary(bv: BitVector[V], op: str, a: V, b: V, w: int) -> V:
    """`a <op> b` in `w` bits (operands already `w` bits wide): the ALU's binary operations, which the
    atomics share."""
    name = _PLAIN.get(op)
    if name is not None:
        return getattr(bv, name)(a, b, w)
    name = _SHIFTS.get(op)
    if name is not None:
        return getattr(bv, name)(a, bv.and_(b, bv.const(w - 1, w), w), w)
    if op in ("div", "mod", "sdiv", "smod"):
        return _division(bv, op, a, b, w)
    raise ValueError(f"{op} is not a binary operation")


def alu(bv: BitVector[V], op: Alu, dst: V, src: V) -> V:
    """The new 64-bit value of dst for an `Alu` op: `dst` is the 64-bit register value (None for a move,
    which does not read it), `src` the 64-bit source operand (the source register, or the immediate)."""
    w = op.width
    if op.op == "movsx":
        result = bv.sext(bv.trunc(src, op.ext), op.ext, w)
    elif op.op == "mov":
        result = bv.trunc(src, 32) if w == 32 else src
    else:
        a, b = (bv.trunc(dst, 32), bv.trunc(src, 32)) if w == 32 else (dst, src)
        result = binary(bv, op.op, a, b, w)
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


def unary(bv: BitVector[V], op: Unary, dst: V) -> V:
    """`neg`, or a byte swap of the low `width` bits zero-extended, on a little-endian machine (as the kernel
    runs BPF on x86 and arm64): `le` only truncates, `be` and `bswap` reverse the bytes."""
    w = op.width
    if op.op == "neg":
        low = bv.trunc(dst, 32) if w == 32 else dst
        result = bv.sub(bv.const(0, w), low, w)
    else:
        result = bv.trunc(dst, w) if w < 64 else dst
        if op.op != "le":
            result = _reverse_bytes(bv, result, w)
    return bv.zext(result, w, 64) if w < 64 else result


def _reverse_bytes(bv: BitVector[V], value: V, w: int) -> V:
    out = bv.const(0, w)
    for i in range(w // 8):
        byte = bv.and_(bv.lshr(value, bv.const(8 * i, w), w), bv.const(0xFF, w), w)
        out = bv.or_(out, bv.shl(byte, bv.const(w - 8 - 8 * i, w), w), w)
    return out


# ---- the machine and the step --------------------------------------------------------------------------

class Machine(Protocol[V]):
    """What `step` needs of an engine. Registers and memory hold 64-bit values of `bv`'s type."""

    bv: BitVector[V]

    def reg(self, n: int) -> V: ...
    def set_reg(self, n: int, value: V) -> None: ...
    def clobber(self, n: int) -> None: ...  # register n holds nothing a program may rely on (after LD_ABS)
    def alu(self, op: Alu, dst: V, src: V) -> V: ...  # the new dst (`BitVectorArithmetic`: the bit-vector one)
    def unary(self, op: Unary, dst: V) -> V: ...
    def load(self, addr: V, size: int) -> V: ...  # `size` bytes, zero-extended to 64 bits
    def store(self, addr: V, size: int, value: V, when=None) -> None: ...  # low `size` bytes; `when`: only if
    def branch(self, cond: Condition[V] | None, target: int) -> None: ...  # to slot `target` (None: always)
    def may_goto(self, target: int) -> None: ...
    def call_helper(self, helper: int) -> None: ...  # arguments in r1-r5, result in r0
    def call_local(self, target: int) -> None: ...
    def call_indirect(self, addr: V) -> None: ...
    def call_kfunc(self, btf_id: int, module: int) -> None: ...
    def exit(self) -> None: ...
    def map_handle(self, ref: int) -> V: ...  # lddw of a map: `ref` as the loader left it (fd or index)
    def map_value(self, ref: int) -> V: ...  # the address of the map's (first) value
    def function_address(self, slot: int) -> V: ...
    def kernel_object(self, btf_id: int, module: int) -> V: ...
    def legacy_load(self, size: int, offset: V) -> V: ...  # a 32-bit offset, as LD_ABS/LD_IND compute it
    def addr_space_cast(self, value: V, dst_as: int, src_as: int) -> V: ...


def operand(m: Machine[V], src: Operand) -> V:
    """A 64-bit operand: a register's value, or an immediate through `const`."""
    return m.reg(src.n) if src.__class__ is Reg else m.bv.const(src.value, 64)


def address(m: Machine[V], base: int, off: int) -> V:
    return m.bv.add(m.reg(base), m.bv.const(off & M64, 64), 64)


class BitVectorArithmetic:
    """The ALU of a machine whose values are bit-vectors (ints, source text, z3 terms): `alu` and `unary`
    composed from the `BitVector` operations. An abstract machine (the verifier) computes ALU results with
    its own transfer functions instead, which is why they are machine methods."""

    def alu(self, op: Alu, dst, src):
        return alu(self.bv, op, dst, src)

    def unary(self, op: Unary, dst):
        return unary(self.bv, op, dst)


def _step_alu(m: Machine[V], op: Alu) -> None:
    dst = None if op.op in ("mov", "movsx") else m.reg(op.dst)  # a move does not read its destination
    m.set_reg(op.dst, m.alu(op, dst, operand(m, op.src)))


def _step_unary(m: Machine[V], op: Unary) -> None:
    m.set_reg(op.dst, m.unary(op, m.reg(op.dst)))


def _step_cast(m: Machine[V], op: AddrSpaceCast) -> None:
    m.set_reg(op.dst, m.addr_space_cast(m.reg(op.src), op.dst_as, op.src_as))


def _step_load(m: Machine[V], op: Load) -> None:
    value = m.load(address(m, op.base, op.off), op.size)
    m.set_reg(op.dst, m.bv.sext(value, op.size * 8, 64) if op.signed else value)


def _step_store(m: Machine[V], op: Store) -> None:
    m.store(address(m, op.base, op.off), op.size, operand(m, op.value))


def _step_atomic(m: Machine[V], op: Atomic) -> None:
    bv, w = m.bv, op.size * 8
    addr = address(m, op.base, op.off)
    value = m.reg(op.src)
    old = m.load(addr, op.size)
    if op.op == "cmpxchg":
        equal = bv.cmp("eq", bv.trunc(old, w), bv.trunc(m.reg(0), w), w)
        m.store(addr, op.size, value, when=equal)
        m.set_reg(0, old)
        return
    new = value if op.op == "xchg" else bv.zext(binary(bv, op.op, bv.trunc(old, w), bv.trunc(value, w), w), w, 64)
    m.store(addr, op.size, new)
    if op.fetch:
        m.set_reg(op.src, old)


def _step_jump(m: Machine[V], op: Jump) -> None:
    if op.cmp is None:
        m.branch(None, op.target)
    else:
        m.branch(Condition(op.cmp, op.width, m.reg(op.dst), operand(m, op.src)), op.target)


def _step_call(m: Machine[V], op: Call) -> None:
    if op.kind == "helper":
        m.call_helper(op.target)
    elif op.kind == "local":
        m.call_local(op.target)
    elif op.kind == "kfunc":
        m.call_kfunc(op.target, op.module)
    else:
        m.call_indirect(m.reg(op.target))


def _step_imm64(m: Machine[V], op: LoadImm64) -> None:
    bv = m.bv
    if op.kind == "imm":
        value = bv.const(op.value, 64)
    elif op.kind == "map":
        value = m.map_handle(op.value)
    elif op.kind == "map_value":
        value = bv.add(m.map_value(op.value), bv.const(op.offset, 64), 64)
    elif op.kind == "func":
        value = m.function_address(op.value)
    else:
        value = m.kernel_object(op.value, op.offset)
    m.set_reg(op.dst, value)


def _step_legacy(m: Machine[V], op: LegacyLoad) -> None:
    bv = m.bv
    offset = bv.const(op.imm & 0xFFFFFFFF, 32)
    if op.src is not None:
        offset = bv.trunc(bv.add(m.reg(op.src), bv.const(op.imm & M64, 64), 64), 32)
    m.set_reg(0, m.legacy_load(op.size, offset))
    for n in range(1, 6):
        m.clobber(n)


_STEPS = {
    Alu: _step_alu, Unary: _step_unary, AddrSpaceCast: _step_cast, Load: _step_load, Store: _step_store,
    Atomic: _step_atomic, Jump: _step_jump, MayGoto: lambda m, op: m.may_goto(op.target), Call: _step_call,
    Exit: lambda m, op: m.exit(), LoadImm64: _step_imm64, LegacyLoad: _step_legacy,
}


def step_of(op: Op) -> Callable[[Machine[V], Op], None]:
    """The function `step` runs for `op`: a driver that decodes once may look it up once, too."""
    return _STEPS[op.__class__]


def step(m: Machine[V], op: Op) -> None:
    """Execute one instruction on `m`. Control that does not go elsewhere (a jump not taken, anything but a
    jump, call or exit) falls through to the next instruction: the driver's business, as is where a call
    returns to."""
    _STEPS[op.__class__](m, op)


def handled_op_types() -> frozenset[type]:
    """The node types `step` executes (a test checks they are all of `ops.OP_TYPES`)."""
    return frozenset(_STEPS)


class IntOps(Generic[V]):
    """The bit-vector interface over Python ints: the interpreter's arithmetic."""

    signed = staticmethod(signed)

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
        x, y = self.signed(a, w), self.signed(b, w)
        q = abs(x) // abs(y)
        return (q if (x < 0) == (y < 0) else -q) & ((1 << w) - 1)

    def srem(self, a, b, w):
        if not b:
            return 0
        x, y = self.signed(a, w), self.signed(b, w)
        r = abs(x) % abs(y)
        return (-r if x < 0 else r) & ((1 << w) - 1)

    def shl(self, a, b, w):
        return (a << b) & ((1 << w) - 1)

    def lshr(self, a, b, w):
        return a >> b

    def ashr(self, a, b, w):
        return (self.signed(a, w) >> b) & ((1 << w) - 1)

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
        return self.signed(a, from_width) & ((1 << to_width) - 1)

    def trunc(self, a, to_width):
        return a & ((1 << to_width) - 1)

    def ite(self, cond, a, b):
        return a if cond else b

    def cmp(self, op, a, b, w):
        if op[0] == "s":
            a, b, op = self.signed(a, w), self.signed(b, w), "u" + op[1:]
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

    def signed(self, a, w):
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
        return f"(({self.signed(a, w)}) >> ({b})) & {self._mask(w)}"

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
        return f"({self.signed(a, from_width)}) & {self._mask(to_width)}"

    def trunc(self, a, to_width):
        return f"({a}) & {self._mask(to_width)}"

    def ite(self, cond, a, b):
        return f"(({a}) if ({cond}) else ({b}))"

    def cmp(self, op, a, b, w):
        if op[0] == "s":
            a, b, op = self.signed(a, w), self.signed(b, w), "u" + op[1:]
        sym = {"eq": "==", "ne": "!=", "ult": "<", "ule": "<=", "ugt": ">", "uge": ">="}[op]
        return f"({a}) {sym} ({b})"

    def not_(self, cond):
        return f"not ({cond})"


INT_OPS = IntOps()
SOURCE_OPS = SourceOps()
