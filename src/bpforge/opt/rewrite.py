"""A proposed change to a program: replace the window of slots [start, end) by other instructions.

Every producer of changes (a rule pass, a cached rule, the stochastic search) speaks this one form, and
one gate judges them all: the prover shows the new window equivalent to the old one under the facts it
`assumes` and what is live at its exits, our verifier and the kernel accept the result. A pass therefore
never has to be right to keep the program right, only to be useful.

Offsets inside `new` are relative to the window as it will be placed at `start` (`verifier.window`'s
convention): a jump to new slot t, 0 <= t < len, stays inside; a jump past the new window's end by k lands
where the old window's end + k was; a jump to t < 0 lands on start + t. So a pass writes the jumps that
leave the window exactly as they would read at the new place, and `track.Transformation.apply` fixes every
other jump, call and function address of the program that crosses the window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..isa import Insn, slot_count

M64 = (1 << 64) - 1


@dataclass(frozen=True)
class KnownBits:
    """What a register holds at the window's entry on every path: `value` in the bits of `mask`
    (a constant: mask = all ones; upper half zero: mask = 0xffffffff00000000, value = 0)."""

    mask: int
    value: int

    def __post_init__(self) -> None:
        if self.value & ~self.mask & M64:
            raise ValueError(f"known bits: value {self.value:#x} has bits outside mask {self.mask:#x}")

    @staticmethod
    def constant(value: int) -> "KnownBits":
        return KnownBits(M64, value & M64)

    @property
    def is_constant(self) -> bool:
        return self.mask == M64

    def implies(self, other: "KnownBits") -> bool:
        """Whether a register known this way is also known `other`'s way."""
        return other.mask & ~self.mask == 0 and self.value & other.mask == other.value


@dataclass(frozen=True)
class Rewrite:
    """Replace slots [start, end) by `new`. `assumes`: register -> KnownBits at `start` that the equivalence
    relies on (the gate checks them against its own facts before believing a proof that uses them).
    `why`: the producer and what it saw, in words a report can print. `unreachable` rewrites remove code
    no path reaches (their `new` is empty)."""

    start: int
    end: int
    new: tuple[Insn, ...]
    why: str
    assumes: Mapping[int, KnownBits] = field(default_factory=dict)
    unreachable: bool = False  # the window is code no path reaches: the CFG, not the prover, vouches for it

    @property
    def saved(self) -> int:
        """Slots the rewrite saves (negative when it grows the program)."""
        return self.end - self.start - slot_count(self.new)

    def overlaps(self, other: "Rewrite") -> bool:
        return self.start < other.end and other.start < self.end or self.start == other.start


__all__ = ["KnownBits", "Rewrite"]
