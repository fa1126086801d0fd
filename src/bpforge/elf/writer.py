"""Write an object back, with some program sections replaced (possibly shorter or longer).

Everything else stays as it was: section order, names, string tables, data, BTF. What depends on
instruction positions follows the edit: the section's relocations (moved with the instruction they patch,
dropped with it), symbol values and sizes in the section, calls and function addresses that other sections
(or this one) reach through relocations, and the func_info / line_info / CO-RE records of .BTF.ext (with
their own relocations). DWARF (.debug_*) is left as it was: nothing that loads the object reads it.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from ..errors import BpforgeError, DecodeError, ElfError
from ..isa import Insn, check_targets, encode, slot_count, slot_starts
from .btf_ext import parse_ext_layout, rewrite_ext
from .edit import SectionEdit
from .layout import (R_BPF_64_32, R_BPF_64_64, RELOC_NAMES, SHT_REL, SHT_SYMTAB, STT_SECTION, ElfImage, Rel, Sym,
                     serialize, unpack_rels, unpack_syms)
from .bpfobject import BpfObject
from .model import ProgramSection
from .relocs import call_target_byte, slot_index, target_imm


def write_object(obj: BpfObject, replacements: dict[str, SectionEdit] | None = None) -> bytes:
    """The object's bytes, with each section named in `replacements` given its edit. No replacements:
    the object as read (byte-identical for clang/llvm-mc output)."""
    try:
        return _Writer(obj, dict(replacements or {})).write()
    except BpforgeError as err:
        raise err.at(file=obj.filename) from None


class _Moves:
    """Where the old byte offsets of one edited section went."""

    def __init__(self, old: ProgramSection, edit: SectionEdit) -> None:
        self.old_index = slot_index(old.insns)
        self.positions = edit.position_map(len(old.insns))
        self.new_slots = slot_starts(edit.insns) + [slot_count(edit.insns)]
        self.by_origin: dict[int, list[int]] = {}
        for j, origin in enumerate(edit.origins):
            if origin is not None:
                self.by_origin.setdefault(origin, []).append(j)
        self.name = old.name

    def index(self, byte: int) -> int:
        index = self.old_index.get(byte // 8) if byte % 8 == 0 else None
        if index is None:
            raise ElfError(f"byte offset {byte} is not at an instruction", section=self.name, insn=byte // 8)
        return index

    def position(self, byte: int) -> int | None:
        """New byte offset of old position `byte` (None if no instruction took it)."""
        new = self.positions[self.index(byte)]
        return None if new is None else self.new_slots[new] * 8

    def instruction(self, byte: int) -> int | None:
        """New byte offset of the (first) instruction that came from the one at old `byte`."""
        carried = self.by_origin.get(self.index(byte))
        return self.new_slots[carried[0]] * 8 if carried else None


class _Writer:
    def __init__(self, obj: BpfObject, edits: dict[str, SectionEdit]) -> None:
        self.obj = obj
        self.image: ElfImage = obj.image.copy()
        self.sections = {s.name: s for s in obj.sections}
        for name, edit in edits.items():
            if name not in self.sections:
                raise ElfError(f"no program section '{name}' to replace (have {', '.join(self.sections)})")
            if edit.section != name:
                raise ElfError(f"edit of section '{edit.section}' given for section '{name}'")
            if len(edit.origins) != len(edit.insns):
                raise ElfError(f"edit has {len(edit.insns)} instructions but {len(edit.origins)} origins",
                               section=name)
            count = len(self.sections[name].insns)
            for origin in edit.origins:
                if origin is not None and not 0 <= origin < count:
                    raise ElfError(f"origin {origin} is not an instruction of the old section ({count})",
                                   section=name)
        self.edits = edits
        self.moves = {name: _Moves(self.sections[name], edit) for name, edit in edits.items()}
        self.moved_index = {self.sections[name].index: moves for name, moves in self.moves.items()}

    def write(self) -> bytes:
        if not self.edits:
            return serialize(self.image)
        old_syms, new_syms = self._symbols()
        for sec in self.obj.sections:
            self._code(sec, old_syms, new_syms)
        self._btf_ext()
        return serialize(self.image)

    # ---- symbols -------------------------------------------------------------------------------------

    def _symbols(self) -> tuple[list[Sym], list[Sym]]:
        index = next((i for i, s in enumerate(self.image.sections) if s.header.type == SHT_SYMTAB), None)
        if index is None:
            return [], []
        table = self.image.sections[index]
        strtab = self.image.sections[table.header.link].data if table.header.link < len(self.image.sections) else b""
        old = unpack_syms(table.data, strtab)
        new = []
        for sym in old:
            moves = self.moved_index.get(sym.shndx)
            if moves is None or sym.type == STT_SECTION:
                new.append(sym)
                continue
            value = moves.position(sym.value)
            end = moves.position(sym.value + sym.size) if sym.size else value
            if value is None or end is None:
                raise ElfError(f"symbol '{sym.name}' (byte {sym.value}, size {sym.size}) would start or end on a "
                               "removed instruction with no successor in its function", section=moves.name,
                               insn=sym.value // 8)
            new.append(replace(sym, value=value, size=end - value if sym.size else 0))
        tail = table.data[len(old) * 24:]
        table.data = b"".join(s.pack() for s in new) + tail
        return old, new

    # ---- code and its relocations --------------------------------------------------------------------

    def _code(self, sec: ProgramSection, old_syms: list[Sym], new_syms: list[Sym]) -> None:
        edit = self.edits.get(sec.name)
        insns: list[Insn] = list(edit.insns) if edit else list(sec.insns)
        moves = self.moves.get(sec.name)
        rel_index = next((i for i, s in enumerate(self.image.sections)
                          if s.header.type == SHT_REL and s.header.info == sec.index), None)
        rels = unpack_rels(self.image.sections[rel_index].data) if rel_index is not None else []
        new_rels: list[Rel] = []
        slots = slot_starts(insns)
        old_index = slot_index(sec.insns)
        for rel in rels:
            old = old_index.get(rel.offset // 8)
            if old is None or rel.offset % 8 or old >= len(sec.insns):
                raise ElfError(f"relocation at byte {rel.offset} is not at an instruction", section=sec.name,
                               insn=rel.offset // 8)
            for j in (moves.by_origin.get(old, []) if moves else [old]):
                new_rels.append(Rel(slots[j] * 8, rel.sym, rel.type))
                if rel.type in (R_BPF_64_64, R_BPF_64_32):
                    insns[j] = self._fix_reference(sec, insns[j], sec.insns[old], rel, old_syms, new_syms,
                                                   slots[j])
        new_rels.sort(key=lambda r: r.offset)
        if edit is None and insns == sec.insns:
            return
        if edit is not None:
            relocated = [slot_index(insns)[r.offset // 8] for r in new_rels]
            try:
                check_targets(insns, external=relocated)
            except DecodeError as err:
                raise ElfError(f"edited code is invalid: {err.message}", section=sec.name, insn=err.where.insn) \
                    from None
        self.image.sections[sec.index].data = encode(insns)
        if rel_index is not None:
            self.image.sections[rel_index].data = b"".join(r.pack() for r in new_rels)

    def _fix_reference(self, sec: ProgramSection, insn: Insn, old_insn: Insn, rel: Rel, old_syms: list[Sym],
                       new_syms: list[Sym], slot: int) -> Insn:
        """Check a relocated instruction's kind; recompute the imm of calls and function addresses that
        point into an edited section (the target moved, and for section symbols imm says where)."""
        name = RELOC_NAMES[rel.type]
        if rel.type == R_BPF_64_64 and insn.form.kind != "lddw" or rel.type == R_BPF_64_32 and insn.form.kind != "call":
            raise ElfError(f"{name} relocation moved onto a {insn.form.name} instruction", section=sec.name, insn=slot)
        if rel.sym >= len(old_syms):
            return insn
        old_sym, new_sym = old_syms[rel.sym], new_syms[rel.sym]
        moves = self.moved_index.get(old_sym.shndx)
        if moves is None:
            return insn
        old_target = call_target_byte(rel.type, old_insn, old_sym.value)
        new_target = moves.position(old_target)
        if new_target is None:
            raise ElfError(f"the {name} target (byte {old_target} of {moves.name}) is removed", section=sec.name,
                           insn=slot)
        return insn.replace(imm=target_imm(rel.type, new_target, new_sym.value))

    # ---- .BTF.ext ------------------------------------------------------------------------------------

    def _btf_ext(self) -> None:
        index = self.image.index(".BTF.ext")
        btf = self.obj.btf
        if index is None or btf is None:
            return
        layout = parse_ext_layout(self.image.sections[index].data)

        def remap(kind: str, section: str, byte: int) -> int | None:
            moves = self.moves.get(section)
            if moves is None:
                return byte
            if kind == "core_relo":  # patches its instruction: goes where that instruction went
                return moves.instruction(byte)
            new = moves.position(byte)
            if new is None and kind == "func_info":
                raise ElfError(f"function at byte {byte} is removed entirely", section=section, insn=byte // 8)
            return new

        data, moved = rewrite_ext(layout, remap, btf.string)
        self.image.sections[index].data = data
        rel_index = next((i for i, s in enumerate(self.image.sections)
                          if s.header.type == SHT_REL and s.header.info == index), None)
        if rel_index is None:
            return
        starts = sorted(off for blocks in layout.blocks.values() for b in blocks for off in b.record_offsets)
        sizes = {off: len(rec) for blocks in layout.blocks.values() for b in blocks
                 for off, rec in zip(b.record_offsets, b.records)}
        kept = []
        for rel in unpack_rels(self.image.sections[rel_index].data):
            i = bisect.bisect_right(starts, rel.offset) - 1
            record = starts[i] if i >= 0 else None
            if record is not None and rel.offset < record + sizes[record]:
                if record in moved:
                    kept.append(Rel(moved[record] + rel.offset - record, rel.sym, rel.type))
            elif rel.offset < len(layout.header):
                kept.append(rel)
        self.image.sections[rel_index].data = b"".join(r.pack() for r in kept)
