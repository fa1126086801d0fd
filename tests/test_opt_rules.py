"""The rule cache: proven rewrites generalised over registers, matched in other programs under another
register assignment, kept in JSON files."""

from __future__ import annotations

import json

import pytest

from bpforge.errors import BpforgeError
from bpforge.isa.asm import assemble
from bpforge.isa.disasm import format_insn
from bpforge.opt.rewrite import KnownBits
from bpforge.opt.rules import RuleBook, canonical, generalise
from bpforge.opt.track import apply_rewrites


def asm(text: str):
    return assemble(text, check_jumps=False)


def test_canonical_names_registers_by_first_use_and_keeps_r0_and_r10():
    window, mapping = canonical(asm("r7 = *(u64 *)(r0 + 8)\nr7 += r6\n*(u64 *)(r10 - 8) = r7"))
    assert [format_insn(i) for i in window] == ["r1 = *(u64 *)(r0 + 8)", "r1 += r2", "*(u64 *)(r10 - 8) = r1"]
    assert mapping == {7: 1, 6: 2}


def test_a_rule_learned_in_one_program_applies_under_other_registers():
    book = RuleBook()
    assert book.learn(asm("r2 = *(u64 *)(r0 + 0)\nr2 += r1\n*(u64 *)(r0 + 0) = r2"),
                      asm("lock *(u64 *)(r0 + 0) += r1"), "atomic add")
    program = asm("r0 = r1\nr4 = 9\nr3 = *(u64 *)(r0 + 0)\nr3 += r4\n*(u64 *)(r0 + 0) = r3\nr0 = 0\nexit")
    [rewrite] = book.propose(program)
    assert (rewrite.start, rewrite.end) == (2, 5)
    assert [format_insn(i) for i in rewrite.new] == ["lock *(u64 *)(r0 + 0) += r4"]
    assert rewrite.why == "rule: atomic add"
    assert [format_insn(i) for i in apply_rewrites(program, [rewrite])][2] == "lock *(u64 *)(r0 + 0) += r4"


def test_assumed_facts_follow_the_registers():
    rule = generalise(asm("r3 += r5"), asm("r3 += 7"), "constant", {5: KnownBits.constant(7)})
    assert rule is not None and rule.assumes == ((2, KnownBits.constant(7).mask, 7),)
    book = RuleBook()
    book.add(rule)
    [rewrite] = book.propose(asm("r8 += r1"))
    assert rewrite.assumes == {1: KnownBits.constant(7)}


def test_what_cannot_be_generalised_is_not_stored():
    assert generalise(asm("r1 = 0"), asm("r2 = 0"), "needs a register the window does not name") is None
    assert generalise(asm("call 1"), asm("call 1"), "calls") is None
    assert generalise([], [], "empty") is None


def test_rules_round_trip_through_json(tmp_path):
    book = RuleBook()
    book.learn(asm("r1 = 0\n*(u32 *)(r10 - 4) = r1"), asm("*(u32 *)(r10 - 4) = 0"), "store imm")
    book.learn(asm("r1 = 0\n*(u32 *)(r10 - 4) = r1"), asm("*(u32 *)(r10 - 4) = 0"), "again")  # no duplicate
    path = tmp_path / "rules.json"
    book.save(path)
    again = RuleBook.load(path)
    assert len(again) == len(book) == 1
    assert again.as_json() == book.as_json()


@pytest.mark.parametrize("content", ['{"format": "other"}', '{"format": "bpforge-rules/1", "rules": [{"x": 1}]}',
                                     '{"format": "bpforge-rules/1", "rules": [{"pattern": ["r1 = ="], '
                                     '"replacement": []}]}', "not json"])
def test_a_bad_rule_file_is_one_error(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BpforgeError) as err:
        RuleBook.load(path)
    assert str(path) in str(err.value)


def test_the_shipped_rules_load():
    book = RuleBook.shipped()
    for rules in book.rules.values():
        for rule in rules:
            json.dumps(rule.as_json())
