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

K2 = Path("/work/shared/bench/k2")
NAMES = sorted(p.stem for p in K2.glob("*.insns")) if K2.is_dir() else []
# Passes listed by the pipeline, and those of this change not (yet) in its list.
ALL_PASSES = tuple(PASSES) + tuple((name, propose) for name, propose in (
    ("nops", nops.propose), ("loads", loads.propose), ("peephole", peephole.propose)) if name not in dict(PASSES))
CHECKED_ONLY = (("alu32", alu32.propose),)  # proposals proved, never applied (they save no slot)
MAX_ROUNDS = 30
# The program types K2's README gives (which context fields are packet pointers).
TYPES = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in
         ((K2 / "README.md").read_text().splitlines() if K2.is_dir() else []) if line.count("|") == 7}
CACHE = ProofCache()


def fixpoint(insns, maps=(), prog_type=None):
    """Rounds of: every proposal proved (a failure is returned), the proved non-overlapping ones that do
    not grow the program applied together, with what the pipeline knows (maps, program type, the kinds of
    memory registers point into). (final instructions, unproved proposals, rounds)."""
    unproved = []
    for rounds in range(MAX_ROUNDS):
        view = ProgramView(insns, maps, prog_type)
        sites, facts = view.sites, known_bits(insns)
        chosen = []
        for name, propose in ALL_PASSES + CHECKED_ONLY:
            for rewrite in propose(view):
                proof = prove_rewrite(insns, rewrite, sites=sites, facts=facts, regions=view.regions_at(rewrite.start),
                                      cache=CACHE)
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
    loaded = load_program(K2 / f"{name}.insns")
    insns = list(loaded.insns)
    after, unproved, rounds = fixpoint(insns, {spec.ref: spec for spec in loaded.maps}, TYPES.get(name))
    assert not unproved, unproved
    assert rounds < MAX_ROUNDS
    assert slot_count(after) < slot_count(insns)
