"""A program ready to run in the interpreter: linked instructions with map and data references resolved to
the interpreter's maps (by index, as lddw map_fd/map_value with imm = that index)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..elf import BpfObject, MapDef
from ..elf.model import Reloc
from ..errors import BpforgeError
from ..isa import Insn, slot_starts


@dataclass
class VmProgram:
    name: str
    insns: list[Insn]
    maps: list = field(default_factory=list)  # VmMap objects; lddw map_fd/map_value imm indexes this list
    map_names: list[str] = field(default_factory=list)
    functions: dict[int, str] = field(default_factory=dict)
    compiled: object = field(default=None, repr=False, compare=False)  # the fast tier's translation

    def map(self, name: str):
        return self.maps[self.map_names.index(name)]


def from_object(obj: BpfObject, name: str | None = None, *, maps: Mapping[str, object] | None = None,
                num_cpus: int = 1) -> VmProgram:
    """The program `name` of an object, linked as libbpf links it, with interpreter maps for every map and
    global-data section it uses (`maps` supplies some by name: shared with another program, preloaded)."""
    from .maps import create_map

    program = obj.program(name)
    linked = obj.linked(program)
    defs: dict[str, MapDef] = {m.name: m for m in obj.maps}
    table: dict[str, object] = dict(maps or {})
    return resolve(linked.name, linked.insns, linked.relocations, defs, table,
                   lambda d: create_map(d, num_cpus=num_cpus), linked.functions)


def resolve(name: str, insns: Sequence[Insn], relocations: Sequence[tuple[int, Reloc]], defs: Mapping[str, MapDef],
            table: dict[str, object], make_map, functions: Mapping[int, str] | None = None) -> VmProgram:
    names: list[str] = []
    out = list(insns)
    starts = slot_starts(insns)
    for index, rel in relocations:
        if rel.kind not in ("map", "data"):
            if rel.kind in ("call", "func"):
                continue  # linked() already made these pc-relative
            raise BpforgeError(f"{rel.kind} symbol '{rel.target}' cannot be resolved in the interpreter",
                               insn=starts[index])
        map_name = rel.target
        if map_name not in names:
            if map_name not in table:
                if map_name not in defs:
                    raise BpforgeError(f"no map or data section named '{map_name}'", insn=starts[index])
                table[map_name] = make_map(defs[map_name])
            names.append(map_name)
        slot = names.index(map_name)
        if rel.kind == "map":
            out[index] = Insn.make("lddw_map_fd", dst=insns[index].dst, imm=slot)
        else:
            out[index] = Insn.make("lddw_map_value", dst=insns[index].dst, imm=slot, imm_hi=rel.offset)
    return VmProgram(name, out, [table[n] for n in names], names, dict(functions or {0: name}))


def from_insns(insns: Sequence[Insn], maps: Sequence[object] = (), name: str = "prog") -> VmProgram:
    """A raw program whose lddw map_fd/map_value instructions already hold indexes into `maps`."""
    return VmProgram(name, list(insns), list(maps), [getattr(m, "name", str(i)) for i, m in enumerate(maps)])


def from_loaded(loaded, *, num_cpus: int = 1) -> VmProgram:
    """What `formats.load_program` read, ready for the interpreter: an object's program with its maps and
    global data, a K2 program with maps from NAME.maps (lddw map_fd imm = the map's fd there), or map-less
    raw/asm code."""
    if loaded.object is not None:
        return from_object(loaded.object, loaded.name, num_cpus=num_cpus)
    if loaded.relocations:
        rel = loaded.relocations[0]
        raise BpforgeError(f"symbol '{rel.symbol}' needs a relocation: assemble to an object (.o) with its maps",
                           file=loaded.filename)
    maps: list = []
    if loaded.maps:
        from .maps import create_map
    for spec in loaded.maps:  # K2: the program names maps by their fd
        fd = getattr(spec, "fd", len(maps))
        maps += [None] * (fd + 1 - len(maps))
        maps[fd] = create_map(spec, num_cpus=num_cpus)
    return from_insns(loaded.insns, maps, loaded.name or "prog")
