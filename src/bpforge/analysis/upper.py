"""Where a 32-bit result's zero-extension can be left out: the registers whose upper halves (bits 32-63)
some path reads before overwriting them — the kernel verifier's 64-bit read marks (`REG_LIVE_READ64`,
`mark_insn_zext`), which let JITs of machines without free zero-extension (riscv64, where W operations
sign-extend) skip the extension of a 32-bit result nobody reads as 64 bits.

An op reads a register's upper half unless it only looks at the low half: 32-bit ALU operations and
jumps, movsx (it reads at most 32 bits), byte swaps and negation narrower than 64 bits, stores and atomics
of fewer than 8 bytes (their value; addresses are always read whole). Calls read their arguments whole,
exit reads r0 whole, and anything else reads what it reads whole.
"""

from __future__ import annotations

from ..isa.ops import Alu, Atomic, Jump, Reg, Store, Unary
from .cfg import ProgramCfg
from .effects import effects_of
from .liveness import liveness


def _mask(registers) -> int:
    return sum(1 << r for r in set(registers))


def upper_reads(op) -> int:
    """Mask of the registers whose bits 32-63 `op` reads."""
    cls = op.__class__
    if cls is Alu:
        return 0 if op.width == 32 or op.op == "movsx" else _mask(effects_of(op).reads)
    if cls is Unary:
        return _mask((op.dst,)) if op.width == 64 else 0
    if cls is Jump:
        return 0 if op.width == 32 else _mask(effects_of(op).reads)
    if cls is Store:
        value = (op.value.n,) if isinstance(op.value, Reg) and op.size == 8 else ()
        return _mask((op.base, *value))
    if cls is Atomic:
        wide = (op.src, *((0,) if op.op == "cmpxchg" else ())) if op.size == 8 else ()
        return _mask((op.base, *wide))
    return _mask(effects_of(op).reads)


def _upper_use_kill(op) -> tuple[int, int]:
    return upper_reads(op), _mask(effects_of(op).kills)


def upper_dead_after(cfg: ProgramCfg) -> frozenset[int]:
    """Slots of 32-bit ALU operations and narrow byte swaps/negations (every op whose result the semantics
    zero-extends from 32 bits) whose destination's upper half no path reads before overwriting it. Slots
    control does not reach are left out (nothing is known of them)."""
    found = set()
    for function in cfg.functions:
        live = liveness(cfg, function.index, uses=_upper_use_kill)
        for b in function.blocks:
            if b not in live.solution.after:
                continue
            for slot, op in cfg.blocks[b].ops:
                narrow = (op.__class__ is Alu and op.width == 32) or (op.__class__ is Unary and op.width == 32)
                if narrow and not live.is_live_after(slot, op.dst):
                    found.add(slot)
    return frozenset(found)


__all__ = ["upper_dead_after", "upper_reads"]
