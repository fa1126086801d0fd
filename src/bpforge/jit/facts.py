"""What the JITs take from our verifier: whether a program is verified (then its accesses are compiled
without checks), and which loads read the context fields the kernel rewrites.

The kernel turns a load of xdp_md->data, __sk_buff->len and the like into a load of its own structures
(convert_ctx_access), which it can do because the verifier knows, per instruction, that the base register
is the context. So do we: from the states our verifier collected at each load, a load whose base is the
context on every path, at a field whose value the VM computes (`Region.pointers` / `computed`), reads a
cell the run keeps current; one whose base is the context on some paths only is checked at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa.ops import Load, decode_ops
from ..verifier.check import Limits, Unsupported, Verdict, verify_linked_program, verify_program
from ..verifier.report import verdict_of
from ..vm.context import prepare
from ..vm.memory import Memory

# States our verifier keeps per collected load before the facts give up (every load is then checked).
STATES_PER_LOAD = 512


@dataclass(frozen=True)
class Facts:
    accepted: bool
    message: str = ""  # why not, when not
    insn: int | None = None
    ctx_fields: dict[int, tuple[int, int]] = field(default_factory=dict)  # load slot -> (ctx offset, size)
    checked: frozenset[int] = frozenset()  # loads to check at run time although the program is verified


def special_ctx_fields(prog_type: str) -> tuple[frozenset[int], tuple[int, ...]] | None:
    """The context offsets whose loads the VM computes for this program type: pointer fields (exact offsets)
    and computed 4-byte fields (their starts). None when no input can be prepared to tell."""
    try:
        inp = prepare(Memory(), prog_type, bytes(64))
    except BpforgeError:
        return None
    ctx = inp.ctx
    if ctx is None:
        return frozenset(), ()
    return frozenset(ctx.pointers or ()), tuple(ctx.computed or ())


def _special(offset: int, specials) -> bool:
    pointers, computed = specials
    return offset in pointers or any(start <= offset < start + 4 for start in computed)


def facts_of(loaded) -> Facts:
    """Facts of a `formats.LoadedProgram` from our verifier (not accepted: the reason)."""
    return facts_from(loaded.insns, loaded.prog_type,
                      lambda collect, limits: verdict_of(loaded, collect=collect, limits=limits))


def facts_of_insns(insns, prog_type: str, maps) -> Facts:
    """Facts of linked instructions whose map lddws name `maps` by index."""
    return facts_from(insns, prog_type, lambda collect, limits: verify_program(insns, prog_type, maps,
                                                                               collect=collect, limits=limits))


def facts_of_object(obj, name: str | None, prog_type: str) -> Facts:
    """Facts of program `name` of an `elf.BpfObject`, linked as libbpf links it (its global functions
    verified on their own, as the kernel verifies them with the object's BTF)."""
    linked = obj.linked(name)
    return facts_from(linked.insns, prog_type, lambda collect, limits: verify_linked_program(
        obj, linked, prog_type, collect=collect, limits=limits))


def facts_from(insns, prog_type: str, verdict: Callable[..., Verdict]) -> Facts:
    """Facts from `verdict(collect, limits)`, our verifier's verdict collecting states at `collect`."""
    ops = decode_ops(insns)
    loads = [slot for slot, op in enumerate(ops) if isinstance(op, Load)]
    try:
        found = verdict(loads, Limits(collect_per_slot=STATES_PER_LOAD))
    except Unsupported as why:
        if "states reach" not in why.message:
            return Facts(False, f"our verifier cannot decide: {why.message}", why.where.insn)
        try:  # too many paths to tell the context loads apart: all of them are checked
            found = verdict((), None)
        except Unsupported as again:
            return Facts(False, f"our verifier cannot decide: {again.message}", again.where.insn)
        if not found.accepted:
            return Facts(False, found.message, found.insn)
        return Facts(True, checked=frozenset(loads))
    if not found.accepted:
        return Facts(False, found.message, found.insn)
    specials = special_ctx_fields(prog_type)
    fields: dict[int, tuple[int, int]] = {}
    checked: set[int] = set()
    for slot in loads:
        op = ops[slot]
        bases = [state.regs[op.base] for state in found.collected.get(slot, ())]
        through_ctx = [reg for reg in bases if reg.kind == "ctx"]
        if not through_ctx:
            continue
        offsets = {reg.off + op.off for reg in through_ctx}
        if specials is None or len(through_ctx) < len(bases) or len(offsets) > 1:
            checked.add(slot)
        elif _special(next(iter(offsets)), specials):
            fields[slot] = (next(iter(offsets)), op.size)
    return Facts(True, ctx_fields=fields, checked=frozenset(checked))
