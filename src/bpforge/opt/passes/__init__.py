"""The rule passes: each proposes `Rewrite`s of the program a `ProgramView` describes; the pipeline
proves, gates and applies them, round after round, to a fixpoint. A pass is only ever useful or not: a
wrong proposal is refused by the prover, so none has to be trusted.

PASSES lists them in the order their proposals are considered (the first of two overlapping ones wins):
what removes instructions outright first, then what makes more of them removable next round."""

from __future__ import annotations

from . import (
    alu32, atomics, branches, bytes, constprop, copyprop, dce, loads, moves, nops, peephole, stores, unreachable,
)
from .view import ProgramView

PASSES = (
    ("unreachable", unreachable.propose),
    ("dce", dce.propose),
    ("atomics", atomics.propose),
    ("stores", stores.propose),
    ("bytes", bytes.propose),
    ("moves", moves.propose),
    ("branches", branches.propose),
    ("constprop", constprop.propose),
    ("copyprop", copyprop.propose),
    ("nops", nops.propose),
    ("loads", loads.propose),
    ("peephole", peephole.propose),
)
# Save no slot (the pipeline takes saved == 0 rewrites): only for --cost latency, ranked by `why` "alu32".
LATENCY_PASSES = (("alu32", alu32.propose),)

__all__ = ["LATENCY_PASSES", "PASSES", "ProgramView"]
