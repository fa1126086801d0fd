"""Precision tracking: which scalars' exact values a path relied on, as the kernel's mark_chain_precision.

A kept state compares its scalars with an arriving one only where they are `precise`; any other scalar of
the arriving state matches. That is what lets a loop counter or a byte read from a packet differ between
two paths that still meet. A scalar becomes precise when its value decides something — a branch taken for
certain, an offset added to a pointer, a helper's size argument, a program's return value — and then so does
every value it came from: `backtrack` walks the path back through the instructions it executed (a trace
node per instruction: `(slot, rest, frame, note)`, `note` naming the stack slot a load or store touched, or
the registers linked to a branch's operands), turning the wanted registers and stack slots into the ones
they were computed from, and marks them precise in each kept state on the way. It stops early where a kept
state already has them precise: its own ancestors were marked when it was.

Where the walk back cannot follow a value (an atomic operation on a wanted stack slot) every scalar of every
kept state on the path becomes precise, as the kernel's mark_all_scalars_precise: less pruning, never wrong.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..isa.ops import AddrSpaceCast, Alu, Atomic, Call, Exit, Jump, LegacyLoad, Load, LoadImm64, Reg as RegOperand, Store

ARGUMENTS = 0b111110  # r1-r5
CLOBBERED_BY_CALLS = 0b111111  # r0-r5


class Wanted:
    """The registers (a mask per frame) and spilled stack slots (per frame) whose values are still wanted,
    going back along a path."""

    __slots__ = ("regs", "slots")

    def __init__(self) -> None:
        self.regs: dict[int, int] = {}
        self.slots: dict[int, set[int]] = {}

    def add_reg(self, frame: int, n: int) -> None:
        self.regs[frame] = self.regs.get(frame, 0) | 1 << n

    def has_reg(self, frame: int, n: int) -> bool:
        return bool(self.regs.get(frame, 0) >> n & 1)

    def drop_reg(self, frame: int, n: int) -> None:
        self.regs[frame] = self.regs.get(frame, 0) & ~(1 << n)

    def add_slot(self, frame: int, slot: int) -> None:
        self.slots.setdefault(frame, set()).add(slot)

    def empty(self) -> bool:
        return not any(self.regs.values()) and not any(self.slots.values())


def backtrack(code: Mapping, wanted: Wanted, chain: tuple, checkpoint, at_point: bool) -> None:
    """Mark precise, in the kept states of a path, what `wanted` needs: the values wanted just after the
    instructions of `chain` (the path's trace, newest first) were executed. `checkpoint` is the path's
    newest kept state; `at_point` says it was kept right there (before the instruction now executing)."""
    if at_point and checkpoint is not None:
        if not _mark(checkpoint.state, wanted):
            return
        checkpoint = checkpoint.parent
    while chain:
        slot, rest, frame, note = chain
        if not _undo(code[slot][0], frame, note, wanted):
            _mark_everything(checkpoint)
            return
        if wanted.empty():
            return
        if checkpoint is not None and checkpoint.trace is chain:
            if not _mark(checkpoint.state, wanted):
                return
            checkpoint = checkpoint.parent
        chain = rest


def _undo(op, frame: int, note, wanted: Wanted) -> bool:
    """Go back over one instruction: what it computed is no longer wanted, what it computed it from is.
    False when the walk cannot follow."""
    if isinstance(note, tuple) and note[0] == "linked":  # a branch refined these together: all or none
        linked = note[1]
        if any(_has(wanted, item) for item in linked):
            for item in linked:
                _add(wanted, item)
    cls = op.__class__
    if cls is Alu:
        d = op.dst
        if not wanted.has_reg(frame, d):
            return True
        if op.op in ("mov", "movsx"):
            wanted.drop_reg(frame, d)
        if isinstance(op.src, RegOperand):
            wanted.add_reg(frame, op.src.n)
        return True
    if cls is AddrSpaceCast:
        if wanted.has_reg(frame, op.dst):
            wanted.drop_reg(frame, op.dst)
            wanted.add_reg(frame, op.src)
        return True
    if cls is Load:
        if wanted.has_reg(frame, op.dst):
            wanted.drop_reg(frame, op.dst)
            if note is not None:  # a fill: the value spilled there is wanted
                wanted.add_slot(*note)
        return True
    if cls is Store:
        if note is not None and note[1] in wanted.slots.get(note[0], ()):
            wanted.slots[note[0]].discard(note[1])
            if isinstance(op.value, RegOperand):
                wanted.add_reg(frame, op.value.n)
        return True
    if cls is Atomic:
        fetched = (0 if op.op == "cmpxchg" else op.src) if op.fetch or op.op in ("xchg", "cmpxchg") else None
        on_wanted_slot = note is not None and note[1] in wanted.slots.get(note[0], ())
        if on_wanted_slot or (fetched is not None and wanted.has_reg(frame, fetched)):
            return False
        return True
    if cls is Call:
        if note == "frame":  # into a subprogram with its own frame: its arguments were the caller's
            inner = wanted.regs.pop(frame + 1, 0)
            wanted.slots.pop(frame + 1, None)
            wanted.regs[frame] = wanted.regs.get(frame, 0) | inner & ARGUMENTS
        else:  # a helper, or a global function checked on its own: r0 is new, r1-r5 are gone
            wanted.regs[frame] = wanted.regs.get(frame, 0) & ~CLOBBERED_BY_CALLS
        return True
    if cls is Exit:
        if frame > 0:  # back into the caller: its r0 is what the callee returned
            returned = wanted.regs.get(frame - 1, 0) & 1
            wanted.regs[frame - 1] = wanted.regs.get(frame - 1, 0) & ~CLOBBERED_BY_CALLS
            wanted.regs[frame] = returned
            wanted.slots.pop(frame, None)
        return True
    if cls is Jump and op.cmp is not None and isinstance(op.src, RegOperand):
        if wanted.has_reg(frame, op.dst) or wanted.has_reg(frame, op.src.n):
            wanted.add_reg(frame, op.dst)
            wanted.add_reg(frame, op.src.n)
        return True
    if cls is LoadImm64:
        wanted.drop_reg(frame, op.dst)
        return True
    if cls is LegacyLoad:
        wanted.regs[frame] = wanted.regs.get(frame, 0) & ~CLOBBERED_BY_CALLS
        return True
    return True


def _has(wanted: Wanted, item) -> bool:
    kind, frame, n = item
    return wanted.has_reg(frame, n) if kind == "r" else n in wanted.slots.get(frame, ())


def _add(wanted: Wanted, item) -> None:
    kind, frame, n = item
    if kind == "r":
        wanted.add_reg(frame, n)
    else:
        wanted.add_slot(frame, n)


def _mark(state, wanted: Wanted) -> bool:
    """Mark what is wanted precise in a kept state; what is already precise there (its ancestors have it
    too) or is not a scalar is wanted no further. False when nothing is left."""
    for frame, mask in list(wanted.regs.items()):
        if frame >= len(state.frames):
            continue
        regs = state.frames[frame].regs
        for n in range(11):
            if mask >> n & 1:
                reg = regs[n]
                if reg.kind != "scalar" or reg.precise:
                    mask &= ~(1 << n)
                else:
                    regs[n] = reg.with_(precise=True)
        wanted.regs[frame] = mask
    for frame, slots in wanted.slots.items():
        if frame >= len(state.frames):
            continue
        spilled = state.frames[frame].spilled
        for slot in list(slots):
            reg = spilled.get(slot)
            if reg is None or reg.kind != "scalar" or reg.precise:
                slots.discard(slot)
            else:
                spilled[slot] = reg.with_(precise=True)
    return not wanted.empty()


def _mark_everything(checkpoint) -> None:
    while checkpoint is not None:
        state = checkpoint.state
        for frame in state.frames:
            frame.regs[:] = [r.with_(precise=True) if r.kind == "scalar" else r for r in frame.regs]
            for slot, reg in list(frame.spilled.items()):
                if reg.kind == "scalar":
                    frame.spilled[slot] = reg.with_(precise=True)
        checkpoint = checkpoint.parent


def precise_parts(state, live: int) -> Wanted:
    """What a kept state has precise — in the innermost frame's `live` registers, the callers' r6-r9, and
    the spilled stack slots of every frame: what a path it prunes relied on (propagate_precision)."""
    wanted = Wanted()
    last = len(state.frames) - 1
    for depth, frame in enumerate(state.frames):
        mask = live if depth == last else 0b1111000000
        for n, reg in enumerate(frame.regs):
            if mask >> n & 1 and reg.kind == "scalar" and reg.precise:
                wanted.add_reg(depth, n)
        for slot, reg in frame.spilled.items():
            if reg.kind == "scalar" and reg.precise:
                wanted.add_slot(depth, slot)
    return wanted


__all__ = ["Wanted", "backtrack", "precise_parts"]
