"""What the engines run: a program (instructions whose map references are indexes into `maps`), its maps'
definitions and initial contents, and its program type. Built by the random generator or from an example
object; every engine turns it into its own form (interpreter maps, kernel map fds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bpforge.elf import BpfObject
from bpforge.isa.maptypes import MapSpec
from bpforge.isa import Insn, format_insn, slot_starts


@dataclass
class DiffProgram:
    name: str
    insns: list[Insn]  # lddw map_fd / map_value carry imm = index into `maps`
    maps: list[MapSpec] = field(default_factory=list)
    prog_type: str = "xdp"
    # Entries written into the maps before every run: (map index, key, value); for per-CPU maps `value` is
    # one CPU's value, written into every CPU's slot.
    setup: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    seed: int | None = None
    # Maps the program only reads (tables a control plane fills): set up once, neither reset nor compared.
    config_maps: frozenset[int] = frozenset()
    # Machine options for the interpreter engines; a callable value is called at each run (a clock).
    vm_options: dict = field(default_factory=dict)
    # Context fields compared after the run (skb types): (name, offset, size) in the context struct.
    ctx_fields: tuple[tuple[str, int, int], ...] = ()
    # Runs of this program continue from the map state the previous run left (a packet sequence), instead
    # of starting from the definitions and setup each time.
    persistent: bool = False
    # The object and program this came from, if any: the kernel then loads it as libbpf does, with the
    # object's BTF (global functions are verified on their own only with it).
    obj: BpfObject | None = None
    obj_program: str | None = None

    def map_index(self, name: str) -> int:
        return [m.name for m in self.maps].index(name)

    def text(self) -> str:
        lines = [f"; {self.name} ({self.prog_type}){'' if self.seed is None else f', DIFF_SEED={self.seed}'}"]
        for i, m in enumerate(self.maps):
            lines.append(f"; map {i}: {m.name} {m.type_name} key {m.key_size} value {m.value_size} "
                         f"entries {m.max_entries} flags {m.flags:#x}{' (config)' if i in self.config_maps else ''}")
        for index, key, value in self.setup[:24]:
            lines.append(f"; setup map {index}[{key.hex()}] = {value.hex()}")
        if len(self.setup) > 24:
            lines.append(f"; ... {len(self.setup) - 24} more setup entries")
        for slot, insn in zip(slot_starts(self.insns), self.insns):
            lines.append(f"{slot:5d}: {format_insn(insn)}")
        return "\n".join(lines)


def from_object(obj: BpfObject, name: str | None = None, prog_type: str | None = None) -> DiffProgram:
    """Link program `name` of `obj` as libbpf does and turn its map/global-data references into indexes."""
    from bpforge.isa.progtypes import prog_type_of_section

    program = obj.program(name)
    linked = obj.linked(program)
    defs = {m.name: m for m in obj.maps}
    used: list[str] = []
    insns = list(linked.insns)
    for index, rel in linked.relocations:
        if rel.kind not in ("map", "data"):
            raise ValueError(f"{obj.filename}: {program.name}: cannot resolve {rel.kind} relocation of "
                             f"'{rel.target}'")
        if rel.target not in used:
            used.append(rel.target)
        slot = used.index(rel.target)
        if rel.kind == "map":
            insns[index] = Insn.make("lddw_map_fd", dst=insns[index].dst, imm=slot)
        else:
            insns[index] = Insn.make("lddw_map_value", dst=insns[index].dst, imm=slot, imm_hi=rel.offset)
    return DiffProgram(program.name, insns, [defs[n] for n in used],
                       prog_type or prog_type_of_section(program.section) or "xdp", obj=obj, obj_program=program.name)
