""".BTF.ext as libbpf's libbpf_internal.h lays it out: per kind (func_info, line_info, CO-RE relocations) a
record size and, per section, records that each start with the byte offset of their instruction. Read into
instruction indexes, and rewritten record by record when instructions move."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ElfError
from .btf import Btf, check_header

_U32 = struct.Struct("<I")

EXT_KINDS = ("func_info", "line_info", "core_relo")
_MIN_RECORD = {"func_info": 8, "line_info": 16, "core_relo": 16}


@dataclass
class ExtBlock:
    """The records of one kind for one section; every record starts with its instruction byte offset."""

    sec_name_off: int
    records: list[bytes]
    record_offsets: list[int]  # where each record starts in .BTF.ext (to move relocations with them)

    def insn_off(self, i: int) -> int:
        return _U32.unpack_from(self.records[i])[0]


@dataclass
class ExtLayout:
    """.BTF.ext split into its header and, per kind, the record size and the blocks."""

    header: bytes
    rec_size: dict[str, int] = field(default_factory=dict)
    blocks: dict[str, list[ExtBlock]] = field(default_factory=dict)


@dataclass(frozen=True)
class FuncInfo:
    insn: int  # instruction index in the section
    type_id: int  # BTF FUNC type
    name: str


@dataclass(frozen=True)
class LineInfo:
    insn: int
    file: str
    line: int
    col: int
    text: str


@dataclass(frozen=True)
class CoreRelo:
    insn: int
    type_id: int
    access: str
    kind: int


@dataclass
class BtfExt:
    """Parsed .BTF.ext records per section name (instruction indexes, not bytes)."""

    func_info: dict[str, list[FuncInfo]] = field(default_factory=dict)
    line_info: dict[str, list[LineInfo]] = field(default_factory=dict)
    core_relos: dict[str, list[CoreRelo]] = field(default_factory=dict)


def parse_ext_layout(data: bytes) -> ExtLayout:
    _, hdr_len = check_header(data, ".BTF.ext")
    fields = [_U32.unpack_from(data, off)[0] for off in range(8, min(hdr_len, 32) // 4 * 4, 4)]
    layout = ExtLayout(data[:hdr_len])
    for n, kind in enumerate(EXT_KINDS):
        if 2 * n + 1 >= len(fields):
            break
        off, length = fields[2 * n], fields[2 * n + 1]
        if length == 0:
            continue
        start = hdr_len + off
        end = start + length
        if end > len(data) or length < 4:
            raise ElfError(f".BTF.ext {kind} runs past the end of the section", section=".BTF.ext")
        rec_size = _U32.unpack_from(data, start)[0]
        if rec_size < _MIN_RECORD[kind] or rec_size % 4:
            raise ElfError(f".BTF.ext {kind} record size {rec_size} is invalid", section=".BTF.ext")
        layout.rec_size[kind] = rec_size
        blocks = layout.blocks[kind] = []
        pos = start + 4
        while pos < end:
            if pos + 8 > end:
                raise ElfError(f".BTF.ext {kind} block header truncated", section=".BTF.ext")
            name_off, count = struct.unpack_from("<II", data, pos)
            pos += 8
            if pos + count * rec_size > end:
                raise ElfError(f".BTF.ext {kind} has {count} records that run past its end", section=".BTF.ext")
            offsets = [pos + i * rec_size for i in range(count)]
            blocks.append(ExtBlock(name_off, [data[o:o + rec_size] for o in offsets], offsets))
            pos += count * rec_size
    return layout


def parse_ext(data: bytes, btf: Btf, insn_index: Callable[[str, int], int | None]) -> BtfExt:
    """Records per section; `insn_index(section, byte_offset)` turns offsets into instruction indexes
    (None when no instruction starts there, which is an error)."""
    layout = parse_ext_layout(data)
    ext = BtfExt()
    by_kind = {"func_info": ext.func_info, "line_info": ext.line_info, "core_relo": ext.core_relos}
    for kind, blocks in layout.blocks.items():
        for block in blocks:
            sec = btf.string(block.sec_name_off)
            out = by_kind[kind].setdefault(sec, [])
            for i, rec in enumerate(block.records):
                index = insn_index(sec, block.insn_off(i))
                if index is None:
                    raise ElfError(f"{kind} record at byte {block.insn_off(i)} of section '{sec}' is not at an "
                                   "instruction", section=".BTF.ext")
                if kind == "func_info":
                    type_id = _U32.unpack_from(rec, 4)[0]
                    name = btf[type_id].name if type_id < len(btf.types) else ""
                    out.append(FuncInfo(index, type_id, name))
                elif kind == "line_info":
                    file_off, line_off, line_col = struct.unpack_from("<III", rec, 4)
                    out.append(LineInfo(index, btf.string(file_off), line_col >> 10, line_col & 0x3FF,
                                        btf.string(line_off)))
                else:
                    type_id, access_off, relo_kind = struct.unpack_from("<III", rec, 4)
                    out.append(CoreRelo(index, type_id, btf.string(access_off), relo_kind))
    return ext


def rewrite_ext(layout: ExtLayout, remap: Callable[[str, int, int], int | None],
                section_of: Callable[[int], str]) -> tuple[bytes, dict[int, int]]:
    """Rebuild .BTF.ext with every record's instruction offset passed through
    `remap(kind, section, old_byte_offset)`; records it maps to None are dropped, and line_info records
    that land on the same instruction keep only the last one (the instruction's own line).

    Returns the new bytes and old record offset -> new record offset, to move relocations along."""
    body = bytearray()
    moved: dict[int, int] = {}
    positions: list[tuple[int, int]] = []
    hdr_len = len(layout.header)
    for kind in EXT_KINDS:
        if kind not in layout.rec_size:
            positions.append((len(body), 0))  # an empty kind sits at the end, as clang writes it
            continue
        start = len(body)
        body += _U32.pack(layout.rec_size[kind])
        for block in layout.blocks[kind]:
            sec = section_of(block.sec_name_off)
            kept: dict[int, tuple[int, bytes]] = {}  # new insn offset -> (old record offset, record)
            kept_list: list[tuple[int, int, bytes]] = []
            for rec, old_pos in zip(block.records, block.record_offsets):
                new_off = remap(kind, sec, _U32.unpack_from(rec)[0])
                if new_off is None:
                    continue
                rec = _U32.pack(new_off) + rec[4:]
                if kind == "line_info":
                    kept[new_off] = (old_pos, rec)  # a later (own) record overrides a moved one
                else:
                    kept_list.append((new_off, old_pos, rec))
            if kind == "line_info":
                kept_list = [(off, pos, rec) for off, (pos, rec) in kept.items()]
            kept_list.sort(key=lambda item: item[0])
            if not kept_list:
                continue
            body += struct.pack("<II", block.sec_name_off, len(kept_list))
            for _, old_pos, rec in kept_list:
                moved[old_pos] = hdr_len + len(body)
                body += rec
        positions.append((start, len(body) - start))
    header = bytearray(layout.header)
    for n, (off, length) in enumerate(positions):
        if 8 + 8 * n + 8 <= min(hdr_len, 32):
            struct.pack_into("<II", header, 8 + 8 * n, off, length)
    return bytes(header) + bytes(body), moved
