"""What every pass reads about the program, computed once per round: decoded ops, the CFG, liveness per
function, known bits, the window sites, and slot <-> instruction index maps."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from ...analysis.cfg import ProgramCfg, cfg_of_ops
from ...analysis.frame import Frame, Region, frame_states
from ...analysis.liveness import Liveness, program_liveness
from ...isa import Insn, slot_starts
from ...isa.ops import Op, decode_ops
from ...verifier.window import ProgramSites
from ..facts import Facts, known_bits


class ProgramView:
    def __init__(self, insns: Sequence[Insn], maps=(), prog_type: str | None = None) -> None:
        self.insns = list(insns)
        self.maps = maps  # the program's map specs (by reference or as a list): what helpers read of the stack
        self.prog_type = prog_type  # which context fields hold packet pointers
        self.ops: list[Op | None] = decode_ops(self.insns)
        self.starts = slot_starts(self.insns)
        self.index = {slot: i for i, slot in enumerate(self.starts)}
        self.cfg: ProgramCfg = cfg_of_ops(self.ops)

    @cached_property
    def liveness(self) -> dict[int, Liveness]:
        return program_liveness(self.cfg, self.maps)

    @cached_property
    def frames(self) -> dict[int, tuple]:
        """Slot -> what each register points into there (`analysis.frame`), every function."""
        out: dict[int, tuple] = {}
        for fn in self.cfg.functions:
            out.update(frame_states(self.cfg, fn.index, self.prog_type))
        return out

    def regions_at(self, slot: int) -> dict[int, str]:
        """The registers known at `slot` to point into one kind of memory: register -> "stack", "packet",
        "map_value" or "ctx" (what the prover may assume apart)."""
        out = {}
        for n, value in enumerate(self.frames.get(slot, ())):
            if isinstance(value, Frame):
                out[n] = "stack"
            elif isinstance(value, Region):
                out[n] = value.kind
        return out

    @cached_property
    def facts(self) -> Facts:
        return known_bits(self.insns, self.cfg)

    @cached_property
    def sites(self) -> ProgramSites:
        return ProgramSites(self.insns, self.maps)

    @cached_property
    def jump_targets(self) -> frozenset[int]:
        """Slots some jump, call or the function table lands on (a block boundary a window must respect)."""
        return frozenset(b.start for b in self.cfg.blocks)

    def insn_at(self, slot: int) -> Insn:
        return self.insns[self.index[slot]]

    def next_slot(self, slot: int) -> int:
        return slot + self.insn_at(slot).slots

    def live_after(self, slot: int) -> int:
        """Mask of registers and stack slots live after `slot` (all when no path reaches it)."""
        fn = self.cfg.function_at(slot)
        try:
            return self.liveness[fn.index].after_mask(slot)
        except KeyError:
            return (1 << 75) - 1

    def live_before(self, slot: int) -> int:
        fn = self.cfg.function_at(slot)
        try:
            return self.liveness[fn.index].before_mask(slot)
        except KeyError:
            return (1 << 75) - 1

    def same_block(self, first: int, last: int) -> bool:
        """Whether slots first..last lie in one block (no entry between them)."""
        return self.cfg.block_of_slot[first] == self.cfg.block_of_slot[last]

    def reached(self, slot: int) -> bool:
        return slot in self.facts.before


__all__ = ["ProgramView"]
