"""What `disasm` and `info` show of a program file: the llvm-objdump-style listing, one JSON row per
instruction, and the summary of programs, sections, maps, relocations and data. Pure functions of what the
loader read; the API returns them and the CLI prints them as they are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .formats import LoadedProgram
from .isa import encode, format_insn, listing, slot_count, slot_starts
from .isa.progtypes import prog_type_of_section


def _text(lines: Iterable[str]) -> str:
    return "".join(line + "\n" for line in lines)


# ---- disasm ------------------------------------------------------------------------------------------------

def disasm_text(loaded: LoadedProgram, sections: Sequence, show_bytes: bool = False) -> str:
    """The listing of `sections` (of `loaded`) in the layout of `llvm-objdump -d -r`, valid `bpforge asm` input."""
    return _text(_listing(loaded, sections, show_bytes))


def _listing(loaded: LoadedProgram, sections: Sequence, show_bytes: bool) -> Iterable[str]:
    if loaded.kind == "elf":
        yield from ("", f"{loaded.filename}:\tfile format elf64-bpf", "")
    for sec in sections:
        if sec.name is not None:  # raw, word-list and K2 programs have no sections to name
            yield from (f"Disassembly of section {sec.name}:", "")
        relocations: dict[int, list[tuple[str, str]]] = {}
        for rel in sec.relocations:
            relocations.setdefault(rel.insn, []).append((rel.type or "R_BPF_64_64", rel.symbol))
        yield from listing(sec.insns, symbols=sec.functions, relocations=relocations, show_bytes=show_bytes)
        yield ""


def disasm_rows(sections: Sequence) -> list[dict[str, Any]]:
    """One JSON object per instruction of `sections`, as `disasm --json` prints them (positions are slots)."""
    return [row for sec in sections for row in _insn_rows(sec)]


def _insn_rows(sec) -> Iterable[dict[str, Any]]:
    relocations: dict[int, list[dict[str, str]]] = {}
    for rel in sec.relocations:
        relocations.setdefault(rel.insn, []).append({"type": rel.type, "symbol": rel.symbol})
    function = None
    for index, (insn, slot) in enumerate(zip(sec.insns, slot_starts(sec.insns))):
        function = sec.functions.get(index, function)
        yield {
            "section": sec.name, "function": function, "index": slot, "opcode": insn.opcode,
            "name": insn.form.name, "dst": insn.dst, "src": insn.src, "off": insn.off, "imm": insn.imm,
            "imm64": insn.imm64 if insn.slots == 2 else None, "slots": insn.slots, "text": format_insn(insn),
            "bytes": encode([insn]).hex(), "relocations": relocations.get(index, []),
        }


# ---- info --------------------------------------------------------------------------------------------------

_FORMAT_NAMES = {"elf": "ELF object", "asm": "assembly", "k2": "K2 benchmark", "words": "word list",
                 "raw": "raw bytecode"}


@dataclass(frozen=True)
class Info:
    """Everything `info` reports about a program file. Fields hold JSON values; positions are slots."""

    file: str
    format: str  # "elf", "asm", "k2", "words" or "raw"
    license: str | None
    programs: list[dict[str, Any]]  # name, section, type, insns, slots
    sections: list[dict[str, Any]]  # name, insns, slots, functions (name, index)
    maps: list[dict[str, Any]]  # name, type, type_name, key_size, value_size, max_entries, flags
    relocations: list[dict[str, Any]]  # every one: section, index, symbol, type
    data: list[dict[str, Any]]  # name, size
    k2: dict[str, Any] | None  # pgm_input_type, input_type, max_pkt_sz

    def as_json(self) -> dict[str, Any]:
        """The object `info --json` prints."""
        return asdict(self)

    def text(self) -> str:
        """The tables `info` prints."""
        return _text(self._lines())

    def _lines(self) -> Iterable[str]:
        head = f"{self.file}: {_FORMAT_NAMES[self.format]}"
        if self.license is not None:
            head += f", license {self.license}"
        yield head
        yield "programs:"
        yield from _table(["name", "section", "type", "insns", "slots"],
                          [[p["name"], p["section"] or "-", p["type"], p["insns"], p["slots"]] for p in self.programs])
        if any(s["name"] is not None for s in self.sections):  # raw, words and K2 have no sections
            yield "sections:"
            yield from _table(["name", "insns", "slots", "functions"],
                              [[s["name"], s["insns"], s["slots"],
                                " ".join(f"{f['name']}@{f['index']}" for f in s["functions"]) or "-"]
                               for s in self.sections])
        if self.maps:
            yield "maps:"
            yield from _table(["name", "type", "key", "value", "max_entries", "flags"],
                              [[m["name"], m["type_name"], m["key_size"], m["value_size"], m["max_entries"],
                                m["flags"]] for m in self.maps])
        if self.relocations:
            yield f"relocations: {len(self.relocations)}"
            groups: dict[tuple, list[int]] = {}  # one line per symbol; --json lists every relocation
            for r in self.relocations:
                groups.setdefault((r["section"], r["symbol"], r["type"]), []).append(r["index"])
            yield from _table(["section", "symbol", "type", "count", "at insn"],
                              [[*key, len(slots), " ".join(map(str, slots[:6])) + (" ..." if len(slots) > 6 else "")]
                               for key, slots in groups.items()])
        if self.data:
            yield "global data:"
            yield from _table(["name", "bytes"], [[d["name"], d["size"]] for d in self.data])
        if self.k2:
            k2 = self.k2
            yield f"k2: pgm_input_type {k2['pgm_input_type']} ({k2['input_type']}), max_pkt_sz {k2['max_pkt_sz']}"


def info_of(loaded: LoadedProgram, explicit_type: str | None = None) -> Info:
    """The summary of what the loader read. Each program's type is `explicit_type` (--type) if given, else
    what its own section name says, else the loaded program's type."""

    def type_of(section: str | None) -> str:
        return explicit_type or prog_type_of_section(section) or loaded.prog_type

    def section(sec) -> dict[str, Any]:
        starts = slot_starts(sec.insns)
        return {"name": sec.name, "insns": len(sec.insns), "slots": slot_count(sec.insns),
                "functions": [{"name": name, "index": starts[i]} for i, name in sorted(sec.functions.items())]}

    relocations = []
    for sec in loaded.sections:
        starts = slot_starts(sec.insns)
        relocations += [{"section": sec.name, "index": starts[r.insn], "symbol": r.symbol, "type": r.type}
                        for r in sec.relocations]
    k2 = loaded.k2
    return Info(
        file=loaded.filename,
        format=loaded.kind,
        license=loaded.license,
        programs=[{"name": p.name, "section": p.section, "type": type_of(p.section), "insns": len(p.insns),
                   "slots": slot_count(p.insns)} for p in loaded.programs],
        sections=[section(s) for s in loaded.sections],
        maps=[{"name": m.name, "type": m.type, "type_name": m.type_name, "key_size": m.key_size,
               "value_size": m.value_size, "max_entries": m.max_entries, "flags": m.flags} for m in loaded.maps],
        relocations=relocations,
        data=[{"name": d.name, "size": d.size} for d in loaded.data],
        k2=None if k2 is None else {"pgm_input_type": k2.pgm_input_type, "input_type": k2.input_type_name,
                                    "max_pkt_sz": k2.max_pkt_sz},
    )


def _table(headers: list[str], rows: list[list[Any]]) -> Iterable[str]:
    """Left-aligned text columns (numbers right-aligned), two spaces apart, indented by two."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        yield "  " + "  ".join(parts).rstrip()
