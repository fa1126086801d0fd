"""Code no path reaches (after branches were folded) removed: each maximal run of unreachable
instructions is one rewrite to nothing, marked `unreachable` so the gate checks it against the CFG instead
of asking the prover (which cannot know that no path enters)."""

from __future__ import annotations

from ..rewrite import Rewrite
from .view import ProgramView


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for b in sorted(view.cfg.unreachable, key=lambda b: view.cfg.blocks[b].start):
        block = view.cfg.blocks[b]
        if out and out[-1].end == block.start:
            last = out.pop()
            out.append(Rewrite(last.start, block.end, (), last.why, unreachable=True))
        else:
            out.append(Rewrite(block.start, block.end, (), "unreachable: no path reaches it", unreachable=True))
    return out


__all__ = ["propose"]
