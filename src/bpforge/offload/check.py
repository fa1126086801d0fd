"""Can a device run this program? Every instruction's needs as data (`needs_of`: a helper, division by a
register, an atomic operation, a v4 form, a tail call ...), each map's placement (on the device, on the
host where the device can reach it, or nowhere the device can), and the program's own needs (its type,
size and stack); what the profile does not meet becomes a `Reason` in plain words with the instruction
index and source line, and a suggested rewrite where a simple one exists.

The verdict: `offloadable` (no reason), `partly` (the program type is one the device attaches and some
instructions run there before the first that cannot: a multi-stage split can hand the rest to the host),
or `host only`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..analysis.frame import Frame, MapHandle, program_frame_states
from ..elf.lines import where
from ..isa.helpers import helper_id, helper_name
from ..isa.maptypes import PERCPU_TYPES, MapSpec, map_type_name
from ..isa.ops import (
    AddrSpaceCast, Alu, Atomic, Call, Imm, LegacyLoad, Load, LoadImm64, MayGoto, Store, Unary, decode_ops,
)
from ..verifier.report import program_inputs
from .profile import DeviceProfile
from .stage import SEARCH_BUDGET, Cut, StageError, explicit_cut, plan_cut

OFFLOADABLE, PARTLY, HOST_ONLY = "offloadable", "partly", "host only"
TAIL_CALL = helper_id("tail_call")
GOTOL = 0x06  # BPF_JMP32 | BPF_JA
# The argument register that names the map a helper works on (r1 for most; perf_event_output(ctx, map, ...)
# and tail_call(ctx, prog_array, index) take it second).
_MAP_HELPER_ARG = {**{name: 1 for name in ("map_lookup_elem", "map_update_elem", "map_delete_elem", "map_push_elem",
                                           "map_pop_elem", "map_peek_elem", "for_each_map_elem", "redirect_map",
                                           "ringbuf_output", "ringbuf_reserve")},
                   "perf_event_output": 2, "tail_call": 2}
# A map type the device lacks, and the nearest one it may have: the rewrite a developer makes by hand
# (the NFP demo's per-CPU array -> array), with what it changes.
_NEAREST = {"percpu_array": ("array", "one copy of each value: concurrent updates need atomic adds"),
            "percpu_hash": ("hash", "one copy of each value: concurrent updates need atomic adds"),
            "lru_hash": ("hash", "no eviction: updates fail with -E2BIG once the map is full"),
            "lru_percpu_hash": ("hash", "no eviction and one copy of each value")}


@dataclass(frozen=True)
class Need:
    """Something one instruction needs of the machine that runs it."""

    kind: str  # helper | division | signed_division | atomic | atomic_fetch | tail_call | bpf_call | kfunc
    #           | legacy_load | cpu_v4 | may_goto | arena
    what: str  # in words, e.g. "bpf_ktime_get_ns (#5)", "division by a register"
    detail: str = ""  # the helper's name, the atomic operation


@dataclass(frozen=True)
class Reason:
    kind: str  # a Need's kind, or map | prog_type | size | stack
    message: str
    insn: int | None = None
    line: str | None = None
    map: str | None = None
    suggestion: str | None = None

    def as_json(self) -> dict:
        return {"kind": self.kind, "insn": self.insn, "line": self.line, "map": self.map, "message": self.message,
                "suggestion": self.suggestion}


@dataclass(frozen=True)
class Placement:
    map: str
    type: str
    where: str  # device | host | none
    bytes: int
    access_cycles: int  # a helper call on it from the device (the host's: a round trip)
    why: str = ""

    def as_json(self) -> dict:
        return {"map": self.map, "type": self.type, "where": self.where, "bytes": self.bytes,
                "access_cycles": self.access_cycles, "why": self.why}


@dataclass(frozen=True)
class OffloadReport:
    device: str
    program: str
    verdict: str
    reasons: list[Reason]
    placements: list[Placement]
    blocked: frozenset[int]  # slots the device cannot run
    device_maps: frozenset[int]  # map indexes (as `program_inputs` numbers them) held on the device
    insns: int
    stack: int
    notes: list[str] = field(default_factory=list)
    cut: Cut | None = None  # the multi-stage split of a partly offloadable program (None: not looked for)
    # What the cut is of: the linked instructions and the maps their lddws name by index (for `stage.split`).
    stage_inputs: tuple[list, list[MapSpec]] | None = field(default=None, repr=False)

    def as_json(self) -> dict:
        return {"device": self.device, "program": self.program, "verdict": self.verdict, "insns": self.insns,
                "stack": self.stack, "reasons": [r.as_json() for r in self.reasons],
                "maps": [p.as_json() for p in self.placements], "blocked_insns": sorted(self.blocked),
                "notes": self.notes, "stage": None if self.cut is None else
                {"device_insns": len(self.cut.device_slots), "meta_bytes": self.cut.meta_size,
                 "explanation": list(self.cut.explanation)}}

    def text(self) -> str:
        """The report for a reader: reasons with the same words grouped (every instruction listed, its
        source line beside it), then where each map lives."""
        lines = [f"{self.program} on {self.device}: {self.verdict} ({self.insns} instructions, {self.stack} "
                 f"bytes of stack)"]
        groups: dict[tuple[str, str | None], list[Reason]] = {}
        for r in self.reasons:
            groups.setdefault((r.message, r.suggestion), []).append(r)
        for (message, suggestion), found in groups.items():
            at = [f"{r.insn}" + (f" ({r.line})" if r.line else "") for r in found if r.insn is not None]
            where_ = f"insn{'s' if len(at) > 1 else ''} {', '.join(at)}: " if at else ""
            lines.append(f"  {where_}{message}" + (f"\n    suggestion: {suggestion}" if suggestion else ""))
        for p in self.placements:
            place = {"device": "fits on the device", "host": "stays on the host, reached from the device",
                     "none": "nowhere the device reaches"}[p.where]
            lines.append(f"  map {p.map} ({p.type}, {p.bytes} bytes): {place}"
                         + (f", {p.access_cycles} cycles a call" if p.where != "none" else "")
                         + (f" ({p.why})" if p.why else ""))
        lines += [f"  note: {n}" for n in self.notes]
        if self.cut is not None:
            lines.append("  multi-stage split (offload run stages it):")
            lines += [f"    {line}" for line in self.cut.explanation]
        return "\n".join(lines)


def needs_of(op, opcode: int = 0) -> list[Need]:
    """What one decoded instruction needs beyond the base ISA (32/64-bit ALU, jumps, loads and stores);
    `opcode`, its raw opcode, tells the forms decoding folds together (gotol is a `Jump` like ja)."""
    cls = op.__class__
    needs: list[Need] = []
    if opcode == GOTOL:
        needs.append(Need("cpu_v4", "long jump gotol (cpu v4)"))
    if cls is Alu:
        if op.op in ("div", "mod", "sdiv", "smod"):
            kind = "signed" if op.op in ("sdiv", "smod") else "unsigned"
            by = "a constant" if isinstance(op.src, Imm) else "a register"
            needs.append(Need("division", f"{kind} {'division' if 'div' in op.op else 'modulo'} by {by}",
                              "constant" if isinstance(op.src, Imm) else "register"))
            if kind == "signed":
                needs.append(Need("signed_division", f"signed {op.op} (cpu v4)"))
        if op.op == "movsx":
            needs.append(Need("cpu_v4", f"sign-extending move from {op.ext} bits (cpu v4)"))
    elif cls is Unary and op.op == "bswap":
        needs.append(Need("cpu_v4", f"unconditional byte swap bswap{op.width} (cpu v4)"))
    elif cls is Load and (op.signed or op.acquire):
        needs.append(Need("cpu_v4", "load-acquire (cpu v4)" if op.acquire else "sign-extending load (cpu v4)"))
    elif cls is Store and op.release:
        needs.append(Need("cpu_v4", "store-release (cpu v4)"))
    elif cls is Atomic:
        needs.append(Need("atomic", f"atomic {op.op} of {op.size * 8} bits", op.op))
        if op.fetch and op.op not in ("xchg", "cmpxchg"):
            needs.append(Need("atomic_fetch", f"atomic fetch-and-{op.op} (the old value returned)", op.op))
    elif cls is MayGoto:
        needs.append(Need("may_goto", "may_goto (bounded loop)"))
    elif cls is AddrSpaceCast:
        needs.append(Need("arena", "arena address-space cast"))
    elif cls is LegacyLoad:
        needs.append(Need("legacy_load", "legacy packet load ld_abs/ld_ind"))
    elif cls is Call:
        if op.kind == "helper":
            name = _short_name(op.target)
            needs.append(Need("helper", f"bpf_{name} (#{op.target})", name))
            if op.target == TAIL_CALL:
                needs.append(Need("tail_call", "a tail call"))
        elif op.kind == "kfunc":
            needs.append(Need("kfunc", f"kernel function (BTF id {op.target})"))
        else:
            needs.append(Need("bpf_call", "a bpf-to-bpf call"))
    return needs


def unmet(need: Need, profile: DeviceProfile) -> tuple[str, str | None] | None:
    """(why the device cannot, suggested rewrite) for a need the profile does not meet, else None."""
    f = profile.features
    if need.kind == "helper":
        if profile.serves_helper(need.detail):
            return None
        return f"{need.what} is not a helper the device serves", None
    if need.kind == "division":
        if f.division == "full" or f.division == "constants" and need.detail == "constant":
            return None
        if f.division == "none":
            return f"{need.what}: the device has no divider", "shift or multiply instead, or keep it on the host"
        return (f"{need.what}: the device divides by constants only",
                "divide by a constant (a power of two: a shift), or keep it on the host")
    if need.kind == "signed_division":
        return None if f.signed_division else (f"{need.what}: no signed division on the device",
                                               "unsigned division on non-negative values")
    if need.kind == "atomic":
        return None if profile.does_atomic(need.detail) else (
            f"{need.what}: the device's atomics are {', '.join(sorted(f.atomics)) or 'none'}",
            "a plain read-modify-write where one CPU updates the value" if need.detail != "add" else None)
    if need.kind == "atomic_fetch":
        return None if f.atomic_fetch else (f"{need.what}: the device's atomics return no old value",
                                            "lock add without using the old value")
    flag = {"tail_call": f.tail_calls, "bpf_call": f.bpf_calls, "kfunc": f.kfuncs, "legacy_load":
            f.legacy_packet_loads, "cpu_v4": f.cpu_v4, "may_goto": f.may_goto, "arena": f.arena}[need.kind]
    if flag:
        return None
    suggestion = {"cpu_v4": "compile with clang -mcpu=v3", "legacy_load": "direct packet access (data/data_end)",
                  "bpf_call": "mark the function __always_inline"}.get(need.kind)
    return f"{need.what}: not supported by the device", suggestion


def check(loaded, profile: DeviceProfile, *, stage: bool = True, budget: float | None = SEARCH_BUDGET,
          points: Sequence[int] | None = None) -> OffloadReport:
    """The offload report of a `formats.LoadedProgram` on `profile`'s device. `stage`: for an XDP program
    the device can run only in part, look for the multi-stage split (`stage.plan_cut`, for `budget`
    seconds): the verdict is "partly" when there is one (`OffloadReport.cut`), "host only" when there is
    none. `points`: the points of the split, as the user chose them (explicit mode; StageError, one line,
    when they are not eligible)."""
    insns, specs, lines = program_inputs(loaded)
    maps = dict(enumerate(specs)) if isinstance(specs, list) else dict(specs)
    ops = decode_ops(insns)

    def line_of(slot: int | None) -> str | None:
        return where(lines[slot]) if lines is not None and slot is not None and slot < len(lines) else None

    reasons: list[Reason] = []
    blocked: set[int] = set()
    name = loaded.name or loaded.filename
    if not profile.takes_prog_type(loaded.prog_type):
        reasons.append(Reason("prog_type", f"{loaded.prog_type} programs do not attach to the device (it takes "
                                           f"{', '.join(sorted(profile.prog_types))})"))
    count = sum(op is not None for op in ops)
    if profile.limits.insns and count > profile.limits.insns:
        reasons.append(Reason("size", f"{count} instructions, more than the device's {profile.limits.insns}"))
    opcodes = _opcodes(insns)
    for slot, op in enumerate(ops):
        if op is None:
            continue
        for need in needs_of(op, opcodes[slot]):
            why = unmet(need, profile)
            if why is not None:
                reasons.append(Reason(need.kind, why[0], slot, line_of(slot), suggestion=why[1]))
                blocked.add(slot)
    states = program_frame_states(ops)
    stack = _stack_depth(ops, states)
    if profile.limits.stack and stack > profile.limits.stack:
        reasons.append(Reason("stack", f"{stack} bytes of stack, more than the device's {profile.limits.stack}"))
    placements, device_maps = _place(maps, profile)
    for slot, ref in _map_uses(ops, states):
        placement = placements.get(ref)
        if placement is not None and placement.where == "none":
            spec = maps[ref]
            nearest = _NEAREST.get(placement.type)
            suggestion = None
            if nearest is not None and profile.holds_map_type(nearest[0]):
                suggestion = f"declare {spec.name} as {nearest[0]} ({nearest[1]})"
            elif "exceeds" in placement.why:
                suggestion = f"make {spec.name} smaller"
            reasons.append(Reason("map", f"map {spec.name} ({placement.type}) cannot live on the device: "
                                         f"{placement.why}", slot, line_of(slot), spec.name, suggestion))
            blocked.add(slot)
    notes = [f"map {p.map} stays on the host: {p.access_cycles} cycles a call from the device"
             for p in placements.values() if p.where == "host"]
    program_level = any(r.kind in ("prog_type", "size", "stack") for r in reasons)
    cut = None
    if not reasons:
        verdict = OFFLOADABLE
    elif program_level or 0 in blocked:  # the device could not even start
        verdict = HOST_ONLY
    elif loaded.prog_type != "xdp":
        verdict = HOST_ONLY
        notes.append(f"a {loaded.prog_type} program cannot be staged: the hand-off to the host goes through XDP "
                     "metadata")
    elif not stage:
        verdict = PARTLY
    elif sorted(maps) != list(range(len(maps))):
        verdict = HOST_ONLY
        notes.append("a program whose lddws name maps by fd numbers (K2) is not staged: the split numbers them "
                     "from 0")
    elif points is not None:
        cut = explicit_cut(insns, [maps[i] for i in range(len(maps))], frozenset(blocked), frozenset(device_maps),
                           list(points), prog_type=loaded.prog_type)
        verdict = PARTLY
    else:
        try:
            cut = plan_cut(insns, [maps[i] for i in range(len(maps))], frozenset(blocked), frozenset(device_maps),
                           prog_type=loaded.prog_type, budget=budget)
            verdict = PARTLY
        except StageError as err:
            verdict = HOST_ONLY
            notes.append(f"no multi-stage split: {err.message}")
    reasons.sort(key=lambda r: (r.insn is not None, r.insn or 0))
    return OffloadReport(profile.name, name, verdict, reasons, list(placements.values()), frozenset(blocked),
                         frozenset(device_maps), count, stack, notes, cut,
                         None if cut is None else (insns, [maps[i] for i in range(len(maps))]))


def _stack_depth(ops, states) -> int:
    """The deepest stack byte an access reaches through r10 or a register known to hold r10 + c."""
    depth = 0
    for slot, op in enumerate(ops):
        if op is None or op.__class__ not in (Load, Store, Atomic):
            continue
        base = op.base
        regs = states.get(slot)
        at = 0 if base == 10 else regs[base].offset if regs and isinstance(regs[base], Frame) else None
        if at is not None:
            depth = max(depth, -(at + op.off))
    return depth


def _map_uses(ops, states) -> list[tuple[int, int]]:
    """(slot, map index) of every instruction that names a map: its lddw, and the helper calls whose map
    argument holds that map's handle on every path."""
    uses = []
    for slot, op in enumerate(ops):
        if op is None:
            continue
        if op.__class__ is LoadImm64 and op.kind in ("map", "map_value"):
            uses.append((slot, op.value))
        elif op.__class__ is Call and op.kind == "helper":
            arg = _MAP_HELPER_ARG.get(_short_name(op.target))
            regs = states.get(slot)
            if arg is not None and regs is not None and isinstance(regs[arg], MapHandle):
                uses.append((slot, regs[arg].ref))
    return uses


def _place(maps: dict[int, MapSpec], profile: DeviceProfile) -> tuple[dict[int, Placement], set[int]]:
    """Where each map lives: on the device while its type and sizes are the device's and its memory lasts
    (in declaration order), else on the host if the device reaches host maps, else nowhere it can use."""
    limits = profile.limits
    placements: dict[int, Placement] = {}
    on_device: set[int] = set()
    used = 0
    for ref, spec in sorted(maps.items()):
        type_name = map_type_name(spec.type)
        size = spec.max_entries * (spec.key_size + spec.value_size)
        why = ""
        if not profile.holds_map_type(type_name):
            why = f"the device holds {', '.join(sorted(profile.map_types))} maps only"
            if type_name in PERCPU_TYPES:
                why = "no per-CPU maps on the device; " + why
        elif limits.max_entries and spec.max_entries > limits.max_entries:
            why = f"{spec.max_entries} entries exceeds the device's {limits.max_entries}"
        elif limits.max_key_size and spec.key_size > limits.max_key_size:
            why = f"a {spec.key_size}-byte key exceeds the device's {limits.max_key_size}"
        elif limits.max_value_size and spec.value_size > limits.max_value_size:
            why = f"a {spec.value_size}-byte value exceeds the device's {limits.max_value_size}"
        elif limits.map_memory and used + size > limits.map_memory:
            why = f"{size} bytes exceeds the {limits.map_memory - used} left of the device's map memory"
        if not why:
            used += size
            on_device.add(ref)
            placements[ref] = Placement(spec.name, type_name, "device", size, profile.helper_cost("map_lookup_elem"))
        elif profile.host_map_access:
            placements[ref] = Placement(spec.name, type_name, "host", size, profile.costs["host_map_access"], why)
        else:
            placements[ref] = Placement(spec.name, type_name, "none", size, 0, why)
    return placements, on_device


def _short_name(helper: int) -> str:
    """A helper's name as profiles spell it (no bpf_ prefix), or #id for one the table lacks."""
    return (helper_name(helper) or f"#{helper}").removeprefix("bpf_")


def _opcodes(insns) -> list[int]:
    """The raw opcode at each slot (0 in an lddw's second)."""
    out: list[int] = []
    for insn in insns:
        out.append(insn.opcode)
        if insn.opcode == 0x18:  # BPF_LD | BPF_IMM | BPF_DW takes two slots
            out.append(0)
    return out


__all__ = ["HOST_ONLY", "OFFLOADABLE", "PARTLY", "Need", "OffloadReport", "Placement", "Reason", "check", "needs_of",
           "unmet"]
