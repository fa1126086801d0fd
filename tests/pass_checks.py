"""What the rule-pass tests check of a proposal: its instructions as asm text, its SMT proof in its program,
and runs of the program before and after in the interpreter on random 64-byte buffers (`mem` programs:
r1 is the buffer). `seed` picks the buffers (each test file keeps its own)."""

from __future__ import annotations

import random

from bpforge import vm
from bpforge.isa.asm import assemble
from bpforge.isa.disasm import format_insn
from bpforge.opt.passes import ProgramView
from bpforge.opt.prove import prove_rewrite
from bpforge.opt.track import apply_rewrites


def proposals(module, text: str):
    insns = assemble(text)
    return insns, module.propose(ProgramView(insns))


def asm(rewrite) -> list[str]:
    return [format_insn(insn) for insn in rewrite.new]


def same_runs(before, after, trials: int = 20, *, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(trials):
        data = rng.randbytes(64)
        a = vm.run(vm.from_insns(before), data, "mem")
        b = vm.run(vm.from_insns(after), data, "mem")
        assert (a.retval, a.data_out) == (b.retval, b.data_out)


def check(insns, rewrite, *, seed: int) -> None:
    """`rewrite` of `insns` proved, and the program computing the same before and after it."""
    proof = prove_rewrite(insns, rewrite)
    assert proof.status == "proved", proof.reason
    same_runs(insns, apply_rewrites(insns, [rewrite]), seed=seed)


def only(module, text: str, start: int | None = None, *, seed: int):
    """The one proposal of `module` on `text` (at `start`, if given), proved, and equal in runs."""
    insns, found = proposals(module, text)
    if start is not None:
        found = [r for r in found if r.start == start]
    assert len(found) == 1, [(r.start, r.end, asm(r), r.why) for r in found]
    rewrite = found[0]
    check(insns, rewrite, seed=seed)
    return rewrite


def none_at(module, text: str, start: int) -> None:
    _, found = proposals(module, text)
    assert not [r for r in found if r.start == start], [(r.start, asm(r), r.why) for r in found if r.start == start]
