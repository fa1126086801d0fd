"""Conditional jumps on scalars as the kernel sees them (kernel/bpf/verifier.c): whether a comparison is
decided by the operands' bounds (is_scalar_branch_taken), and what each side of the branch learns
(regs_refine_cond_op + reg_bounds_sync, as reg_set_min_max applies them).

Comparisons are named as `isa.semantics.Condition` names them: eq ne ugt uge ult ule sgt sge slt sle, set
(a & b != 0, BPF_JSET) and clear (its negation, the fall-through side of a JSET); `semantics.NEGATED` maps
one to the other side's. `width` is 64 (JMP) or 32 (JMP32). An immediate operand is the constant scalar
of the instruction's sign-extended imm (`Scalar.known(Imm.value)`), as the kernel builds it.
"""

from __future__ import annotations

from ..isa.numbers import M32, M64
from ..isa.numbers import s32 as _s32
from ..isa.numbers import s64 as _s64
from ..isa.semantics import NEGATED
from .scalar import _bounds_violated, _mark_reg_unbounded, _Reg, _reg_bounds_sync, Scalar
from .tnum import Tnum


def _u64(x: int) -> int:
    return x & M64

COMPARISONS = tuple(NEGATED)
# flip_opcode: the comparison with its operands swapped.
_FLIPPED = {"ugt": "ult", "uge": "ule", "sgt": "slt", "sge": "sle"}


def _const_of(s: Scalar | _Reg, width: int) -> int | None:
    """reg_const_value when is_reg_const holds (the tnum, in `width` bits, is a constant), else None."""
    t = s.var_off.subreg() if width == 32 else s.var_off
    return t.value if t.is_const() else None


def branch_taken(cmp: str, width: int, a: Scalar, b: Scalar) -> bool | None:
    """is_scalar_branch_taken: True when `a <cmp> b` holds for every pair of values, False when for none,
    None when the kernel explores both sides. (Two operands that are the same register are the caller's
    business: the kernel compares a register with itself the same way.)"""
    if cmp == "clear":
        taken = branch_taken("set", width, a, b)
        return None if taken is None else not taken
    if cmp not in NEGATED:
        raise ValueError(f"unknown comparison {cmp!r}")
    if width == 32:
        t1, t2 = a.var_off.subreg(), b.var_off.subreg()
        umin1, umax1, smin1, smax1 = a.u32_min, a.u32_max, a.s32_min, a.s32_max
        umin2, umax2, smin2, smax2 = b.u32_min, b.u32_max, b.s32_min, b.s32_max
    else:
        t1, t2 = a.var_off, b.var_off
        umin1, umax1, smin1, smax1 = a.umin, a.umax, a.smin, a.smax
        umin2, umax2, smin2, smax2 = b.umin, b.umax, b.smin, b.smax
    if cmp in ("eq", "ne"):
        equal = _never_equal(width, a, b, t1, t2, umin1, umax1, smin1, smax1, umin2, umax2, smin2, smax2)
        if equal is None:
            return None
        return equal if cmp == "eq" else not equal
    if cmp == "set":
        if _const_of(b, width) is None:
            a, b, t1, t2 = b, a, t2, t1
        if _const_of(b, width) is None:
            return None
        if (~t1.mask & t1.value) & t2.value:
            return True
        if not ((t1.mask | t1.value) & t2.value):
            return False
        return None
    if cmp[0] == "s":
        lo1, hi1, lo2, hi2 = smin1, smax1, smin2, smax2
    else:
        lo1, hi1, lo2, hi2 = umin1, umax1, umin2, umax2
    kind = cmp[1:]
    if kind == "gt":
        return True if lo1 > hi2 else False if hi1 <= lo2 else None
    if kind == "lt":
        return True if hi1 < lo2 else False if lo1 >= hi2 else None
    if kind == "ge":
        return True if lo1 >= hi2 else False if hi1 < lo2 else None
    return True if hi1 <= lo2 else False if lo1 > hi2 else None  # le


def _never_equal(width, a, b, t1, t2, umin1, umax1, smin1, smax1, umin2, umax2, smin2, smax2) -> bool | None:
    """The JEQ case: True if always equal, False if never, None if unknown."""
    if t1.is_const() and t2.is_const():
        return t1.value == t2.value
    if not t1.overlaps(t2):  # a bit both know, known differently
        return False
    if umin1 > umax2 or umax1 < umin2:
        return False
    if smin1 > smax2 or smax1 < smin2:
        return False
    if width == 64:
        # Inconclusive 64-bit ranges may still be told apart by the 32-bit ones.
        if a.u32_min > b.u32_max or a.u32_max < b.u32_min:
            return False
        if a.s32_min > b.s32_max or a.s32_max < b.s32_min:
            return False
    return None


def refine(cmp: str, width: int, a: Scalar, b: Scalar, *, same: bool = False) -> tuple[Scalar, Scalar] | None:
    """What `a` and `b` become on the side where `a <cmp> b` holds (regs_refine_cond_op, then
    reg_bounds_sync of both); for the other side refine with `NEGATED[cmp]`. None when that side is
    impossible: the refined bounds are empty or contradict the tnum (the kernel's invariant check fails
    there and the side is not explored).

    `same`: both operands are one register (`if w9 s< w9`); the kernel then updates that one register
    through both roles, one after the other, which is not the same as refining two copies."""
    if cmp not in NEGATED:
        raise ValueError(f"unknown comparison {cmp!r}")
    r1 = _Reg.of(a)
    r2 = r1 if same else _Reg.of(b)
    _regs_refine_cond_op(r1, r2, cmp, width)
    _reg_bounds_sync(r1)
    _reg_bounds_sync(r2)
    if _bounds_violated(r1) or _bounds_violated(r2):
        return None
    return r1.freeze(), r2.freeze()


def _regs_refine_cond_op(r1: _Reg, r2: _Reg, cmp: str, width: int) -> None:
    """regs_refine_cond_op: greater-than forms become less-than forms with the operands swapped."""
    if cmp in _FLIPPED:
        cmp = _FLIPPED[cmp]
        r1, r2 = r2, r1
    w32 = width == 32
    if cmp == "eq":
        if w32:
            r1.u32_min = max(r1.u32_min, r2.u32_min)
            r1.u32_max = min(r1.u32_max, r2.u32_max)
            r1.s32_min = max(r1.s32_min, r2.s32_min)
            r1.s32_max = min(r1.s32_max, r2.s32_max)
            r2.u32_min, r2.u32_max, r2.s32_min, r2.s32_max = r1.u32_min, r1.u32_max, r1.s32_min, r1.s32_max
            t = r1.var_off.subreg().intersect(r2.var_off.subreg())
            r1.var_off = r1.var_off.with_subreg(t)
            r2.var_off = r2.var_off.with_subreg(t)
        else:
            r1.umin = max(r1.umin, r2.umin)
            r1.umax = min(r1.umax, r2.umax)
            r1.smin = max(r1.smin, r2.smin)
            r1.smax = min(r1.smax, r2.smax)
            r2.umin, r2.umax, r2.smin, r2.smax = r1.umin, r1.umax, r1.smin, r1.smax
            r1.var_off = r1.var_off.intersect(r2.var_off)
            r2.var_off = r1.var_off
    elif cmp == "ne":
        if _const_of(r2, width) is None:
            r1, r2 = r2, r1
        val = _const_of(r2, width)
        if val is None:
            return
        # Only a constant at an edge of the other's range narrows it.
        if w32:
            if r1.u32_min == val & M32:
                r1.u32_min = (r1.u32_min + 1) & M32
            if r1.u32_max == val & M32:
                r1.u32_max = (r1.u32_max - 1) & M32
            if r1.s32_min == _s32(val):
                r1.s32_min = _s32(r1.s32_min + 1)
            if r1.s32_max == _s32(val):
                r1.s32_max = _s32(r1.s32_max - 1)
        else:
            if r1.umin == val:
                r1.umin = _u64(r1.umin + 1)
            if r1.umax == val:
                r1.umax = _u64(r1.umax - 1)
            if r1.smin == _s64(val):
                r1.smin = _s64(r1.smin + 1)
            if r1.smax == _s64(val):
                r1.smax = _s64(r1.smax - 1)
    elif cmp == "set":
        if _const_of(r2, width) is None:
            r1, r2 = r2, r1
        val = _const_of(r2, width)
        # Only a single bit tells which bit is set.
        if val is None or val == 0 or val & (val - 1):
            return
        if w32:
            r1.var_off = r1.var_off.with_subreg(r1.var_off.subreg().or_(Tnum.const(val)))
        else:
            r1.var_off = r1.var_off.or_(Tnum.const(val))
    elif cmp == "clear":
        if _const_of(r2, width) is None:
            r1, r2 = r2, r1
        val = _const_of(r2, width)
        if val is None:
            return
        # The ranges are forgotten before the tnum narrows, so that a dead side cannot break invariants.
        _mark_reg_unbounded(r1)
        if w32:
            r1.var_off = r1.var_off.with_subreg(r1.var_off.subreg().and_(Tnum.const(~val)))
        else:
            r1.var_off = r1.var_off.and_(Tnum.const(~val))
    elif cmp == "ule":
        if w32:
            r1.u32_max = min(r1.u32_max, r2.u32_max)
            r2.u32_min = max(r1.u32_min, r2.u32_min)
        else:
            r1.umax = min(r1.umax, r2.umax)
            r2.umin = max(r1.umin, r2.umin)
    elif cmp == "ult":
        if w32:
            r1.u32_max = min(r1.u32_max, (r2.u32_max - 1) & M32)
            r2.u32_min = max((r1.u32_min + 1) & M32, r2.u32_min)
        else:
            r1.umax = min(r1.umax, _u64(r2.umax - 1))
            r2.umin = max(_u64(r1.umin + 1), r2.umin)
    elif cmp == "sle":
        if w32:
            r1.s32_max = min(r1.s32_max, r2.s32_max)
            r2.s32_min = max(r1.s32_min, r2.s32_min)
        else:
            r1.smax = min(r1.smax, r2.smax)
            r2.smin = max(r1.smin, r2.smin)
    elif cmp == "slt":
        if w32:
            r1.s32_max = min(r1.s32_max, _s32(r2.s32_max - 1))
            r2.s32_min = max(_s32(r1.s32_min + 1), r2.s32_min)
        else:
            r1.smax = min(r1.smax, _s64(r2.smax - 1))
            r2.smin = max(_s64(r1.smin + 1), r2.smin)

