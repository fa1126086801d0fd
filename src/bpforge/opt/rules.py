"""The rule cache (EPSO's idea): every proven window rewrite, generalised over its registers, stored and
tried first on later programs.

A rule is a window pattern and its replacement in canonical form: registers r1-r9 renamed in order of
first appearance (r0, whose value BPF_EXIT returns, and r10, the frame pointer, stay themselves);
immediates, offsets and jump offsets stay literal. A window of another program that canonicalises to a
stored pattern gets the replacement with the registers mapped back, as a `Rewrite` like any other: the
gate proves it again at the place it lands (the proof cache makes a repeat cheap), so a rule can only
ever save time, never make a program wrong. The facts a rule assumed travel with it, in canonical
registers, and are asked of the new place's analysis.

Rules live in JSON files: the ones shipped with bpforge (`data/rules.json`, learned on the examples and
K2's benchmark programs; `bpforge rules rebuild` writes it again) and any the caller adds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import BpforgeError
from ..isa import Insn, slot_count
from ..isa.asm import assemble
from ..isa.disasm import format_insn
from ..isa.ops import Call, Jump, decode_ops
from ..verifier.window import ExitTarget, exit_of
from .rewrite import KnownBits, Rewrite
from .smt.equiv import DEFAULT_TIMEOUT_MS, Proof, prove_equivalent

FIXED = (0, 10)
MAX_PATTERN = 8  # instructions
FORMAT = "bpforge-rules/1"  # of a rule file
RULE_WHY = "rule: "  # how the `why` of a rewrite a rule proposed begins
_REGISTER_FIELDS = ("dst", "src")


@dataclass(frozen=True)
class Rule:
    pattern: tuple[str, ...]  # canonical instructions, as asm text
    replacement: tuple[str, ...]
    why: str
    assumes: tuple[tuple[int, int, int], ...] = ()  # (canonical register, mask, value)

    def as_json(self) -> dict:
        return {"pattern": list(self.pattern), "replacement": list(self.replacement), "why": self.why,
                "assumes": [list(a) for a in self.assumes]}


def made_by_rule(why: str) -> bool:
    """Whether a change (its `why`) came from a rule of the book, rather than from a pass or the search."""
    return why.startswith(RULE_WHY)


def _registers(insn: Insn) -> list[str]:
    operands = insn.form.operands
    return [name for name in _REGISTER_FIELDS if name in operands]


def canonical(window: Sequence[Insn], mapping: dict[int, int] | None = None) -> tuple[tuple[Insn, ...], dict[int, int]]:
    """`window` with r1-r9 renamed in order of first appearance (extending `mapping`, real -> canonical)."""
    mapping = dict(mapping or {})
    return _rename(window, mapping, extend=True), mapping


def _renamed(window: Sequence[Insn], mapping: dict[int, int]) -> tuple[Insn, ...] | None:
    """`window` with registers renamed by `mapping` (None when it names a register the mapping lacks)."""
    return _rename(window, mapping, extend=False)


def _rename(window: Sequence[Insn], mapping: dict[int, int], *, extend: bool) -> tuple[Insn, ...] | None:
    """`window` with r1-r9 renamed by `mapping`; a register it lacks gets the next canonical number when
    `extend` (the mapping grows), else the window cannot be renamed (None)."""
    out = []
    for insn in window:
        changes = {}
        for name in _registers(insn):
            reg = getattr(insn, name)
            if reg in FIXED:
                continue
            if reg not in mapping:
                if not extend:
                    return None
                mapping[reg] = len([r for r in mapping.values() if r not in FIXED]) + 1
            changes[name] = mapping[reg]
        out.append(insn.replace(**changes) if changes else insn)
    return tuple(out)


def _text(insns: Iterable[Insn]) -> tuple[str, ...]:
    return tuple(format_insn(i) for i in insns)


def _insns(text: Sequence[str]) -> list[Insn]:
    return assemble("\n".join(text), check_jumps=False) if text else []


def generalise(before: Sequence[Insn], after: Sequence[Insn], why: str,
               assumes: dict[int, KnownBits] | None = None) -> Rule | None:
    """The rule a proven rewrite of `before` into `after` stands for; None when `after` uses a register
    `before` does not (the rule would need a free register at every place it lands) or it is too long."""
    if not before or len(before) > MAX_PATTERN or any(isinstance(op, Call) for op in decode_ops(before) if op):
        return None
    pattern, mapping = canonical(before)
    replacement = _renamed(after, mapping)
    if replacement is None:
        return None
    facts = []
    for reg, known in sorted((assumes or {}).items()):
        if reg not in mapping and reg not in FIXED:
            return None
        facts.append((mapping.get(reg, reg), known.mask, known.value))
    return Rule(_text(pattern), _text(replacement), why, tuple(facts))


def prove_rule(rule: Rule, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Proof:
    """The rule proved out of any program, at the best place it could land: every register and stack slot
    dead where it leaves to the rest of the program. A rule does not record what was live where it was
    learned, and a rule that needs a scratch register dead (most of the search's do) is right wherever it
    is dead, which the gate proves at each landing; so this checks what holds at every landing (the same
    exit taken under the same conditions, the same memory outside the stack, the same r0 at the program's
    exit), and a refutation means the rule is right nowhere."""
    before, after = _insns(rule.pattern), _insns(rule.replacement)
    length = slot_count(before)
    exits = {ExitTarget("after", 0)}
    exits.update(exit_of(op.target, length) for op in decode_ops(before)
                 if isinstance(op, Jump) and not 0 <= op.target < length)
    assumes = {reg: KnownBits(mask, value) for reg, mask, value in rule.assumes}
    return prove_equivalent(before, after, dict.fromkeys(exits, 0), assumes, timeout_ms=timeout_ms)


@dataclass
class RuleBook:
    """Rules by canonical pattern; `learn` adds, `propose` matches a program's windows."""

    rules: dict[tuple[str, ...], list[Rule]] = field(default_factory=dict)
    hits: int = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.rules.values())

    def add(self, rule: Rule) -> bool:
        known = self.rules.setdefault(rule.pattern, [])
        if rule in known or any(r.replacement == rule.replacement for r in known):
            return False
        known.append(rule)
        return True

    def learn(self, before: Sequence[Insn], after: Sequence[Insn], why: str,
              assumes: dict[int, KnownBits] | None = None) -> bool:
        rule = generalise(before, after, why, assumes)
        return rule is not None and self.add(rule)

    @property
    def lengths(self) -> list[int]:
        return sorted({len(p) for p in self.rules})

    def propose(self, insns: Sequence[Insn]) -> list[Rewrite]:
        """Rewrites of `insns` from matching rules, at most one per start, longest pattern first."""
        slots, s = [], 0
        for insn in insns:
            slots.append(s)
            s += insn.slots
        out: list[Rewrite] = []
        lengths = sorted(self.lengths, reverse=True)
        for i in range(len(insns)):
            for length in lengths:
                window = insns[i:i + length]
                if len(window) < length:
                    continue
                pattern, mapping = canonical(window)
                rules = self.rules.get(_text(pattern))
                if not rules:
                    continue
                back = {canon: real for real, canon in mapping.items()}
                rule = rules[0]
                new = _renamed(_insns(rule.replacement), back)
                if new is None:
                    continue
                assumes = {back.get(reg, reg): KnownBits(mask, value) for reg, mask, value in rule.assumes}
                end = slots[i + length] if i + length < len(slots) else s
                out.append(Rewrite(slots[i], end, new, f"{RULE_WHY}{rule.why}", assumes))
                break
        return out

    # ---- files ----------------------------------------------------------------------------------------

    def all(self) -> list[Rule]:
        """Every rule, in the order their patterns were first added."""
        return [rule for rules in self.rules.values() for rule in rules]

    def as_json(self) -> dict:
        return {"format": FORMAT, "rules": [rule.as_json() for rule in self.all()]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_json(), indent=1) + "\n")

    @staticmethod
    def from_json(data: dict, *, source: str = "rules") -> "RuleBook":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BpforgeError(f"{source}: not a bpforge rule file (format {FORMAT})")
        book = RuleBook()
        for n, item in enumerate(data.get("rules", [])):
            try:
                rule = Rule(tuple(item["pattern"]), tuple(item["replacement"]), str(item.get("why", "")),
                            tuple(tuple(int(x) for x in a) for a in item.get("assumes", ())))
                _insns(rule.pattern), _insns(rule.replacement)  # they must assemble
            except (KeyError, TypeError, ValueError, BpforgeError) as err:
                raise BpforgeError(f"{source}: rule {n} is malformed ({err})") from None
            book.add(rule)
        return book

    @staticmethod
    def load(path: str | Path) -> "RuleBook":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise BpforgeError(f"{path}: cannot read rules ({err})") from None
        return RuleBook.from_json(data, source=str(path))

    @staticmethod
    def shipped() -> "RuleBook":
        """The rules bpforge ships (empty when the package has none)."""
        try:
            text = resources.files("bpforge.opt").joinpath("data/rules.json").read_text()
        except (FileNotFoundError, OSError):
            return RuleBook()
        return RuleBook.from_json(json.loads(text), source="bpforge/opt/data/rules.json")


__all__ = ["RULE_WHY", "Rule", "RuleBook", "canonical", "generalise", "made_by_rule", "prove_rule"]
