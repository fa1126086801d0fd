"""The control-flow graph of a program: functions (subprograms), basic blocks, edges, the call graph.

Functions are found as the kernel finds subprograms (`add_subprog_and_kfunc`): slot 0 and every target of
a local call or of an lddw of a function; each function runs to the next one's entry. The structural rules
are the kernel's `check_subprogs`: a jump must stay inside its function ("jump out of range") and the last
slot of a function must be an exit or an unconditional jump ("last insn is not an exit or jmp"), so control
never falls into the next function; a jump into the second slot of an lddw is refused too. These raise
`CfgError` with the slot at fault. What the kernel's `check_cfg` rejects later (unreachable instructions,
back edges in unprivileged mode) is reported, not raised: `ProgramCfg.unreachable`.

Blocks end where `isa.ops.ends_block` says (jumps, may_goto, calls, exits and legacy loads — the points
where control may leave the straight line, as the kernel's prune points do). Edge kinds: `fallthrough`
(to the next slot), `taken` (a conditional jump's or may_goto's target), `jump` (an unconditional goto).
Calls do not split the caller's graph: a call's block falls through to its return point; the call edge is
in the call graph (`Function.calls`, `ProgramCfg.call_graph`). A tail call is an ordinary helper call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import BpforgeError
from ..isa.insn import Insn
from ..isa.ops import Call, Exit, Jump, LoadImm64, MayGoto, Op, decode_ops, ends_block, falls_through


class CfgError(BpforgeError):
    """A program no control-flow graph can describe (the kernel refuses it before verifying)."""


FALLTHROUGH, TAKEN, JUMP = "fallthrough", "taken", "jump"


@dataclass(frozen=True, slots=True)
class Edge:
    source: int  # block id
    target: int  # block id
    kind: str  # fallthrough | taken | jump


@dataclass(eq=False)
class Block:
    """Slots [start, end) of one function; `id` is its index in `ProgramCfg.blocks` (ordered by slot)."""

    id: int
    start: int
    end: int
    function: int  # index in ProgramCfg.functions
    ops: tuple[tuple[int, Op], ...]  # (slot, op) of each instruction, lddw second slots left out
    succs: list[Edge] = field(default_factory=list)
    preds: list[Edge] = field(default_factory=list)

    @property
    def last(self) -> tuple[int, Op]:
        return self.ops[-1]

    @cached_property
    def successors(self) -> tuple[int, ...]:
        """Distinct successor block ids, in edge order."""
        return tuple(dict.fromkeys(e.target for e in self.succs))

    @cached_property
    def predecessors(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(e.source for e in self.preds))


@dataclass(eq=False)
class Function:
    """One function: slots [entry, end), its blocks (ids, by slot), exits and calls it makes."""

    index: int
    entry: int
    end: int
    name: str | None
    blocks: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)  # slots of its exit instructions
    calls: list[tuple[int, int]] = field(default_factory=list)  # (call site slot, callee entry slot)
    references: list[tuple[int, int]] = field(default_factory=list)  # (lddw slot, function entry): callbacks

    @property
    def entry_block(self) -> int:
        return self.blocks[0]


@dataclass(eq=False)
class ProgramCfg:
    ops: list[Op | None]  # slot-indexed, None in an lddw's second slot
    functions: list[Function]
    blocks: list[Block]
    block_of_slot: list[int]  # block id of every slot (the lddw's block for its second slot)
    unreachable: list[int]  # block ids control cannot reach from slot 0 (through calls and callbacks)

    @property
    def slots(self) -> int:
        return len(self.ops)

    def block_at(self, slot: int) -> Block:
        return self.blocks[self.block_of_slot[slot]]

    def function_at(self, slot: int) -> Function:
        return self.functions[self.block_at(slot).function]

    def function_entered_at(self, entry: int) -> Function:
        return self.functions[self._function_by_entry[entry]]

    @cached_property
    def _function_by_entry(self) -> dict[int, int]:
        return {f.entry: f.index for f in self.functions}

    @cached_property
    def call_graph(self) -> dict[int, tuple[int, ...]]:
        """Function index -> indexes of the functions it calls (local calls) or takes the address of."""
        by_entry = self._function_by_entry
        return {f.index: tuple(dict.fromkeys(by_entry[callee] for _, callee in f.calls + f.references))
                for f in self.functions}


def function_entries(ops: Sequence[Op | None]) -> list[int]:
    """Entry slots as the kernel derives subprograms: slot 0, every local call target, every lddw func target.
    CfgError for a target outside the program ("call to invalid destination")."""
    entries = {0}
    for slot, op in enumerate(ops):
        callee = _callee(op)
        if callee is None:
            continue
        if not 0 <= callee < len(ops):
            raise CfgError(f"call to invalid destination: slot {callee} of {len(ops)}", insn=slot)
        entries.add(callee)
    return sorted(entries)


def _callee(op: Op | None) -> int | None:
    if op.__class__ is Call and op.kind == "local":
        return op.target
    if op.__class__ is LoadImm64 and op.kind == "func":
        return op.value
    return None


def _check_entries(ops: Sequence[Op | None], entries: Iterable[int]) -> list[int]:
    found = sorted(set(entries) | set(function_entries(ops)))
    for entry in found:
        if not 0 <= entry < len(ops):
            raise CfgError(f"function entry at slot {entry} is outside the program of {len(ops)} slots", insn=entry)
        if ops[entry] is None:
            raise CfgError(f"function entry in the middle of lddw at slot {entry - 1}", insn=entry)
    return found


def _check_structure(ops: Sequence[Op | None], entries: list[int]) -> None:
    """The kernel's check_subprogs: jumps stay in their function; a function ends with exit or goto."""
    bounds = list(zip(entries, entries[1:] + [len(ops)]))
    for start, end in bounds:
        for slot in range(start, end):
            op = ops[slot]
            if op is not None and op.__class__ in (Jump, MayGoto):
                if not start <= op.target < end:
                    raise CfgError(f"jump out of range from insn {slot} to {op.target}", insn=slot)
                if ops[op.target] is None:
                    raise CfgError(f"jump into the middle of ldimm64 insn {op.target - 1}", insn=slot)
        last = ops[end - 1]
        if not (last.__class__ is Exit or (last.__class__ is Jump and last.cmp is None)):
            raise CfgError("last insn is not an exit or jmp", insn=end - 1)


def build_cfg(insns: Sequence[Insn], entries: Iterable[int] | None = None,
              names: dict[int, str] | None = None) -> ProgramCfg:
    """The CFG of `insns`. `entries`: function entry slots known to the caller (they are completed with the
    ones calls and function addresses imply); `names`: function names by entry slot."""
    ops = decode_ops(insns)
    return cfg_of_ops(ops, entries, names)


def cfg_of_ops(ops: list[Op | None], entries: Iterable[int] | None = None,
               names: dict[int, str] | None = None) -> ProgramCfg:
    """The CFG of an already decoded slot table (`isa.ops.decode_ops`)."""
    if not ops:
        raise CfgError("empty program: no instructions", insn=0)
    starts = _check_entries(ops, entries or ())
    _check_structure(ops, starts)
    names = names or {}
    nslots = len(ops)

    leaders = set(starts)
    for slot, op in enumerate(ops):
        if op is None:
            continue
        if op.__class__ in (Jump, MayGoto):
            leaders.add(op.target)
        if ends_block(op) and slot + 1 < nslots:
            leaders.add(slot + 1)
    leader_list = sorted(leaders)

    functions = [Function(i, entry, end, names.get(entry))
                 for i, (entry, end) in enumerate(zip(starts, starts[1:] + [nslots]))]
    blocks: list[Block] = []
    block_of_slot = [0] * nslots
    fn = 0
    for i, start in enumerate(leader_list):
        end = leader_list[i + 1] if i + 1 < len(leader_list) else nslots
        while functions[fn].end <= start:
            fn += 1
        block = Block(len(blocks), start, end, fn, tuple((s, ops[s]) for s in range(start, end) if ops[s] is not None))
        blocks.append(block)
        functions[fn].blocks.append(block.id)
        block_of_slot[start:end] = [block.id] * (end - start)

    for block in blocks:
        slot, op = block.last
        function = functions[block.function]
        targets: list[tuple[int, str]] = []
        if op.__class__ is Jump:
            targets.append((op.target, JUMP if op.cmp is None else TAKEN))
        elif op.__class__ is MayGoto:
            targets.append((op.target, TAKEN))
        elif op.__class__ is Exit:
            function.exits.append(slot)
        if falls_through(op) and block.end < function.end:
            targets.insert(0, (block.end, FALLTHROUGH))
        for target, kind in targets:
            edge = Edge(block.id, block_of_slot[target], kind)
            block.succs.append(edge)
            blocks[edge.target].preds.append(edge)
        for s, o in block.ops:
            callee = _callee(o)
            if callee is not None:
                (function.calls if o.__class__ is Call else function.references).append((s, callee))

    cfg = ProgramCfg(ops, functions, blocks, block_of_slot, [])
    cfg.unreachable.extend(_unreachable(cfg))
    return cfg


def _unreachable(cfg: ProgramCfg) -> list[int]:
    seen_functions, seen_blocks = set(), set()
    pending = [0]
    while pending:
        index = pending.pop()
        if index in seen_functions:
            continue
        seen_functions.add(index)
        function = cfg.functions[index]
        stack = [function.entry_block]
        while stack:
            b = stack.pop()
            if b in seen_blocks:
                continue
            seen_blocks.add(b)
            block = cfg.blocks[b]
            stack.extend(block.successors)
            for s, o in block.ops:
                callee = _callee(o)
                if callee is not None:
                    pending.append(cfg.function_entered_at(callee).index)
    return [b.id for b in cfg.blocks if b.id not in seen_blocks]


__all__ = ["Block", "CfgError", "Edge", "FALLTHROUGH", "Function", "JUMP", "ProgramCfg", "TAKEN", "build_cfg",
           "cfg_of_ops", "function_entries"]
