"""A rewrite of a whole program proved or not: the facts it assumes checked against our own analysis, then
its window proved equivalent (`smt.equiv`) under what the rest of the program needs at the window's exits.

`ProofCache` keeps the answers for windows seen before (the same original, candidate, live sets and facts
give the same answer wherever they occur), so rounds that propose the same rewrite again pay nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..analysis.cfg import cfg_of_ops
from ..errors import BpforgeError
from ..isa import Insn
from ..isa.ops import Jump, decode_ops
from ..verifier.window import ExitTarget, ProgramSites
from .facts import Facts, known_bits
from .rewrite import Rewrite
from .smt.equiv import DEFAULT_TIMEOUT_MS, PROVED, UNKNOWN, Proof, prove_equivalent


@dataclass
class ProofCache:
    """Proofs by (original window, candidate, live sets at its exits, assumed facts)."""

    proofs: dict = field(default_factory=dict)
    hits: int = 0

    def get(self, key) -> Proof | None:
        proof = self.proofs.get(key)
        if proof is not None:
            self.hits += 1
        return proof

    def put(self, key, proof: Proof) -> None:
        if proof.status != UNKNOWN:  # a timeout may go the other way with more time: ask again
            self.proofs[key] = proof


def prove_rewrite(insns: Sequence[Insn], rewrite: Rewrite, *, sites: ProgramSites | None = None,
                  facts: Facts | None = None, regions: Mapping[int, str] | None = None,
                  timeout_ms: int = DEFAULT_TIMEOUT_MS, cache: ProofCache | None = None) -> Proof:
    """Whether `rewrite` keeps `insns` equivalent. `sites` and `facts` of `insns`, when the caller has them
    (they cost what the program costs; a round proves many rewrites of one program). `regions`: the kinds of
    memory registers point into at the window's start (`ProgramView.regions_at`)."""
    if rewrite.unreachable:
        return _unreachable(insns, rewrite)
    facts = facts if facts is not None else known_bits(insns)
    known = facts.at(rewrite.start)
    for reg, wanted in rewrite.assumes.items():
        have = known.get(reg)
        if have is None or not have.implies(wanted):
            return Proof(UNKNOWN, f"the rewrite assumes r{reg} & {wanted.mask:#x} == {wanted.value:#x} at insn "
                                  f"{rewrite.start}, which the analysis does not show")
    sites = sites if sites is not None else ProgramSites(insns)
    try:
        site = sites.site(rewrite.start, rewrite.end)
    except BpforgeError as err:
        return Proof(UNKNOWN, err.message)
    original = tuple(site.window())
    key = (original, tuple(rewrite.new), frozenset(site.live_out.items()), frozenset(rewrite.assumes.items()))
    contexts = facts.may_context(rewrite.start)
    key = key + (contexts, frozenset((regions or {}).items()))
    if cache is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    proof = prove_equivalent(original, rewrite.new, site.live_out, rewrite.assumes, contexts=contexts,
                             landing=_landing(sites, rewrite), regions=regions, timeout_ms=timeout_ms)
    if cache is not None:
        cache.put(key, proof)
    return proof


def _landing(sites: ProgramSites, rewrite: Rewrite):
    """Where an exit of the window lands in the program: its slot, through any chain of unconditional jumps
    (which change nothing on the way)."""
    ops = sites.ops

    def landing(target: ExitTarget):
        if target.kind == "exit":
            return target
        slot = rewrite.start + target.offset if target.kind == "before" else rewrite.end + target.offset
        seen = set()
        while 0 <= slot < len(ops) and slot not in seen and not rewrite.start <= slot < rewrite.end:
            seen.add(slot)
            op = ops[slot]
            if not (isinstance(op, Jump) and op.cmp is None):
                break
            slot = op.target
        return slot

    return landing


def _unreachable(insns: Sequence[Insn], rewrite: Rewrite) -> Proof:
    """An unreachable rewrite holds when it removes only code no path from any entry reaches."""
    cfg = cfg_of_ops(decode_ops(insns))
    dead = {slot for b in cfg.unreachable for slot in range(cfg.blocks[b].start, cfg.blocks[b].end)}
    if rewrite.new or not all(slot in dead for slot in range(rewrite.start, rewrite.end)):
        return Proof(UNKNOWN, f"[{rewrite.start}, {rewrite.end}) is not all unreachable code")
    return Proof(PROVED, "no path reaches it")


__all__ = ["PROVED", "ProofCache", "prove_rewrite"]
