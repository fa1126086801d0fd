"""The shipped rule cache rebuilt (`bpforge rules rebuild`): the examples and, where present, K2's
benchmark programs optimized with the search on, every rewrite the search proved kept, generalised
(`rules.RuleBook.learn`)."""

from __future__ import annotations

import re
from pathlib import Path

from ..elf import read_object
from ..formats import load_program
from ..isa.progtypes import prog_type_of_section
from .gate import Subject
from .optimize import OptimizeOptions, optimize_subject
from .rules import RuleBook

ROOT = Path(__file__).resolve().parents[3]  # the repository (the examples live there, not in the package)
SHIPPED = ROOT / "src" / "bpforge" / "opt" / "data" / "rules.json"
K2 = ROOT.parent / "shared" / "bench" / "k2"


def programs(k2: Path | None):
    for path in sorted((ROOT / "examples" / "obj").glob("*.o")):
        for program in read_object(path).programs:
            if prog_type_of_section(program.section) is not None:
                yield f"{path.name}:{program.name}", load_program(path, section=program.name)
    if k2 is not None and (k2 / "README.md").is_file():
        for line in (k2 / "README.md").read_text().splitlines():
            m = re.match(r"\| (\S+) \| [^|]+ \| (\w+) \| (\d+) \| (\d+) \|", line)
            if m and int(m[3]) < 1000:
                yield m[1], load_program(k2 / f"{m[1]}.insns", prog_type=m[2])


def learn(budget: float, k2: Path | None, book: RuleBook, report=lambda text: None) -> RuleBook:
    for label, loaded in programs(k2):
        with Subject.of(loaded, kernel=False) as subject:
            before = len(book)
            optimize_subject(subject, OptimizeOptions(budget=budget, kernel=False, jobs=1), rules=book)
            report(f"{label}: {len(book) - before} new rule(s)")
    return book


__all__ = ["K2", "SHIPPED", "learn", "programs"]
