"""Def-use and use-def chains of registers, read off the reaching definitions.

A use is (slot, register) of an instruction that reads the register (per `effects`); its use-def chain is
the set of definitions reaching it, and a definition's def-use chain is every use it reaches — the chains
of the Dragon book that dead-code elimination, copy propagation and the verifier's failure slices walk.
A use with an empty chain reads an uninitialised register.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..isa.ops import Call

from .cfg import ProgramCfg
from .effects import ARGUMENT_REGISTERS, effects_of
from .reaching import Def, ReachingDefinitions, reaching_definitions


@dataclass(frozen=True, slots=True)
class Use:
    slot: int
    reg: int


@dataclass(eq=False)
class DefUse:
    use_def: dict[Use, frozenset[Def]]
    def_use: dict[Def, frozenset[Use]]  # every definition, with the uses it reaches (empty: a dead one)

    def uninitialised(self) -> list[Use]:
        """Uses no definition reaches, by slot."""
        return sorted((u for u, defs in self.use_def.items() if not defs), key=lambda u: (u.slot, u.reg))


def def_use_chains(cfg: ProgramCfg, function: int = 0, reaching: ReachingDefinitions | None = None,
                   arguments: Mapping[int, int] | None = None) -> DefUse:
    """Chains of one function's reachable instructions. `arguments` (from `liveness.argument_uses`) narrows
    a local call's uses to its callee's inputs; without it a call uses all of r1-r5."""
    reaching = reaching or reaching_definitions(cfg, function)
    use_def: dict[Use, frozenset[Def]] = {}
    uses_of: dict[Def, list[Use]] = {d: [] for d in reaching.definitions}
    for b in cfg.functions[function].blocks:
        if b not in reaching.solution.before:
            continue
        for slot, op in cfg.blocks[b].ops:
            reads = effects_of(op).reads
            if arguments is not None and op.__class__ is Call and op.kind == "local" and op.target in arguments:
                inputs = arguments[op.target]
                reads = {r for r in reads if r not in ARGUMENT_REGISTERS or inputs >> r & 1}
            for reg in sorted(reads):
                use = Use(slot, reg)
                defs = reaching.reaching(slot, reg)
                use_def[use] = defs
                for d in defs:
                    uses_of[d].append(use)
    return DefUse(use_def, {d: frozenset(uses) for d, uses in uses_of.items()})


__all__ = ["DefUse", "Use", "def_use_chains"]
