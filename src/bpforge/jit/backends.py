"""The instruction selectors by architecture: one place that knows which backend compiles for which."""

from __future__ import annotations

from ..errors import BpforgeError
from .image import Image
from .lower import Lowered

ARCHES = ("x86_64", "arm64", "riscv64")


def compile_lowered(lowered: Lowered, arch: str, *, blind: bool = False) -> Image:
    """`blind`: constants blinded (x86-64 so far)."""
    if arch == "x86_64":
        from .x86_64.select import compile_x86_64

        return compile_x86_64(lowered, blind=blind)
    if blind:
        raise BpforgeError(f"--blind: constant blinding is implemented for x86_64 only so far, not {arch}")
    if arch == "arm64":
        from .arm64.select import compile_arm64 as compile_
    elif arch == "riscv64":
        from .riscv64.select import compile_riscv64 as compile_
    else:
        raise BpforgeError(f"--arch {arch}: the JIT compiles for {', '.join(ARCHES)}")
    return compile_(lowered)
