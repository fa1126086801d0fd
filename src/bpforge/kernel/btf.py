"""An object's BTF for BPF_PROG_LOAD, prepared as libbpf prepares it: .BTF with its data sections fixed up,
loaded with BPF_BTF_LOAD, and the linked program's func_info / line_info records.

Why bother: with func_info the kernel knows which subprograms are *global* and verifies each of those once,
on its own (without it, every call is verified inline — bpf2bpf_loop.o then exceeds the 1M-instruction
budget, exactly as it would for a loader that drops BTF); line_info puts the C source lines into the
verifier log.

clang leaves DATASEC sizes and the offsets of their variables at 0 (only the ELF file knows them) and the
kernel refuses a zero-sized DATASEC; libbpf (btf_fixup_datasec) fills them in from the section headers and
symbols, and so do we. .BTF.ext offsets are bytes within a section; the kernel wants instruction (slot)
numbers within the loaded program.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..elf.btf import BTF_MAGIC, KINDS
from ..elf.btf_ext import parse_ext_layout
from ..elf.externs import KCONFIG_SEC, KSYMS_SEC, collect_externs
from ..elf.layout import STT_OBJECT
from ..errors import BpforgeError
from ..isa import slot_starts
from .syscall import BPF_BTF_LOAD, BtfLoadAttr, bpf, close_fd

if TYPE_CHECKING:
    from ..elf.model import BpfObject, LinkedProgram

_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_FUNC_INFO = struct.Struct("<II")  # insn_off (slots in the program), type_id
_LINE_INFO_SIZE = 16  # insn_off, file_name_off, line_off, line_col
_BTF_LOG_SIZE = 1 << 16


class BtfError(BpforgeError):
    """The kernel refused the object's BTF (`log` holds its reason)."""

    def __init__(self, message: str, log: str = "", **where):
        self.log = log
        super().__init__(message, **where)


@dataclass
class ProgramBtf:
    """What BPF_PROG_LOAD takes for BTF: the loaded .BTF (`fd`, to close) and the program's records."""

    fd: int
    func_info: bytes
    func_info_cnt: int
    line_info: bytes
    line_info_cnt: int

    func_info_rec_size = _FUNC_INFO.size
    line_info_rec_size = _LINE_INFO_SIZE

    def close(self) -> None:
        close_fd(self.fd)
        self.fd = -1


def fixed_btf(obj: BpfObject) -> bytes:
    """The object's .BTF with every DATASEC given its section's size and each variable its symbol's offset
    (variables sorted by offset, as the kernel requires)."""
    data = obj.btf_bytes
    if data is None or obj.btf is None:
        raise BtfError("the object has no .BTF section", file=obj.filename)
    out = bytearray(data)
    magic, _, _, hdr_len, type_off, type_len, _, _ = _HEADER.unpack_from(data)
    if magic != BTF_MAGIC:
        raise BtfError("bad .BTF magic", file=obj.filename)
    pos, end, type_id = hdr_len + type_off, hdr_len + type_off + type_len, 0
    positions: dict[int, int] = {}  # type id -> where its record starts
    extern_secs: list[tuple[int, int, int]] = []
    while pos < end:
        type_id += 1
        positions[type_id] = pos
        _, info, _ = _TYPE.unpack_from(data, pos)
        vlen, kind = info & 0xFFFF, KINDS[info >> 24 & 0x1F]
        body = pos + _TYPE.size
        if kind == "datasec" and obj.btf[type_id].name in (KCONFIG_SEC, KSYMS_SEC):
            extern_secs.append((type_id, pos, vlen))
        elif kind == "datasec":
            _fix_datasec(obj, type_id, out, pos, body, vlen)
        pos = body + _extra_size(kind, vlen)
    if extern_secs:
        return _fix_extern_datasecs(obj, out, positions, extern_secs)
    return bytes(out)


def _fix_extern_datasecs(obj: BpfObject, out: bytearray, positions: dict[int, int],
                         secs: list[tuple[int, int, int]]) -> bytes:
    """What libbpf's bpf_object__collect_externs does to the extern DATASECs so that the kernel accepts
    the BTF: .kconfig variables get their offsets in the .kconfig map and "allocated" linkage; in .ksyms every
    variable becomes an allocated int and every function a global one whose slot is taken by an int
    variable `dummy_ksym` (added), its unnamed parameters named after it; each entry is 4 bytes there."""
    try:
        externs = {e.name: e for e in collect_externs(obj)}
    except BpforgeError as err:
        raise BtfError(f"extern BTF: {err.message}", file=obj.filename) from None
    btf = obj.btf
    int_id = next((t.id for t in btf.types if t.kind == "int" and t.extra & 0xFF == 32), 0)
    _, _, _, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(out)
    dummy_id = dummy_name = 0
    if any(btf[var.type].kind == "func" for sec_id, _, _ in secs if btf[sec_id].name == KSYMS_SEC
           for var in btf[sec_id].members):
        if not int_id:
            raise BtfError("extern functions need a 32-bit int in the object's BTF", file=obj.filename)
        dummy_id, dummy_name = len(btf.types), str_len
    for sec_id, pos, vlen in secs:
        body = pos + _TYPE.size
        entries = []
        for i in range(vlen):
            var_type, _, size = struct.unpack_from("<III", out, body + 12 * i)
            t = btf[var_type]
            e = externs.get(t.name)
            if e is None:
                raise BtfError(f"BTF {t.kind} '{t.name}' of {btf[sec_id].name} is no extern of the object",
                               file=obj.filename)
            here = positions[var_type]
            if btf[sec_id].name == KCONFIG_SEC:
                struct.pack_into("<I", out, here + 12, 1)  # BTF_VAR_GLOBAL_ALLOCATED
                entries.append((e.data_off, var_type, size))
            elif t.kind == "func":
                info = struct.unpack_from("<I", out, here + 4)[0]
                struct.pack_into("<I", out, here + 4, info & ~0xFFFF | 1)  # BTF_FUNC_GLOBAL
                proto = positions[t.type]
                for j in range(len(btf[t.type].members)):
                    name_off, param_type = struct.unpack_from("<II", out, proto + _TYPE.size + 8 * j)
                    if param_type and not name_off:
                        struct.pack_into("<I", out, proto + _TYPE.size + 8 * j, dummy_name)
                entries.append((4 * i, dummy_id, 4))
            else:
                struct.pack_into("<I", out, here + 8, int_id)
                struct.pack_into("<I", out, here + 12, 1)
                entries.append((4 * i, var_type, 4))
        entries.sort()
        sec_size = max((off + size for off, _, size in entries), default=0)
        struct.pack_into("<I", out, pos + 8, sec_size)
        for i, (offset, var_type, size) in enumerate(entries):
            struct.pack_into("<III", out, body + 12 * i, var_type, offset, size)
    if not dummy_id:
        return bytes(out)
    types = bytes(out[hdr_len + type_off:hdr_len + type_off + type_len])
    types += _TYPE.pack(dummy_name, 14 << 24, int_id) + struct.pack("<I", 1)  # VAR dummy_ksym, allocated
    strings = bytes(out[hdr_len + str_off:hdr_len + str_off + str_len]) + b"dummy_ksym\0"
    header = bytearray(out[:hdr_len])
    struct.pack_into("<IIII", header, 8, 0, len(types), len(types), len(strings))
    return bytes(header) + types + strings


def _extra_size(kind: str, vlen: int) -> int:
    """Bytes that follow the common 12-byte type header (uapi/linux/btf.h)."""
    if kind in ("int", "var", "decl_tag"):
        return 4
    if kind == "array":
        return 12
    if kind in ("struct", "union", "datasec", "enum64"):
        return 12 * vlen
    if kind in ("enum", "func_proto"):
        return 8 * vlen
    return 0


def _fix_datasec(obj: BpfObject, type_id: int, out: bytearray, pos: int, body: int, vlen: int) -> None:
    sec_name = obj.btf[type_id].name
    index = obj.image.index(sec_name)
    if index is None:
        raise BtfError(f"BTF DATASEC '{sec_name}' names no section of the object", file=obj.filename)
    struct.pack_into("<I", out, pos + 8, obj.image.sections[index].header.size)
    offsets = {s.name: s.value for s in obj.symbols if s.shndx == index and s.type in (STT_OBJECT, 0) and s.name}
    entries = []
    for i in range(vlen):
        var_type, _, size = struct.unpack_from("<III", out, body + 12 * i)
        var_name = obj.btf[var_type].name
        if var_name not in offsets:
            raise BtfError(f"BTF variable '{var_name}' of '{sec_name}' has no symbol", file=obj.filename)
        entries.append((offsets[var_name], var_type, size))
    for i, (offset, var_type, size) in enumerate(sorted(entries)):
        struct.pack_into("<III", out, body + 12 * i, var_type, offset, size)


def load_btf(obj: BpfObject) -> int:
    """BPF_BTF_LOAD of the fixed-up .BTF: the BTF object's fd (the caller closes it). BtfError with the
    kernel's log when it is refused."""
    data = fixed_btf(obj)
    buf = ctypes.create_string_buffer(data, len(data))
    log = ctypes.create_string_buffer(_BTF_LOG_SIZE)
    attr = BtfLoadAttr(btf=ctypes.addressof(buf), btf_size=len(data), btf_log_buf=ctypes.addressof(log),
                       btf_log_size=_BTF_LOG_SIZE, btf_log_level=1)
    fd, err = bpf(BPF_BTF_LOAD, attr)
    if fd < 0:
        text = log.value.decode(errors="replace")
        last = text.strip().splitlines()[-1] if text.strip() else f"errno {err}"
        raise BtfError(f"kernel refuses the object's BTF: {last}", text, file=obj.filename)
    return fd


def program_btf(obj: BpfObject, linked: LinkedProgram) -> ProgramBtf:
    """The BTF fd and func_info/line_info records of `linked` (its instructions as the linker placed them:
    `linked.origins` says where each came from). BtfError when there is no usable BTF."""
    if obj.btf_ext_bytes is None:
        raise BtfError("the object has no .BTF.ext section", file=obj.filename)
    if len(linked.origins) != len(linked.insns):
        raise BtfError("the program's instructions no longer match their origins", file=obj.filename)
    layout = parse_ext_layout(obj.btf_ext_bytes)
    slots = slot_starts(linked.insns)
    placed = {origin: i for i, origin in enumerate(linked.origins)}
    section_slots: dict[str, dict[int, int]] = {}  # section -> byte offset -> instruction index

    def linked_slot(section: str, byte_off: int) -> int | None:
        if section not in section_slots:
            try:
                insns = obj.section(section).insns
            except BpforgeError:
                insns = []
            section_slots[section] = {8 * s: i for i, s in enumerate(slot_starts(insns))}
        index = section_slots[section].get(byte_off)
        here = placed.get((section, index)) if index is not None else None
        return None if here is None else slots[here]

    records: dict[str, list[tuple[int, bytes]]] = {"func_info": [], "line_info": []}
    for kind in records:
        for block in layout.blocks.get(kind, []):
            section = obj.btf.string(block.sec_name_off)
            for i, rec in enumerate(block.records):
                slot = linked_slot(section, block.insn_off(i))
                if slot is not None:
                    size = _FUNC_INFO.size if kind == "func_info" else _LINE_INFO_SIZE
                    records[kind].append((slot, struct.pack("<I", slot) + rec[4:size]))
    funcs = sorted(records["func_info"])
    lines = sorted(dict(records["line_info"]).items())  # one line per instruction, in program order
    fd = load_btf(obj)
    return ProgramBtf(fd, b"".join(r for _, r in funcs), len(funcs), b"".join(r for _, r in lines), len(lines))


__all__ = ["BtfError", "ProgramBtf", "fixed_btf", "load_btf", "program_btf"]
