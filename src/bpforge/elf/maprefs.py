"""What an lddw of a map, of global data or of an __arena global resolves to, decided once for every engine
(libbpf's bpf_object__relocate_data): the VM and the kernel each supply only "the number of map X" — an
index into the VM program's maps, a kernel map fd — through `handle`.

- kind "map": the map itself: lddw src_reg BPF_PSEUDO_MAP_FD, imm = the map's number;
- kind "data": a global variable: lddw src_reg BPF_PSEUDO_MAP_VALUE, imm = the number of the section's
  array map, the second imm = the variable's byte offset in the section (which must lie inside it);
- kind "arena": an __arena variable: a value load of the object's arena map at the place libbpf puts
  `.addr_space.1` in it (`maps.arena_value_offset`);
- "call" and "func" were made pc-relative by linking; externs are resolved before (`externs`), kconfig
  ones into "data" references to `.kconfig`. Anything else left is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa.maptypes import MapSpec
from .maps import arena_value_offset
from .model import MAP_RELOC_KINDS, Reloc

# handle(name, spec) -> the engine's number for the map of that name (made from `spec` on first use), or
# None when the engine has no such map and `spec` is None (the program names a map nobody defines).
MapHandle = Callable[[str, "MapSpec | None"], "int | None"]


def find_map(maps: Sequence[MapSpec], kind: str, target: str) -> MapSpec | None:
    """The map a relocation of `kind` names: a declared map (or the arena) by name, global data by its
    section (whose array map libbpf makes)."""
    for spec in maps:
        if kind in ("map", "arena") and spec.name == target and spec.source != "data":
            return spec
        if kind == "data" and spec.source == "data" and spec.section == target:
            return spec
    return None


def resolve_map_relocations(insns: Sequence[Insn], relocations: Sequence[tuple[int, Reloc]],
                            maps: Sequence[MapSpec] | None, handle: MapHandle, *,
                            where: dict | None = None) -> list[Insn]:
    """`insns` with every map, global-data and arena-global lddw pointing at the engine's map numbers.
    `maps` are the specs the program may use (an object's, with `.kconfig`; None: no object, so only maps
    the engine already holds). BpforgeError, at the instruction, for a reference that does not resolve."""
    where = where or {}
    out = list(insns)
    starts = slot_starts(insns)
    for index, reloc in relocations:
        if reloc.kind in ("call", "func"):
            continue  # linking made these pc-relative
        at = dict(where, insn=starts[index])
        what = "global data" if reloc.kind == "data" else "map"
        if reloc.kind not in MAP_RELOC_KINDS:
            raise BpforgeError(f"{reloc.kind} symbol '{reloc.target}' is not resolved (externs are resolved "
                               "against the running kernel before loading)", **at)
        spec = find_map(maps, reloc.kind, reloc.target) if maps is not None else None
        if spec is None and maps is not None:
            noun = "data section" if reloc.kind == "data" else "map"
            raise BpforgeError(f"the object defines no {noun} '{reloc.target}'", **at)
        insn = insns[index]
        if insn.form.kind != "lddw":
            raise BpforgeError(f"relocation against '{reloc.target}' patches a {insn.form.name}, not an lddw", **at)
        if reloc.kind == "arena" and spec is None:
            raise BpforgeError(f"the program refers to the arena '{reloc.target}': pass the object", **at)
        try:
            number = handle(spec.name if spec is not None else reloc.target, spec)
        except BpforgeError as err:
            raise err.at(**at) from None
        if number is None:
            raise BpforgeError(f"the program refers to {what} '{reloc.target}': pass the object or the map", **at)
        if reloc.kind == "map":
            out[index] = Insn.make("lddw_map_fd", dst=insn.dst, imm=number)
            continue
        if reloc.kind == "arena":  # the verifier checks the offset against the arena (arena_map_direct_value_addr)
            offset = arena_value_offset(spec, reloc.offset)
        else:
            offset = reloc.offset
            size = spec.value_size if spec is not None else None
            if size is not None and not 0 <= offset < max(size, 1):
                raise BpforgeError(f"offset {offset} lies outside '{reloc.target}' ({size} bytes)", **at)
        out[index] = Insn.make("lddw_map_value", dst=insn.dst, imm=number, imm_hi=offset)
    return out


__all__ = ["MapHandle", "find_map", "resolve_map_relocations"]
