"""Text -> instructions. Accepts llvm-mc BPF syntax, `llvm-objdump -d -r` output and verifier-log lines.

Parsing is driven by the form table: every template of every form (llvm spelling and aliases) becomes a
pattern, filed under a dispatch key so a line is only tried against the few templates that could spell it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import AsmError, DecodeError
from .forms import FORMS, FORMS_BY_NAME, Form
from .codec import check_targets, slot_starts
from .insn import Insn
from .syntax import OperandError, Symbol, Template, dispatch_key

# re.ASCII throughout: only ASCII digits are numbers and only ASCII letters make names (see isa/numbers.py).
_LABEL = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*:(?!=)", re.ASCII)
_OBJDUMP_SYMBOL = re.compile(r"\s*[0-9a-fA-F]+\s+<([^>]+)>\s*:\s*$", re.ASCII)
_OBJDUMP_SECTION = re.compile(r"\s*Disassembly of section\s+(\S+?)\s*:\s*$", re.ASCII)
_OBJDUMP_FILE = re.compile(r"\s*\S+:\s+file format\s+\S+\s*$", re.ASCII)
_RELOCATION = re.compile(r"\s*[0-9a-fA-F]+:\s+(R_BPF_\w+)\s+(\S+)\s*$", re.ASCII)
# "  12:\t" slot prefix, then either llvm's 8 or 16 raw bytes or the verifier log's "(b7) ".
_SLOT_PREFIX = re.compile(r"\s*[0-9]+:\s*(?:(?:[0-9a-f]{2} ){7}[0-9a-f]{2}(?: (?:[0-9a-f]{2} ){7}[0-9a-f]{2})?\s+|"
                          r"\([0-9a-f]{2}\)\s*)?", re.ASCII)
_ANNOTATION = re.compile(r"\s*<[^<>]*>\s*$", re.ASCII)  # llvm-objdump's "<prog+0x50>" after jump targets
_COMMENT = re.compile(r"//|;|(?:^|(?<=\s))#", re.ASCII)


@dataclass
class Relocation:
    """A symbol reference the object file must resolve: `insn` is the instruction index in its section."""

    insn: int
    symbol: str
    type: str = ""  # R_BPF_* as written in objdump text; empty when the assembler chose it
    addend: int = 0


@dataclass
class AsmSection:
    name: str
    insns: list[Insn] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # label -> instruction index
    functions: dict[str, int] = field(default_factory=dict)  # labels that are function entries
    relocations: list[Relocation] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # source line of each instruction
    line: int | None = None  # where the section is first named (its .section directive or first statement)


@dataclass
class AsmProgram:
    sections: list[AsmSection]
    globals: set[str] = field(default_factory=set)


@dataclass
class _Pending:
    """An instruction whose fields may still hold symbols, with where it was written."""

    form: Form
    values: dict[str, int | Symbol]
    line: int
    col: int


@lru_cache(maxsize=None)
def _templates_by_key() -> dict[str, tuple[tuple[Template, Form], ...]]:
    table: dict[str, list[tuple[Template, Form]]] = {}
    for form in FORMS:
        for tpl in form.templates:
            table.setdefault(dispatch_key(tpl.sample), []).append((tpl, form))
    return {k: tuple(v) for k, v in table.items()}


def parse_statement(text: str) -> tuple[Form, dict[str, int | Symbol]]:
    """Parse one instruction statement. Raises OperandError (with .col) or ValueError."""
    candidates = _templates_by_key().get(dispatch_key(text), ())
    first_error: OperandError | None = None
    for tpl, form in candidates:
        try:
            values = tpl.match(text)
        except OperandError as err:
            first_error = first_error or err
            continue
        if values is not None:
            return form, values
    if first_error is not None:
        raise first_error
    shown = text.strip() if len(text.strip()) <= 60 else text.strip()[:57] + "..."
    raise ValueError(f"unknown instruction '{shown}'")


def _strip_comment(line: str) -> str:
    m = _COMMENT.search(line)
    return line[:m.start()] if m else line


def parse(text: str, *, filename: str | None = None, check_jumps: bool = True) -> AsmProgram:
    """Parse assembly into sections of instructions with labels and relocations; symbols still unresolved
    are kept as relocations (lddw of a symbol, calls to functions defined elsewhere).

    Jumps must land inside their section unless `check_jumps` is off (fragments of a larger program)."""
    sections: dict[str, AsmSection] = {}
    pending: dict[str, list[_Pending]] = {}
    global_names: set[str] = set()
    function_names: set[str] = set()
    current: AsmSection | None = None

    lineno = 0

    def section(name: str) -> AsmSection:
        if name not in sections:
            sections[name] = AsmSection(name, line=lineno)
            pending[name] = []
        return sections[name]

    def fail(message: str, line: int, col: int | None = None) -> AsmError:
        return AsmError(message, file=filename, line=line, col=col)

    for lineno, raw_line in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw_line.expandtabs(8)).rstrip()
        if not line.strip() or _OBJDUMP_FILE.match(line):
            continue
        if m := _OBJDUMP_SECTION.match(line):
            current = section(m.group(1))
            continue
        if m := _RELOCATION.match(line):
            if current is None or not current.insns and not pending[current.name]:
                raise fail("relocation line before any instruction", lineno, 1)
            index = len(pending[current.name]) - 1
            current.relocations.append(Relocation(index, m.group(2), m.group(1)))
            item = pending[current.name][index]
            if item.form.name == "call":  # llvm prints a relocated bpf-to-bpf call like a helper call
                item.form = FORMS_BY_NAME["call_local"]
            continue
        if m := _OBJDUMP_SYMBOL.match(line):
            current = current or section(".text")
            current.labels[m.group(1)] = len(pending[current.name])
            current.functions[m.group(1)] = len(pending[current.name])
            continue
        stripped = line.strip()
        if stripped.startswith(".") and not _LABEL.match(line):  # `.Lfoo:` is a label (llvm's local ones)
            current = _directive(stripped, section, global_names, function_names) or current
            continue
        if m := _SLOT_PREFIX.match(line):
            line = line[m.end():]
        line = _ANNOTATION.sub("", line)
        while m := _LABEL.match(line):
            current = current or section(".text")
            name = m.group(1)
            if name in current.labels:
                raise fail(f"label '{name}' defined twice", lineno, raw_line.find(name) + 1)
            current.labels[name] = len(pending[current.name])
            line = line[m.end():]
        if not line.strip():
            continue
        current = current or section(".text")
        lead = len(line) - len(line.lstrip())
        start = raw_line.expandtabs(8).find(line.strip())  # column of the statement in the source line
        col = start + 1
        try:
            form, values = parse_statement(line)
        except OperandError as err:
            raise fail(str(err), lineno, start + err.pos - lead + 1 if err.pos is not None else col) from None
        except ValueError as err:
            raise fail(str(err), lineno, col) from None
        pending[current.name].append(_Pending(form, values, lineno, col))

    for name, sec in sections.items():
        _resolve(sec, pending[name], fail)
        if not check_jumps:
            continue
        try:  # a numeric offset may still point outside the section; say which line wrote it
            check_targets(sec.insns, external=[r.insn for r in sec.relocations])
        except DecodeError as err:
            index = slot_starts(sec.insns).index(err.where.insn)
            raise fail(err.message, sec.lines[index], pending[name][index].col) from None
    # Function entries: `.globl`/`.type x,@function` names, targets of calls from anywhere, else a section's
    # first label (llvm-objdump's `<name>:` headers were recorded as functions while parsing).
    called = {r.symbol for sec in sections.values() for r in sec.relocations if r.type == "R_BPF_64_32"}
    entries = global_names | function_names | called  # once: thousands of sections must not make this quadratic
    for sec in sections.values():
        for label in sec.labels.keys() & entries:
            sec.functions.setdefault(label, sec.labels[label])
        if sec.insns and 0 not in sec.functions.values():
            first = [label for label, index in sec.labels.items() if index == 0]
            if first:
                sec.functions[first[0]] = 0
    return AsmProgram([s for s in sections.values() if s.insns], global_names)


def _directive(stmt: str, section, global_names: set[str], function_names: set[str]) -> AsmSection | None:
    """Handle the directives that matter to BPF code: sections, global and function symbols. Data and
    debug directives (.byte, .long, .loc, .p2align, .size ...) carry nothing an instruction needs."""
    word, _, rest = stmt.partition(" ")
    rest = rest.strip()
    if word == ".text":
        return section(".text")
    if word == ".section":
        return section(rest.split(",")[0].strip().strip('"'))
    if word in (".globl", ".global"):
        global_names.update(n.strip() for n in rest.split(","))
    if word == ".type" and rest.replace(" ", "").endswith(("@function", "%function", "STT_FUNC")):
        function_names.add(rest.split(",")[0].strip())
    return None


def _resolve(sec: AsmSection, items: list[_Pending], fail) -> None:
    """Turn label operands into slot offsets; symbols that are not labels here become relocations."""
    slots, slot = [], 0
    for item in items:
        slots.append(slot)
        slot += item.form.slots
    label_slot = {name: slots[idx] if idx < len(slots) else slot for name, idx in sec.labels.items()}
    for index, item in enumerate(items):
        values, form = dict(item.values), item.form
        for name, value in list(values.items()):
            if not isinstance(value, Symbol):
                continue
            here = slots[index] + 1
            if name in ("off", "imm") and form.target_field == name:  # jump / local call to a label
                if value.name not in label_slot:
                    raise fail(f"undefined label '{value.name}'", item.line, item.col)
                delta = label_slot[value.name] - here
                if name == "off" and not -(1 << 15) <= delta < (1 << 15):
                    raise fail(f"label '{value.name}' is {delta} slots away, beyond goto's 16-bit offset; "
                               "use gotol", item.line, item.col)
                values[name] = delta
            elif form.kind == "call":  # `call name` that is not a helper: a bpf-to-bpf call
                form = FORMS_BY_NAME["call_local"]
                if value.name in label_slot:
                    values["imm"] = label_slot[value.name] - here
                    sec.functions.setdefault(value.name, sec.labels[value.name])
                else:
                    values["imm"] = -1  # what clang emits for a call resolved by relocation
                    sec.relocations.append(Relocation(index, value.name, "R_BPF_64_32"))
            elif name == "imm64":  # 64-bit load of a symbol: a map, global data or a function
                if value.name in sec.labels and value.addend == 0:
                    form = FORMS_BY_NAME["lddw_func"]
                    values = {"dst": values["dst"], "imm": label_slot[value.name] - here}
                    sec.functions.setdefault(value.name, sec.labels[value.name])
                else:
                    values["imm64"] = value.addend
                    sec.relocations.append(Relocation(index, value.name, "R_BPF_64_64", value.addend))
        try:
            sec.insns.append(Insn.make(form, **values))
        except DecodeError as err:  # a combination the table refuses
            raise fail(err.message, item.line, item.col) from None
        sec.lines.append(item.line)


def assemble(text: str, *, filename: str | None = None, check_jumps: bool = True) -> list[Insn]:
    """Assemble text holding one program (one section, no unresolved symbols) into instructions."""
    program = parse(text, filename=filename, check_jumps=check_jumps)
    if not program.sections:
        return []
    if len(program.sections) > 1:
        names = ", ".join(s.name for s in program.sections)
        raise AsmError(f"raw bytecode holds one program but the text has sections {names}; write an .o",
                       file=filename)
    sec = program.sections[0]
    if sec.relocations:
        rel = sec.relocations[0]
        raise AsmError(f"symbol '{rel.symbol}' needs a relocation, which raw bytecode cannot carry; write an .o",
                       file=filename, line=sec.lines[rel.insn])
    return sec.insns


__all__ = ["AsmProgram", "AsmSection", "Relocation", "assemble", "parse", "parse_statement"]
