"""The corpus: generated programs and their mutants, each labelled with the running kernel's verdict.

`build_corpus(seed, count)` draws `count` cases deterministically from `seed`: shapes and mutators in turn
(every shape and every rule is represented as soon as `count` allows), each program from its own seed. The
kernel labels every case (BPF_PROG_LOAD with a log, maps created from the case's specs and closed again).
Verdicts are memoised in-process keyed by what decides them (the encoded instructions, program type, map
specs, load flags) and the kernel release, so a cache can never hand back another program's verdict.
"""

from __future__ import annotations

import hashlib
import os
import random
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache

from bpforge.isa import Insn, encode
from bpforge.isa.maptypes import MapSpec

from .mutants import MUTATORS, Mutant, mutate
from .programs import SHAPES, CorpusProgram, generate


@dataclass(frozen=True)
class Verdict:
    """What the kernel said: accepted, and for a rejection its complaint and the instruction index."""

    accepted: bool
    message: str = ""
    insn: int | None = None
    errno: int = 0


@dataclass
class Case:
    """One corpus entry: a valid program (`rule` None) or a mutant breaking `rule`."""

    name: str
    shape: str
    rule: str | None
    insns: list[Insn]
    prog_type: str
    maps: list[MapSpec] = field(default_factory=list)
    prog_flags: int = 0
    verdict: Verdict | None = None  # the kernel's, filled by build_corpus
    note: str = ""
    text: str = ""  # the assembly, for reading a failure

    @property
    def expected_accept(self) -> bool | None:
        return None if self.verdict is None else self.verdict.accepted


def case_of_program(program: CorpusProgram) -> Case:
    return Case(program.name, program.shape, None, program.insns, program.prog_type, list(program.maps),
                program.prog_flags, text=program.text())


def case_of_mutant(mutant: Mutant) -> Case:
    return Case(mutant.name, mutant.shape, mutant.rule, mutant.insns, mutant.prog_type, list(mutant.maps),
                mutant.prog_flags, note=mutant.note, text=mutant.text)


def _release() -> str:
    return os.uname().release


def _key(insns: list[Insn], prog_type: str, maps: list[MapSpec], prog_flags: int) -> str:
    h = hashlib.sha256()
    h.update(encode(insns))
    h.update(f"|{prog_type}|{prog_flags}|{_release()}|".encode())
    for spec in maps:
        h.update(f"{spec.type_name},{spec.key_size},{spec.value_size},{spec.max_entries},{spec.flags};".encode())
    return h.hexdigest()


def kernel_verdict(insns: list[Insn], prog_type: str, maps: list[MapSpec] = (), prog_flags: int = 0) -> Verdict:
    """BPF_PROG_LOAD of the instructions with the maps created from `maps` (closed again)."""
    return _cached_verdict(_key(insns, prog_type, list(maps), prog_flags), tuple(insns), prog_type, tuple(maps),
                           prog_flags)


@lru_cache(maxsize=4096)
def _cached_verdict(key: str, insns: tuple[Insn, ...], prog_type: str, maps: tuple[MapSpec, ...],
                    prog_flags: int) -> Verdict:
    from bpforge.kernel import verify_insns
    from bpforge.kernel.maps import KernelMap

    with ExitStack() as stack:
        kmaps = []
        for spec in maps:
            kmap = KernelMap.create(spec)
            stack.callback(kmap.close)
            kmaps.append(kmap)
        v = verify_insns(list(insns), prog_type, maps=kmaps, prog_flags=prog_flags)
    return Verdict(v.accepted, v.message, v.insn, v.errno)


def label(case: Case) -> Case:
    case.verdict = kernel_verdict(case.insns, case.prog_type, case.maps, case.prog_flags)
    return case


def program_cases(seed: int, per_shape: int) -> list[Case]:
    """`per_shape` valid programs of every shape (unlabelled)."""
    rng = random.Random(seed)
    return [case_of_program(generate(shape, rng.randrange(1 << 30))) for shape in SHAPES for _ in range(per_shape)]


def mutant_cases(seed: int, per_rule: int, *, tries: int | None = None) -> list[Case]:
    """`per_rule` mutants for every rule (unlabelled), each from a program of a shape the mutator fits."""
    rng = random.Random(seed)
    out = []
    for rule, mutator in MUTATORS.items():
        made = 0
        for _ in range(tries or 4 * per_rule + 16):  # some mutators fit only some programs of a shape
            if made == per_rule:
                break
            program = generate(rng.choice(mutator.shapes), rng.randrange(1 << 30))
            mutant = mutate(rule, program, random.Random(rng.randrange(1 << 30)))
            if mutant is not None:
                out.append(case_of_mutant(mutant))
                made += 1
    return out


def build_corpus(seed: int, count: int) -> list[Case]:
    """`count` cases, a third valid programs and the rest mutants, each labelled by the kernel;
    deterministic for `seed` (the same programs, mutants and, on the same kernel, verdicts)."""
    programs = max(1, count // 3)
    per_shape = -(-programs // len(SHAPES))
    per_rule = -(-(count - programs) // len(MUTATORS))
    rng = random.Random(seed)
    cases = program_cases(rng.randrange(1 << 30), per_shape)[:programs]
    cases += mutant_cases(rng.randrange(1 << 30), per_rule)
    cases = _interleave(cases)[:count]
    return [label(case) for case in cases]


def _interleave(cases: list[Case]) -> list[Case]:
    """Round-robin over (shape or rule) groups so a prefix of the corpus covers every group."""
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.rule or f"shape:{case.shape}", []).append(case)
    out, lists = [], list(groups.values())
    while any(lists):
        for items in lists:
            if items:
                out.append(items.pop(0))
    return out
