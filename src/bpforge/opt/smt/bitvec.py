"""`isa.semantics.BitVector` over z3 bit-vector terms: what the prover instantiates `step` with.

Widths are exact: `const(v, w)` is a `w`-bit term and every operation returns a term of the width it is
given, so a width mistake in the semantics shows up as a z3 sort error instead of a silently wrong formula.
The operations are z3's own, whose SMT-LIB definitions match the kernel's where `semantics` relies on them:
signed division truncates toward zero and the remainder takes the dividend's sign (bvsdiv, bvsrem), as in C.
The special cases (a zero divisor, INT_MIN / -1, shift amounts) are `semantics`' business, not this module's.

Conditions are z3 formulas (`BoolRef`); `ite` is `If`.
"""

from __future__ import annotations

import operator

import z3


def _binary(operation):
    """A protocol method `op(a, b, width)` that is the z3 operation (a z3 term carries its width)."""

    def method(self, a, b, w):
        return operation(a, b)

    return method


class Z3Ops:
    """The bit-vector interface over z3 terms."""

    def const(self, value: int, width: int) -> z3.BitVecRef:
        return z3.BitVecVal(value & ((1 << width) - 1), width)

    add = _binary(operator.add)
    sub = _binary(operator.sub)
    mul = _binary(operator.mul)
    udiv = _binary(z3.UDiv)
    urem = _binary(z3.URem)
    sdiv = _binary(operator.truediv)  # bvsdiv: truncates toward zero
    srem = _binary(z3.SRem)  # the dividend's sign (z3's `%` is bvsmod, the divisor's sign: not this)
    shl = _binary(operator.lshift)
    lshr = _binary(z3.LShR)
    ashr = _binary(operator.rshift)  # z3's `>>` is arithmetic
    and_ = _binary(operator.and_)
    or_ = _binary(operator.or_)
    xor = _binary(operator.xor)

    def neg(self, a, w):
        return -a

    def trunc(self, a, to_width):
        width = a.size()
        if width < to_width:
            raise ValueError(f"cannot truncate a {width}-bit term to {to_width} bits")
        return a if width == to_width else z3.Extract(to_width - 1, 0, a)

    # A machine hands `zext`/`sext` 64-bit values whose bits above `from_width` are zero (a zero-extended load):
    # the low `from_width` bits are the value, so both take those first.
    def zext(self, a, from_width, to_width):
        low = self.trunc(a, from_width)
        return z3.ZeroExt(to_width - from_width, low) if to_width > from_width else low

    def sext(self, a, from_width, to_width):
        low = self.trunc(a, from_width)
        return z3.SignExt(to_width - from_width, low) if to_width > from_width else low

    def ite(self, cond, a, b):
        return z3.If(cond, a, b)

    def cmp(self, op, a, b, w):
        return _COMPARISONS[op](a, b)

    def not_(self, cond):
        return z3.Not(cond)


# z3's <, <=, >, >= on bit-vectors are the signed comparisons.
_COMPARISONS = {
    "eq": operator.eq, "ne": operator.ne, "ult": z3.ULT, "ule": z3.ULE, "ugt": z3.UGT, "uge": z3.UGE,
    "slt": operator.lt, "sle": operator.le, "sgt": operator.gt, "sge": operator.ge,
}

Z3_OPS = Z3Ops()

__all__ = ["Z3Ops", "Z3_OPS"]
