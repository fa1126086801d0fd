"""The verifier's scalar domain: a tnum and eight bounds, with the kernel's transfer functions bit for bit.

`Scalar` is the scalar part of the kernel's `struct bpf_reg_state`: `var_off` (a `Tnum`) and the signed and
unsigned 64- and 32-bit bounds. The kernel computes them imperatively on a register it mutates; so do we,
on a private working copy (`_Reg`), with one function per kernel function and named after it, so that the
order of every update (which matters: the kernel's bounds are not a fixpoint) is the kernel's. The frozen
`Scalar` is what callers see.

`alu(op, width, dst, src)` is the transfer of one ALU instruction (kernel/bpf/verifier.c:
check_alu_op -> adjust_scalar_min_max_vals, and the mov/movsx paths of check_alu_op), keyed by the op
names of `isa.ops.Alu.op` and `isa.ops.Unary.op`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.numbers import M32, M64, signed
from .tnum import UNKNOWN, Tnum

S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1
U64_MAX, U32_MAX = M64, M32


def _s64(x: int) -> int:
    return signed(x, 64)


def _s32(x: int) -> int:
    return signed(x, 32)


def _u64(x: int) -> int:
    return x & M64


def _u32(x: int) -> int:
    return x & M32


@dataclass(frozen=True, slots=True)
class Scalar:
    """A set of 64-bit values: those in `var_off` and within all eight bounds (signed bounds are Python
    ints in their signed range, unsigned ones in their unsigned range)."""

    var_off: Tnum
    smin: int
    smax: int
    umin: int
    umax: int
    s32_min: int
    s32_max: int
    u32_min: int
    u32_max: int

    # ---- constructors ----------------------------------------------------------------------------------

    @staticmethod
    def known(value: int) -> "Scalar":
        """__mark_reg_known: the constant `value` (its low 64 bits)."""
        r = _Reg.unbounded()
        _mark_reg_known(r, value)
        return r.freeze()

    @staticmethod
    def unknown() -> "Scalar":
        """__mark_reg_unknown: any 64-bit value."""
        return _Reg.unbounded().freeze()

    @staticmethod
    def from_bounds(*, var_off: Tnum = UNKNOWN, smin: int = S64_MIN, smax: int = S64_MAX, umin: int = 0,
                    umax: int = U64_MAX, s32_min: int = S32_MIN, s32_max: int = S32_MAX, u32_min: int = 0,
                    u32_max: int = U32_MAX, sync: bool = True) -> "Scalar":
        """A scalar from whatever is known (omitted fields unbounded), synchronised as the kernel would
        (`sync=False`: exactly as given, e.g. a state parsed from a log)."""
        s = Scalar(var_off, _s64(smin), _s64(smax), _u64(umin), _u64(umax), _s32(s32_min), _s32(s32_max),
                   _u32(u32_min), _u32(u32_max))
        return s.sync() if sync else s

    @staticmethod
    def u64_range(lo: int, hi: int) -> "Scalar":
        return Scalar.from_bounds(umin=lo, umax=hi)

    @staticmethod
    def s64_range(lo: int, hi: int) -> "Scalar":
        return Scalar.from_bounds(smin=lo, smax=hi)

    @staticmethod
    def u32_value() -> "Scalar":
        """Any zero-extended 32-bit value (what bpf_get_prandom_u32 returns)."""
        return Scalar.from_bounds(var_off=Tnum(0, M32))

    # ---- queries ---------------------------------------------------------------------------------------

    def is_const(self) -> bool:
        return self.var_off.is_const()

    def is_subreg_const(self) -> bool:
        return self.var_off.subreg().is_const()

    def contains(self, x: int) -> bool:
        """Whether the concrete 64-bit value `x` (signed or unsigned spelling) is in the set."""
        x = _u64(x)
        lo = _u32(x)
        return (self.var_off.contains(x) and self.umin <= x <= self.umax and self.smin <= _s64(x) <= self.smax
                and self.u32_min <= lo <= self.u32_max and self.s32_min <= _s32(lo) <= self.s32_max)

    def is_empty(self) -> bool:
        """Whether the bounds contradict each other or the tnum (reg_bounds_sanity_check would complain):
        the kernel's sign of a branch that cannot be taken."""
        r = _Reg.of(self)
        return _bounds_violated(r)

    def bounds(self) -> tuple[int, ...]:
        return (self.smin, self.smax, self.umin, self.umax, self.s32_min, self.s32_max, self.u32_min,
                self.u32_max)

    # ---- operations ------------------------------------------------------------------------------------

    def sync(self) -> "Scalar":
        """reg_bounds_sync: let the tnum and the four ranges learn from each other."""
        r = _Reg.of(self)
        _reg_bounds_sync(r)
        return r.freeze()

    def zext32(self) -> "Scalar":
        """zext_32_to_64 (then synchronised): the low 32 bits, zero-extended."""
        r = _Reg.of(self)
        _zext_32_to_64(r)
        _reg_bounds_sync(r)
        return r.freeze()


class _Reg:
    """A mutable working copy of a Scalar: the kernel's bpf_reg_state fields for a SCALAR_VALUE. Signed
    fields are kept signed, unsigned ones unsigned; every store through the kernel functions below wraps
    to the C type as the kernel's assignment would."""

    __slots__ = ("var_off", "smin", "smax", "umin", "umax", "s32_min", "s32_max", "u32_min", "u32_max")

    @staticmethod
    def unbounded() -> "_Reg":
        r = _Reg()
        r.var_off = UNKNOWN
        _mark_reg_unbounded(r)
        return r

    @staticmethod
    def of(s: Scalar) -> "_Reg":
        r = _Reg()
        (r.var_off, r.smin, r.smax, r.umin, r.umax, r.s32_min, r.s32_max, r.u32_min, r.u32_max) = (
            s.var_off, s.smin, s.smax, s.umin, s.umax, s.s32_min, s.s32_max, s.u32_min, s.u32_max)
        return r

    def freeze(self) -> Scalar:
        return Scalar(self.var_off, self.smin, self.smax, self.umin, self.umax, self.s32_min, self.s32_max,
                      self.u32_min, self.u32_max)


# ---- marking (verifier.c: __mark_reg_known, __mark_reg_unbounded, ...) -----------------------------------

def _mark_reg_known(r: _Reg, imm: int) -> None:
    """___mark_reg_known."""
    imm = _u64(imm)
    r.var_off = Tnum.const(imm)
    r.smin = r.smax = _s64(imm)
    r.umin = r.umax = imm
    r.s32_min = r.s32_max = _s32(imm)
    r.u32_min = r.u32_max = _u32(imm)


def _mark_reg32_known(r: _Reg, imm: int) -> None:
    """__mark_reg32_known: the low half becomes the constant."""
    r.var_off = r.var_off.const_subreg(imm)
    r.s32_min = r.s32_max = _s32(imm)
    r.u32_min = r.u32_max = _u32(imm)


def _mark_reg64_unbounded(r: _Reg) -> None:
    r.smin, r.smax, r.umin, r.umax = S64_MIN, S64_MAX, 0, U64_MAX


def _mark_reg32_unbounded(r: _Reg) -> None:
    r.s32_min, r.s32_max, r.u32_min, r.u32_max = S32_MIN, S32_MAX, 0, U32_MAX


def _mark_reg_unbounded(r: _Reg) -> None:
    _mark_reg64_unbounded(r)
    _mark_reg32_unbounded(r)


def _mark_reg_unknown(r: _Reg) -> None:
    r.var_off = UNKNOWN
    _mark_reg_unbounded(r)


# ---- synchronisation (verifier.c: __update_reg_bounds, __reg_deduce_bounds, ...) --------------------------

def _update_reg32_bounds(r: _Reg) -> None:
    """__update_reg32_bounds: bounds implied by the low half of the tnum."""
    t = r.var_off.subreg()
    r.s32_min = max(r.s32_min, _s32(t.value | (t.mask & 0x8000_0000)))
    r.s32_max = min(r.s32_max, _s32(t.value | (t.mask & 0x7FFF_FFFF)))
    r.u32_min = max(r.u32_min, t.value)
    r.u32_max = min(r.u32_max, t.value | t.mask)


def _update_reg64_bounds(r: _Reg) -> None:
    """__update_reg64_bounds."""
    t = r.var_off
    r.smin = max(r.smin, _s64(t.value | (t.mask & (1 << 63))))
    r.smax = min(r.smax, _s64(t.value | (t.mask & S64_MAX)))
    r.umin = max(r.umin, t.value)
    r.umax = min(r.umax, t.value | t.mask)
    # The u64 range and the tnum may share a single value: then that is the value.
    top = t.value | t.mask
    following = t.step(r.umin)
    umin_in_tnum = (r.umin & ~t.mask) == t.value
    if umin_in_tnum and following > r.umax:
        _mark_reg_known(r, r.umin)
    elif not umin_in_tnum and following == top:
        _mark_reg_known(r, top)
    elif not umin_in_tnum and following <= r.umax and t.step(following) > r.umax:
        _mark_reg_known(r, following)


def _update_reg_bounds(r: _Reg) -> None:
    _update_reg32_bounds(r)
    _update_reg64_bounds(r)


def _reg32_deduce_bounds(r: _Reg) -> None:
    """__reg32_deduce_bounds: the 32-bit ranges learn from the 64-bit ones and from each other."""
    if (r.umin >> 32) == (r.umax >> 32):
        # Same upper halves: the low halves of the u64 range form a range.
        r.u32_min = max(r.u32_min, _u32(r.umin))
        r.u32_max = min(r.u32_max, _u32(r.umax))
        if _s32(r.umin) <= _s32(r.umax):
            r.s32_min = max(r.s32_min, _s32(r.umin))
            r.s32_max = min(r.s32_max, _s32(r.umax))
    if (r.smin >> 32) == (r.smax >> 32):
        if _u32(r.smin) <= _u32(r.smax):
            r.u32_min = max(r.u32_min, _u32(r.smin))
            r.u32_max = min(r.u32_max, _u32(r.smax))
        if _s32(r.smin) <= _s32(r.smax):
            r.s32_min = max(r.s32_min, _s32(r.smin))
            r.s32_max = min(r.s32_max, _s32(r.smax))
    # Upper halves two consecutive numbers (mod 2^32) and the low halves going from negative to positive:
    # the low halves still form an s32 range.
    if _u32((r.umin >> 32) + 1) == _u32(r.umax >> 32) and _s32(r.umin) < 0 and _s32(r.umax) >= 0:
        r.s32_min = max(r.s32_min, _s32(r.umin))
        r.s32_max = min(r.s32_max, _s32(r.umax))
    if _u32((_u64(r.smin) >> 32) + 1) == _u32(_u64(r.smax) >> 32) and _s32(r.smin) < 0 and _s32(r.smax) >= 0:
        r.s32_min = max(r.s32_min, _s32(r.smin))
        r.s32_max = min(r.s32_max, _s32(r.smax))
    if _s32(r.u32_min) <= _s32(r.u32_max):
        r.s32_min = max(r.s32_min, _s32(r.u32_min))
        r.s32_max = min(r.s32_max, _s32(r.u32_max))
    if _u32(r.s32_min) <= _u32(r.s32_max):
        r.u32_min = max(r.u32_min, _u32(r.s32_min))
        r.u32_max = min(r.u32_max, _u32(r.s32_max))
    else:
        # As in 64 bits: an s32 range around the sign boundary, and a u32 range within one of its ends.
        if r.u32_max < _u32(r.s32_min):
            r.s32_min = _s32(r.u32_min)
            r.u32_max = min(r.u32_max, _u32(r.s32_max))
        elif _u32(r.s32_max) < r.u32_min:
            r.s32_max = _s32(r.u32_max)
            r.u32_min = max(r.u32_min, _u32(r.s32_min))


def _reg64_deduce_bounds(r: _Reg) -> None:
    """__reg64_deduce_bounds: the signed and unsigned 64-bit ranges learn from each other."""
    if _s64(r.umin) <= _s64(r.umax):
        r.smin = max(r.smin, _s64(r.umin))
        r.smax = min(r.smax, _s64(r.umax))
    if _u64(r.smin) <= _u64(r.smax):
        r.umin = max(r.umin, _u64(r.smin))
        r.umax = min(r.umax, _u64(r.smax))
    else:
        # The s64 range wraps around the unsigned domain; a u64 range within one of its two ends tells
        # which end.
        if r.umax < _u64(r.smin):
            r.smin = _s64(r.umin)
            r.umax = min(r.umax, _u64(r.smax))
        elif _u64(r.smax) < r.umin:
            r.smax = _s64(r.umax)
            r.umin = max(r.umin, _u64(r.smin))


def _reg_deduce_mixed_bounds(r: _Reg) -> None:
    """__reg_deduce_mixed_bounds: 64-bit ranges tightened with the 32-bit ones."""
    new_umin = (r.umin & ~M32 & M64) | r.u32_min
    new_umax = (r.umax & ~M32 & M64) | r.u32_max
    r.umin = max(r.umin, new_umin)
    r.umax = min(r.umax, new_umax)
    new_smin = _s64((_u64(r.smin) & ~M32) | r.u32_min)
    new_smax = _s64((_u64(r.smax) & ~M32) | r.u32_max)
    r.smin = max(r.smin, new_smin)
    r.smax = min(r.smax, new_smax)
    # After a sign-extending load the upper bits are all 0s or all 1s; a non-negative s32 range then is
    # the whole story.
    if r.s32_min >= 0 and r.smin >= S32_MIN and r.smax <= S32_MAX:
        r.smin, r.smax = r.s32_min, r.s32_max
        r.umin, r.umax = r.s32_min, r.s32_max
        r.var_off = r.var_off.intersect(Tnum.range(r.smin, r.smax))


def _reg_deduce_bounds(r: _Reg) -> None:
    _reg32_deduce_bounds(r)
    _reg64_deduce_bounds(r)
    _reg_deduce_mixed_bounds(r)


def _reg_bound_offset(r: _Reg) -> None:
    """__reg_bound_offset: the tnum learns from the unsigned ranges."""
    var64 = r.var_off.intersect(Tnum.range(r.umin, r.umax))
    var32 = var64.subreg().intersect(Tnum.range(r.u32_min, r.u32_max))
    r.var_off = var64.clear_subreg().or_(var32)


def _reg_bounds_sync(r: _Reg) -> None:
    """reg_bounds_sync."""
    _update_reg_bounds(r)
    _reg_deduce_bounds(r)
    _reg_deduce_bounds(r)
    _reg_bound_offset(r)
    _update_reg_bounds(r)


def _bounds_violated(r: _Reg) -> bool:
    """reg_bounds_sanity_check's test: an empty range, or a constant tnum outside a range."""
    if (r.umin > r.umax or r.smin > r.smax or r.u32_min > r.u32_max or r.s32_min > r.s32_max):
        return True
    t, t32 = r.var_off, r.var_off.subreg()
    if t.is_const():
        v = t.value
        if not (r.umin == v == r.umax and r.smin == _s64(v) == r.smax):
            return True
    if t32.is_const():
        v = t32.value
        if not (r.u32_min == v == r.u32_max and r.s32_min == _s32(v) == r.s32_max):
            return True
    return False


def _reg32_bound_s64(a: int) -> bool:
    return 0 <= a <= S32_MAX


def _reg_assign_32_into_64(r: _Reg) -> None:
    """__reg_assign_32_into_64."""
    r.umin, r.umax = r.u32_min, r.u32_max
    if _reg32_bound_s64(r.s32_min) and _reg32_bound_s64(r.s32_max):
        r.smin, r.smax = r.s32_min, r.s32_max
    else:
        r.smin, r.smax = 0, U32_MAX


def _zext_32_to_64(r: _Reg) -> None:
    r.var_off = r.var_off.subreg()
    _reg_assign_32_into_64(r)


# ---- add, sub, mul -----------------------------------------------------------------------------------------

def _scalar32_min_max_add(d: _Reg, s: _Reg) -> None:
    smin, smax = d.s32_min + s.s32_min, d.s32_max + s.s32_max
    if not (S32_MIN <= smin <= S32_MAX) or not (S32_MIN <= smax <= S32_MAX):
        d.s32_min, d.s32_max = S32_MIN, S32_MAX
    else:
        d.s32_min, d.s32_max = smin, smax
    # Unsigned: sound when all sums wrap or none does; unbounded when only some do.
    umin, umax = d.u32_min + s.u32_min, d.u32_max + s.u32_max
    d.u32_min, d.u32_max = _u32(umin), _u32(umax)
    if umin <= U32_MAX < umax:
        d.u32_min, d.u32_max = 0, U32_MAX


def _scalar_min_max_add(d: _Reg, s: _Reg) -> None:
    smin, smax = d.smin + s.smin, d.smax + s.smax
    if not (S64_MIN <= smin <= S64_MAX) or not (S64_MIN <= smax <= S64_MAX):
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = smin, smax
    umin, umax = d.umin + s.umin, d.umax + s.umax
    d.umin, d.umax = _u64(umin), _u64(umax)
    if umin <= U64_MAX < umax:
        d.umin, d.umax = 0, U64_MAX


def _scalar32_min_max_sub(d: _Reg, s: _Reg) -> None:
    smin, smax = d.s32_min - s.s32_max, d.s32_max - s.s32_min
    if not (S32_MIN <= smin <= S32_MAX) or not (S32_MIN <= smax <= S32_MAX):
        d.s32_min, d.s32_max = S32_MIN, S32_MAX
    else:
        d.s32_min, d.s32_max = smin, smax
    # Unsigned: sound when all differences wrap or none does.
    umin, umax = d.u32_min - s.u32_max, d.u32_max - s.u32_min
    d.u32_min, d.u32_max = _u32(umin), _u32(umax)
    if umin < 0 <= umax:
        d.u32_min, d.u32_max = 0, U32_MAX


def _scalar_min_max_sub(d: _Reg, s: _Reg) -> None:
    smin, smax = d.smin - s.smax, d.smax - s.smin
    if not (S64_MIN <= smin <= S64_MAX) or not (S64_MIN <= smax <= S64_MAX):
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = smin, smax
    umin, umax = d.umin - s.umax, d.umax - s.umin
    d.umin, d.umax = _u64(umin), _u64(umax)
    if umin < 0 <= umax:
        d.umin, d.umax = 0, U64_MAX


def _scalar32_min_max_mul(d: _Reg, s: _Reg) -> None:
    umax, umin = d.u32_max * s.u32_max, d.u32_min * s.u32_min
    if umax > U32_MAX or umin > U32_MAX:
        d.u32_min, d.u32_max = 0, U32_MAX
    else:
        d.u32_min, d.u32_max = umin, umax
    products = [d.s32_min * s.s32_min, d.s32_min * s.s32_max, d.s32_max * s.s32_min, d.s32_max * s.s32_max]
    if any(not (S32_MIN <= p <= S32_MAX) for p in products):
        d.s32_min, d.s32_max = S32_MIN, S32_MAX
    else:
        d.s32_min, d.s32_max = min(products), max(products)


def _scalar_min_max_mul(d: _Reg, s: _Reg) -> None:
    umax, umin = d.umax * s.umax, d.umin * s.umin
    if umax > U64_MAX or umin > U64_MAX:
        d.umin, d.umax = 0, U64_MAX
    else:
        d.umin, d.umax = umin, umax
    products = [d.smin * s.smin, d.smin * s.smax, d.smax * s.smin, d.smax * s.smax]
    if any(not (S64_MIN <= p <= S64_MAX) for p in products):
        d.smin, d.smax = S64_MIN, S64_MAX
    else:
        d.smin, d.smax = min(products), max(products)


# ---- and, or, xor ------------------------------------------------------------------------------------------

def _signed32_from_unsigned(d: _Reg) -> None:
    # The u32 range is also an s32 range unless it crosses the sign boundary.
    if _s32(d.u32_min) <= _s32(d.u32_max):
        d.s32_min, d.s32_max = _s32(d.u32_min), _s32(d.u32_max)
    else:
        d.s32_min, d.s32_max = S32_MIN, S32_MAX


def _signed64_from_unsigned(d: _Reg) -> None:
    if _s64(d.umin) <= _s64(d.umax):
        d.smin, d.smax = _s64(d.umin), _s64(d.umax)
    else:
        d.smin, d.smax = S64_MIN, S64_MAX


def _scalar32_min_max_and(d: _Reg, s: _Reg) -> None:
    t = d.var_off.subreg()
    if s.var_off.subreg().is_const() and t.is_const():
        _mark_reg32_known(d, t.value)
        return
    d.u32_min = t.value
    d.u32_max = min(d.u32_max, s.u32_max)
    _signed32_from_unsigned(d)


def _scalar_min_max_and(d: _Reg, s: _Reg) -> None:
    if s.var_off.is_const() and d.var_off.is_const():
        _mark_reg_known(d, d.var_off.value)
        return
    d.umin = d.var_off.value
    d.umax = min(d.umax, s.umax)
    _signed64_from_unsigned(d)
    _update_reg_bounds(d)


def _scalar32_min_max_or(d: _Reg, s: _Reg) -> None:
    t = d.var_off.subreg()
    if s.var_off.subreg().is_const() and t.is_const():
        _mark_reg32_known(d, t.value)
        return
    d.u32_min = max(d.u32_min, s.u32_min)
    d.u32_max = t.value | t.mask
    _signed32_from_unsigned(d)


def _scalar_min_max_or(d: _Reg, s: _Reg) -> None:
    if s.var_off.is_const() and d.var_off.is_const():
        _mark_reg_known(d, d.var_off.value)
        return
    d.umin = max(d.umin, s.umin)
    d.umax = d.var_off.value | d.var_off.mask
    _signed64_from_unsigned(d)
    _update_reg_bounds(d)


def _scalar32_min_max_xor(d: _Reg, s: _Reg) -> None:
    t = d.var_off.subreg()
    if s.var_off.subreg().is_const() and t.is_const():
        _mark_reg32_known(d, t.value)
        return
    d.u32_min = t.value
    d.u32_max = t.value | t.mask
    _signed32_from_unsigned(d)


def _scalar_min_max_xor(d: _Reg, s: _Reg) -> None:
    if s.var_off.is_const() and d.var_off.is_const():
        _mark_reg_known(d, d.var_off.value)
        return
    d.umin = d.var_off.value
    d.umax = d.var_off.value | d.var_off.mask
    _signed64_from_unsigned(d)
    _update_reg_bounds(d)


# ---- shifts (only reached with a constant amount below the width) -----------------------------------------

def _scalar32_lsh_bounds(d: _Reg, umin_val: int, umax_val: int) -> None:
    """__scalar32_min_max_lsh."""
    d.s32_min, d.s32_max = S32_MIN, S32_MAX
    if umax_val > 31 or d.u32_max > 1 << (31 - umax_val):
        d.u32_min, d.u32_max = 0, U32_MAX
    else:
        d.u32_min = _u32(d.u32_min << umin_val)
        d.u32_max = _u32(d.u32_max << umax_val)


def _scalar32_min_max_lsh(d: _Reg, s: _Reg) -> None:
    sub = d.var_off.subreg()
    _scalar32_lsh_bounds(d, s.u32_min, s.u32_max)
    d.var_off = sub.lshift(s.u32_min).subreg()
    _mark_reg64_unbounded(d)
    _update_reg32_bounds(d)


def _scalar64_lsh_bounds(d: _Reg, umin_val: int, umax_val: int) -> None:
    """__scalar64_min_max_lsh: `<< 32` of a non-negative s32 keeps its sign (the compiler's sign-extension
    idiom `<<32 s>>32`)."""
    if umin_val == 32 and umax_val == 32 and d.s32_max >= 0:
        d.smax = d.s32_max << 32
    else:
        d.smax = S64_MAX
    if umin_val == 32 and umax_val == 32 and d.s32_min >= 0:
        d.smin = d.s32_min << 32
    else:
        d.smin = S64_MIN
    if d.umax > 1 << (63 - umax_val):
        d.umin, d.umax = 0, U64_MAX
    else:
        d.umin = _u64(d.umin << umin_val)
        d.umax = _u64(d.umax << umax_val)


def _scalar_min_max_lsh(d: _Reg, s: _Reg) -> None:
    # The 64-bit bounds use the 32-bit ones before they are shifted.
    _scalar64_lsh_bounds(d, s.umin, s.umax)
    _scalar32_lsh_bounds(d, s.umin, s.umax)
    d.var_off = d.var_off.lshift(s.umin)
    _update_reg_bounds(d)


def _scalar32_min_max_rsh(d: _Reg, s: _Reg) -> None:
    sub = d.var_off.subreg()
    d.s32_min, d.s32_max = S32_MIN, S32_MAX
    d.var_off = sub.rshift(s.u32_min)
    d.u32_min >>= s.u32_max
    d.u32_max >>= s.u32_min
    _mark_reg64_unbounded(d)
    _update_reg32_bounds(d)


def _scalar_min_max_rsh(d: _Reg, s: _Reg) -> None:
    d.smin, d.smax = S64_MIN, S64_MAX
    d.var_off = d.var_off.rshift(s.umin)
    d.umin >>= s.umax
    d.umax >>= s.umin
    _mark_reg32_unbounded(d)
    _update_reg_bounds(d)


def _scalar32_min_max_arsh(d: _Reg, s: _Reg) -> None:
    n = s.u32_min
    d.s32_min >>= n
    d.s32_max >>= n
    d.var_off = d.var_off.subreg().arshift(n, 32)
    d.u32_min, d.u32_max = 0, U32_MAX
    _mark_reg64_unbounded(d)
    _update_reg32_bounds(d)


def _scalar_min_max_arsh(d: _Reg, s: _Reg) -> None:
    n = s.umin
    d.smin >>= n
    d.smax >>= n
    d.var_off = d.var_off.arshift(n, 64)
    d.umin, d.umax = 0, U64_MAX
    _mark_reg32_unbounded(d)
    _update_reg_bounds(d)


# ---- adjust_scalar_min_max_vals ----------------------------------------------------------------------------

def _src_is_const(s: _Reg, width: int) -> bool:
    if width == 32:
        return s.var_off.subreg().is_const() and s.s32_min == s.s32_max and s.u32_min == s.u32_max
    return s.var_off.is_const() and s.smin == s.smax and s.umin == s.umax


def _is_safe_to_compute_dst_reg_range(op: str, width: int, s: _Reg) -> bool:
    """is_safe_to_compute_dst_reg_range: shifts only by a constant below the width; division and modulo
    never (the result is unknown)."""
    if op in ("add", "sub", "neg", "and", "or", "xor", "mul"):
        return True
    if op in ("lsh", "rsh", "arsh"):
        return _src_is_const(s, width) and s.umax < width
    return False


_TNUM_FIRST = {"mul": Tnum.mul, "and": Tnum.and_, "or": Tnum.or_, "xor": Tnum.xor}
_BOUNDS = {
    "add": (_scalar32_min_max_add, _scalar_min_max_add), "sub": (_scalar32_min_max_sub, _scalar_min_max_sub),
    "mul": (_scalar32_min_max_mul, _scalar_min_max_mul), "and": (_scalar32_min_max_and, _scalar_min_max_and),
    "or": (_scalar32_min_max_or, _scalar_min_max_or), "xor": (_scalar32_min_max_xor, _scalar_min_max_xor),
}
_SHIFTS = {
    "lsh": (_scalar32_min_max_lsh, _scalar_min_max_lsh), "rsh": (_scalar32_min_max_rsh, _scalar_min_max_rsh),
    "arsh": (_scalar32_min_max_arsh, _scalar_min_max_arsh),
}


def _adjust_scalar_min_max_vals(op: str, width: int, d: _Reg, s: _Reg) -> None:
    alu32 = width == 32
    if not _is_safe_to_compute_dst_reg_range(op, width, s):
        _mark_reg_unknown(d)
        return
    if op in ("add", "sub"):
        b32, b64 = _BOUNDS[op]
        b32(d, s)
        b64(d, s)
        d.var_off = d.var_off.add(s.var_off) if op == "add" else d.var_off.sub(s.var_off)
    elif op == "neg":
        # dst = 0 - dst, through the subtraction's bound rules.
        old = _Reg.of(d.freeze())
        _mark_reg_known(d, 0)
        _scalar32_min_max_sub(d, old)
        _scalar_min_max_sub(d, old)
        d.var_off = old.var_off.neg()
    elif op in _BOUNDS:
        d.var_off = _TNUM_FIRST[op](d.var_off, s.var_off)
        b32, b64 = _BOUNDS[op]
        b32(d, s)
        b64(d, s)
    else:
        b32, b64 = _SHIFTS[op]
        (b32 if alu32 else b64)(d, s)
    if alu32:
        _zext_32_to_64(d)
    _reg_bounds_sync(d)


# ---- movsx (verifier.c: coerce_reg_to_size_sx, coerce_subreg_to_size_sx) ----------------------------------

_SMIN = {1: -(1 << 7), 2: -(1 << 15), 4: S32_MIN}
_SMAX = {1: (1 << 7) - 1, 2: (1 << 15) - 1, 4: S32_MAX}


def _coerce_reg_to_size_sx(r: _Reg, size: int) -> None:
    bits = size * 8
    if r.var_off.is_const():
        v = _u64(signed(r.var_off.value, bits))
        r.var_off = Tnum.const(v)
        r.smin = r.smax = _s64(v)
        r.umin = r.umax = v
        r.s32_min = r.s32_max = _s32(v)
        r.u32_min = r.u32_max = _u32(v)
        return
    if _SMIN[size] <= r.s32_min and r.s32_max <= _SMAX[size]:
        # The low 32 bits, read signed, already fit in `size` bytes: sign-extending them gives that value
        # whatever the upper half holds (how this kernel reads the 32-bit bounds for a movsx).
        lo, hi = r.s32_min, r.s32_max
        r.smin, r.smax = lo, hi
        r.umin, r.umax = 0, U64_MAX  # (the 32-bit bounds stay: those bits do not change)
        r.var_off = UNKNOWN
        _reg_bounds_sync(r)
        return
    if (_u64(r.smax) >> bits) == (_u64(r.smin) >> bits):
        a, b = signed(r.smax, bits), signed(r.smin, bits)
        hi, lo = max(a, b), min(a, b)
        if (hi >= 0) == (lo >= 0):
            r.smin, r.s32_min = lo, _s32(lo)
            r.smax, r.s32_max = hi, _s32(hi)
            r.umin, r.u32_min = _u64(lo), _u32(lo)
            r.umax, r.u32_max = _u64(hi), _u32(hi)
            r.var_off = Tnum.range(lo, hi)
            return
    # set_sext64_default_val
    r.smin = r.s32_min = _SMIN[size]
    r.smax = r.s32_max = _SMAX[size]
    r.umin = r.u32_min = 0
    r.umax, r.u32_max = U64_MAX, U32_MAX
    r.var_off = UNKNOWN


def _coerce_subreg_to_size_sx(r: _Reg, size: int) -> None:
    bits = size * 8
    if r.var_off.is_const():
        v = _u64(signed(r.var_off.value, bits))
        r.var_off = Tnum.const(v)
        r.s32_min = r.s32_max = _s32(v)
        r.u32_min = r.u32_max = _u32(v)
        return
    if (_u32(r.s32_max) >> bits) == (_u32(r.s32_min) >> bits):
        a, b = signed(r.s32_max, bits), signed(r.s32_min, bits)
        hi, lo = max(a, b), min(a, b)
        if (lo >= 0) == (hi >= 0):
            r.s32_min, r.s32_max = lo, hi
            r.u32_min, r.u32_max = _u32(lo), _u32(hi)
            r.var_off = Tnum.range(lo, hi).subreg()
            return
    # set_sext32_default_val
    r.s32_min, r.s32_max = _SMIN[size], _SMAX[size]
    r.u32_min, r.u32_max = 0, U32_MAX
    r.var_off = UNKNOWN.subreg()


# ---- byte swaps (BPF_END) ----------------------------------------------------------------------------------

def _coerce_reg_to_size(r: _Reg, size: int) -> None:
    """coerce_reg_to_size: the low `size` bytes, zero-extended."""
    r.var_off = r.var_off.cast(size)
    mask = (1 << (size * 8)) - 1
    if (r.umin & ~mask) == (r.umax & ~mask):
        r.umin &= mask
        r.umax &= mask
    else:
        r.umin, r.umax = 0, mask
    r.smin, r.smax = r.umin, r.umax
    # Narrower than 32 bits: the 32-bit bounds are re-derived from the 64-bit ones.
    if size < 4:
        _mark_reg32_unbounded(r)
    _reg_bounds_sync(r)


def _scalar_byte_swap(r: _Reg, op: str, width: int) -> None:
    """BPF_END on a little-endian host (x86-64, arm64): `bswap` and `be` swap the bytes, `le` only
    truncates. A swap scrambles ranges, so they are re-derived from the swapped tnum."""
    if op != "le":
        r.var_off = r.var_off.bswap(width)
        _mark_reg_unbounded(r)
    if width in (16, 32):
        _coerce_reg_to_size(r, width // 8)


# ---- the transfer of one instruction -----------------------------------------------------------------------

ALU_OPS = ("add", "sub", "mul", "div", "mod", "sdiv", "smod", "or", "and", "xor", "lsh", "rsh", "arsh", "mov",
           "movsx")
UNARY_OPS = ("neg", "le", "be", "bswap")


def alu(op: str, width: int, dst: Scalar, src: Scalar | int | None = None, ext: int = 0) -> Scalar:
    """The scalar the kernel's verifier computes for dst after `dst <op>= src` in `width` (32 or 64) bits.

    `src` is a Scalar (a register operand) or an int (an immediate as `isa.ops.Imm.value` holds it: the
    instruction's `imm` sign-extended to 64 bits, which is how the kernel reads it); unary ops (`neg`, and the byte swaps `le be bswap` with
    `width` 16/32/64) take none. `movsx` takes `ext`, the bits sign-extended (8, 16, 32)."""
    if op in ("le", "be", "bswap"):
        r = _Reg.of(dst)
        _scalar_byte_swap(r, op, width)
        _reg_bounds_sync(r)
        return r.freeze()
    if op == "neg":
        src = dst
    if src is None:
        raise ValueError(f"{op} needs a source operand")
    immediate = isinstance(src, int)
    if op == "mov":
        return _mov(width, dst, src, immediate)
    if op == "movsx":
        return _movsx(width, src, ext)
    if immediate:
        s = _Reg.unbounded()
        _mark_reg_known(s, src)
    else:
        s = _Reg.of(src)
    d = _Reg.of(dst)
    _adjust_scalar_min_max_vals(op, width, d, s)
    return d.freeze()


def _mov(width: int, dst: Scalar, src: Scalar | int, immediate: bool) -> Scalar:
    if immediate:
        return Scalar.known(_u32(src) if width == 32 else src)
    if width == 64:
        return src
    r = _Reg.of(src)
    _zext_32_to_64(r)
    _reg_bounds_sync(r)
    return r.freeze()


def _movsx(width: int, src: Scalar, ext: int) -> Scalar:
    r = _Reg.of(src)
    if width == 64:
        _coerce_reg_to_size_sx(r, ext // 8)
        return r.freeze()
    _coerce_subreg_to_size_sx(r, ext // 8)
    _zext_32_to_64(r)
    _reg_bounds_sync(r)
    return r.freeze()
