"""A long optimizer run's state on disk, so that a run killed after an hour resumes where it was rather
than from the start.

What is saved is what the run cannot cheaply find again: every batch of rewrites applied, in order (round,
when, and the rewrites as computed against the program of that moment), and how long the search has spent
on each window. Replaying the batches through `track.Transformation.apply` rebuilds the program and where
every instruction came from (what the ELF writer needs); the proofs behind them are not redone, since each
was proved before it was saved and the result is gated again at the end. A checkpoint names the program and
cost model it belongs to by a digest, and a run of anything else ignores it.

Writes are atomic (a temporary file renamed over the old one), so a kill during a save leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BpforgeError
from ..files import read_input, write_atomic
from ..isa import Insn, decode, encode
from .rewrite import KnownBits, Rewrite

FORMAT = "bpforge-checkpoint/1"
EVERY_SECONDS = 180.0  # how often a run saves (and always at its end)


@dataclass(frozen=True)
class Batch:
    """Rewrites applied together, all in the slots of the program as it was just before."""

    round: int
    seconds: float  # since the run began
    rewrites: tuple[Rewrite, ...]


@dataclass(frozen=True)
class Saved:
    elapsed: float  # seconds the run had used
    batches: tuple[Batch, ...]
    spent: Mapping[str, float]  # window key -> seconds searched


def program_key(insns: Sequence[Insn], prog_type: str, cost: str) -> str:
    """What a checkpoint belongs to: the original program, its type and the cost model."""
    digest = hashlib.sha256(encode(insns))
    digest.update(f"\0{prog_type}\0{cost}".encode())
    return digest.hexdigest()


def save(path: str | os.PathLike, key: str, elapsed: float, batches: Sequence[Batch],
         spent: Mapping[str, float]) -> None:
    document = {"format": FORMAT, "program": key, "elapsed": round(elapsed, 3),
                "batches": [{"round": b.round, "seconds": round(b.seconds, 3),
                             "rewrites": [_rewrite_json(r) for r in b.rewrites]} for b in batches],
                "spent": {k: round(v, 3) for k, v in spent.items()}}
    write_atomic(path, json.dumps(document, separators=(",", ":")).encode())


def load(path: str | os.PathLike, key: str) -> Saved | None:
    """The state saved at `path` for the program `key`; None when there is no file or it holds another
    program's run. A file that is not a checkpoint is an error (it may be something the user needs)."""
    if not os.path.exists(path):
        return None
    data = read_input(path, what="checkpoint")
    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        if document["program"] != key:
            return None
        batches = tuple(Batch(int(b["round"]), float(b["seconds"]), tuple(_rewrite_of(r) for r in b["rewrites"]))
                        for b in document["batches"])
        spent = {str(k): float(v) for k, v in document["spent"].items()}
        return Saved(float(document["elapsed"]), batches, spent)
    except (ValueError, KeyError, TypeError, AttributeError, BpforgeError) as err:
        raise BpforgeError(f"not a usable checkpoint: {err}", file=os.fspath(path)) from None


def _rewrite_json(r: Rewrite) -> dict:
    return {"start": r.start, "end": r.end, "new": encode(r.new).hex(), "why": r.why,
            "assumes": {str(reg): [bits.mask, bits.value] for reg, bits in r.assumes.items()},
            "unreachable": r.unreachable}


def _rewrite_of(d: dict) -> Rewrite:
    return Rewrite(int(d["start"]), int(d["end"]), tuple(decode(bytes.fromhex(d["new"]))), str(d["why"]),
                   {int(reg): KnownBits(int(m), int(v)) for reg, (m, v) in d["assumes"].items()},
                   bool(d["unreachable"]))


__all__ = ["Batch", "EVERY_SECONDS", "FORMAT", "Saved", "load", "program_key", "save"]
