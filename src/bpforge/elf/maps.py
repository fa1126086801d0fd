"""Map definitions, read the way libbpf reads them: BTF-defined maps in .maps, legacy `struct bpf_map_def`
in `maps`, and the array maps libbpf creates for global data sections."""

from __future__ import annotations

import struct

from ..errors import ElfError
from .btf import Btf, BtfType
from .layout import STT_SECTION, Sym
from .model import DataSection, MapDef, map_type_name

BPF_MAP_TYPE_ARRAY = 2
BPF_F_RDONLY_PROG = 0x80
BPF_F_MMAPABLE = 0x400

# __uint(name, value) fields of a BTF map definition (libbpf's parse_btf_map_def).
_UINT_FIELDS = {"type", "max_entries", "map_flags", "numa_node", "pinning", "key_size", "value_size", "map_extra"}


def is_data_section(name: str) -> bool:
    """Sections libbpf turns into global data maps."""
    return any(name == base or name.startswith(base + ".") for base in (".data", ".rodata", ".bss"))


def btf_maps(btf: Btf | None, section: str, size: int, symbols: dict[str, tuple[int, int]], values: dict[int, str],
             filename: str) -> list[MapDef]:
    """Maps of a BTF-defined map section (.maps). clang leaves the DATASEC offsets 0 for the linker; like
    libbpf's btf_fixup_datasec, take them from the symbols (`symbols`: name -> (value, size)).
    `values` maps byte offsets in the section to the symbol a relocation puts there (initial contents of
    map-in-map and prog-array slots)."""
    if btf is None:
        raise ElfError(f"section {section} defines maps with BTF, but the object has no .BTF", file=filename,
                       section=section)
    datasec = btf.find("datasec", section)
    if datasec is None:
        if size == 0:
            return []
        raise ElfError(f"no BTF DATASEC describes {section}", file=filename, section=section)
    maps = []
    for var in datasec.members:
        var_type = btf[var.type]
        if var_type.kind != "var":
            raise ElfError(f"{section} entry at offset {var.offset} is a BTF {var_type.kind}, not a variable",
                           file=filename, section=section)
        definition = btf.skip_modifiers(var_type.type)
        if definition.kind != "struct":
            raise ElfError(f"map '{var_type.name}' is a BTF {definition.kind}, not a struct", file=filename,
                           section=section)
        offset, length = symbols.get(var_type.name, (var.offset, var.size))
        # The values[] array is a flexible member: only the symbol's size tells where this map ends.
        mine = {byte: sym for byte, sym in values.items() if offset <= byte < offset + max(length, definition.size)}
        maps.append(_from_struct(btf, definition, var_type.name, offset, section, mine, filename))
    return maps


def _uint(btf: Btf, type_id: int, what: str, filename: str) -> int:
    """`__uint(name, val)` is declared `int (*name)[val]`: the value is the pointee array's length."""
    ptr = btf.skip_modifiers(type_id)
    arr = btf.skip_modifiers(ptr.type) if ptr.kind == "ptr" else ptr
    if ptr.kind != "ptr" or arr.kind != "array":
        raise ElfError(f"map field {what} is not declared with __uint (a pointer to an array)", file=filename,
                       section=".maps")
    return arr.array[2]


def _from_struct(btf: Btf, definition: BtfType, name: str, offset: int, section: str, values: dict[int, str],
                 filename: str) -> MapDef:
    fields: dict[str, int] = {}
    key_type = value_type = None
    inner = None
    slots: dict[int, str] = {}
    for m in definition.members:
        where = f"{name}.{m.name}"
        if m.name in _UINT_FIELDS:
            fields[m.name] = _uint(btf, m.type, where, filename)
        elif m.name in ("key", "value"):
            ptr = btf.skip_modifiers(m.type)
            if ptr.kind != "ptr":
                raise ElfError(f"map field {where} is not declared with __type (a pointer)", file=filename,
                               section=section)
            fields[f"{m.name}_size"] = btf.size_of(ptr.type)
            if m.name == "key":
                key_type = ptr.type
            else:
                value_type = ptr.type
        elif m.name == "values":
            arr = btf.skip_modifiers(m.type)
            if arr.kind != "array":
                raise ElfError(f"map field {where} is not declared with __array", file=filename, section=section)
            elem = btf.skip_modifiers(arr.array[0])
            target = btf.skip_modifiers(elem.type) if elem.kind == "ptr" else elem
            if target.kind == "struct":  # map-in-map: the pointee describes the inner maps
                inner = _from_struct(btf, target, f"{name}.inner", 0, section, {}, filename)
            base = offset + m.offset // 8
            for byte, symbol in values.items():
                if base <= byte and (byte - base) % 8 == 0:
                    slots[(byte - base) // 8] = symbol
        # libbpf ignores unknown fields outside strict mode; so do we.
    map_type = fields.get("type", 0)
    if inner is not None and "value_size" not in fields:
        fields["value_size"] = 4  # map-in-map values are map fds
    return MapDef(
        name=name, type=map_type, type_name=map_type_name(map_type), key_size=fields.get("key_size", 0),
        value_size=fields.get("value_size", 0), max_entries=fields.get("max_entries", 0),
        flags=fields.get("map_flags", 0), source="btf", section=section, offset=offset,
        pinning=fields.get("pinning", 0), numa_node=fields.get("numa_node"), map_extra=fields.get("map_extra", 0),
        key_type=key_type, value_type=value_type, inner=inner, values=slots)


_LEGACY_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags")


def legacy_maps(data: bytes, syms: list[Sym], section: str, section_index: int, filename: str) -> list[MapDef]:
    """`struct bpf_map_def` entries of a legacy `maps` section, one per symbol, found by symbol offset
    (each definition spans the section size divided by the number of maps, as libbpf computed it)."""
    entries = sorted((s for s in syms if s.shndx == section_index and s.type != STT_SECTION and s.name),
                     key=lambda s: s.value)
    if not entries:
        return []
    def_size = len(data) // len(entries)
    if def_size < 16:
        raise ElfError(f"legacy map definitions of {def_size} bytes are too small (need at least 16)",
                       file=filename, section=section)
    maps = []
    for sym in entries:
        if sym.value + def_size > len(data):
            raise ElfError(f"legacy map '{sym.name}' at offset {sym.value} runs past the section end",
                           file=filename, section=section)
        count = min(len(_LEGACY_FIELDS), def_size // 4)
        values = dict(zip(_LEGACY_FIELDS, struct.unpack_from(f"<{count}I", data, sym.value)))
        maps.append(MapDef(
            name=sym.name, type=values["type"], type_name=map_type_name(values["type"]),
            key_size=values["key_size"], value_size=values["value_size"], max_entries=values["max_entries"],
            flags=values.get("map_flags", 0), source="legacy", section=section, offset=sym.value))
    return maps


def data_map(sec: DataSection) -> MapDef:
    """The single-element array libbpf creates for a global data section (its name there is prefixed with
    the object name; here it is the section name)."""
    flags = BPF_F_MMAPABLE | (BPF_F_RDONLY_PROG if sec.readonly else 0)
    return MapDef(name=sec.name, type=BPF_MAP_TYPE_ARRAY, type_name=map_type_name(BPF_MAP_TYPE_ARRAY), key_size=4,
                  value_size=sec.size, max_entries=1, flags=flags, source="data", section=sec.name,
                  initial=sec.data)
