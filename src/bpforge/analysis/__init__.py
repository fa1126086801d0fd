"""Program analysis shared by the verifier, the optimizer, the JITs, offload and partition: the CFG with
subprograms (`cfg`), per-instruction effects (`effects`), dominators (`dominators`), loops and the weak
topological order (`loops`), one dataflow solver (`dataflow`) and the analyses on it: liveness, reaching
definitions, def-use chains. Nothing downstream builds a second CFG.

`analyze(insns)` runs everything for every function; each piece is also callable on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..isa.insn import Insn
from .cfg import Block, CfgError, Edge, Function, ProgramCfg, build_cfg, cfg_of_ops, function_entries
from .dataflow import BACKWARD, FORWARD, Problem, Solution, solve
from .defuse import DefUse, Use, def_use_chains
from .dominators import DominatorTree, dominators, post_dominators
from .effects import Effects, StackAccess, effects_of
from .liveness import LiveSet, Liveness, argument_uses, liveness
from .loops import Component, Loop, LoopInfo, Wto, find_loops, function_wto
from .reaching import Def, ReachingDefinitions, reaching_definitions


@dataclass(eq=False)
class FunctionAnalysis:
    function: Function
    dominators: DominatorTree
    loops: LoopInfo
    wto: Wto
    liveness: Liveness
    reaching: ReachingDefinitions


@dataclass(eq=False)
class ProgramAnalysis:
    cfg: ProgramCfg
    functions: list[FunctionAnalysis]


def analyze(insns: Sequence[Insn], entries: Iterable[int] | None = None) -> ProgramAnalysis:
    """CFG, then per function dominators, loops, WTO, liveness and reaching definitions."""
    cfg = build_cfg(insns, entries)
    arguments = argument_uses(cfg)
    result = []
    for fn in cfg.functions:
        dom = dominators(cfg, fn.index)
        wto = function_wto(cfg, fn.index)
        result.append(FunctionAnalysis(fn, dom, find_loops(cfg, fn.index, dom), wto,
                                       liveness(cfg, fn.index, wto, arguments), reaching_definitions(cfg, fn.index, wto)))
    return ProgramAnalysis(cfg, result)


__all__ = [
    "BACKWARD", "Block", "CfgError", "Component", "Def", "DefUse", "DominatorTree", "Edge", "Effects", "FORWARD",
    "Function", "FunctionAnalysis", "LiveSet", "Liveness", "Loop", "LoopInfo", "Problem", "ProgramAnalysis",
    "ProgramCfg", "ReachingDefinitions", "Solution", "StackAccess", "Use", "Wto", "analyze", "argument_uses", "build_cfg",
    "cfg_of_ops", "def_use_chains", "dominators", "effects_of", "find_loops", "function_entries", "function_wto",
    "liveness", "post_dominators", "reaching_definitions", "solve",
]
