"""Liveness of registers and 8-byte stack slots, per block and per instruction (a backward problem on the
one solver).

A location is live at a point when some path from there reads it before writing it — LLVM's LiveVariables
and the kernel's `compute_live_registers` for registers, and the stack-slot liveness the kernel's
`REG_LIVE_READ` marks approximate. Reads and writes come from `effects`: across a call the arguments
are used (the helper's declared ones; for a bpf2bpf call r1-r5, or — with `argument_uses` — exactly those
live at the callee's entry, the callee's inputs) and r1-r5 are then dead (clobbered), r0 is defined, and
r6-r9 pass through untouched, so they stay live across it. A stack slot dies only when an access through
r10 overwrites all 8 of its bytes; a read of unknown memory (through another register, or by a call given
pointers) may read any slot, so it makes the whole frame live. The frame dies at exit.

Sets are bitmasks inside (bit n: register n; bit 11 + k: the slot at r10 - 8(k+1)); `LiveSet` spells
them out for callers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from ..isa.ops import Call

from .cfg import ProgramCfg
from .dataflow import BACKWARD, Problem, Solution, solve
from .frame import maps_by_ref, stack_reads
from .effects import ARGUMENT_REGISTERS, SLOT_SIZE, STACK_SIZE, effects_of
from .loops import Wto

_SLOT_BASE = 11
_SLOTS = STACK_SIZE // SLOT_SIZE
ALL_STACK = ((1 << _SLOTS) - 1) << _SLOT_BASE
ALL_REGISTERS = (1 << _SLOT_BASE) - 1
_ARGUMENTS = sum(1 << r for r in ARGUMENT_REGISTERS)


def register_bit(reg: int) -> int:
    return 1 << reg


def slot_bit(offset: int) -> int:
    """Bit of the 8-byte slot starting at r10 + `offset` (0 outside the frame: such accesses are invalid
    and the verifier refuses them)."""
    k = -offset // SLOT_SIZE - 1
    return 1 << (_SLOT_BASE + k) if 0 <= k < _SLOTS and offset % SLOT_SIZE == 0 else 0


@dataclass(frozen=True)
class LiveSet:
    registers: frozenset[int]
    stack: frozenset[int]  # slot offsets from r10: -8, -16, ...

    @staticmethod
    def of(mask: int) -> "LiveSet":
        regs = frozenset(r for r in range(_SLOT_BASE) if mask >> r & 1)
        slots = frozenset(-SLOT_SIZE * (k + 1) for k in range(_SLOTS) if mask >> (_SLOT_BASE + k) & 1)
        return LiveSet(regs, slots)


def use_kill(op) -> tuple[int, int]:
    """(locations read, locations surely overwritten) of one op, as bitmasks."""
    fx = effects_of(op)
    use = kill = 0
    for r in fx.reads:
        use |= 1 << r
    for r in fx.kills:
        kill |= 1 << r
    for access in fx.stack_reads:
        for slot in access.slots:
            use |= slot_bit(slot)
    for access in fx.stack_writes:
        for slot in access.whole_slots:
            kill |= slot_bit(slot)
    if fx.memory_reads:
        use |= ALL_STACK
    return use, kill


@dataclass(eq=False)
class Liveness:
    cfg: ProgramCfg
    function: int
    solution: Solution[int]
    _use_kill: dict[int, tuple[int, int]]

    def live_in(self, block: int) -> LiveSet:
        return LiveSet.of(self.solution.before.get(block, 0))

    def live_out(self, block: int) -> LiveSet:
        return LiveSet.of(self.solution.after.get(block, 0))

    @cached_property
    def _per_slot(self) -> dict[int, tuple[int, int]]:
        """slot -> (live before, live after) masks, for every instruction of a solved block."""
        table = {}
        for b in self.cfg.functions[self.function].blocks:
            if b not in self.solution.after:
                continue
            live = self.solution.after[b]
            for slot, _ in reversed(self.cfg.blocks[b].ops):
                use, kill = self._use_kill[slot]
                before = (live & ~kill) | use
                table[slot] = (before, live)
                live = before
        return table

    def before_mask(self, slot: int) -> int:
        return self._per_slot.get(slot, (0, 0))[0]

    def after_mask(self, slot: int) -> int:
        return self._per_slot.get(slot, (0, 0))[1]

    def live_before(self, slot: int) -> LiveSet:
        return LiveSet.of(self.before_mask(slot))

    def live_after(self, slot: int) -> LiveSet:
        return LiveSet.of(self.after_mask(slot))

    def is_live_after(self, slot: int, reg: int) -> bool:
        return bool(self.after_mask(slot) >> reg & 1)


def liveness(cfg: ProgramCfg, function: int = 0, wto: Wto | None = None,
             arguments: Mapping[int, int] | None = None,
             stack_reads: Mapping[int, frozenset[int]] | None = None,
             uses: Callable[[object], tuple[int, int]] = use_kill) -> Liveness:
    """Liveness in one function. `arguments` (callee entry slot -> mask of r1-r5 it reads, as
    `argument_uses` computes) narrows what a local call uses; without it a call uses all of r1-r5.
    `stack_reads` (slot -> the stack slots it reads, as `frame.stack_reads` knows them for helper calls and
    loads through copies of r10) narrows "unknown memory" there to those slots. `uses(op)`: the (read,
    overwritten) masks of one op — another location set on the same solver (`upper` tracks registers'
    upper halves)."""
    blocks = cfg.blocks
    table = {}
    for b in cfg.functions[function].blocks:
        for slot, op in blocks[b].ops:
            use, kill = uses(op)
            if arguments is not None and op.__class__ is Call and op.kind == "local" and op.target in arguments:
                use = (use & ~_ARGUMENTS) | arguments[op.target]
            if stack_reads is not None and slot in stack_reads:
                use &= ~ALL_STACK
                for offset in stack_reads[slot]:
                    use |= slot_bit(offset)
            table[slot] = (use, kill)
    summaries = {}
    for b in cfg.functions[function].blocks:
        use = kill = 0
        for slot, _ in reversed(blocks[b].ops):  # compose backwards: live_in = use | (live_out & ~kill)
            u, k = table[slot]
            use = u | (use & ~k)
            kill |= k
        summaries[b] = (use, kill)

    def transfer(b: int, live_out: int) -> int:
        use, kill = summaries[b]
        return use | (live_out & ~kill)

    problem = Problem(BACKWARD, boundary=0, bottom=0, join=int.__or__, transfer=transfer)
    return Liveness(cfg, function, solve(cfg, function, problem, wto), table)


def argument_uses(cfg: ProgramCfg) -> dict[int, int]:
    """Entry slot -> mask of the argument registers r1-r5 live at each function's entry: what a call to it
    really reads. Callees are solved before their callers; a function in a call cycle (which the kernel
    refuses as recursion) keeps the conservative all of r1-r5."""
    found: dict[int, int] = {}
    state: dict[int, str] = {}
    for root in range(len(cfg.functions)):
        stack = [(root, iter(cfg.call_graph[root]))]
        state.setdefault(root, "open")
        while stack:
            index, callees = stack[-1]
            callee = next(callees, None)
            if callee is None:
                stack.pop()
                state[index] = "done"
                entry = cfg.functions[index].entry
                live = liveness(cfg, index, arguments=found)
                found[entry] = live.solution.before.get(cfg.functions[index].entry_block, 0) & _ARGUMENTS
            elif callee not in state:
                state[callee] = "open"
                stack.append((callee, iter(cfg.call_graph[callee])))
    return found


def program_liveness(cfg: ProgramCfg, maps=()) -> dict[int, Liveness]:
    """Liveness of every function, the stack bytes helper calls and loads through copies of r10 read known
    exactly where `frame` can tell (`maps`: the program's map specs, by reference or as a list)."""
    table = maps_by_ref(maps)
    return {fn.index: liveness(cfg, fn.index, stack_reads=stack_reads(cfg, fn.index, table)) for fn in cfg.functions}


__all__ = ["argument_uses", "ALL_REGISTERS", "ALL_STACK", "LiveSet", "Liveness", "liveness", "program_liveness", "register_bit", "slot_bit", "use_kill"]
