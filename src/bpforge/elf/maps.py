"""Map definitions, read the way loaders read them: BTF-defined maps in .maps (libbpf), legacy definitions in
`maps` and `maps/NAME` sections (libbpf before 1.0, samples/bpf's bpf_load, iproute2), and the array maps
libbpf creates for global data sections."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import ElfError
from ..isa.maptypes import (
    BPF_F_MMAPABLE, BPF_F_NUMA_NODE, BPF_F_RDONLY_PROG, MAP_IN_MAP_TYPES, MAP_TYPE_IDS, MapSpec, map_type_name,
)
from ..isa.numbers import PAGE_SIZE  # libbpf's sysconf(_SC_PAGE_SIZE): the unit of the arena's layout
from .btf import Btf, BtfType
from .layout import SHT_PROGBITS, STT_FILE, STT_SECTION, Sym
from .model import DataSection
from .names import ARENA_SECTION

if TYPE_CHECKING:
    from .bpfobject import BpfObject

BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_ARENA = MAP_TYPE_IDS["array"], MAP_TYPE_IDS["arena"]
NO_ARENA_MAP = 'to use global __arena variables the object must declare an arena map in SEC(".maps")'

# __uint(name, value) fields of a BTF map definition (libbpf's parse_btf_map_def).
_UINT_FIELDS = {"type", "max_entries", "map_flags", "numa_node", "pinning", "key_size", "value_size", "map_extra"}


def btf_maps(btf: Btf | None, section: str, size: int, symbols: dict[str, tuple[int, int]], values: dict[int, str],
             filename: str) -> list[MapSpec]:
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
    single_arena(maps, filename)  # libbpf refuses a second arena when it opens the object
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
                 filename: str, *, is_inner: bool = False) -> MapSpec:
    fields: dict[str, int] = {}
    key_type = value_type = None  # BTF ids
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
                if is_inner:  # as libbpf's parse_btf_map_def (and a self-referring definition ends here)
                    raise ElfError(f"map '{name}': multi-level inner maps are not supported", file=filename,
                                   section=section)
                inner = _from_struct(btf, target, f"{name}.inner", 0, section, {}, filename, is_inner=True)
            base = offset + m.offset // 8
            for byte, symbol in values.items():
                if base <= byte and (byte - base) % 8 == 0:
                    slots[(byte - base) // 8] = symbol
        # libbpf ignores unknown fields outside strict mode; so do we.
    map_type = fields.get("type", 0)
    if inner is not None and "value_size" not in fields:
        fields["value_size"] = 4  # map-in-map values are map fds
    return MapSpec(
        name=name, type=map_type, key_size=fields.get("key_size", 0), value_size=fields.get("value_size", 0),
        max_entries=fields.get("max_entries", 0), flags=fields.get("map_flags", 0), source="btf", section=section,
        offset=offset, pinning=fields.get("pinning", 0), numa_node=fields.get("numa_node"),
        map_extra=fields.get("map_extra", 0), btf_key_type_id=key_type, btf_value_type_id=value_type, inner=inner,
        values=slots)


_LEGACY_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags")
# What follows the five fields of libbpf's struct bpf_map_def, told apart by the definition's size:
# samples/bpf's bpf_load.c (and Katran) add inner_map_idx and numa_node (28 bytes); iproute2's
# struct bpf_elf_map adds id, pinning, inner_id and inner_idx (36 bytes).
_SAMPLES_FIELDS = ("inner_map_idx", "numa_node")
_IPROUTE2_FIELDS = ("id", "pinning", "inner_id", "inner_idx")
_SAMPLES_SIZE, _IPROUTE2_SIZE = 28, 36
_NO_INDEX = 0xFFFFFFFF  # iproute2's inner_idx = -1: not to be put into an outer map


@dataclass(frozen=True)
class LegacyMap:
    """A legacy definition as read, before map-in-map references between definitions are resolved."""

    mapdef: MapSpec
    fields: dict[str, int]  # every field the definition's layout has
    position: int  # index among the definitions of its section, in offset order (bpf_load's map_fd[] index)


def legacy_maps(data: bytes, syms: list[Sym], section: str, section_index: int, filename: str) -> list[LegacyMap]:
    """The definitions of one legacy map section, one per symbol, found by symbol offset: each spans the
    section size divided by the number of maps, as libbpf, iproute2 and bpf_load computed it. `syms` are the
    symbols of the section (others are ignored)."""
    entries = sorted((s for s in syms if s.shndx == section_index and s.type not in (STT_SECTION, STT_FILE)
                      and s.name), key=lambda s: s.value)
    if not entries:
        return []
    if len(data) % len(entries):
        raise ElfError(f"{len(data)} bytes of legacy map definitions do not divide among {len(entries)} maps",
                       file=filename, section=section)
    def_size = len(data) // len(entries)
    if def_size < 16:
        raise ElfError(f"legacy map definitions of {def_size} bytes are too small (need at least 16)",
                       file=filename, section=section)
    names = _LEGACY_FIELDS + (_IPROUTE2_FIELDS if def_size >= _IPROUTE2_SIZE else
                              _SAMPLES_FIELDS if def_size >= _SAMPLES_SIZE else ())
    count = min(len(names), def_size // 4)
    maps = []
    for position, sym in enumerate(entries):
        if sym.value + def_size > len(data):
            raise ElfError(f"legacy map '{sym.name}' at offset {sym.value} runs past the section end",
                           file=filename, section=section)
        values = dict.fromkeys(names, 0) | dict(zip(names, struct.unpack_from(f"<{count}I", data, sym.value)))
        map_type = values["type"]
        value_size = values["value_size"]
        if map_type_name(map_type) in MAP_IN_MAP_TYPES and value_size == 0:
            value_size = 4  # bpf_load left it out: map-in-map values are map fds
        numa = values["numa_node"] if "numa_node" in names and values["map_flags"] & BPF_F_NUMA_NODE else None
        maps.append(LegacyMap(MapSpec(
            name=sym.name, type=map_type, key_size=values["key_size"], value_size=value_size,
            max_entries=values["max_entries"], flags=values["map_flags"], source="legacy", section=section,
            offset=sym.value, pinning=values.get("pinning", 0), numa_node=numa), values, position))
    return maps


def link_legacy_maps(legacy: list[LegacyMap], filename: str) -> list[MapSpec]:
    """The definitions with their map-in-map references resolved, as their loaders resolve them:

    - bpf_load (samples/bpf, Katran): an outer map's inner template is the definition at `inner_map_idx`
      among those of its section, in offset order;
    - iproute2: an outer map's inner template is the definition whose `id` is its `inner_id`, and every
      definition with an `id`, no `inner_id` and an `inner_idx` other than -1 goes into slot `inner_idx` of
      each outer map naming its id (bpf_maps_attach_all).
    A reference to no definition leaves the outer map without a template (creating it then fails, naming it)."""
    by_section: dict[str, list[LegacyMap]] = {}
    for item in legacy:
        by_section.setdefault(item.mapdef.section, []).append(item)
    out = []
    for item in legacy:
        mapdef, fields = item.mapdef, item.fields
        if mapdef.type_name not in MAP_IN_MAP_TYPES:
            out.append(mapdef)
            continue
        inner, slots = None, {}
        if "inner_id" in fields:
            peers = [m for m in by_section[mapdef.section] if "id" in m.fields]
            template = next((m for m in peers if fields["inner_id"] and m.fields["id"] == fields["inner_id"]), None)
            inner = template.mapdef if template is not None else None
            for m in peers:
                f = m.fields
                if f["id"] and not f["inner_id"] and f["inner_idx"] != _NO_INDEX and f["id"] == fields["inner_id"]:
                    slots[f["inner_idx"]] = m.mapdef.name
        elif "inner_map_idx" in fields:
            peers = by_section[mapdef.section]
            index = fields["inner_map_idx"]
            inner = peers[index].mapdef if index < len(peers) and peers[index] is not item else None
        if inner is not None and inner.type_name in MAP_IN_MAP_TYPES:
            inner = None  # the kernel refuses a map of maps as an inner map; no template to give
        out.append(replace(mapdef, inner=inner, values=slots))
    return out


def data_map(sec: DataSection) -> MapSpec:
    """The single-element array libbpf creates for a global data section (its name there is prefixed with
    the object name; here it is the section name)."""
    flags = BPF_F_MMAPABLE | (BPF_F_RDONLY_PROG if sec.readonly else 0)
    return MapSpec(name=sec.name, type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=sec.size, max_entries=1,
                   flags=flags, source="data", section=sec.name, initial=sec.data)


# ---- arena globals (libbpf: init_arena_map_data, bpf_object__create_maps) ---------------------------------

def single_arena(maps: list[MapSpec], filename: str) -> MapSpec | None:
    """The object's arena map, or None. libbpf ties the __arena globals to the one arena an object may
    declare, and refuses a second one when it opens the object (bpf_object__init_user_btf_maps, EINVAL)."""
    arenas = [m for m in maps if m.type == BPF_MAP_TYPE_ARENA and m.source != "data"]
    if len(arenas) > 1:
        raise ElfError(f"map '{arenas[1].name}': only a single arena map is supported (map '{arenas[0].name}' "
                       "is also an arena)", file=filename, section=arenas[1].section)
    return arenas[0] if arenas else None


def arena_data_offset(max_entries: int, data_size: int, page_size: int = PAGE_SIZE) -> int:
    """Where libbpf puts the __arena globals in the arena: at the end of its mmap'd range (max_entries
    pages), rounded down to a page (obj->arena_data_off = mmap_sz - roundup(data_sz, page_sz)), so that the
    arena's first pages stay free to act as NULL guards. The byte offset from user_vm_start."""
    return max_entries * page_size - -(-data_size // page_size) * page_size


def arena_value_offset(arena: MapSpec, offset: int) -> int:
    """The value offset libbpf gives the arena map in an lddw of the __arena variable at `offset` in
    `.addr_space.1` (reloc_desc->sym_off: arena_data_off + the variable's offset); `arena` as
    `with_arena_data` returns it."""
    return arena_data_offset(arena.max_entries, len(arena.initial or b"")) + offset


def with_arena_data(obj: BpfObject) -> BpfObject:
    """The object with its arena map's `initial` set to the bytes of `.addr_space.1`, which libbpf copies
    into the arena's user mapping at `arena_data_offset` when it creates the map. libbpf takes the section
    only as PROGBITS with contents (what clang emits, zero-initialized variables included); it refuses
    globals without an arena map (ENOENT) or more of them than the arena holds (E2BIG)."""
    index = obj.image.index(ARENA_SECTION)
    raw = obj.image.sections[index] if index is not None else None
    if raw is None or raw.header.type != SHT_PROGBITS or raw.header.size == 0:
        return obj
    where = dict(file=obj.filename, section=ARENA_SECTION)
    arena = single_arena(obj.maps, obj.filename)
    if arena is None:
        raise ElfError(NO_ARENA_MAP, **where)
    if arena.initial is not None:
        return obj
    size = raw.header.size
    mmap_size = arena.max_entries * PAGE_SIZE
    if arena_data_offset(arena.max_entries, size) < 0:
        raise ElfError(f"the arena map '{arena.name}' ({mmap_size} bytes) is too small to hold the global __arena "
                       f"variables ({size} bytes)", **where)
    data = bytes(raw.data[:size])
    return replace(obj, maps=[replace(m, initial=data) if m is arena else m for m in obj.maps])
