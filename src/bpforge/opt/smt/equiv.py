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

One array, but K2's memory-type concretization as a fact about it: `regions` names the kind of memory
("stack", "packet", "map_value", "ctx") entry registers point into, followed through moves and pointer
arithmetic on each path. Two accesses through different kinds that both happen (their path conditions
hold) touch disjoint bytes — the verifier keeps every access of an accepted program inside its object, and
the gate accepts a candidate only once a verifier has — so a copy from a map value into the packet may be
reordered or widened.

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
from ...analysis.effects import effects_of
from ...isa.ops import Alu, Atomic, Call, Exit, Jump, Load, MayGoto, Reg, Store, decode_ops, following
from ...isa.semantics import step
from ...verifier.window import PROGRAM_END, ExitTarget, exit_of
from ..facts import step_context
from ..rewrite import KnownBits
from .machine import ADDR, BYTE, NotModelled, Z3Machine

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


class _Unkinded(Exception):
    """An access of unknown kind in a proof that keeps one array per kind: redo it with one memory."""


@dataclass(eq=False)
class _Recording(Z3Machine):
    """A z3 machine that remembers the bytes it read and wrote, as (kind, address), for the memory comparison
    and the counterexample. With `split`, each kind of memory is an array of its own (`memories`; kind None:
    everything else); an access of unknown kind then raises `_Unkinded`, since it might touch any of them."""

    reads: list = field(default_factory=list)
    writes: list = field(default_factory=list)
    contexts: set = field(default_factory=lambda: set(range(10)))  # registers that may hold the context
    through_context: bool = True  # whether the load being executed may go through the context
    regions: dict = field(default_factory=dict)  # register -> the kind of memory it points into
    memories: dict = field(default_factory=dict)  # kind -> its array (split), or None -> the one memory
    split: bool = False
    accesses: list = field(default_factory=list)  # (address, size, kind, path condition) of known-kind accesses
    condition: object = None  # the path condition of the instruction being executed
    kind: str | None = None  # the kind of memory its access goes to, if known

    def _select(self, addr, size: int, into: list):
        if self.kind is not None:
            self.accesses.append((addr, size, self.kind, self.condition))
        elif self.split:
            raise _Unkinded()
        key = self.kind if self.split else None
        into.extend((key, z3.simplify(addr + i)) for i in range(size))
        self.memory = self.memories[key]
        return key

    def load(self, addr, size: int):
        self._select(addr, size, self.reads)
        value = super().load(addr, size)
        if size == 4 and self.through_context:  # a pointer field: the kernel loads all 64 bits of a pointer
            value = z3.If(_POINTER_FIELD(addr), _POINTER_VALUE(addr), value)
        return value

    def store(self, addr, size: int, value, when=None) -> None:
        key = self._select(addr, size, self.writes)
        super().store(addr, size, value, when)
        self.memories[key] = self.memory

    def fork(self) -> "_Recording":
        return _Recording(list(self.regs), self.memory, reads=self.reads, writes=self.writes,
                          contexts=set(self.contexts), regions=dict(self.regions), memories=dict(self.memories),
                          split=self.split, accesses=self.accesses)


def step_regions(regions: dict, op) -> None:
    """What `op` does to the kinds of memory registers point into: a copy keeps the kind, a pointer moved by
    a scalar stays in its memory (pointer + pointer is refused by the verifier, so an operand of unknown kind
    added to a pointer is a scalar), anything else written forgets it."""
    if op.__class__ is Alu and op.width == 64 and op.op in ("mov", "add", "sub"):
        src = regions.get(op.src.n) if op.src.__class__ is Reg else None
        dst = regions.get(op.dst)
        if op.op == "mov":
            kind = src
        elif dst is not None and src is None:
            kind = dst
        elif op.op == "add" and dst is None and src is not None and op.src.n != op.dst:
            kind = src
        else:
            kind = None
        if kind is None:
            regions.pop(op.dst, None)
        else:
            regions[op.dst] = kind
        return
    fx = effects_of(op)
    for n in fx.writes | fx.clobbers:
        regions.pop(n, None)


@dataclass(eq=False)
class _Leaving:
    """One path through a window: where it leaves, under which condition, with which registers and memory."""

    target: ExitTarget
    condition: z3.BoolRef
    regs: list
    memories: dict  # kind (None: the one memory) -> array


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
                out.append(_Leaving(exit_of(slot, length), condition, m.regs, dict(m.memories)))
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
            m.condition = condition
            m.kind = m.regions.get(op.base) if isinstance(op, (Load, Store, Atomic)) else None
            step(m, op)
            step_context(m.contexts, op)
            step_regions(m.regions, op)
            if op.__class__ is Exit:
                out.append(_Leaving(PROGRAM_END, condition, m.regs, dict(m.memories)))
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
    for kind, address in writes:
        differ = z3.Select(a.memories[kind], address) != z3.Select(b.memories[kind], address)
        if kind in (None, "stack"):
            differ = z3.And(z3.Not(_dead_stack(address, live, frame_pointer, whole_frame)), differ)
        differences.append(differ)
    return z3.Or(differences) if differences else z3.BoolVal(False)


def _distinct(accesses: list) -> list:
    """(kind, address) pairs, each once."""
    seen: dict = {}
    for kind, term in accesses:
        seen.setdefault((kind, term.get_id()), (kind, term))
    return list(seen.values())


def prove_equivalent(original: Sequence[Insn], candidate: Sequence[Insn], live_out: Mapping[ExitTarget, int],
                     assumes: Mapping[int, KnownBits] | None = None, *, contexts: Iterable[int] | None = None,
                     landing: Callable[[ExitTarget], Hashable] | None = None,
                     regions: Mapping[int, str] | None = None, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> Proof:
    """Whether `candidate` may replace `original`: from every entry state where the registers hold what
    `assumes` says, both leave by the same exit with the same registers live there (`live_out`, masks as
    `analysis.liveness`; an exit missing from it counts as everything live) and the same memory outside
    the stack slots dead there. `contexts`: the registers that may hold the context pointer at entry
    (`facts.Facts.may_context`; default: any). `landing(exit)` names where an exit really goes, for a
    caller that knows the program around the window: two exits landing on the same place (a jump to an
    unconditional `goto` and a jump to where it goes) are the same exit. `regions`: the kind of memory
    registers point into at entry (r10 is always the stack), as `analysis.frame` knows it."""
    began = time.perf_counter()
    holders = set(range(10)) if contexts is None else set(contexts)
    kinds = {FRAME_POINTER: "stack", **(regions or {})}
    try:
        return _prove(original, candidate, live_out, assumes or {}, holders, kinds, landing or (lambda e: e),
                      timeout_ms, began)
    except NotModelled as why:
        return Proof(UNKNOWN, why.message, seconds=time.perf_counter() - began)


def _disjoint(accesses: list) -> list:
    """For every two accesses into different kinds of memory: when both happen, their bytes do not overlap.
    And an access that happens does not wrap around the address space (no kernel object ends past it)."""
    facts = [z3.Implies(when, z3.ULT(a, a + size)) for a, size, _, when in accesses]
    for i, (a, size_a, kind_a, when_a) in enumerate(accesses):
        for b, size_b, kind_b, when_b in accesses[i + 1:]:
            if kind_a != kind_b:
                apart = z3.Or(z3.ULE(a + size_a, b), z3.ULE(b + size_b, a))
                facts.append(z3.Implies(z3.And(when_a, when_b), apart))
    return facts


def _prove(original, candidate, live_out, assumes, holders, kinds, landing, timeout_ms, began) -> Proof:
    # One array per kind of memory when every access has a kind (no aliasing between them to reason about:
    # K2's memory-type concretization); else one memory, with the kinds' accesses assumed apart.
    try:
        return _query(original, candidate, live_out, assumes, holders, kinds, landing, timeout_ms, began, True)
    except _Unkinded:
        return _query(original, candidate, live_out, assumes, holders, kinds, landing, timeout_ms, began, False)


def _query(original, candidate, live_out, assumes, holders, kinds, landing, timeout_ms, began, split) -> Proof:
    names = {None: "mem", **{kind: f"mem_{kind}" for kind in kinds.values()}} if split else {None: "mem"}
    memories = {kind: z3.Array(name, ADDR, BYTE) for kind, name in names.items()}
    first = _Recording(contexts=set(holders), regions=dict(kinds), memories=dict(memories), split=split)
    second = _Recording(contexts=set(holders), regions=dict(kinds), memories=dict(memories), split=split,
                        accesses=first.accesses)
    second.regs = list(first.regs)
    entry = list(first.regs)
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
    if not split:
        solver.add(*_disjoint(first.accesses))
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
    for kind, address in _distinct(first.reads + second.reads + writes):  # written too: what was there before
        at = model.eval(address, model_completion=True).as_long()
        memory[at] = model.eval(z3.Select(memories[kind], address), model_completion=True).as_long()
    return Proof(REFUTED, "the windows differ on the entry state of the counterexample",
                 Counterexample(registers, memory), seconds)


__all__ = ["Counterexample", "DEFAULT_TIMEOUT_MS", "PROVED", "Proof", "REFUTED", "UNKNOWN", "prove_equivalent"]
