"""Reaching definitions of registers (a forward problem on the one solver).

A definition of register r at slot s reaches a point when some path from s to it does not write r again —
the classic Aho/Sethi/Ullman notion, which LLVM's MachineSSA and the optimizer's constant propagation and
copy coalescing build on. Every op that `effects` says writes r defines it; a call's clobber of r1-r5
kills their definitions without making a new one (what reaches a read of r1 after a call is nothing: the
kernel's "R1 !read_ok"). At a function's entry the registers the kernel initialises are defined by
*entry definitions*: r1 (the context) and r10 (the frame pointer) for the main program, r1-r5 (the
arguments) and r10 for a subprogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .cfg import ProgramCfg
from .dataflow import FORWARD, Problem, Solution, solve
from .effects import ARGUMENT_REGISTERS, FRAME_POINTER, effects_of
from .loops import Wto


@dataclass(frozen=True, slots=True)
class Def:
    """Register `reg` defined by the instruction at `slot`, or on entry to the function starting at
    `slot` (`entry`)."""

    slot: int
    reg: int
    entry: bool = False


def entry_registers(function: int) -> frozenset[int]:
    """Registers holding a value when a function starts: r1 = ctx in the main program, the arguments in a
    subprogram; r10 always."""
    return frozenset({1, FRAME_POINTER}) if function == 0 else ARGUMENT_REGISTERS | {FRAME_POINTER}


@dataclass(eq=False)
class ReachingDefinitions:
    cfg: ProgramCfg
    function: int
    definitions: list[Def]  # a definition's bit is its index here
    solution: Solution[int]
    _op_defs: dict[int, tuple[int, int]]  # slot -> (definitions made, definitions killed) bitmasks

    @cached_property
    def _per_slot(self) -> dict[int, int]:
        table = {}
        for b in self.cfg.functions[self.function].blocks:
            if b not in self.solution.before:
                continue
            value = self.solution.before[b]
            for slot, _ in self.cfg.blocks[b].ops:
                table[slot] = value
                gen, kill = self._op_defs[slot]
                value = (value & ~kill) | gen
        return table

    def mask_before(self, slot: int) -> int:
        return self._per_slot.get(slot, 0)

    def before(self, slot: int) -> frozenset[Def]:
        """Every definition reaching the instruction at `slot` (empty when it is unreachable)."""
        return self._decode(self.mask_before(slot))

    def reaching(self, slot: int, reg: int) -> frozenset[Def]:
        """The definitions of `reg` that reach the instruction at `slot` (empty: no path gives it a value, the
        register is uninitialised there)."""
        return self._decode(self.mask_before(slot) & self.register_mask(reg))

    def register_mask(self, reg: int) -> int:
        return self._by_reg[reg]

    @cached_property
    def _by_reg(self) -> list[int]:
        masks = [0] * 11
        for i, d in enumerate(self.definitions):
            masks[d.reg] |= 1 << i
        return masks

    def _decode(self, mask: int) -> frozenset[Def]:
        defs = []
        while mask:
            low = mask & -mask
            defs.append(self.definitions[low.bit_length() - 1])
            mask ^= low
        return frozenset(defs)


def reaching_definitions(cfg: ProgramCfg, function: int = 0, wto: Wto | None = None) -> ReachingDefinitions:
    fn = cfg.functions[function]
    blocks = cfg.blocks
    definitions = [Def(fn.entry, r, entry=True) for r in sorted(entry_registers(function))]
    effects = {}
    for b in fn.blocks:
        for slot, op in blocks[b].ops:
            fx = effects_of(op)
            effects[slot] = fx
            definitions.extend(Def(slot, r) for r in sorted(fx.writes))
    by_reg = [0] * 11
    gen_of: dict[int, int] = {}
    for i, d in enumerate(definitions):
        by_reg[d.reg] |= 1 << i
        if not d.entry:
            gen_of[d.slot] = gen_of.get(d.slot, 0) | 1 << i
    op_defs = {}
    for slot, fx in effects.items():
        kill = 0
        for r in fx.kills:
            kill |= by_reg[r]
        op_defs[slot] = (gen_of.get(slot, 0), kill)

    summaries = {}
    for b in fn.blocks:
        gen = kill = 0
        for slot, _ in blocks[b].ops:
            g, k = op_defs[slot]
            gen = (gen & ~k) | g
            kill |= k
        summaries[b] = (gen, kill)

    def transfer(b: int, value: int) -> int:
        gen, kill = summaries[b]
        return (value & ~kill) | gen

    boundary = sum(1 << i for i, d in enumerate(definitions) if d.entry)
    problem = Problem(FORWARD, boundary=boundary, bottom=0, join=int.__or__, transfer=transfer)
    return ReachingDefinitions(cfg, function, definitions, solve(cfg, function, problem, wto), op_defs)


__all__ = ["Def", "ReachingDefinitions", "entry_registers", "reaching_definitions"]
