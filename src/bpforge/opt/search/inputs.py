"""Test states for a window: drawn from what its entry is known to hold, and grown by counterexamples.

Registers get random 64-bit values mixed with corner values (0, 1, -1, 0x7fffffff, 0x80000000, small
ints, the 32-bit and 64-bit extremes), every register including those not live at entry (a candidate that
reads one must be caught reading garbage), then the bits `assumes` fixes are forced. r10 is one fixed
frame pointer far from every corner value, so stack addresses never collide with a pointer made of one;
the prover still treats r10 as unknown, and a counterexample brings its own r10. Every other random test
(and half the counterexamples) lets some 4-byte loads read 64-bit pointer fields, as the prover does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..rewrite import KnownBits
from ..smt.equiv import Counterexample
from .evaluate import TestCase

M64 = (1 << 64) - 1
FRAME_POINTER = 0xFFFFC900_0040_2000  # looks like a kernel stack, far from small ints and -1
CORNERS = (0, 1, M64, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 2, 3, 4, 7, 8, 16, 255, 256, 0xFFFF,
           1 << 63, (1 << 63) - 1, M64 - 1, 0xFFFFFFFF80000000)


def _value(rng: random.Random, corner_rate: float) -> int:
    roll = rng.random()
    if roll < corner_rate:
        return rng.choice(CORNERS)
    if roll < corner_rate + 0.15:
        return rng.randrange(-64, 64) & M64  # small ints, either sign
    if roll < corner_rate + 0.3:
        return rng.getrandbits(32)
    return rng.getrandbits(64)


def constrain(value: int, known: KnownBits | None) -> int:
    return value if known is None else (value & ~known.mask & M64) | known.value


def random_tests(count: int, assumes: Mapping[int, KnownBits], rng: random.Random, *,
                 corner_rate: float = 0.35) -> list[TestCase]:
    """`count` entry states. The first is all zeros (where assumes allow), the second all ones: the
    corners most wrong candidates fail at once."""
    tests = []
    for k in range(count):
        regs = []
        for n in range(10):
            if k == 0:
                value = 0
            elif k == 1:
                value = M64
            else:
                value = _value(rng, corner_rate)
            regs.append(constrain(value, assumes.get(n)))
        regs.append(FRAME_POINTER)
        tests.append(TestCase(tuple(regs), {}, rng.getrandbits(64), pointer_fields=k >= 2 and k % 2 == 1))
    return tests


def from_counterexample(example: Counterexample, assumes: Mapping[int, KnownBits], rng: random.Random) -> TestCase:
    """A test from the prover's counterexample: its registers (random where it gave none) and memory bytes."""
    regs = []
    for n in range(11):
        value = example.registers.get(n)
        if value is None:
            value = FRAME_POINTER if n == 10 else rng.getrandbits(64)
        regs.append(constrain(value & M64, assumes.get(n)) if n < 10 else value & M64)
    memory = {a & M64: b & 0xFF for a, b in example.memory.items()}
    return TestCase(tuple(regs), memory, rng.getrandbits(64), pointer_fields=rng.random() < 0.5)


__all__ = ["CORNERS", "FRAME_POINTER", "constrain", "from_counterexample", "random_tests"]
