"""The rule passes on K2's 19 benchmark programs (clang -O2 output): every proposal of every pass, in
every round up to the fixpoint, is proved equivalent by the SMT gate, and the fixpoint is smaller than the
input. Skips when /work/shared/bench/k2 is absent (it is never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpforge.formats import load_program
from bpforge.isa import slot_count
from bpforge.isa.disasm import format_insn
from bpforge.opt.facts import known_bits
from bpforge.opt.passes import PASSES, ProgramView, alu32, loads, nops, peephole
from bpforge.opt.prove import ProofCache, prove_rewrite
from bpforge.opt.track import apply_rewrites
from bpforge.verifier.window import ProgramSites

K2 = Path("/work/shared/bench/k2")
NAMES = sorted(p.stem for p in K2.glob("*.insns")) if K2.is_dir() else []
# Passes listed by the pipeline, and those of this change not (yet) in its list.
ALL_PASSES = tuple(PASSES) + tuple((name, propose) for name, propose in (
    ("nops", nops.propose), ("loads", loads.propose), ("peephole", peephole.propose)) if name not in dict(PASSES))
CHECKED_ONLY = (("alu32", alu32.propose),)  # proposals proved, never applied (they save no slot)
MAX_ROUNDS = 30
CACHE = ProofCache()


def fixpoint(insns):
    """Rounds of: every proposal proved (a failure is returned), the proved non-overlapping ones that do
    not grow the program applied together. (final instructions, unproved proposals, rounds)."""
    unproved = []
    for rounds in range(MAX_ROUNDS):
        view = ProgramView(insns)
        sites, facts = ProgramSites(insns), known_bits(insns)
        chosen = []
        for name, propose in ALL_PASSES + CHECKED_ONLY:
            for rewrite in propose(view):
                proof = prove_rewrite(insns, rewrite, sites=sites, facts=facts, cache=CACHE)
                if proof.status != "proved":
                    unproved.append((name, rewrite.start, rewrite.end, [format_insn(i) for i in rewrite.new],
                                     proof.status, proof.reason[:200]))
                elif name != "alu32" and rewrite.saved >= 0 and not any(rewrite.overlaps(o) for o in chosen):
                    chosen.append(rewrite)
        if not any(r.saved > 0 for r in chosen):
            return insns, unproved, rounds
        insns = apply_rewrites(insns, chosen)
    return insns, unproved, MAX_ROUNDS


@pytest.mark.skipif(not NAMES, reason=f"K2's benchmark programs are not in {K2}")
@pytest.mark.parametrize("name", NAMES)
def test_every_proposal_on_k2_programs_is_proved(name):
    insns = list(load_program(K2 / f"{name}.insns").insns)
    after, unproved, rounds = fixpoint(insns)
    assert not unproved, unproved
    assert rounds < MAX_ROUNDS
    assert slot_count(after) < slot_count(insns)
