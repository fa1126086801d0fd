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
from typing import TYPE_CHECKING

from ..elf.btf import FUNC_GLOBAL, VAR_GLOBAL_ALLOCATED, BtfPatch
from ..elf.btf_ext import parse_ext_layout
from ..elf.externs import KCONFIG_SEC, KSYMS_SEC, collect_externs
from ..elf.layout import STT_OBJECT
from ..errors import BpforgeError
from ..isa import slot_starts
from .syscall import BPF_BTF_LOAD, BtfLoadAttr, ProgramBtf, bpf

if TYPE_CHECKING:
    from ..elf.bpfobject import BpfObject
    from ..elf.model import LinkedProgram

_BTF_LOG_SIZE = 1 << 16


class BtfError(BpforgeError):
    """The kernel refused the object's BTF (`log` holds its reason)."""

    def __init__(self, message: str, log: str = "", **where):
        self.log = log
        super().__init__(message, **where)


def fixed_btf(obj: BpfObject) -> bytes:
    """The object's .BTF with every DATASEC given its section's size and each variable its symbol's offset
    (variables sorted by offset, as the kernel requires)."""
    data, btf = obj.btf_bytes, obj.btf
    if data is None or btf is None:
        raise BtfError("the object has no .BTF section", file=obj.filename)
    patch = BtfPatch(btf, data)
    extern_secs = [t.id for t in btf.types if t.kind == "datasec" and t.name in (KCONFIG_SEC, KSYMS_SEC)]
    for t in btf.types:
        if t.kind == "datasec" and t.id not in extern_secs:
            _fix_datasec(obj, t.id, patch)
    if extern_secs:
        _fix_extern_datasecs(obj, patch, extern_secs)
    return patch.bytes()


def _fix_extern_datasecs(obj: BpfObject, patch: BtfPatch, secs: list[int]) -> None:
    """What libbpf's bpf_object__collect_externs does to the extern DATASECs so that the kernel accepts
    the BTF: .kconfig variables get their offsets in the .kconfig map and "allocated" linkage; in .ksyms every
    variable becomes an allocated int and every function a global one whose slot is taken by an int
    variable `dummy_ksym` (added), its unnamed parameters named after it; each entry is 4 bytes there."""
    try:
        externs = {e.name: e for e in collect_externs(obj)}
    except BpforgeError as err:
        raise BtfError(f"extern BTF: {err.message}", file=obj.filename) from None
    btf = obj.btf
    int_id = next((t.id for t in btf.types if t.kind == "int" and t.int_bits == 32), 0)
    dummy_id = dummy_name = 0
    if any(btf[var.type].kind == "func" for sec_id in secs if btf[sec_id].name == KSYMS_SEC
           for var in btf[sec_id].members):
        if not int_id:
            raise BtfError("extern functions need a 32-bit int in the object's BTF", file=obj.filename)
        dummy_name = patch.add_string("dummy_ksym")
        dummy_id = patch.add_var(dummy_name, int_id, VAR_GLOBAL_ALLOCATED)
    for sec_id in secs:
        entries = []
        for i, (var_type, _, size) in enumerate(patch.datasec_entries(sec_id)):
            t = btf[var_type]
            e = externs.get(t.name)
            if e is None:
                raise BtfError(f"BTF {t.kind} '{t.name}' of {btf[sec_id].name} is no extern of the object",
                               file=obj.filename)
            if btf[sec_id].name == KCONFIG_SEC:
                patch.set_var_linkage(var_type, VAR_GLOBAL_ALLOCATED)
                entries.append((e.data_off, var_type, size))
            elif t.kind == "func":
                patch.set_func_linkage(var_type, FUNC_GLOBAL)
                for j, param in enumerate(btf[t.type].members):
                    if param.type and not patch.param_name_off(t.type, j):
                        patch.set_param_name(t.type, j, dummy_name)
                entries.append((4 * i, dummy_id, 4))
            else:
                patch.set_type(var_type, int_id)
                patch.set_var_linkage(var_type, VAR_GLOBAL_ALLOCATED)
                entries.append((4 * i, var_type, 4))
        entries.sort()
        patch.set_datasec(sec_id, max((off + size for off, _, size in entries), default=0),
                          [(var_type, offset, size) for offset, var_type, size in entries])


def _fix_datasec(obj: BpfObject, type_id: int, patch: BtfPatch) -> None:
    sec_name = obj.btf[type_id].name
    index = obj.image.index(sec_name)
    if index is None:
        raise BtfError(f"BTF DATASEC '{sec_name}' names no section of the object", file=obj.filename)
    offsets = {s.name: s.value for s in obj.symbols if s.shndx == index and s.type in (STT_OBJECT, 0) and s.name}
    entries = []
    for var_type, _, size in patch.datasec_entries(type_id):
        var_name = obj.btf[var_type].name
        if var_name not in offsets:
            raise BtfError(f"BTF variable '{var_name}' of '{sec_name}' has no symbol", file=obj.filename)
        entries.append((offsets[var_name], var_type, size))
    patch.set_datasec(type_id, obj.image.sections[index].header.size,
                      [(var_type, offset, size) for offset, var_type, size in sorted(entries)])


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
                    size = ProgramBtf.func_info_rec_size if kind == "func_info" else ProgramBtf.line_info_rec_size
                    records[kind].append((slot, struct.pack("<I", slot) + rec[4:size]))
    funcs = sorted(records["func_info"])
    lines = sorted(dict(records["line_info"]).items())  # one line per instruction, in program order
    fd = load_btf(obj)
    return ProgramBtf(fd, b"".join(r for _, r in funcs), len(funcs), b"".join(r for _, r in lines), len(lines))


__all__ = ["BtfError", "ProgramBtf", "fixed_btf", "load_btf", "program_btf"]
