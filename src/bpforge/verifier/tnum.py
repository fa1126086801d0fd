"""Tristate numbers: what is known of each bit of a 64-bit value (kernel/bpf/tnum.c, include/linux/tnum.h).

A `Tnum(value, mask)` stands for every 64-bit x with x & ~mask == value: a bit set in `mask` is unknown, the
others are the bits of `value` (which has no bit of `mask` set). Every operation mirrors the kernel's of the
same name, bit for bit, imprecisions included, because our verifier must compute the states the kernel
computes, not merely sound ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.numbers import M32, M64, signed


@dataclass(frozen=True, slots=True)
class Tnum:
    value: int
    mask: int

    # ---- constructors ----------------------------------------------------------------------------------

    @staticmethod
    def const(value: int) -> "Tnum":
        """tnum_const."""
        return Tnum(value & M64, 0)

    @staticmethod
    def unknown() -> "Tnum":
        """tnum_unknown."""
        return UNKNOWN

    @staticmethod
    def range(lo: int, hi: int) -> "Tnum":
        """tnum_range: the smallest tnum whose known high bits are those `lo` and `hi` share (unsigned)."""
        lo, hi = lo & M64, hi & M64
        bits = (lo ^ hi).bit_length()
        if bits > 63:
            return UNKNOWN
        delta = (1 << bits) - 1
        return Tnum(lo & ~delta & M64, delta)

    # ---- queries ---------------------------------------------------------------------------------------

    def is_const(self) -> bool:
        return self.mask == 0

    def is_unknown(self) -> bool:
        return self.mask == M64

    def is_aligned(self, size: int) -> bool:
        """tnum_is_aligned: every value is a multiple of `size` (a power of two; 0 means any)."""
        if not size:
            return True
        return not ((self.value | self.mask) & (size - 1))

    def includes(self, other: "Tnum") -> bool:
        """tnum_in(self, other): every value of `other` is one of ours."""
        if other.mask & ~self.mask:
            return False
        return self.value == other.value & ~self.mask

    def contains(self, x: int) -> bool:
        """Whether the concrete 64-bit value `x` is one of ours."""
        return (x & M64) & ~self.mask == self.value

    def __contains__(self, x: int) -> bool:
        return self.contains(x)

    def step(self, z: int) -> int:
        """tnum_step: the smallest of our values above `z` (our largest if none is; our smallest if `z` is
        below it)."""
        top = self.value | self.mask
        if z >= top:
            return top
        if z < self.value:
            return self.value
        want = z + 1
        built, flip = 0, None  # flip: the lowest unknown bit so far where `want` has a 0
        for i in range(63, -1, -1):
            bit = 1 << i
            if self.mask & bit:
                if not want & bit:
                    flip = (i, built)
                built |= want & bit
                continue
            known = self.value & bit
            if known == want & bit:
                built |= known
            elif known:  # we exceed `want` here: the rest as small as possible
                return built | bit | (self.value & (bit - 1))
            else:  # we fall below `want` here: exceed it at the last unknown 0 above instead
                i, built = flip
                return built | (1 << i) | (self.value & ((1 << i) - 1))
        return built

    @property
    def max(self) -> int:
        """The largest value (unsigned)."""
        return self.value | self.mask

    # ---- shifts ----------------------------------------------------------------------------------------

    def lshift(self, shift: int) -> "Tnum":
        return Tnum((self.value << shift) & M64, (self.mask << shift) & M64)

    def rshift(self, shift: int) -> "Tnum":
        return Tnum(self.value >> shift, self.mask >> shift)

    def arshift(self, min_shift: int, bitness: int = 64) -> "Tnum":
        """tnum_arshift: in 32 bits, the low halves are shifted as s32 and the result zero-extended."""
        if bitness == 32:
            return Tnum((signed(self.value, 32) >> min_shift) & M32, (signed(self.mask, 32) >> min_shift) & M32)
        return Tnum((signed(self.value, 64) >> min_shift) & M64, (signed(self.mask, 64) >> min_shift) & M64)

    # ---- arithmetic and logic --------------------------------------------------------------------------

    def add(self, b: "Tnum") -> "Tnum":
        sm = (self.mask + b.mask) & M64
        sv = (self.value + b.value) & M64
        sigma = (sm + sv) & M64
        chi = sigma ^ sv
        mu = chi | self.mask | b.mask
        return Tnum(sv & ~mu & M64, mu)

    def sub(self, b: "Tnum") -> "Tnum":
        dv = (self.value - b.value) & M64
        alpha = (dv + self.mask) & M64
        beta = (dv - b.mask) & M64
        chi = alpha ^ beta
        mu = chi | self.mask | b.mask
        return Tnum(dv & ~mu & M64, mu)

    def neg(self) -> "Tnum":
        """tnum_neg: 0 - self."""
        return ZERO.sub(self)

    def and_(self, b: "Tnum") -> "Tnum":
        alpha = self.value | self.mask
        beta = b.value | b.mask
        v = self.value & b.value
        return Tnum(v, alpha & beta & ~v & M64)

    def or_(self, b: "Tnum") -> "Tnum":
        v = self.value | b.value
        mu = self.mask | b.mask
        return Tnum(v, mu & ~v & M64)

    def xor(self, b: "Tnum") -> "Tnum":
        v = self.value ^ b.value
        mu = self.mask | b.mask
        return Tnum(v & ~mu & M64, mu)

    def mul(self, b: "Tnum") -> "Tnum":
        """tnum_mul: shift-and-add over our bits; where our bit is unknown the running sum becomes the
        union of the sums with and without that partial product."""
        a, acc = self, ZERO
        while a.value or a.mask:
            if a.value & 1:
                acc = acc.add(b)
            elif a.mask & 1:
                acc = acc.union(acc.add(b))
            a = a.rshift(1)
            b = b.lshift(1)
        return acc

    def intersect(self, b: "Tnum") -> "Tnum":
        """tnum_intersect: what both say (where they disagree on a known bit, a known 1 wins, as in the
        kernel)."""
        v = self.value | b.value
        mu = self.mask & b.mask
        return Tnum(v & ~mu & M64, mu)

    def union(self, b: "Tnum") -> "Tnum":
        """The smallest tnum holding the values of both (bits both know and agree on stay known)."""
        mu = self.mask | b.mask | (self.value ^ b.value)
        return Tnum(self.value & ~mu & M64, mu)

    def overlaps(self, b: "Tnum") -> bool:
        """Whether some value is in both (the bits both know agree)."""
        mu = ~self.mask & ~b.mask & M64
        return (self.value & mu) == (b.value & mu)

    def bswap(self, bits: int) -> "Tnum":
        """tnum_bswap16/32/64: the low `bits` bits with their bytes reversed (what is known moves with its
        byte), zero-extended."""
        n = bits // 8
        return Tnum(_swap_bytes(self.value, n), _swap_bytes(self.mask, n))

    # ---- widths ----------------------------------------------------------------------------------------

    def cast(self, size: int) -> "Tnum":
        """tnum_cast: the low `size` bytes, zero-extended."""
        m = (1 << (size * 8)) - 1
        return Tnum(self.value & m, self.mask & m)

    def subreg(self) -> "Tnum":
        """tnum_subreg: the low 32 bits, zero-extended."""
        return Tnum(self.value & M32, self.mask & M32)

    def clear_subreg(self) -> "Tnum":
        """tnum_clear_subreg: the high 32 bits, the low ones known zero."""
        return self.rshift(32).lshift(32)

    def with_subreg(self, sub: "Tnum") -> "Tnum":
        """tnum_with_subreg: our high half with the low half of `sub`."""
        return self.clear_subreg().or_(sub.subreg())

    def const_subreg(self, value: int) -> "Tnum":
        """tnum_const_subreg: our high half, the low half the constant `value`."""
        return self.with_subreg(Tnum.const(value & M32))

    def __str__(self) -> str:
        """tnum_strn: `(0x..; 0x..)`, as the verifier log prints a var_off."""
        return f"({self.value:#x}; {self.mask:#x})"


def _swap_bytes(x: int, n: int) -> int:
    return int.from_bytes((x & ((1 << (8 * n)) - 1)).to_bytes(n, "little"), "big")


UNKNOWN = Tnum(0, M64)
ZERO = Tnum(0, 0)
