"""The verifier corpus against the running kernel: every generated shape is accepted, every mutant draws
the complaint its rule's table entry expects (or is accepted where the table documents that the kernel
accepts it), and the corpus is deterministic for a seed. `-s` prints the per-rule summary.
CORPUS_SEED=n replays another corpus; the slow test builds a much larger one."""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict

import pytest
from test_kernel_packets import no_leaked_fds  # noqa: F401  (an autouse fixture)
from verifier_corpus.corpus import Case, build_corpus, kernel_verdict
from verifier_corpus.mutants import KERNEL_ACCEPTS, MUTATORS, RULES, mutate
from verifier_corpus.programs import SHAPES, generate

SEED = int(os.environ.get("CORPUS_SEED", "8"))
CI_COUNT = 1200  # 400 programs and 800 mutants (about 20 per rule): a few seconds


def check(case: Case) -> str | None:
    """Why the kernel's verdict on `case` is not what the corpus expects, or None."""
    v = case.verdict
    if case.rule is None:
        return None if v.accepted else f"valid program rejected: {v.message} (insn {v.insn})"
    rule = RULES[case.rule]
    if rule.accepts:
        return None if v.accepted else f"documented as accepted, but rejected: {v.message}"
    if v.accepted:
        return "mutant accepted by the kernel"
    if not rule.matches(v.message):
        return f"complaint {v.message!r} does not match {rule.pattern!r}"
    return None


def failures(cases: list[Case]) -> list[str]:
    out = []
    for case in cases:
        why = check(case)
        if why:
            out.append(f"{case.name} ({case.prog_type}, {case.note or 'valid'}): {why}\n{case.text}")
    return out


@pytest.fixture(scope="module")
def corpus(kernel):
    return build_corpus(SEED, CI_COUNT)


def test_every_shape_is_generated_and_accepted(corpus):
    shapes = Counter(c.shape for c in corpus if c.rule is None)
    assert set(shapes) == set(SHAPES)
    assert not failures([c for c in corpus if c.rule is None])


def test_every_rule_draws_its_complaint_or_is_a_documented_accept(corpus):
    rules = Counter(c.rule for c in corpus if c.rule is not None)
    assert set(rules) == set(MUTATORS) == set(RULES)
    assert all(count >= 3 for count in rules.values()), rules
    assert not failures([c for c in corpus if c.rule is not None])


def test_rejections_name_an_instruction(corpus):
    # the complaint is about an instruction the kernel traced (the corpus records where), except for the
    # whole-program checks made before the walk (jump targets, the last instruction, lddw halves, call depth)
    before_walk = {"jump_out_of_range", "jump_into_lddw", "missing_exit", "too_deep_calls", "too_big_stack",
                   "unbounded_loop"}
    for case in corpus:
        if case.verdict.accepted or case.rule in before_walk:
            continue
        assert case.verdict.insn is not None and 0 <= case.verdict.insn < len(case.insns), case.name


def test_summary_per_rule(corpus):
    """One line per rule: how many cases, the kernel's verdicts, the complaint it gave (numbers folded)."""
    groups: dict[str, list[Case]] = defaultdict(list)
    for case in corpus:
        groups[case.rule or f"(valid) {case.shape}"].append(case)
    lines = [f"verifier corpus: seed {SEED}, {len(corpus)} cases, kernel {os.uname().release}"]
    for name in sorted(groups):
        cases = groups[name]
        verdicts = Counter("accept" if c.verdict.accepted else "reject" for c in cases)
        messages = Counter(re.sub(r"\d+", "N", c.verdict.message)[:90] for c in cases if not c.verdict.accepted)
        seen = "; ".join(f"{m} x{n}" for m, n in messages.most_common(2)) or "-"
        lines.append(f"  {name:28s} {len(cases):4d}  {dict(verdicts)}  {seen}")
    print("\n".join(lines))
    assert len(groups) == len(SHAPES) + len(MUTATORS)


def test_the_corpus_is_deterministic_for_a_seed(kernel):
    a, b = build_corpus(SEED + 1, 60), build_corpus(SEED + 1, 60)
    assert [(c.name, c.insns, c.prog_flags, c.verdict) for c in a] == [(c.name, c.insns, c.prog_flags, c.verdict)
                                                                        for c in b]
    other = build_corpus(SEED + 2, 60)
    assert [c.insns for c in other] != [c.insns for c in a]


def test_a_mutant_differs_from_its_program_and_keeps_its_type(kernel):
    rng = random.Random(SEED)
    for rule, mutator in MUTATORS.items():
        for _ in range(40):
            program = generate(rng.choice(mutator.shapes), rng.randrange(1 << 30))
            mutant = mutate(rule, program, random.Random(rng.randrange(1 << 30)))
            if mutant is not None:
                break
        assert mutant is not None, rule
        assert mutant.insns != program.insns or mutant.prog_flags != program.prog_flags, rule
        assert mutant.prog_type == program.prog_type and mutant.parent == program.name


def test_the_accepted_list_is_what_the_table_says():
    assert KERNEL_ACCEPTS == {"uninit_stack_read", "uninit_stack_helper_arg", "div_by_zero_reg", "ptr_leak_map",
                              "ptr_return_main", "misaligned_packet_lax", "map_ptr_add_known_zero",
                              "null_check_elided_array"}
    assert all(RULES[r].why for r in KERNEL_ACCEPTS)
    assert all(RULES[r].pattern for r in set(RULES) - KERNEL_ACCEPTS)


def test_verdicts_are_keyed_by_what_decides_them(kernel):
    program = generate("packet", 3)
    strict = kernel_verdict(program.insns, program.prog_type, program.maps, 1)
    lax = kernel_verdict(program.insns, program.prog_type, program.maps, 0)
    assert lax.accepted and strict.accepted  # generated packet reads are aligned even for strict mode
    other = generate("packet", 4)
    assert kernel_verdict(other.insns, other.prog_type, other.maps).accepted


@pytest.mark.slow
def test_a_large_corpus(kernel):
    cases = build_corpus(SEED * 1000 + 17, 20000)
    problems = failures(cases)
    assert not problems, f"{len(problems)} of {len(cases)} cases disagree; first:\n" + "\n\n".join(problems[:3])
