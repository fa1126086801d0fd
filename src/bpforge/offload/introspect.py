"""bpftool's views of kernel programs and maps, from `kernel.info`'s values: `prog show`, `prog dump
xlated|jited`, `map show`, `map dump`, each as text (bpftool's plain output, line for line) and as the
value bpftool's `-j` prints. Pure functions: the values in, strings and JSON-ready values out.

Matched against bpftool v7.1 (tools/bpf/bpftool prog.c, map.c, xlated_dumper.c, btf_dumper.c). Left out,
because they need what bpftool gathers elsewhere: `pinned` paths (bpftool -f walks the bpffs), `pids` (a
BPF iterator over every task's fds), `metadata` (BTF-formatted .rodata `bpf_metadata_*` variables),
`offloaded_to` devices; BTF-"formatted" map values (bpftool prints a map with BTF as BTF-typed JSON; we
print its bytes as for any map, text and JSON alike); and line info in jited dumps (jited_line_info).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

from ..elf.btf import Btf, parse_btf
from ..errors import BpforgeError
from ..isa import opcodes as op
from ..isa.progtypes import prog_type_name
from ..isa.kernel_syntax import RawInsn, kernel_text, raw_insns
from ..jit.listing import NativeInsn, disassemble_code
from ..kernel.info import MapEntry, MapInfo, ProgInfo

_HOST_ARCH = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv64"}


# ---- bytes as bpftool prints them --------------------------------------------------------------------------

def hex_bytes(data: bytes, sep: str = " ") -> str:
    """bpftool's fprint_hex: two hex digits a byte, `sep` between them, two spaces after every 8th byte
    and a new line after every 16th."""
    out = []
    for i, b in enumerate(data):
        if i:
            out.append("\n" if i % 16 == 0 else "  " if i % 8 == 0 else sep)
        out.append(f"{b:02x}")
    return "".join(out)


def hex_json(data: bytes) -> list[str]:
    """bpftool's print_hex_data_json: ["0x00", ...]."""
    return [f"0x{b:02x}" for b in data]


# ---- prog show ---------------------------------------------------------------------------------------------

def _type_text(info: ProgInfo | MapInfo) -> str:
    return f"{info.type_name}  " if info.type_name is not None else f"type {info.type}  "


def loaded_at_text(seconds: int) -> str:
    """loaded_at as bpftool prints it in text: local time, ISO 8601 with the UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def prog_header_text(info: ProgInfo) -> str:
    """bpftool's print_prog_header_plain: `ID: TYPE  name NAME  tag TAG  gpl`."""
    line = f"{info.id}: {_type_text(info)}"
    if info.name:
        line += f"name {info.display_name}  "
    line += f"tag {info.tag}"
    if info.gpl_compatible:
        line += "  gpl"
    if info.run_time_ns:
        line += f" run_time_ns {info.run_time_ns} run_cnt {info.run_cnt}"
    if info.recursion_misses:
        line += f" recursion_misses {info.recursion_misses}"
    return line


def prog_show_text(info: ProgInfo) -> str:
    """`bpftool prog show id N`: the header, then loaded_at/uid, sizes and map ids, btf_id."""
    lines = [prog_header_text(info)]
    if info.load_time:
        lines.append(f"\tloaded_at {loaded_at_text(info.loaded_at)}  uid {info.created_by_uid}")
    sizes = f"\txlated {info.xlated_len}B"
    sizes += f"  jited {info.jited_len}B" if info.jited_len else "  not jited"
    if info.memlock is not None:
        sizes += f"  memlock {info.memlock}B"
    if info.map_ids:
        sizes += "  map_ids " + ",".join(str(i) for i in info.map_ids)
    lines.append(sizes)
    if info.btf_id:
        lines.append(f"\tbtf_id {info.btf_id}")
    return "".join(line + "\n" for line in lines)


def prog_header_json(info: ProgInfo) -> dict:
    out: dict = {"id": info.id, "type": info.type_name if info.type_name is not None else info.type}
    if info.name:
        out["name"] = info.display_name
    out["tag"] = info.tag
    out["gpl_compatible"] = info.gpl_compatible
    if info.run_time_ns:
        out["run_time_ns"] = info.run_time_ns
        out["run_cnt"] = info.run_cnt
    if info.recursion_misses:
        out["recursion_misses"] = info.recursion_misses
    return out


def prog_show_json(info: ProgInfo) -> dict:
    """`bpftool -j prog show id N`, field for field and in its order."""
    out = prog_header_json(info)
    if info.load_time:
        out["loaded_at"] = info.loaded_at
        out["uid"] = info.created_by_uid
    out["bytes_xlated"] = info.xlated_len
    out["jited"] = bool(info.jited_len)
    if info.jited_len:
        out["bytes_jited"] = info.jited_len
    if info.memlock is not None:
        out["bytes_memlock"] = info.memlock
    if info.map_ids:
        out["map_ids"] = list(info.map_ids)
    if info.btf_id:
        out["btf_id"] = info.btf_id
    return out


# ---- BTF: function signatures and source lines -------------------------------------------------------------

def _type_only(btf: Btf, type_id: int) -> str:
    # bpftool's __btf_dumper_type_only: every type followed by a space, pointers as "TYPE * ".
    if not type_id:
        return "void "
    t = btf[type_id]
    kind = t.kind
    if kind in ("int", "typedef", "float"):
        return f"{t.name} "
    if kind in ("struct", "union"):
        return f"{kind} {t.name} "
    if kind in ("enum", "enum64"):
        return f"enum {t.name} "
    if kind == "array":
        return _type_only(btf, t.array[0]) + f"[{t.array[2]}]"
    if kind == "ptr":
        return _type_only(btf, t.type) + "* "
    if kind == "fwd":
        return f"{'union' if t.kflag else 'struct'} {t.name} "
    if kind in ("volatile", "const", "restrict"):
        return f"{kind} " + _type_only(btf, t.type)
    if kind == "func_proto":
        return _func(btf, t, None)
    if kind == "func":
        return _func(btf, btf[t.type], t.name)
    raise BpforgeError(f"BTF type {type_id} ({kind}) has no C spelling here")


def _func(btf: Btf, proto, name: str | None) -> str:
    text = _type_only(btf, proto.type) + (f"{name}(" if name is not None else "(")
    for i, param in enumerate(proto.members):
        if i:
            text += ", "
        if param.type:
            text += _type_only(btf, param.type)
            if param.name:
                text += param.name
            elif text.endswith(" "):
                text = text[:-1]
        else:
            text += "..."
    return text + ")"


def func_signature(btf: Btf | None, type_id: int) -> str:
    """A FUNC's C prototype as bpftool prints it above a function ("int f(struct xdp_md * ctx)"); "" when
    there is no BTF or the type cannot be spelled."""
    if btf is None:
        return ""
    try:
        return _type_only(btf, type_id)
    except BpforgeError:
        return ""


def _program_btf(info: ProgInfo) -> Btf | None:
    if not info.btf:
        return None
    try:
        return parse_btf(info.btf)
    except BpforgeError:
        return None


class _LineFinder:
    """libbpf's bpf_prog_linfo__lfind as bpftool walks it: before instruction i, the last line record
    at or before i among those not yet printed; each print consumes one record."""

    def __init__(self, records: Sequence[tuple[int, int, int, int]]):
        self.records = records
        self.skip = 0

    def at(self, insn_off: int) -> tuple[int, int, int, int] | None:
        rest = self.records[self.skip:]
        if not rest or insn_off < rest[0][0]:
            return None
        found = rest[0]
        for record in rest:
            if insn_off < record[0]:
                break
            found = record
        self.skip += 1
        return found


# ---- prog dump xlated --------------------------------------------------------------------------------------

def _callbacks(info: ProgInfo):
    ksyms = info.jited_ksyms

    def call_name(insn: RawInsn) -> str | None:
        address = (info.call_base + insn.imm) & (1 << 64) - 1
        if insn.src == op.PSEUDO_CALL and 0 <= insn.imm < len(ksyms):
            address = ksyms[insn.imm]
        sym = info.symbols.get(address)
        if insn.src == op.PSEUDO_CALL:
            if not ksyms:  # interpreted: no address to show
                return f"{insn.off:+d}"
            return f"{insn.off:+d}#{sym}" if sym else f"{insn.off:+d}#{address:#x}"
        return sym if sym else f"{address:#x}"

    def imm_name(insn: RawInsn, imm64: int) -> str | None:
        if insn.src == op.PSEUDO_MAP_FD:
            return f"map[id:{insn.imm & 0xFFFFFFFF}]"
        if insn.src == op.PSEUDO_MAP_VALUE:
            return f"map[id:{insn.imm & 0xFFFFFFFF}][0]+{insn.imm_hi & 0xFFFFFFFF}"
        if insn.src == op.PSEUDO_MAP_IDX_VALUE:
            return f"map[idx:{insn.imm & 0xFFFFFFFF}]+{insn.imm_hi & 0xFFFFFFFF}"
        if insn.src == op.PSEUDO_FUNC:
            return f"subprog[{insn.imm:+d}]"
        return None

    return call_name, imm_name


def _slot_bytes(code: bytes, slot: int, insn: RawInsn) -> bytes:
    return code[slot * 8:slot * 8 + (16 if insn.is_lddw else 8)]


def _xlated_rows(info: ProgInfo):
    """(slot, instruction text, its bytes, function signature or "", source line record or None)."""
    if not info.xlated:
        raise BpforgeError(f"program {info.id}: the kernel returned no xlated instructions "
                           "(kernel.kptr_restrict, or not allowed to read them?)")
    btf = _program_btf(info)
    strings = btf
    functions = {off: type_id for off, type_id in info.func_info} if btf is not None else {}
    lines = _LineFinder(info.line_info) if btf is not None and info.line_info else None
    call_name, imm_name = _callbacks(info)
    for slot, insn in raw_insns(info.xlated):
        signature = func_signature(btf, functions[slot]) if slot in functions else ""
        record = lines.at(slot) if lines is not None else None
        source = strings.string(record[2]).lstrip() if record is not None and strings is not None else None
        text = kernel_text(insn, call_name=call_name, imm_name=imm_name)
        yield slot, text, _slot_bytes(info.xlated, slot, insn), signature, source


def xlated_text(info: ProgInfo, *, opcodes: bool = False) -> str:
    """`bpftool prog dump xlated id N [opcodes]`: `%4d: ` and the kernel's spelling of each instruction,
    under the function's prototype and `; source line` where the program's BTF has them."""
    out = []
    for slot, text, raw, signature, source in _xlated_rows(info):
        if signature:
            out.append(f"{signature}:")
        if source is not None:
            out.append(f"; {source}")
        out.append(f"{slot: 4d}: {text}")  # printf "% 4d"
        if opcodes:
            out.append("       " + hex_bytes(raw[:8]) + (" " + hex_bytes(raw[8:]) if len(raw) > 8 else ""))
    return "".join(line + "\n" for line in out)


def xlated_json(info: ProgInfo, *, opcodes: bool = False) -> list[dict]:
    """`bpftool -j prog dump xlated id N [opcodes]`: one object per instruction ("proto", "src",
    "disasm", with opcodes the fields as hex)."""
    out = []
    for _, text, raw, signature, source in _xlated_rows(info):
        row: dict = {}
        if signature:
            row["proto"] = signature
        if source is not None:
            row["src"] = source
        row["disasm"] = text
        if opcodes:
            row["opcodes"] = {"code": f"0x{raw[0]:02x}", "src_reg": f"0x{raw[1] >> 4:x}",
                              "dst_reg": f"0x{raw[1] & 0xF:x}", "off": hex_json(raw[2:4]),
                              "imm": hex_json(raw[4:16] if len(raw) > 8 else raw[4:8])}
        out.append(row)
    return out


def insns_text(code: bytes) -> str:
    """Encoded instructions (a program not loaded anywhere) numbered and spelled as `prog dump xlated`
    spells them, with no kernel to name maps or helpers' addresses."""
    return "".join(f"{slot: 4d}: {kernel_text(insn)}\n" for slot, insn in raw_insns(code))


# ---- prog dump jited ---------------------------------------------------------------------------------------

def host_arch() -> str:
    """The architecture the running kernel JITs for, as bpforge names it."""
    machine = platform.machine()
    if machine not in _HOST_ARCH:
        raise BpforgeError(f"no disassembler for this machine's JIT ({machine})")
    return _HOST_ARCH[machine]


def jited_functions(info: ProgInfo, arch: str | None = None) -> list[tuple[str, str, list[NativeInsn]]]:
    """The JITed image split into its functions as bpftool splits it (jited_func_lens; names from
    jited_ksyms and kallsyms): (prototype or "", symbol name, capstone's instructions from offset 0)."""
    if not info.jited:
        raise BpforgeError(f"program {info.id}: the kernel returned no jited instructions "
                           "(not JITed, or kernel.kptr_restrict?)")
    arch = arch or host_arch()
    btf = _program_btf(info)
    lens = list(info.jited_func_lens) or [len(info.jited)]
    out = []
    pos = 0
    for i, length in enumerate(lens):
        if i < len(info.jited_ksyms):
            address = info.jited_ksyms[i]
            name = info.symbols.get(address) or f"0x{address:016x}"
        else:
            name = "unknown"
        signature = func_signature(btf, info.func_info[i][1]) if i < len(info.func_info) else ""
        code = info.jited[pos:pos + length]
        native = disassemble_code(code, arch)
        decoded = sum(len(n.data) for n in native)
        if decoded != len(code):
            raise BpforgeError(f"program {info.id}: capstone decoded {decoded} of the {len(code)} bytes of "
                               f"function {name} ({arch})")
        out.append((signature, name, native))
        pos += length
    return out


def jited_text(info: ProgInfo, *, arch: str | None = None, opcodes: bool = False) -> str:
    """`bpftool prog dump jited id N [opcodes]`, capstone's syntax (Intel for x86-64) instead of
    LLVM's or libbfd's: per function its prototype, `symbol:`, then `%4x:\\t` and the instruction."""
    lines = []
    for signature, name, native in jited_functions(info, arch):
        if signature:
            lines.append(f"{signature}:")
        lines.append(f"{name}:")
        for n in native:
            lines.append(f"{n.offset:4x}:\t{n.mnemonic}\t{n.operands}".rstrip())
            if opcodes:
                lines.append("\t" + " ".join(f"{b:02x}" for b in n.data))
        lines.append("")
    return "".join(line + "\n" for line in lines)


def jited_json(info: ProgInfo, *, arch: str | None = None, opcodes: bool = False) -> list[dict]:
    """`bpftool -j prog dump jited id N`: [{"proto"?, "name", "insns": [{"pc", "operation", "operands"
    [, "opcodes"]}]}]."""
    out = []
    for signature, name, native in jited_functions(info, arch):
        fn: dict = {}
        if signature:
            fn["proto"] = signature
        fn["name"] = name
        insns = []
        for n in native:
            row = {"pc": f"{n.offset:#x}", "operation": n.mnemonic,
                   "operands": [part.strip() for part in n.operands.split(",")] if n.operands else []}
            if opcodes:
                row["opcodes"] = hex_json(n.data)
            insns.append(row)
        fn["insns"] = insns
        out.append(fn)
    return out


# ---- map show ----------------------------------------------------------------------------------------------

def map_header_text(info: MapInfo) -> str:
    line = f"{info.id}: {_type_text(info)}"
    if info.name:
        line += f"name {info.name}  "
    return line + f"flags {info.flags:#x}"


def map_show_text(info: MapInfo) -> str:
    """`bpftool map show id N`."""
    text = map_header_text(info) + "\n"
    text += f"\tkey {info.key_size}B  value {info.value_size}B  max_entries {info.max_entries}"
    if info.memlock is not None:
        text += f"  memlock {info.memlock}B"
    if info.type_name == "prog_array" and (info.owner_prog_type is not None or info.owner_jited is not None):
        text += "\n\t"
        if info.owner_prog_type is not None:
            owner = _prog_type_label(info.owner_prog_type)
            text += f"owner_prog_type {owner}  "
        if info.owner_jited is not None:
            text += f"owner{'' if info.owner_jited else ' not'} jited"
    if info.btf_id or info.frozen:
        text += "\n\t"
    if info.btf_id:
        text += f"btf_id {info.btf_id}"
    if info.frozen:
        text += ("  " if info.btf_id else "") + "frozen"
    return text + "\n"


def _prog_type_label(number: int) -> str | int:
    name = prog_type_name(number)
    return name if name is not None else number


def map_header_json(info: MapInfo) -> dict:
    out: dict = {"id": info.id, "type": info.type_name if info.type_name is not None else info.type}
    if info.name:
        out["name"] = info.name
    out["flags"] = info.flags
    return out


def map_show_json(info: MapInfo) -> dict:
    """`bpftool -j map show id N`, field for field and in its order."""
    out = map_header_json(info)
    out.update(bytes_key=info.key_size, bytes_value=info.value_size, max_entries=info.max_entries)
    if info.memlock is not None:
        out["bytes_memlock"] = info.memlock
    if info.type_name == "prog_array":
        if info.owner_prog_type is not None:
            out["owner_prog_type"] = _prog_type_label(info.owner_prog_type)
        if info.owner_jited is not None:
            out["owner_jited"] = info.owner_jited
    out["frozen"] = int(info.frozen)
    if info.btf_id:
        out["btf_id"] = info.btf_id
    return out


# ---- map dump ----------------------------------------------------------------------------------------------

def _cpu_values(info: MapInfo, value: bytes) -> list[bytes]:
    step = (info.value_size + 7) & ~7
    return [value[i:i + info.value_size] for i in range(0, len(value), step)] if step else []


def _skipped(info: MapInfo, entry: MapEntry) -> bool:
    # bpftool prints nothing for an empty slot of a prog array or map of maps (ENOENT)
    return entry.value is None and entry.error == 2 and info.type_name in (
        "prog_array", "array_of_maps", "hash_of_maps")


def _entry_text(info: MapInfo, entry: MapEntry) -> str:
    if entry.value is None:
        message = "<no entry>" if entry.error == 2 else os.strerror(entry.error)
        break_names = info.key_size > 16 or len(message) > 16
        single = info.key_size + len(message) <= 24 and not break_names
        sep = "\n" if break_names else " "
        return f"key:{sep}{hex_bytes(entry.key)}{'  ' if single else chr(10)}value:{sep}{message}\n"
    if not info.percpu:
        break_names = info.key_size > 16 or info.value_size > 16
        single = info.key_size + info.value_size <= 24 and not break_names
        sep = "\n" if break_names else " "
        text = ""
        if info.key_size:
            text += f"key:{sep}{hex_bytes(entry.key)}" + ("  " if single else "\n")
        if info.value_size:
            text += f"value:{sep}{hex_bytes(entry.value[:info.value_size])}"
        return text + "\n"
    text = f"key:\n{hex_bytes(entry.key)}\n" if info.key_size else ""
    if info.value_size:
        for cpu, value in enumerate(_cpu_values(info, entry.value)):
            text += f"value (CPU {cpu:02d}):{chr(10) if info.value_size > 16 else ' '}{hex_bytes(value)}\n"
    return text


def map_dump_text(info: MapInfo, entries: Sequence[MapEntry]) -> str:
    """`bpftool map dump id N` for a map read without BTF: each entry's key and value bytes, then
    "Found N elements" (lookups that failed are listed but not counted)."""
    shown = [e for e in entries if not _skipped(info, e)]
    count = sum(1 for e in shown if e.value is not None)
    return "".join(_entry_text(info, e) for e in shown) + f"Found {count} element{'' if count == 1 else 's'}\n"


def map_dump_json(info: MapInfo, entries: Sequence[MapEntry]) -> list[dict]:
    """`bpftool -j map dump id N`: [{"key": [...], "value": [...]}], per-CPU maps
    [{"key": [...], "values": [{"cpu": 0, "value": [...]}, ...]}], failed lookups
    {"key": [...], "value": {"error": "..."}}. No "formatted" (see the module's note)."""
    out = []
    for entry in entries:
        if _skipped(info, entry):
            continue
        if entry.value is None:
            out.append({"key": hex_json(entry.key), "value": {"error": os.strerror(entry.error)}})
        elif info.percpu:
            out.append({"key": hex_json(entry.key),
                        "values": [{"cpu": cpu, "value": hex_json(v)}
                                   for cpu, v in enumerate(_cpu_values(info, entry.value))]})
        else:
            out.append({"key": hex_json(entry.key), "value": hex_json(entry.value[:info.value_size])})
    return out


__all__ = ["func_signature", "hex_bytes", "hex_json", "host_arch", "insns_text", "jited_functions", "jited_json",
           "jited_text", "loaded_at_text", "map_dump_json", "map_dump_text", "map_header_json", "map_header_text",
           "map_show_json", "map_show_text", "prog_header_json", "prog_header_text", "prog_show_json",
           "prog_show_text", "xlated_json", "xlated_text"]
