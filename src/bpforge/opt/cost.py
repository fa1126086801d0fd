"""The optimizer's two performance models.

- `size`: 8-byte slots (an lddw is 2), what the kernel's instruction limit and K2's Table 1 count.
- `latency`: estimated nanoseconds per run on this machine: each slot's cost (per instruction form, per
  helper and map type, calibrated in the kernel by `opt.calibrate`) times how often it runs
  (`block_weights`: counted by running the program in bpforge's VM on sample packets).

Classes of the latency model (`LatencyModel.insn_ns` keys):
- ALU, mov, neg, byte-swap, load, store and atomic forms by their ISA-table form name (`add64_reg`,
  `ldx32`, `atomic_fetch_add64`, ...): the x86 JIT emits different code for an immediate and a register
  operand (an `add` of an immediate is even folded away by recent Intel renamers), so the form is the unit;
- `jump.taken` / `jump.not_taken` for every conditional jump (on x86 each is a cmp/test fused with a jcc:
  the condition and width do not change the cost, whether the branch goes does), `ja` (also gotol);
- `lddw` for every 64-bit immediate load (map references become the same movabs once the loader fixed
  them); `call.local` for a bpf-to-bpf call (with its callee's return); `exit` (the main function's return
  is part of the fixed per-run overhead every program pays, so 0 unless calibrated otherwise);
- helpers in `helper_ns`, keyed by id ("1") and, for map helpers, by id and map type ("1.array": the
  verifier inlines array lookups, so they cost a fraction of a hash lookup); `helper_default` for the rest,
  `insn_default` for forms the calibration could not measure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa.maptypes import MapSpec
from ..isa.ops import Atomic, Call, Jump, LegacyLoad, Store, decode_ops
from ..vm.interp import Machine, decoded
from ..vm.maps import create_map
from ..vm.memory import VmFault
from ..vm.program import from_insns

MODEL_FORMAT = 1
_MAP_HELPERS = frozenset({1, 2, 3, 51})  # map_lookup/update/delete_elem, redirect_map: r1 is the map


def size_cost(insns: Sequence[Insn]) -> int:
    """8-byte slots: what the kernel counts (an lddw is 2)."""
    return sum(insn.slots for insn in insns)


@dataclass(frozen=True)
class LatencyModel:
    """Nanoseconds per executed instruction class and per helper call on one machine (see the module
    docstring for the keys). `machine` records where it was measured (kernel, CPU, JIT, how);
    `measured` keeps the raw figures of every benchmark mode behind the chosen ones."""

    insn_ns: Mapping[str, float]
    helper_ns: Mapping[str, float]
    helper_default: float
    insn_default: float
    machine: Mapping[str, object] = field(default_factory=dict)
    measured: Mapping[str, Mapping[str, float]] = field(default_factory=dict, repr=False)

    @classmethod
    def default(cls) -> LatencyModel:
        """The model shipped with bpforge (`opt/data/latency.json`, measured by `bench/calibrate.py`)."""
        text = resources.files("bpforge.opt").joinpath("data/latency.json").read_text()
        return cls.from_json(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> LatencyModel:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as err:
            raise BpforgeError(f"cannot read the latency model: {err}", file=str(path)) from None

    @classmethod
    def from_json(cls, data: Mapping) -> LatencyModel:
        if data.get("format") != MODEL_FORMAT:
            raise BpforgeError(f"latency model format {data.get('format')!r}, expected {MODEL_FORMAT}")
        try:
            return cls({k: float(v) for k, v in data["insn_ns"].items()},
                       {str(k): float(v) for k, v in data["helper_ns"].items()},
                       float(data["helper_default"]), float(data["insn_default"]), dict(data.get("machine", {})),
                       {k: dict(v) for k, v in data.get("measured", {}).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise BpforgeError(f"malformed latency model: {err!r}") from None

    def to_json(self) -> dict:
        return {"format": MODEL_FORMAT, "machine": dict(self.machine),
                "insn_ns": dict(sorted(self.insn_ns.items())),
                "helper_ns": dict(sorted(self.helper_ns.items(), key=lambda kv: _helper_order(kv[0]))),
                "helper_default": self.helper_default, "insn_default": self.insn_default,
                "measured": {k: dict(v) for k, v in sorted(self.measured.items())}}

    def insn(self, key: str) -> float:
        return self.insn_ns.get(key, self.insn_default)

    def helper(self, helper_id: int, map_type: str | None = None) -> float:
        """A call of helper `helper_id` (on a map of `map_type`, where known and calibrated)."""
        if map_type is not None and f"{helper_id}.{map_type}" in self.helper_ns:
            return self.helper_ns[f"{helper_id}.{map_type}"]
        return self.helper_ns.get(str(helper_id), self.helper_default)


def _helper_order(key: str) -> tuple[int, str]:
    head, _, tail = key.partition(".")
    return (int(head) if head.isdigit() else 1 << 30, tail)


def insn_class(insn: Insn) -> str:
    """The latency model's class of a non-jump, non-call instruction (see the module docstring)."""
    form = insn.form
    if form.kind == "lddw":
        return "lddw"
    if form.kind == "ja":
        return "ja"
    if form.kind == "exit":
        return "exit"
    return form.name


def latency_cost(insns: Sequence[Insn], model: LatencyModel, weights: Mapping[int, float] | None = None, *,
                 taken: Mapping[int, float] | None = None, maps: Sequence[MapSpec] | None = None) -> float:
    """Estimated ns per run: the sum over slots of the slot's cost times how often it runs (`weights`, by
    slot; 1.0 each by default, absent slots 0 when weights are given). A conditional jump costs
    `jump.taken` for the fraction `taken[slot]` of its runs it goes to its target (half when unknown), and
    `jump.not_taken` for the rest. Map helper calls cost what their map's type costs when `maps` (MapSpecs
    with `ref` = the lddw imm naming them, as K2 programs and `load_insns` have them) says which map r1
    holds."""
    per_slot = slot_costs(insns, model, taken=taken, maps=maps)
    if weights is None:
        return sum(per_slot.values())
    return sum(cost * weights.get(slot, 0.0) for slot, cost in per_slot.items())


def slot_costs(insns: Sequence[Insn], model: LatencyModel, *, taken: Mapping[int, float] | None = None,
               maps: Sequence[MapSpec] | None = None) -> dict[int, float]:
    """The cost of one execution of each instruction, by its first slot (see `latency_cost`)."""
    ops = decode_ops(insns)
    starts = slot_starts(insns)
    map_of = _map_types(insns, maps) if maps else {}
    out: dict[int, float] = {}
    for insn, slot in zip(insns, starts):
        op = ops[slot]
        if isinstance(op, Jump) and op.cmp is not None:
            share = 0.5 if taken is None or slot not in taken else taken[slot]
            out[slot] = share * model.insn("jump.taken") + (1 - share) * model.insn("jump.not_taken")
        elif isinstance(op, Call):
            if op.kind == "helper":
                out[slot] = model.helper(op.target, map_of.get(slot))
            elif op.kind == "local":
                out[slot] = model.insn("call.local")
            else:  # kfuncs and callx: a real call of unknown work, like a helper the model does not know
                out[slot] = model.helper_default
        else:
            out[slot] = model.insn(insn_class(insn))
    return out


def _map_types(insns: Sequence[Insn], maps: Sequence[MapSpec]) -> dict[int, str]:
    """Map helper call slot -> the type of the map in r1, where the call's own straight-line code set r1
    with an lddw map reference (clang always does: the map is a constant at each call site)."""
    by_ref = {(spec.ref if spec.ref is not None else i): spec.type_name for i, spec in enumerate(maps)}
    ops = decode_ops(insns)
    starts = slot_starts(insns)
    targets = {op.target for op in ops if isinstance(op, Jump)}
    found: dict[int, str] = {}
    r1_map: int | None = None  # the map ref r1 holds on the straight-line path to here, if any
    for insn, slot in zip(insns, starts):
        if slot in targets:
            r1_map = None  # a join: another path may have set r1 otherwise
        op = ops[slot]
        if isinstance(op, Call):
            if op.kind == "helper" and op.target in _MAP_HELPERS and r1_map in by_ref:
                found[slot] = by_ref[r1_map]
            r1_map = None  # calls clobber r1
        elif insn.form.name in ("lddw_map_fd", "lddw_map_idx") and insn.dst == 1:
            r1_map = insn.imm
        elif _writes_r1(op):
            r1_map = None
    return found


def _writes_r1(op) -> bool:
    if isinstance(op, LegacyLoad):
        return True  # clobbers r1-r5
    if isinstance(op, Atomic):
        return (op.fetch or op.op == "xchg") and op.src == 1
    if isinstance(op, (Jump, Store)):
        return False
    return getattr(op, "dst", None) == 1


# ---- block weights: how often each slot runs on sample packets ----------------------------------------------

@dataclass
class Profile:
    """Executions per run of each slot (`weights`, averaged over the sample packets; every slot of the
    program is present, 0.0 when it never ran) and, for conditional jumps that ran, the fraction of their
    executions that went to the target (`taken`). `faults` counts the runs that ended in a VM fault (their
    instructions up to the fault are counted; a fault ends the runs of its packet)."""

    weights: dict[int, float]
    taken: dict[int, float]
    runs: int
    faults: int = 0


def profile(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] = (), packets: Sequence[bytes] = (b"",),
            *, ctx: bytes | None = None, repeat: int = 1, budget: int = 1_000_000) -> Profile:
    """Run `insns` in bpforge's interpreter `repeat` times per packet (as `prog_type`, with one set of VM maps
    made from `maps` that every run shares, as a loaded program's maps are) and count the slots executed.
    `repeat` > 1 runs as BPF_PROG_TEST_RUN's repeat does (on the packet as the last run left it): a program
    that fills a map on its first run (a flow table) then takes its steady-state path, which is what
    `opt.measure` times. Weights are per run: counts / (packets x repeat)."""
    if repeat < 1:
        raise BpforgeError(f"repeat must be at least 1, not {repeat}")
    if not packets:
        raise BpforgeError("block weights need at least one sample packet")
    vm_maps: list = []
    for i, spec in enumerate(maps):  # the program names maps by `ref` (K2's fd), else by position
        ref = spec.ref if spec.ref is not None else i
        vm_maps += [None] * (ref + 1 - len(vm_maps))
        vm_maps[ref] = create_map(spec)
    program = from_insns(insns, vm_maps)
    counts = [0] * max(program.slots, 1)
    jumps_taken: dict[int, int] = {}
    # The interpreter runs what `decoded(program)` holds and keeps it with the program: wrapping each slot's
    # step function there counts executions without touching the interpreter.
    table = decoded(program)
    for slot, entry in enumerate(table):
        if entry is not None:
            table[slot] = (_counting(entry[0], entry[1], slot, counts, jumps_taken), entry[1], entry[2])
    machine = Machine(program, budget=budget)
    faults = 0
    for packet in packets:
        try:  # repeat as BPF_PROG_TEST_RUN does: each run sees the packet and maps the previous left
            machine.run(bytes(packet), prog_type, ctx, repeat)
        except VmFault:
            faults += 1  # ends this packet's runs: the ones left count as runs that executed nothing
    runs = len(packets) * repeat
    weights = {slot: counts[slot] / runs for slot in slot_starts(insns)} if insns else {}
    taken = {slot: jumps_taken.get(slot, 0) / counts[slot] for slot, op in enumerate(decode_ops(insns))
             if isinstance(op, Jump) and op.cmp is not None and counts[slot]}
    return Profile(weights, taken, runs, faults)


def _counting(step: Callable, op, slot: int, counts: list[int], taken: dict[int, int]) -> Callable:
    if isinstance(op, Jump) and op.cmp is not None:
        def counted_jump(interp, op, _step=step, _slot=slot):
            counts[_slot] += 1
            _step(interp, op)
            if interp.next_pc == op.target:
                taken[_slot] = taken.get(_slot, 0) + 1
        return counted_jump

    def counted(interp, op, _step=step, _slot=slot):
        counts[_slot] += 1
        _step(interp, op)
    return counted


def block_weights(insns: Sequence[Insn], prog_type: str, maps: Sequence[MapSpec] = (),
                  packets: Sequence[bytes] = (b"",), **options) -> dict[int, float]:
    """Average executions per run of each slot on the sample packets (`profile(...).weights`)."""
    return profile(insns, prog_type, maps, packets, **options).weights


__all__ = ["LatencyModel", "Profile", "block_weights", "insn_class", "latency_cost", "profile", "size_cost",
           "slot_costs"]
