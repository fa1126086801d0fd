"""Equivalence of two windows by SMT: the gate every rewrite passes before the optimizer applies it.

A window is acyclic code with one entry: forward jumps inside, jumps that leave it, exits (no calls: a
call's effect on hidden state is not something two windows can be shown to share here). Both windows run
symbolically from the same entry state (`Z3Machine`: registers r0..r10 and one memory), every path of
each is followed to where it leaves, and the query asks for an entry state satisfying the facts the
rewrite `assumes` on which the two differ:
- they leave by different exits, or
- they leave by the same exit and a register live there differs (r0 at BPF_EXIT), or
- they leave by the same exit and memory differs at an address either wrote, outside the stack slots
  dead there (at BPF_EXIT the whole frame is dead).
Memory can only differ where something was written: both memories are the same array with stores on
top, so comparing the written addresses is exact and needs no quantifier.

Unsatisfiable: "proved". A model: "refuted", with the entry registers and the memory bytes the windows
read as a `Counterexample` the search turns into a test. A solver timeout or an instruction the z3
machine does not model: "unknown" — never treated as proved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import z3

from ...isa import Insn
from ...isa.ops import Atomic, Call, Exit, Jump, Load, MayGoto, decode_ops, following
from ...isa.semantics import step
from ...verifier.window import PROGRAM_END, ExitTarget, exit_of
from ..facts import step_context
from ..rewrite import KnownBits
from .machine import NotModelled, Z3Machine

PROVED, REFUTED, UNKNOWN = "proved", "refuted", "unknown"
DEFAULT_TIMEOUT_MS = 2000
FRAME_POINTER = 10
_SLOT_BASE, _SLOTS, _SLOT = 11, 64, 8  # analysis.liveness: bit 11 + k is the slot at r10 - 8(k+1)
_MAX_PATHS = 256
# A 32-bit load through the context may read a pointer field (xdp_md.data, __sk_buff.data_end, ...), which
# the kernel rewrites into a load of the whole 64-bit pointer: its upper half is not zero. Which fields are
# pointers is left open (per address, the same in both windows): no proof relies on such a load's upper half.
_POINTER_FIELD = z3.Function("ctx_pointer_field", z3.BitVecSort(64), z3.BoolSort())
_POINTER_VALUE = z3.Function("ctx_pointer_value", z3.BitVecSort(64), z3.BitVecSort(64))


@dataclass(frozen=True)
class Counterexample:
    """An entry state on which the windows differ: registers (64-bit values) and memory bytes by address."""

    registers: dict[int, int]
    memory: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Proof:
    status: str  # PROVED, REFUTED or UNKNOWN
    reason: str = ""
    counterexample: Counterexample | None = None
    seconds: float = 0.0

    @property
    def proved(self) -> bool:
        return self.status == PROVED


@dataclass(eq=False)
class _Recording(Z3Machine):
    """A z3 machine that remembers the addresses it read and wrote (bytes), for the memory comparison and
    the counterexample."""

    reads: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    contexts: set = field(default_factory=lambda: set(range(10)))  # registers that may hold the context
    through_context: bool = True  # whether the load being executed may go through the context

    def load(self, addr, size: int):
        self.reads.extend(z3.simplify(addr + i) for i in range(size))
        value = super().load(addr, size)
        if size == 4 and self.through_context:  # a pointer field: the kernel loads all 64 bits of a pointer
            value = z3.If(_POINTER_FIELD(addr), _POINTER_VALUE(addr), value)
        return value

    def store(self, addr, size: int, value, when=None) -> None:
        self.writes.extend(z3.simplify(addr + i) for i in range(size))
        super().store(addr, size, value, when)

    def fork(self) -> "_Recording":
        return _Recording(list(self.regs), self.memory, reads=self.reads, writes=self.writes,
                          contexts=set(self.contexts))


@dataclass(eq=False)
class _Leaving:
    """One path through a window: where it leaves, under which condition, with which registers and memory."""

    target: ExitTarget
    condition: z3.BoolRef
    regs: list
    memory: z3.ArrayRef


def _paths(window: Sequence[Insn], machine: _Recording) -> list[_Leaving]:
    """Every path of `window` from `machine`'s state. NotModelled for what the machine cannot follow."""
    ops = decode_ops(window)
    length = len(ops)
    out: list[_Leaving] = []
    pending = [(0, machine, z3.BoolVal(True))]
    while pending:
        slot, m, condition = pending.pop()
        while True:
            if not 0 <= slot < length:
                out.append(_Leaving(exit_of(slot, length), condition, m.regs, m.memory))
                break
            op = ops[slot]
            if op is None:
                raise NotModelled(f"window slot {slot} is the second half of an lddw: a jump lands inside it")
            if op.__class__ is Call:
                raise NotModelled(f"window slot {slot} is a call: windows with calls are not compared")
            if op.__class__ is MayGoto:
                raise NotModelled(f"window slot {slot} is may_goto: its budget is state the window cannot see")
            m.branches = []
            m.through_context = isinstance(op, (Load, Atomic)) and op.base in m.contexts
            step(m, op)
            step_context(m.contexts, op)
            if op.__class__ is Exit:
                out.append(_Leaving(PROGRAM_END, condition, m.regs, m.memory))
                break
            if op.__class__ is Jump:
                if op.target <= slot:
                    raise NotModelled(f"window slot {slot} jumps backwards: windows are acyclic")
                taken = m.branches[0].taken
                if op.cmp is None:
                    slot = op.target
                    continue
                pending.append((op.target, m.fork(), z3.And(condition, taken)))
                condition = z3.And(condition, z3.Not(taken))
            slot = following(ops, slot)
        if len(out) + len(pending) > _MAX_PATHS:
            raise NotModelled(f"a window with more than {_MAX_PATHS} paths")
    return out


def _dead_stack(address, live: int, frame_pointer, whole_frame: bool):
    """Whether byte `address` lies in a stack slot dead per `live` (every slot when `whole_frame`)."""
    ranges: list[tuple[int, int]] = []  # [lo, hi) offsets below r10 of runs of dead slots
    for k in range(_SLOTS):
        if whole_frame or not live >> (_SLOT_BASE + k) & 1:
            lo, hi = -_SLOT * (k + 1), -_SLOT * k
            if ranges and ranges[-1][0] == hi:
                ranges[-1] = (lo, ranges[-1][1])
            else:
                ranges.append((lo, hi))
    return z3.Or([z3.ULT(address - (frame_pointer + lo), hi - lo) for lo, hi in ranges]) if ranges else \
        z3.BoolVal(False)


def _differ(a: _Leaving, b: _Leaving, live: int, writes: list, frame_pointer):
    """The condition under which two paths that leave by the same exit leave different states."""
    if a.target.kind == "exit":
        registers, whole_frame = [0], True
    else:
        registers, whole_frame = [n for n in range(FRAME_POINTER) if live >> n & 1], False
    differences = [a.regs[n] != b.regs[n] for n in registers]
    for address in writes:
        differences.append(z3.And(z3.Not(_dead_stack(address, live, frame_pointer, whole_frame)),
                                  z3.Select(a.memory, address) != z3.Select(b.memory, address)))
    return z3.Or(differences) if differences else z3.BoolVal(False)


def _distinct(terms: list) -> list:
    seen: dict[int, object] = {}
    for term in terms:
        seen.setdefault(term.get_id(), term)
    return list(seen.values())


def prove_equivalent(original: Sequence[Insn], candidate: Sequence[Insn], live_out: Mapping[ExitTarget, int],
                     assumes: Mapping[int, KnownBits] | None = None, *, contexts: Iterable[int] | None = None,
                     landing: Callable[[ExitTarget], Hashable] | None = None,
                     timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Proof:
    """Whether `candidate` may replace `original`: from every entry state where the registers hold what
    `assumes` says, both leave by the same exit with the same registers live there (`live_out`, masks as
    `analysis.liveness`; an exit missing from it counts as everything live) and the same memory outside
    the stack slots dead there. `contexts`: the registers that may hold the context pointer at entry
    (`facts.Facts.may_context`; default: any). `landing(exit)` names where an exit really goes, for a
    caller that knows the program around the window: two exits landing on the same place (a jump to an
    unconditional `goto` and a jump to where it goes) are the same exit."""
    began = time.perf_counter()
    holders = set(range(10)) if contexts is None else set(contexts)
    try:
        return _prove(original, candidate, live_out, assumes or {}, holders, landing or (lambda e: e), timeout_ms,
                      began)
    except NotModelled as why:
        return Proof(UNKNOWN, why.message, seconds=time.perf_counter() - began)


def _prove(original, candidate, live_out, assumes, holders, landing, timeout_ms, began) -> Proof:
    first, second = _Recording(contexts=set(holders)), _Recording(contexts=set(holders))
    second.regs = list(first.regs)
    second.memory = first.memory
    entry, entry_memory = list(first.regs), first.memory
    mine = _paths(original, first)
    theirs = _paths(candidate, second)
    writes = _distinct(first.writes + second.writes)
    frame_pointer = entry[FRAME_POINTER]
    everything = (1 << (_SLOT_BASE + _SLOTS)) - 1
    bad = []
    for a in mine:
        for b in theirs:
            both = z3.And(a.condition, b.condition)
            if landing(a.target) != landing(b.target):
                bad.append(both)
            else:
                live = live_out.get(a.target, everything)
                bad.append(z3.And(both, _differ(a, b, live, writes, frame_pointer)))
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    for reg, known in assumes.items():
        solver.add(entry[reg] & known.mask == known.value)
    solver.add(z3.Or(bad))
    verdict = solver.check()
    seconds = time.perf_counter() - began
    if verdict == z3.unsat:
        return Proof(PROVED, seconds=seconds)
    if verdict == z3.unknown:
        return Proof(UNKNOWN, f"the solver gave no answer ({solver.reason_unknown()})", seconds=seconds)
    model = solver.model()
    registers = {n: model.eval(entry[n], model_completion=True).as_long() for n in range(11)}
    memory = {}
    for address in _distinct(first.reads + second.reads + writes):  # written too: what was there before
        at = model.eval(address, model_completion=True).as_long()
        memory[at] = model.eval(z3.Select(entry_memory, address), model_completion=True).as_long()
    return Proof(REFUTED, "the windows differ on the entry state of the counterexample",
                 Counterexample(registers, memory), seconds)


__all__ = ["Counterexample", "DEFAULT_TIMEOUT_MS", "PROVED", "Proof", "REFUTED", "UNKNOWN", "prove_equivalent"]
