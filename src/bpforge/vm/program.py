"""A program ready to run in the interpreter: linked instructions with map and data references resolved to
the interpreter's maps (by index, as lddw map_fd/map_value with imm = that index: what `elf.maprefs`
makes of an object's relocations, given the index of each map)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..elf import BpfObject
from ..elf.maprefs import resolve_map_relocations
from ..elf.maps import with_arena_data
from ..elf.model import Reloc
from ..errors import BpforgeError
from ..isa import Insn, branch_target, slot_starts
from ..isa.maptypes import MapSpec
from ..isa.numbers import M32
from .kernel_view import vm_view
from .maps import VmMap, create_map, fill_slots
from .maps.arena import ArenaMap
from .memory import VmFault


@dataclass
class VmProgram:
    name: str
    insns: list[Insn]
    maps: list = field(default_factory=list)  # VmMap objects; lddw map_fd/map_value imm indexes this list
    map_names: list[str] = field(default_factory=list)
    functions: dict[int, str] = field(default_factory=dict)
    compiled: object = field(default=None, repr=False, compare=False)  # the fast tier's translation
    decoded: list | None = field(default=None, repr=False, compare=False)  # the interpreter's ops by slot
    # The running kernel's struct bpf_map (kernel_view.MapStructLayout) when the program reads map fields
    # through a map pointer: map handles are then backed by those bytes.
    map_layout: object = field(default=None, repr=False, compare=False)

    def map(self, name: str):
        return self.maps[self.map_names.index(name)]

    def map_at(self, index: int):
        """The map an lddw map_fd/map_value with imm = `index` refers to."""
        if not 0 <= index < len(self.maps):
            raise VmFault(f"map reference {index} but the program has {len(self.maps)} maps")
        return self.maps[index]

    @cached_property
    def slots(self) -> int:
        return slot_starts(self.insns)[-1] + self.insns[-1].slots if self.insns else 0

    @cached_property
    def entries(self) -> tuple[int, ...]:
        """Entry slots of the program's functions: 0, every local call target and every lddw func target.
        Control stays inside its function in both tiers: a jump or fall-through out of it is a fault, as the
        kernel's verifier would refuse it."""
        found = {0}
        for insn, slot in zip(self.insns, slot_starts(self.insns)):
            if insn.form.name in ("call_local", "lddw_func"):
                found.add(branch_target(insn, slot))
        return tuple(sorted(e for e in found if 0 <= e < max(self.slots, 1)))

    def function_bounds(self, slot: int) -> tuple[int, int]:
        """[start, end) of the function holding `slot`."""
        entries = self.entries
        i = bisect_right(entries, slot) - 1
        start = entries[max(i, 0)]
        return start, entries[i + 1] if i + 1 < len(entries) else self.slots

    @cached_property
    def has_may_goto(self) -> bool:
        return any(insn.form.kind == "may_goto" for insn in self.insns)


def from_object(obj: BpfObject, name: str | None = None, *, maps: Mapping[str, object] | None = None,
                num_cpus: int = 1) -> VmProgram:
    """The program `name` of an object, linked as libbpf links it, with interpreter maps for every map and
    global-data section it uses (`maps` supplies some by name: shared with another program, preloaded).

    Maps declared with initial slots (`.values = { ... }` in `.maps`) are filled as libbpf fills them
    after loading: a prog_array with the object's programs of those names (each linked and resolved the
    same way, sharing this program's maps), a map of maps with the object's maps of those names."""
    obj = with_arena_data(obj)  # the arena map holds the __arena globals, as libbpf creates it
    defs: dict[str, MapSpec] = {m.name: m for m in obj.maps}
    table: dict[str, object] = dict(maps or {})
    programs: dict[str, VmProgram] = {}
    make_map = lambda d: create_map(d, num_cpus=num_cpus)  # noqa: E731
    filled: set[str] = set(table)  # maps given by the caller are the caller's to fill

    def load(prog_name: str | None) -> VmProgram:
        program = obj.program(prog_name)
        if program.name in programs:
            return programs[program.name]
        view = vm_view(obj, obj.linked(program))  # CO-RE, externs, kfuncs: as against the running kernel
        linked = view.linked
        defs.update((m.name, m) for m in view.maps if m.name not in defs)
        vmprog = resolve(linked.name, linked.insns, linked.relocations, defs, table, make_map, linked.functions)
        vmprog.map_layout = view.map_layout
        programs[program.name] = vmprog
        for map_name in list(table):
            if map_name not in filled and defs.get(map_name) is not None and defs[map_name].values:
                filled.add(map_name)
                fill_slots(defs[map_name], table[map_name],
                           lambda kind, n: load(n) if kind == "program" else _map_by_name(n, defs, table, make_map))
        return vmprog

    return load(name)


def _map_by_name(name: str, defs: Mapping[str, MapSpec], table: dict[str, object], make_map):
    """The run's map of that name, made from its definition on first use."""
    if name not in table:
        if name not in defs:
            raise BpforgeError(f"no map or data section named '{name}'")
        table[name] = make_map(defs[name])
    return table[name]


def resolve(name: str, insns: Sequence[Insn], relocations: Sequence[tuple[int, Reloc]],
            defs: Mapping[str, MapSpec], table: dict[str, object], make_map: Callable[[MapSpec], VmMap],
            functions: Mapping[int, str] | None = None) -> VmProgram:
    """The program with its map references resolved (`elf.maprefs`): each map's number is its index in the
    program's `maps`, in order of first reference; maps come from `table` by name, or are made from their
    definitions in `defs` (and put in `table`) on first use."""
    names: list[str] = []

    def handle(map_name: str, spec: MapSpec | None) -> int | None:
        if map_name not in names:
            if map_name not in table:
                if spec is None:
                    return None
                table[map_name] = make_map(spec)
            names.append(map_name)
        return names.index(map_name)

    out = resolve_map_relocations(insns, relocations, list(defs.values()), handle)
    maps = [table[n] for n in names]
    return VmProgram(name, _arena_values(out, maps), maps, names, dict(functions or {0: name}))


def from_insns(insns: Sequence[Insn], maps: Sequence[object] = (), name: str = "prog") -> VmProgram:
    """A raw program whose lddw map_fd/map_value instructions already hold indexes into `maps`. A value load
    of an arena becomes the constant the verifier makes of it (the user address it names)."""
    return VmProgram(name, _arena_values(insns, maps), list(maps),
                     [m.name if m is not None else str(i) for i, m in enumerate(maps)])


def _arena_values(insns: Sequence[Insn], maps: Sequence[object]) -> list[Insn]:
    """Value loads of an arena become the constant the verifier makes of them: the user address they name."""
    out = list(insns)
    if not any(isinstance(m, ArenaMap) for m in maps):
        return out
    starts = slot_starts(out)
    for i, insn in enumerate(out):
        if insn.form.name not in ("lddw_map_value", "lddw_map_idx_value") or not 0 <= insn.imm < len(maps):
            continue
        arena = maps[insn.imm]
        if isinstance(arena, ArenaMap):
            try:
                out[i] = Insn.make("lddw", dst=insn.dst, imm64=arena.direct_value_addr(insn.imm_hi & M32))
            except BpforgeError as err:
                raise err.at(insn=starts[i]) from None
    return out


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
    for spec in loaded.maps:  # K2: the program names maps by their fd there (`ref`)
        ref = spec.ref if spec.ref is not None else len(maps)
        maps += [None] * (ref + 1 - len(maps))
        maps[ref] = create_map(spec, num_cpus=num_cpus)
    return from_insns(loaded.insns, maps, loaded.name or "prog")
