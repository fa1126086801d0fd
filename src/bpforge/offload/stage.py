"""Multi-stage XDP processing with host fallback: cut a program the device can run only in part.

The device runs the program up to a cut — one point or several (`Cut.points`, all in the main function)
— and hands the live state at the point a frame reaches to a host program through XDP metadata
(`data_meta`); the host program continues there. What the two programs are:

- device: the original from its entry, cut off at each point. Its first instruction saves the context in
  a stack slot below everything the program uses (so a hand-off can still reach it where r1 is long dead).
  At each point a hand-off stub grows the metadata (`bpf_xdp_adjust_meta(ctx, -N)`, N that point's size),
  writes the point's tag (`TAG_CUT` + its index) and its state there and returns XDP_PASS. Every exit of
  the device part that returns XDP_PASS tags the metadata "done", so the host does not process the frame
  again. Only what the device reaches is kept (the kernel refuses unreachable code), with the functions
  it calls.
- host: a prologue, then the whole original. The prologue reads the tag: none (the frame did not go
  through the device) runs the original from its entry — the host fallback; "done" returns XDP_PASS;
  a point's tag restores that point's state, with every value checked so the host's verifier knows what
  the original's knew there, and jumps to the point.

A set of points C is a cut when the device part R (the main function's slots reachable from the entry
without passing a point of C) holds no blocked slot (what the profile check says the device cannot run; a
call of a function holding one is blocked at the call, a tail call is blocked: its target's exits could
not tag) and every point is reached from the entry without passing another. A map is either the device's
or the host's: a map R uses must be one the device can hold and must not be used by the host part (what
is reachable from any point). The live state at each point (`analysis.liveness`) must travel: the
verifier's states there say what each live register and stack slot is —

  ctx            re-derived on the host (the context is r1 at its entry)             0 bytes
  pkt_end        re-loaded from the context                                          0 bytes
  fp + c         r10 + c                                                             0 bytes
  data + c (+v)  rebuilt from data with a bounds check proving the verifier's range  bytes of v
  scalar         as few bytes as its range needs, range re-checked on the host       0 (constant) .. 8
  stack bytes    zero bytes (a narrow spill's bytes of a constant's too) rewritten as zeros, the others
                 copied; a spilled scalar as a scalar
  anything else  (map values, spilled pointers, ...) makes the point ineligible.

Scalar ranges: states our verifier collects may miss values of scalars no later instruction needed
exactly (pruning ignores imprecise scalars), and they hold the paths through other points too, so narrow
encodings use the states of an exhaustive walk (`verifier.window.check_window`, every path, no pruning) of
the paths from the entry to the point inside R where one is possible; else scalars travel whole and
unchecked. Tag and state together fit `META_MAX` bytes.

Choosing the cut (`plan_cut`), two candidates, the better score wins (`CostModel`, `score`: the device
instructions the host no longer runs on the expected path — each branch side taken half the time, loops
once —, the frames that reach no point the host does not run at all, less each point's hand-off cost —
metadata bytes, the host's extra entry — times how often a frame reaches it):
- one point dominating every reachable blocked slot: candidates form a chain in the dominator tree, the
  later the more the device runs; the best scoring one whose programs pass our verifier.
- several points, greedily: the frontier of first blocked slots (reached from the entry without passing
  another); a point whose state cannot travel moves up its dominator chain to the latest slot whose state
  can (a quick look with the collected states first, then the exact walk; a point the exact state
  rejects moves on up); points reached only through others are dropped; R's uses of maps the host part
  uses too count as blocked, to a fixpoint; a cut whose programs our verifier rejects has its latest
  point moved up. When the points come down to the entry, the single point stands alone.

Known limits: frames are assumed to reach the device without metadata (a NIC's receive path has none);
if the metadata cannot grow, the device passes the frame untagged and the host runs it from its entry,
so device-part map updates would then happen on both copies. Function addresses (callbacks) are not
staged.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .. import vm
from ..analysis.cfg import ProgramCfg, build_cfg
from ..analysis.dominators import DominatorTree, dominators
from ..analysis.frame import Frame, MapHandle, frame_states
from ..analysis.liveness import LiveSet, program_liveness
from ..errors import BpforgeError
from ..isa import Insn, assemble, format_insn, slot_starts
from ..isa.contexts import XDP_MD
from ..isa.helpers import helper_id, helper_name
from ..isa.maptypes import MapSpec
from ..isa.numbers import M64, s64
from ..jit.device import DeviceSession, run_device
from ..jit.facts import facts_of_insns
from ..kernel.testrun import xdp_md
from ..isa.ops import Atomic, Call, Exit, Jump, Load, LoadImm64, MayGoto, Store, falls_through, following
from ..verifier.check import Unsupported, verify_program
from ..verifier.regs import Reg, describe
from ..verifier.state import INVALID, MISC, SPILL, STACK_SIZE, ZERO, State, entry_state
from ..verifier.window import ExitTarget, check_window

TAG_CUT = 0x0BF5C070  # the device stopped at the cut: the state follows
TAG_DONE = 0x0BF5D0E0  # the device finished the frame with XDP_PASS: the host lets it through
TAG_SIZE = 4
META_MAX = 32  # metadata a device prepends (the NFP's limit; BPF_PROG_TEST_RUN takes at most that much too)
XDP_PASS = 2
SEARCH_BUDGET = 30.0  # seconds plan_cut searches before it keeps the best cut found (or finds none)
WINDOW_BUDGET = 50_000  # instructions the exhaustive walk of the device part may take before scalars travel whole
ADJUST_META = helper_id("bpf_xdp_adjust_meta")
TAIL_CALL = helper_id("bpf_tail_call")
_DATA, _DATA_END, _DATA_META = (XDP_MD.offset(f) for f in ("data", "data_end", "data_meta"))
_WIDTHS = (1, 2, 4, 8)


class StageError(BpforgeError):
    """A program, or a cut of it, that cannot be staged (the location names the instruction)."""


class _TooBig(StageError):
    """The live state at a point does not fit the metadata (narrower scalar ranges might make it fit)."""


# ---- the cost model ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostModel:
    """Host cycles, roughly: one instruction the device runs instead (`device_insn`), one run of the host
    program for a frame the device finishes itself (`host_entry`: the XDP hook's dispatch and return),
    one hand-off besides (`handoff`: the stub's bpf_xdp_adjust_meta call, the prologue's tag checks) and
    one byte of state written on the device and read back on the host (`meta_byte`)."""

    device_insn: float = 1.0
    host_entry: float = 20.0
    handoff: float = 12.0
    meta_byte: float = 0.5


def score(model: CostModel, device_insns: float, reach: float | Sequence[float],
          meta_bytes: int | Sequence[int]) -> float:
    """Host cycles a cut saves per frame against running it all on the host: the `device_insns` (expected
    per frame) the device now runs, the host runs the frames that do not reach the cut no more (`reach`:
    the fraction that does), and the hand-off costs on those that do. A cut at several points gives each
    point's reach and state bytes (sequences of one length): the frames reaching none are the device's,
    each point's hand-off costs by its own reach and bytes."""
    reaches = list(reach) if isinstance(reach, Sequence) else [reach]
    sizes = list(meta_bytes) if isinstance(meta_bytes, Sequence) else [meta_bytes]
    if len(reaches) != len(sizes):
        raise ValueError("score: one reach and one state size per point")
    return (model.device_insn * device_insns + model.host_entry * (1 - sum(reaches))
            - sum(r * (model.handoff + model.meta_byte * b) for r, b in zip(reaches, sizes)))


# ---- results -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """One part of the live state at the cut: register `reg` or the stack bytes at r10 + `stack` (`width`
    of them), of `kind` ctx | pkt_end | fp | const | scalar | pkt | bytes | zero. `size` bytes of it travel
    at metadata offset `meta`; `lo`..`hi` are the bounds the host checks (a scalar, a packet pointer's
    variable part); `value` is a constant, an fp offset or a packet pointer's fixed offset; `range` the
    bytes a packet pointer was proven to reach past data + its variable part."""

    kind: str
    reg: int | None = None
    stack: int | None = None
    width: int = 8
    size: int = 0
    meta: int = 0
    lo: int = 0
    hi: int = M64
    value: int = 0
    range: int = 0

    @property
    def place(self) -> str:
        return f"r{self.reg}" if self.reg is not None else f"fp{self.stack}" + (f"[{self.width}]" if self.width != 8 else "")

    @property
    def checked(self) -> bool:
        return self.size > 0 and (self.lo > 0 or self.hi < (1 << 8 * self.size) - 1)

    def text(self) -> str:
        what = {"ctx": "the context (re-derived)", "pkt_end": "data_end (re-loaded)", "fp": f"r10{self.value:+d}",
                "const": f"= {self.value}", "zero": "zero bytes (rewritten)", "bytes": "bytes (copied)"}.get(self.kind)
        if self.kind == "scalar":
            what = f"scalar {self.lo}..{self.hi}" if self.hi < M64 or self.lo else "scalar (whole)"
        elif self.kind == "pkt":
            var = f" + {self.lo}..{self.hi}" if self.size else ""
            what = f"data{var} + {self.value}, range {self.range} checked"
        travel = f", {self.size} byte{'s' * (self.size != 1)} at meta+{self.meta}" if self.size else ""
        return f"{self.place}: {what}{travel}"


@dataclass(frozen=True)
class Handoff:
    """One point of a cut: the slot, the tag its hand-off writes, the live state's pieces there and the
    metadata they take (tag included), whether the scalar ranges are exact (an exhaustive walk; else
    scalars travel whole), how often a frame reaches it (the cost model's flow), the blocked slots the host
    runs from it on, and why it sits there."""

    point: int
    tag: int = TAG_CUT
    pieces: tuple[Piece, ...] = ()
    meta_size: int = TAG_SIZE
    exact: bool = True
    reach: float = 0.0
    blocked: tuple[int, ...] = ()
    why: str = ""

    @property
    def temps(self) -> int:
        """Register pieces that pass through reserved stack slots (one each)."""
        return sum(1 for q in self.pieces if q.reg is not None and q.size)

    def temp_slot(self, ctx_slot: int, piece: Piece) -> int:
        """The reserved stack slot a register's travelling value passes through."""
        return ctx_slot - 8 * (1 + [p for p in self.pieces if p.reg is not None and p.size].index(piece))


@dataclass(frozen=True)
class Cut:
    """Where to cut (`points`, ascending, each a `Handoff` in `handoffs`; none: the device runs it all)
    and what that takes: which maps each side holds (indexes), the device's slots of the main function,
    the reserved stack (the saved context at r10 + `ctx_slot`, temporaries below it), the blocked slots
    the host part runs, the score and the explanation (one line per fact). `point`, `pieces`, `exact`:
    the first point's (a cut at one point reads as it always did); `meta_size`: the most metadata a
    hand-off of the cut takes, tag included."""

    handoffs: tuple[Handoff, ...] = ()
    device_maps: frozenset[int] = frozenset()
    host_maps: frozenset[int] = frozenset()
    device_slots: frozenset[int] = frozenset()
    blocked: tuple[int, ...] = ()
    ctx_slot: int = -8
    score: float = 0.0
    explanation: tuple[str, ...] = ()

    @property
    def points(self) -> tuple[int, ...]:
        return tuple(h.point for h in self.handoffs)

    @property
    def point(self) -> int | None:
        return self.handoffs[0].point if self.handoffs else None

    @property
    def pieces(self) -> tuple[Piece, ...]:
        return self.handoffs[0].pieces if self.handoffs else ()

    @property
    def meta_size(self) -> int:
        return max((h.meta_size for h in self.handoffs), default=0)

    @property
    def exact(self) -> bool:
        return all(h.exact for h in self.handoffs)

    def handoff(self, point: int) -> Handoff:
        return next(h for h in self.handoffs if h.point == point)

    def temp_slot(self, piece: Piece) -> int:
        """The reserved stack slot a register's travelling value passes through (the first point's)."""
        return self.handoffs[0].temp_slot(self.ctx_slot, piece)

    def explain(self) -> str:
        return "\n".join(self.explanation)


@dataclass
class Split:
    cut: Cut
    device: list[Insn]
    host: list[Insn] | None  # None: no cut, nothing reaches a host program
    maps: list[MapSpec]

    @property
    def device_maps(self) -> frozenset[int]:
        return self.cut.device_maps

    @property
    def host_maps(self) -> frozenset[int]:
        return self.cut.host_maps


# ---- the program, analysed once -------------------------------------------------------------------------------

@dataclass(eq=False)
class _Program:
    insns: list[Insn]
    maps: list[MapSpec]
    blocked: frozenset[int]
    device_maps: frozenset[int]
    cfg: ProgramCfg = field(init=False)

    def __post_init__(self) -> None:
        self.cfg = build_cfg(self.insns)
        if self.cfg.unreachable:
            first = min(self.cfg.blocks[b].start for b in self.cfg.unreachable)
            raise StageError(f"unreachable insn {first}", insn=first)
        self.ops = self.cfg.ops
        self.main = self.cfg.functions[0]
        self.dom: DominatorTree = dominators(self.cfg, 0)
        self.live = program_liveness(self.cfg, self.maps)[0]
        self.frames = frame_states(self.cfg, 0, "xdp")
        self.starts = slot_starts(self.insns)
        self.insn_at = dict(zip(self.starts, self.insns))
        self.blocked_main = self._blocked_in_main()
        self.preds: dict[int, list[int]] = {}
        for s in self.slots_of(0):
            for t in self.succs(s):
                self.preds.setdefault(t, []).append(s)
        self.depth = self._stack_depth()

    def slots_of(self, function: int) -> list[int]:
        f = self.cfg.functions[function]
        return [s for b in f.blocks for s, _ in self.cfg.blocks[b].ops]

    def succs(self, slot: int) -> list[int]:
        op = self.ops[slot]
        out = [following(self.ops, slot)] if falls_through(op) else []
        if op.__class__ in (Jump, MayGoto):
            out.append(op.target)
        return out

    def region(self, start: int | None, stops: int | Iterable[int] | None) -> set[int]:
        """Main-function slots reachable from `start` without passing a slot of `stops` (one, several or
        None)."""
        return self.walk(start, stops)[0]

    def walk(self, start: int | None, stops: int | Iterable[int] | None) -> tuple[set[int], set[int]]:
        """(the slots reachable from `start` without passing `stops`, the slots of `stops` reached)."""
        stop = _stop_set(stops)
        if start is None:
            return set(), set()
        if start in stop:
            return set(), {start}
        seen, hit, todo = {start}, set(), [start]
        while todo:
            for nxt in self.succs(todo.pop()):
                if nxt in stop:
                    hit.add(nxt)
                elif nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen, hit

    def slot_dominates(self, a: int, b: int) -> bool:
        """Whether every path from the entry to slot `b` passes slot `a` (`a` == `b` included)."""
        ba, bb = self.cfg.block_of_slot[a], self.cfg.block_of_slot[b]
        return a <= b if ba == bb else self.dom.dominates(ba, bb)

    def slot_idom(self, slot: int) -> int | None:
        """The slot right before `slot` on every path from the entry: the previous instruction of its
        block, or the last of its block's immediate dominator (None at the entry)."""
        b = self.cfg.block_of_slot[slot]
        slots = [s for s, _ in self.cfg.blocks[b].ops]
        at = slots.index(slot)
        if at:
            return slots[at - 1]
        if b == self.dom.root:
            return None
        return self.cfg.blocks[self.dom.idom[b]].ops[-1][0]

    def reachable_blocked(self) -> list[int]:
        return sorted(s for s in self.blocked_main if self.dom.reachable(self.cfg.block_of_slot[s]))

    def host_region(self, points: Iterable[int]) -> set[int]:
        """Main-function slots reachable from any of `points` (the host part of a cut there)."""
        out: set[int] = set()
        for p in _stop_set(points):
            out |= self.region(p, None)
        return out

    def feeding(self, p: int, region: set[int]) -> set[int]:
        """The slots of `region` from which `p` is reached without leaving it."""
        seen, todo = set(), [p]
        while todo:
            for r in self.preds.get(todo.pop(), ()):
                if r in region and r not in seen:
                    seen.add(r)
                    todo.append(r)
        return seen

    def callees(self, slots) -> set[int]:
        """Indexes of the functions the slots call, directly or not."""
        found: set[int] = set()
        todo = [self.cfg.function_entered_at(self.ops[s].target).index for s in slots if _local_call(self.ops[s])]
        while todo:
            index = todo.pop()
            if index not in found:
                found.add(index)
                todo.extend(self.cfg.call_graph[index])
        return found

    def map_uses(self, slots, functions) -> dict[int, list[int]]:
        """Map index -> the slots (of `slots` and of the functions) that load its address."""
        uses: dict[int, list[int]] = {}
        for s in list(slots) + [s for f in functions for s in self.slots_of(f)]:
            op = self.ops[s]
            if op.__class__ is LoadImm64 and op.kind in ("map", "map_value"):
                uses.setdefault(op.value, []).append(s)
        return uses

    def _blocked_in_main(self) -> dict[int, str]:
        """Main-function slots the device cannot run, with why: the profile's, calls of functions holding
        one, tail calls (the target's exits would not tag the metadata), loads of maps the device cannot
        hold."""
        inside: dict[int, bool] = {}

        def holds(index: int, seen=()) -> bool:
            if index not in inside:
                fn = self.cfg.functions[index]
                own = any(s in self.blocked or _is_helper(self.ops[s], TAIL_CALL) for s in self.slots_of(index))
                inside[index] = own or any(holds(c, seen + (index,)) for c in self.cfg.call_graph[index]
                                           if c not in seen and c != fn.index)
            return inside[index]

        why: dict[int, str] = {}
        for s in self.slots_of(0):
            op = self.ops[s]
            if s in self.blocked:
                why[s] = self.what(s)
            elif _is_helper(op, TAIL_CALL):
                why[s] = "bpf_tail_call (its target's exits cannot tag the metadata)"
            elif _local_call(op) and holds(self.cfg.function_entered_at(op.target).index):
                why[s] = f"a call of the function at insn {op.target}, which holds a blocked instruction"
            elif op.__class__ is LoadImm64 and op.kind in ("map", "map_value") and op.value not in self.device_maps:
                why[s] = f"map {self.map_name(op.value)}, which the device cannot hold"
        for index in range(1, len(self.cfg.functions)):
            for s in self.slots_of(index):
                op = self.ops[s]
                if op.__class__ is LoadImm64 and op.kind in ("map", "map_value") and op.value not in self.device_maps:
                    inside[index] = True
        return why

    def what(self, slot: int) -> str:
        """A blocked slot as the explanation names it: the helper, and the map its r1 holds."""
        op = self.ops[slot]
        if op.__class__ is not Call or op.kind != "helper":
            return "blocked by the profile"
        handle = self.frames.get(slot, (None,) * 11)[1]
        return helper_name(op.target) + (f" on {self.map_name(handle.ref)}" if isinstance(handle, MapHandle) else "")

    def map_name(self, index: int) -> str:
        return self.maps[index].name if 0 <= index < len(self.maps) and self.maps[index].name else str(index)

    def flow(self, stops: int | Iterable[int] | None) -> tuple[dict[int, float], float, float]:
        """(block -> how often it runs per frame, expected instructions before the cut, how often a frame
        reaches it): each distinct successor of a block equally likely, back edges dropped (a loop's body
        counts once), nothing flowing on from a point of `stops` (the cut: what follows runs on the host)."""
        prob, count, reaches = self.flow_points(stops)
        return prob, count, sum(reaches.values())

    def flow_points(self, stops: int | Iterable[int] | None) -> tuple[dict[int, float], float, dict[int, float]]:
        """As `flow`, with how often a frame reaches each point of `stops`."""
        prob = {b: 0.0 for b in self.dom.order}
        prob[self.dom.root] = 1.0
        at = {self.cfg.block_of_slot[s]: s for s in sorted(_stop_set(stops), reverse=True)}
        count = 0.0
        for b in self.dom.order:
            block = self.cfg.blocks[b]
            if b in at:
                count += prob[b] * sum(1 for s, _ in block.ops if s < at[b])
                continue
            count += prob[b] * len(block.ops)
            share = prob[b] / len(block.successors) if block.successors else 0.0
            for t in block.successors:
                if not self.dom.dominates(t, b):
                    prob[t] += share
        return prob, count, {s: prob.get(self.cfg.block_of_slot[s], 0.0) for s in _stop_set(stops)}

    def _stack_depth(self) -> int | None:
        """The deepest byte below r10 the main function touches through r10 or its copies, or by helpers
        given stack pointers (`analysis.frame`); the accesses whose base it cannot tell are left in
        `stack_probes` for the verifier's states to settle (`depth_with`). None when a stack address goes
        to another function of the program (which may reach any byte of the frame)."""
        depth, self.stack_probes = 0, []
        for s in self.slots_of(0):
            regs, op = self.frames.get(s), self.ops[s]
            if regs is None:
                continue
            if op.__class__ in (Load, Store, Atomic):
                base = regs[op.base]
                if isinstance(base, Frame):
                    depth = max(depth, -(base.offset + op.off))
                elif base is None:
                    self.stack_probes.append(s)
            elif op.__class__ is Call:
                args = [regs[n] for n in range(1, 6)]
                if op.kind != "helper" and any(a is None or isinstance(a, Frame) for a in args):
                    return None
                depth = max([depth] + [-a.offset for a in args if isinstance(a, Frame)])
                if any(a is None for a in args):
                    self.stack_probes.append(s)
        return depth

    def depth_with(self, collected: Mapping[int, list[State]]) -> int | None:
        """The stack depth, the accesses `analysis.frame` could not place read from the verifier's states
        (a pointer's kind and offsets are compared exactly when paths meet: they speak for every path)."""
        if self.depth is None:
            return None
        depth = self.depth
        for s in self.stack_probes:
            op = self.ops[s]
            for st in collected.get(s, ()):
                if op.__class__ is Call:
                    bases = [(st.regs[n], 0) for n in range(1, 6)]
                else:
                    bases = [(st.regs[op.base], op.off)]
                for reg, off in bases:
                    if reg.kind == "fp":
                        depth = max(depth, -(reg.off + reg.var.smin + off))
        return depth


def _stop_set(stops: int | Iterable[int] | None) -> frozenset[int]:
    if stops is None:
        return frozenset()
    return frozenset({stops}) if isinstance(stops, int) else frozenset(stops)


def _local_call(op) -> bool:
    return op.__class__ is Call and op.kind == "local"


def _is_helper(op, helper: int) -> bool:
    return op.__class__ is Call and op.kind == "helper" and op.target == helper




# ---- the live state at a candidate ------------------------------------------------------------------------

def _width(hi: int) -> int:
    return next(w for w in _WIDTHS if hi < 1 << 8 * w)


def _scalar_piece(regs: list[Reg], exact: bool, **where) -> Piece:
    lo, hi = (min(r.var.umin for r in regs), max(r.var.umax for r in regs)) if exact else (0, M64)
    if lo == hi:
        return Piece("const", value=lo, **where)
    return Piece("scalar", size=_width(hi), lo=lo, hi=hi, **where)


def _register_piece(n: int, regs: list[Reg], exact: bool, p: int) -> Piece | None:
    kinds = {r.kind for r in regs}
    if kinds == {"not_init"}:
        return None
    if len(kinds) > 1:
        raise StageError(f"r{n} at insn {p} is {' on one path, '.join(sorted(kinds))} on another: it cannot "
                         "travel", insn=p)
    kind, first = kinds.pop(), regs[0]
    plain = all(r.var.is_const() and r.var.var_off.value == 0 for r in regs)
    if kind == "ctx" and plain and all(r.off == 0 for r in regs):
        return Piece("ctx", reg=n)
    if kind == "pkt_end":
        return Piece("pkt_end", reg=n)
    if kind == "fp" and plain and len({r.off for r in regs}) == 1 and all(r.frame == 0 for r in regs):
        return Piece("fp", reg=n, value=first.off)
    if kind == "scalar":
        return _scalar_piece(regs, exact, reg=n)
    if kind == "pkt" and len({r.off for r in regs}) == 1:
        # Pointers' variable parts are compared exactly when paths meet: their bounds are sound here.
        lo, hi = min(r.var.umin for r in regs), max(r.var.umax for r in regs)
        reach = min(r.range for r in regs)
        if hi == 0:
            return Piece("pkt", reg=n, value=first.off, range=reach)
        if hi > 0xFFFF:
            raise StageError(f"r{n} at insn {p} is a packet pointer whose variable part is not bounded", insn=p)
        return Piece("pkt", reg=n, value=first.off, range=reach, size=_width(hi), lo=lo, hi=hi)
    raise StageError(f"r{n} at insn {p} is {describe(first)}, which cannot travel to the host", insn=p)


def _stack_pieces(offset: int, states: list[State], exact: bool, p: int) -> list[Piece]:
    start = STACK_SIZE + offset
    index = start // 8
    spills = [st.frame.spilled.get(index) for st in states]
    full = [bytes(st.frame.types[start:start + 8]) == bytes([SPILL]) * 8 for st in states]
    for reg in spills:
        if reg is not None and reg.kind != "scalar":
            raise StageError(f"fp{offset} at insn {p} holds a spilled {describe(reg)}, which cannot travel", insn=p)
    if all(full) and all(r is not None for r in spills):
        return [_scalar_piece(spills, exact, stack=offset)]
    def kind(st: State, i: int) -> int:
        """A byte's kind, a byte of a narrow spill as what it holds: zero when the spilled scalar is a
        constant whose byte there is 0 (the verifier keeps `*(u32 *)(r10 - 8) = 0` as a spill), else misc."""
        found = st.frame.types[i]
        if found != SPILL:
            return found
        reg = st.frame.spilled.get(index)
        known = reg is not None and reg.var.is_const() and not reg.var.var_off.value >> 8 * (i - start) & 0xFF
        return ZERO if known else MISC

    classes = []
    for i in range(start, start + 8):
        kinds = {kind(st, i) for st in states}
        if kinds == {INVALID}:
            classes.append("none")
        elif kinds == {ZERO}:
            classes.append("zero")
        elif INVALID not in kinds:
            classes.append("bytes")
        else:
            raise StageError(f"fp{offset + i - start} at insn {p} is initialised on some paths only", insn=p)
    pieces: list[Piece] = []

    def chunk(lo: int, size: int) -> None:  # aligned chunks of one class (stack accesses must be aligned)
        kinds = set(classes[lo:lo + size])
        if len(kinds) > 1:
            chunk(lo, size // 2)
            chunk(lo + size // 2, size // 2)
        elif kinds != {"none"}:
            kind = kinds.pop()
            pieces.append(Piece(kind, stack=offset + lo, width=size, size=size if kind == "bytes" else 0))

    chunk(0, 8)
    return pieces


def _layout(pieces: list[Piece], p: int) -> tuple[tuple[Piece, ...], int]:
    """Metadata offsets (after the tag, widest first) and the metadata size, a multiple of 4."""
    at = TAG_SIZE
    out = []
    for piece in sorted(pieces, key=lambda q: -q.size):
        out.append(_with(piece, meta=at) if piece.size else piece)
        at += piece.size
    size = -(-at // 4) * 4
    if size > META_MAX:
        raise _TooBig(f"the live state at insn {p} needs {size} bytes of metadata with its tag, more than "
                         f"{META_MAX}", insn=p)
    return tuple(sorted(out, key=lambda q: (q.reg is None, q.reg or 0, q.stack or 0))), size


def _with(item, **changes):
    return replace(item, **changes)


def _states(prog: _Program, p: int, collected: list[State], region: set[int]) -> tuple[list[State], bool]:
    """The states at `p` and whether they are exact (an exhaustive walk of the paths from the entry to `p`
    inside the device part `region`, every path on its own) — else the collected ones, whose scalar bounds
    may miss pruned paths (and which also hold the paths through other points of the cut)."""
    if p == 0:
        return [entry_state()], True
    feeding = prog.feeding(p, region)
    if any(s >= p and any(t <= p for t in prog.succs(s)) for s in feeding) or prog.callees(feeding):
        return collected, False
    index = {s: i for i, s in enumerate(prog.starts)}
    prefix = [insn for insn, s in zip(prog.insns, prog.starts) if s < p]
    # A path leaving the slots that lead to p (at another point of the cut, or towards code that cannot
    # reach p) ends there: a jump past the window's end. It is conditional (r10 is not null) so that what
    # follows it is no unreachable code to the window; our verifier walks on past it too (it does not
    # decide fp != 0), so when that fails, the whole prefix is walked instead (its paths through other
    # points add states: bounds wider, still sound).
    trimmed = list(prefix)
    leaving = {t for s in feeding for t in prog.succs(s) if t < p and t not in feeding}
    for q in sorted(leaving, reverse=True):
        i = index[q]
        trimmed[i:i + 1] = [assemble(f"if r10 != 0 goto +{p - q - k}", check_jumps=False)[0]
                            for k in range(prog.insns[i].slots)]
    for window in ([trimmed, prefix] if leaving else [prefix]):
        try:
            found = check_window(window, [entry_state()], prog_type="xdp", maps=prog.maps, budget=WINDOW_BUDGET)
        except (Unsupported, BpforgeError):
            continue
        states = found.exits.get(ExitTarget("after", 0), [])
        if found.safe and found.complete and states:
            return states, True
    return collected, False


def _at(points: Sequence[int]) -> str:
    points = sorted(points)
    return f"insn {points[0]}" if len(points) == 1 else "insns " + ", ".join(map(str, points))


# ---- one point: the state that travels --------------------------------------------------------------------------

def _point(prog: _Program, p: int, collected: list[State], depth: int | None, region: set[int], *,
           why: str = "", walk: bool = True) -> Handoff:
    """The hand-off at `p` (its state, the metadata it takes) for a cut whose device part is `region`;
    StageError when its state cannot travel. `walk` False: the collected states only (scalars travel
    whole), a quick first look."""
    if not collected:
        raise StageError(f"our verifier reaches insn {p} on no path", insn=p)
    states, exact = _states(prog, p, collected, region) if walk else (collected, False)
    live: LiveSet = prog.live.live_before(p)
    pieces: list[Piece] = []
    for n in sorted(live.registers - {10}):
        piece = _register_piece(n, [st.regs[n] for st in states], exact, p)
        if piece is not None:
            pieces.append(piece)
    for offset in sorted(live.stack, reverse=True):
        pieces += _stack_pieces(offset, states, exact, p)
    if not exact:  # what travels whatever the scalars' ranges (each might be a constant)
        floor = -(-(TAG_SIZE + sum(q.size for q in pieces if q.kind != "scalar")) // 4) * 4
        if floor > META_MAX:
            raise StageError(f"the live state at insn {p} needs at least {floor} bytes of metadata with its tag, "
                             f"more than {META_MAX}", insn=p)
    laid, meta_size = _layout(pieces, p)
    if depth is None:
        raise StageError(f"the stack the program uses cannot be told (a stack address escapes), so there is no "
                         f"reserved slot for the context the hand-off at insn {p} needs", insn=p)
    temps = sum(1 for q in laid if q.reg is not None and q.size)
    if (depth + 7) // 8 * 8 + 8 + 8 * temps > STACK_SIZE:
        raise StageError(f"the program uses {depth} bytes of stack: no room for the {8 * (1 + temps)} the "
                         f"hand-off at insn {p} reserves", insn=p)
    if any(q.kind == "pkt" and q.size for q in laid) and not _dead_registers(prog, p):
        raise StageError(f"no register is free at insn {p} to turn a packet pointer into an offset", insn=p)
    return Handoff(p, pieces=laid, meta_size=meta_size, exact=exact, why=why)


# ---- the cut: points together ---------------------------------------------------------------------------------

def _combine(prog: _Program, handoffs: Sequence[Handoff], depth: int | None, model: CostModel) -> Cut:
    """The cut at the handoffs' points: the device part, the map rule, tags, reach and score; StageError
    when the points do not make a cut."""
    points = sorted(h.point for h in handoffs)
    region, hit = prog.walk(0, points)
    for q in points:
        if q not in hit and q != 0:
            others = [p for p in points if p != q and prog.slot_dominates(p, q)]
            by = f"insn {others[0]}, which dominates it" if others else f"the cut's other points ({_at(points)})"
            raise StageError(f"insn {q} is reached only through {by}: its hand-off would never run", insn=q)
    bad = sorted(s for s in region if s in prog.blocked_main)
    if bad:
        if len(points) == 1:
            raise StageError(f"insn {points[0]} does not dominate blocked insn {bad[0]} "
                             f"({prog.blocked_main[bad[0]]})", insn=points[0])
        raise StageError(f"{_at(points)} do not cover blocked insn {bad[0]} ({prog.blocked_main[bad[0]]}): a "
                         "path from the entry reaches it without passing a point of the cut", insn=points[0])
    host = prog.host_region(points)
    device_uses, host_uses = prog.map_uses(region, prog.callees(region)), prog.map_uses(host, prog.callees(host))
    for ref, slots in sorted(device_uses.items()):
        if ref not in prog.device_maps:
            raise StageError(f"the device part before {_at(points)} uses map {prog.map_name(ref)} (insn {slots[0]}), "
                             "which the device cannot hold", insn=points[0])
        if ref in host_uses:
            raise StageError(f"the device part before {_at(points)} uses map {prog.map_name(ref)} (insn {slots[0]}), "
                             f"which the host part uses too (insn {host_uses[ref][0]}): one map cannot be split "
                             "between the two copies", insn=points[0])
    _, device_insns, reaches = prog.flow_points(points)
    by_point = {h.point: h for h in handoffs}
    laid = tuple(_with(by_point[p], tag=TAG_CUT + i, reach=reaches[p],
                       blocked=tuple(sorted(s for s in prog.region(p, None) if s in prog.blocked_main)))
                 for i, p in enumerate(points))
    benefit = score(model, device_insns, [h.reach for h in laid], [h.meta_size - TAG_SIZE for h in laid])
    ctx_slot = -(((depth or 0) + 7) // 8 * 8) - 8
    after = tuple(sorted(s for s in host if s in prog.blocked_main))
    return Cut(laid, frozenset(device_uses), frozenset(range(len(prog.maps))) - frozenset(device_uses),
               frozenset(region), after, ctx_slot, benefit)


def _evaluate(prog: _Program, points: Sequence[int], collected: Mapping[int, list[State]], depth: int | None,
              model: CostModel, why: Mapping[int, str] | None = None, cache: dict | None = None) -> Cut:
    """The cut at `points` (checked as a cut first, then each point's state); StageError when it is not
    eligible. `cache`: hand-offs already worked out, by point and the slots leading to it."""
    cut = _combine(prog, [Handoff(p) for p in points], depth, model)
    region = set(cut.device_slots)
    cache = {} if cache is None else cache
    handoffs = []
    for p in cut.points:
        key = (p, frozenset(prog.feeding(p, region)))
        if key not in cache:
            try:
                cache[key] = _point(prog, p, collected.get(p, []), depth, region)
            except StageError as err:
                cache[key] = err
        if isinstance(cache[key], StageError):
            raise cache[key]
        handoffs.append(_with(cache[key], why=(why or {}).get(p, "")))
    return _combine(prog, handoffs, depth, model)


def _dead_registers(prog: _Program, p: int) -> list[int]:
    live = prog.live.live_before(p).registers
    return [n for n in range(10) if n not in live]


# ---- choosing the cut ------------------------------------------------------------------------------------------

def _candidates(prog: _Program) -> list[int]:
    """Main slots that dominate every reachable blocked slot, earliest first."""
    blocks = {prog.cfg.block_of_slot[s] for s in prog.reachable_blocked()}
    out = []
    for b in prog.dom.order:
        if not all(prog.dom.dominates(b, t) for t in blocks):
            continue
        first = min((s for s in prog.reachable_blocked() if prog.cfg.block_of_slot[s] == b), default=None)
        out += [s for s, _ in prog.cfg.blocks[b].ops if first is None or s <= first]
    return sorted(out)


def _single(prog: _Program, collected, depth, model, deadline: float) -> tuple[Cut | None, list[tuple[int, str]]]:
    """The best cut at one point (the chain of slots dominating every blocked slot, best score first, the
    first whose programs pass our verifier, while `deadline` (time.monotonic) has not passed) and the
    candidates rejected, with why."""
    cuts, rejected = [], []
    for p in _candidates(prog):
        try:
            cuts.append(_evaluate(prog, [p], collected, depth, model))
        except StageError as err:
            rejected.append((p, err.message))
    for cut in sorted(cuts, key=lambda c: (-c.score, c.meta_size, -c.point)):
        if time.monotonic() > deadline:
            rejected.append((cut.point, "not tried: the search's time budget ran out"))
            break
        why = _verify(prog, cut)
        if why is None:
            return cut, sorted(rejected, key=lambda r: -r[0])
        rejected.append((cut.point, why))
    return None, rejected


def _greedy(prog: _Program, collected, depth, model, deadline: float) -> tuple[Cut | None, list[tuple[int, str]]]:
    """A cut at several points: the frontier of first blocked slots (reached from the entry without passing
    another), each point whose state cannot travel moved up its dominator chain to the latest slot whose
    state can, points reached only through others dropped; device-part uses of maps the host part uses
    too count as blocked (to a fixpoint); a cut whose programs our verifier rejects has its latest point
    moved up. Returns the cut (None when it comes down to the entry) and the points moved, with why."""
    rejected: dict[int, str] = {}
    extra: dict[int, str] = {}  # device-part map uses counted as blocked, with why
    quick: dict[int, str | None] = {}
    cache: dict = {}

    def eligible(p: int) -> bool:  # the state's kinds and the metadata with scalars whole
        if p not in quick:
            try:
                _point(prog, p, collected.get(p, []), depth, set(), walk=False)
                quick[p] = None
            except _TooBig:
                quick[p] = None  # exact ranges may make it fit: the walk decides
            except StageError as err:
                quick[p] = err.message
        return quick[p] is None

    for _ in range(4 * len(prog.starts) + 8):
        if time.monotonic() > deadline:
            break
        blocked = set(prog.reachable_blocked()) | set(extra)
        _, frontier = prog.walk(0, blocked)
        why: dict[int, str] = {}
        for b in sorted(frontier):
            p, reason = b, f"the first blocked insn on its paths ({prog.blocked_main.get(b) or extra[b]})"
            while p in rejected or not eligible(p):
                if p not in rejected:
                    rejected[p] = quick[p]
                reason = f"moved up from insn {b} (blocked: {prog.blocked_main.get(b) or extra[b]}); insn {p}: {rejected[p]}"
                up = prog.slot_idom(p)
                if up is None:
                    return None, sorted(rejected.items(), key=lambda r: -r[0])
                p = up
            why.setdefault(p, reason)
        _, hit = prog.walk(0, why)
        points = sorted(p for p in why if p in hit or p == 0)
        if 0 in points:
            return None, sorted(rejected.items(), key=lambda r: -r[0])
        region = prog.region(0, points)
        host = prog.host_region(points)
        host_uses = prog.map_uses(host, prog.callees(host))
        conflicts: dict[int, str] = {}
        for ref, slots in prog.map_uses(region, prog.callees(region)).items():
            if ref not in host_uses:
                continue
            reason = f"map {prog.map_name(ref)}, which the host part uses too (insn {host_uses[ref][0]})"
            for s in slots:  # a use in a called function: its calls in the device part
                fn = prog.cfg.block_at(s).function
                conflicts.update({c: reason for c in ([s] if fn == 0 else [c for c in region if _local_call(
                    prog.ops[c]) and fn in prog.callees([c])])})
        if conflicts.keys() - extra.keys():
            extra.update(conflicts)
            continue
        try:
            cut = _evaluate(prog, points, collected, depth, model, why, cache)
        except StageError as err:
            q = err.where.insn if err.where is not None and err.where.insn in points else max(points)
            rejected[q], quick[q] = err.message, err.message
            continue
        failed = _verify(prog, cut)
        if failed is None:
            return cut, sorted(rejected.items(), key=lambda r: -r[0])
        rejected[max(points)] = quick[max(points)] = failed
    return None, sorted(rejected.items(), key=lambda r: -r[0])


def _explained(prog: _Program, cut: Cut, rejected: list[tuple[int, str]], model: CostModel,
               other: Cut | None = None) -> Cut:
    if len(cut.points) > 1:
        return _explained_points(prog, cut, rejected, model, other)
    p = cut.point
    lines = []
    if p == 0:
        lines.append("cut at insn 0: the host runs the whole program (no later cut is eligible)")
    else:
        shown = ", ".join(_ranges(sorted(cut.device_slots)))
        lines.append(f"cut at insn {p}: the device runs insns {shown} ({len(cut.device_slots)} instructions)")
    _, device_insns, reach = prog.flow(p)
    lines.append(f"score {cut.score:.1f} host cycles per frame = {model.device_insn} x {device_insns:.1f} device "
                 f"instructions expected + {model.host_entry} x {1 - reach:.2f} frames the device finishes - "
                 f"{reach:.2f} reaching the cut x ({model.handoff} + {model.meta_byte} x {cut.meta_size - TAG_SIZE} "
                 "state bytes)")
    lines.append(_blocked_line(prog, cut.blocked, "blocked after it"))
    lines.append(_state_line(cut.meta_size, cut.exact))
    lines += [f"  {q.text()}" for q in cut.pieces]
    lines.append(_maps_line(prog, cut))
    lines += _others(other, rejected)
    return _with(cut, explanation=tuple(lines))


def _state_line(meta_size: int, exact: bool) -> str:
    return f"state handed over in {meta_size} bytes of metadata (tag included)" + (
        "" if exact else "; scalar bounds unknown on some pruned path, so scalars travel whole")


def _explained_points(prog: _Program, cut: Cut, rejected, model: CostModel, other: Cut | None) -> Cut:
    shown = ", ".join(_ranges(sorted(cut.device_slots)))
    _, device_insns, _ = prog.flow(cut.points)
    reach = sum(h.reach for h in cut.handoffs)
    lines = [f"cut at {_at(cut.points)} ({len(cut.points)} points): the device runs insns {shown} "
             f"({len(cut.device_slots)} instructions)",
             f"score {cut.score:.1f} host cycles per frame = {model.device_insn} x {device_insns:.1f} device "
             f"instructions expected + {model.host_entry} x {1 - reach:.2f} frames the device finishes - the "
             f"hand-offs, reach x ({model.handoff} + {model.meta_byte} x state bytes): "
             + " + ".join(f"{h.reach:.2f} x ({model.handoff} + {model.meta_byte} x {h.meta_size - TAG_SIZE})"
                          for h in cut.handoffs)]
    for h in cut.handoffs:
        lines.append(f"point insn {h.point} (tag {h.tag:#010x}, {h.reach:.2f} of frames): {h.why or 'chosen'}")
        lines.append("  " + _blocked_line(prog, h.blocked, "blocked after it"))
        lines.append("  " + _state_line(h.meta_size, h.exact))
        lines += [f"    {q.text()}" for q in h.pieces]
    lines.append(_maps_line(prog, cut))
    lines += _others(other, rejected)
    return _with(cut, explanation=tuple(lines))


def _blocked_line(prog: _Program, slots: Sequence[int], title: str) -> str:
    blocked = [f"{s} ({prog.blocked_main[s]})" for s in slots]
    more = f" and {len(blocked) - 8} more" if len(blocked) > 8 else ""
    return f"{title}: insns {', '.join(blocked[:8])}{more}" if blocked else f"{title}: none"


def _maps_line(prog: _Program, cut: Cut) -> str:
    names = lambda refs: ", ".join(prog.map_name(r) for r in sorted(refs)) or "none"  # noqa: E731
    return f"maps: device {names(cut.device_maps)}; host {names(cut.host_maps - cut.device_maps)}"


def _others(other: Cut | None, rejected: list[tuple[int, str]]) -> list[str]:
    lines = []
    if other is not None:
        lines.append(f"the best cut at {'one point' if len(other.points) == 1 else 'several points'} "
                     f"({_at(other.points)}) scores {other.score:.1f}")
    for q, why in rejected[:6]:
        lines.append(f"not insn {q}: {why}")
    if len(rejected) > 6:
        lines.append(f"({len(rejected) - 6} more candidates not eligible)")
    return lines


def _ranges(slots: list[int]) -> list[str]:
    out: list[str] = []
    for s in slots:
        if out and isinstance(out[-1], list) and out[-1][1] + 1 >= s:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [f"{a}" if a == b else f"{a}-{b}" for a, b in out]


def _analysis(insns: Sequence[Insn], maps: Sequence[MapSpec], blocked, device_maps, prog_type: str) -> _Program:
    if prog_type != "xdp":
        raise StageError(f"staged execution hands state over through XDP metadata: {prog_type} programs cannot "
                         "be staged")
    return _Program(list(insns), list(maps), frozenset(blocked), frozenset(device_maps))


def _collect(prog: _Program, slots: list[int]) -> dict[int, list[State]]:
    verdict = verify_program(prog.insns, "xdp", prog.maps, collect=slots)
    if not verdict.accepted:
        raise StageError(f"our verifier rejects the program: {verdict.message}", insn=verdict.insn)
    return verdict.collected


def _no_cut(prog: _Program, model: CostModel) -> Cut:
    everything = set(prog.slots_of(0))
    lines = ("no cut: nothing the device cannot run is reachable; the device runs the whole program",)
    return Cut((), device_maps=frozenset(prog.map_uses(everything, prog.callees(everything))),
               device_slots=frozenset(everything), score=score(model, prog.flow(None)[1], 0.0, 0),
               explanation=lines)


def plan_cut(insns: Sequence[Insn], maps: Sequence[MapSpec], blocked, device_maps, *, prog_type: str = "xdp",
             model: CostModel = CostModel(), several: bool = True, budget: float | None = SEARCH_BUDGET) -> Cut:
    """The best cut of a linked program (map lddws name `maps` by index) given the slots the device cannot
    run (`blocked`) and the maps it can hold (`device_maps`, indexes), explained: the better scoring of the
    best cut at one point and (`several`) the greedy cut at several points. `budget`: seconds for the
    search (each candidate's programs go through our verifier), after which it keeps what it found."""
    deadline = float("inf") if budget is None else time.monotonic() + budget
    prog = _analysis(insns, maps, blocked, device_maps, prog_type)
    if not prog.reachable_blocked():
        return _no_cut(prog, model)
    if prog.depth is None:  # known before any candidate is weighed: every hand-off needs the reserved slot
        raise StageError("no eligible cut: the stack the program uses cannot be told (a stack address escapes "
                         "into a called function), so no stack slot can be reserved for the hand-off")
    collected = _collect(prog, prog.slots_of(0) + prog.stack_probes)
    depth = prog.depth_with(collected)
    one, rejected = _single(prog, collected, depth, model, deadline)
    many, moved = _greedy(prog, collected, depth, model, deadline) if several else (None, [])
    if many is not None and (one is None or many.score > one.score):
        return _explained(prog, many, moved, model, one)
    if one is None:
        late = "" if time.monotonic() <= deadline else f" within the search's budget of {budget:g} s"
        raise StageError(f"no eligible cut{late}: " + "; ".join(f"insn {p}: {why}" for p, why in rejected[-3:]))
    return _explained(prog, one, rejected, model, many)


def explicit_cut(insns: Sequence[Insn], maps: Sequence[MapSpec], blocked, device_maps,
                 points: int | Sequence[int], *, prog_type: str = "xdp", model: CostModel = CostModel()) -> Cut:
    """The cut at the slot or slots the user chose, explained; StageError (one line, naming a slot) when
    it is not eligible, and why."""
    prog = _analysis(insns, maps, blocked, device_maps, prog_type)
    chosen = [points] if isinstance(points, int) else list(points)
    if not chosen:
        raise StageError("a cut needs at least one point")
    for point in chosen:
        if not isinstance(point, int) or not 0 <= point < prog.cfg.slots or prog.ops[point] is None:
            raise StageError(f"insn {point} is not the start of an instruction of the program", insn=point)
        if prog.cfg.block_at(point).function != 0:
            raise StageError(f"insn {point} is in a called function, not the main one: cuts are in the main "
                             "function", insn=point)
        if not prog.dom.reachable(prog.cfg.block_of_slot[point]):
            raise StageError(f"insn {point} is unreachable", insn=point)
        if chosen.count(point) > 1:
            raise StageError(f"insn {point} is given twice", insn=point)
    collected = _collect(prog, prog.slots_of(0) + prog.stack_probes)
    cut = _evaluate(prog, chosen, collected, prog.depth_with(collected), model)
    why = _verify(prog, cut)
    if why is not None:
        raise StageError(f"the cut at {_at(cut.points)}: {why}", insn=cut.point)
    return _explained(prog, cut, [], model)


def _verify(prog: _Program, cut: Cut) -> str | None:
    """Why the split at `cut` is not acceptable to our verifier (None: both programs pass)."""
    try:
        device, host = _generate(prog, cut)
    except BpforgeError as err:
        return f"the programs cannot be generated: {err.message}"
    for name, code in (("device", device), ("host", host)):
        try:
            verdict = verify_program(code, "xdp", prog.maps)
        except Unsupported as err:
            return f"our verifier cannot decide on the {name} program: {err.message}"
        if not verdict.accepted:
            return f"our verifier rejects the {name} program at its insn {verdict.insn}: {verdict.message}"
    return None


def split(insns: Sequence[Insn], maps: Sequence[MapSpec], cut: Cut) -> Split:
    """The device and host programs of `cut` (of `plan_cut` or `explicit_cut` on the same program), with
    the map assignment (`Split.device_maps`: the device's copies count, the others the host's)."""
    prog = _Program(list(insns), list(maps), frozenset(), frozenset(range(len(maps))))
    if not cut.points:
        return Split(cut, list(insns), None, list(maps))
    device, host = _generate(prog, cut)
    return Split(cut, device, host, list(maps))


# ---- code generation ------------------------------------------------------------------------------------------

_TARGET = re.compile(r"(?:pc)?[+-]\d+$")


def _line(prog: _Program, slot: int) -> str:
    """One original instruction as assembly, its pc-relative target as the label of the slot it reaches."""
    insn = prog.insn_at[slot]
    text = format_insn(insn)
    op = prog.ops[slot]
    if op.__class__ is LoadImm64 and op.kind == "func":
        raise StageError(f"insn {slot} takes a function's address (a callback): not staged yet", insn=slot)
    target = op.target if op.__class__ in (Jump, MayGoto) or _local_call(op) else None
    return _TARGET.sub(f"L{target}", text) if target is not None else text


def _imm(reg: int, value: int) -> str:
    signed = s64(value & M64)
    return f"r{reg} = {signed}" if -(1 << 31) <= signed < 1 << 31 else f"r{reg} = {value & M64:#x} ll"


def _bound_checks(reg: int, scratch: int, piece: Piece, fail: str) -> list[str]:
    """What makes the host's verifier know a loaded value's bounds: jumps away from values outside them."""
    out = []
    top = (1 << 8 * piece.size) - 1
    for cmp, bound, needed in ((">", piece.hi, piece.hi < top), ("<", piece.lo, piece.lo > 0)):
        if not needed:
            continue
        if bound < 1 << 31:
            out.append(f"if r{reg} {cmp} {bound} goto {fail}")
        else:
            out += [_imm(scratch, bound), f"if r{reg} {cmp} r{scratch} goto {fail}"]
    return out


def _size(width: int) -> str:
    return f"u{8 * width}"


def _handoff(prog: _Program, cut: Cut, h: Handoff) -> list[str]:
    """The device's stub at a point: the state into the metadata, tagged; XDP_PASS."""
    S, N, p = cut.ctx_slot, h.meta_size, h.point
    out = []
    dead = _dead_registers(prog, p)
    # Before the helper call clobbers r0-r5 and invalidates packet pointers: packet pointers become their
    # variable part, values in r0-r5 go to their reserved slots.
    for q in h.pieces:
        if q.reg is None or not q.size:
            continue
        if q.kind == "pkt":
            out += [f"r{dead[0]} = *(u64 *)(r10 {S:+d})", f"r{dead[0]} = *(u32 *)(r{dead[0]} + {_DATA})",
                    f"r{q.reg} -= r{dead[0]}"]
            if q.value:
                out.append(f"r{q.reg} -= {q.value}")
        if q.reg <= 5:
            out.append(f"*(u64 *)(r10 {h.temp_slot(S, q):+d}) = r{q.reg}")
    untagged = f"stage_untagged_{p}"
    out += [f"r1 = *(u64 *)(r10 {S:+d})", f"r2 = {-N}", f"call {ADJUST_META}", f"if r0 != 0 goto {untagged}",
            f"r1 = *(u64 *)(r10 {S:+d})", f"r2 = *(u32 *)(r1 + {_DATA_META})", f"r3 = *(u32 *)(r1 + {_DATA})",
            "r4 = r2", f"r4 += {N}", f"if r4 > r3 goto {untagged}", f"*(u32 *)(r2 + 0) = {h.tag}"]
    for q in sorted(h.pieces, key=lambda q: q.meta):
        if not q.size:
            continue
        if q.reg is not None and q.reg > 5:
            source = q.reg
        else:
            source = 4
            at = h.temp_slot(S, q) if q.reg is not None else q.stack
            out.append(f"r4 = *({_size(q.width if q.kind == 'bytes' else 8)} *)(r10 {at:+d})")
        out.append(f"*({_size(q.size)} *)(r2 + {q.meta}) = r{source}")
    out += [f"w0 = {XDP_PASS}", "exit", f"{untagged}:", f"w0 = {XDP_PASS}", "exit"]
    return out


def _tag_exit(cut: Cut) -> list[str]:
    """Where the device part's exits go: XDP_PASS tags the metadata "done" (if it can grow)."""
    S = cut.ctx_slot
    return ["stage_exit:", f"if w0 != {XDP_PASS} goto stage_exit_out", f"r1 = *(u64 *)(r10 {S:+d})",
            f"r2 = {-TAG_SIZE}", f"call {ADJUST_META}", "if r0 != 0 goto stage_exit_pass", f"r1 = *(u64 *)(r10 {S:+d})",
            f"r2 = *(u32 *)(r1 + {_DATA_META})", f"r3 = *(u32 *)(r1 + {_DATA})", "r4 = r2", f"r4 += {TAG_SIZE}",
            "if r4 > r3 goto stage_exit_pass", f"*(u32 *)(r2 + 0) = {TAG_DONE}", "stage_exit_pass:",
            f"w0 = {XDP_PASS}", "stage_exit_out:", "exit"]


def _restore(prog: _Program, cut: Cut) -> list[str]:
    """The host prologue: the tag read and dispatched on, then per point the state back where the original
    had it and on to the point."""
    S = cut.ctx_slot
    out = [f"*(u64 *)(r10 {S:+d}) = r1", f"r2 = *(u32 *)(r1 + {_DATA_META})", f"r3 = *(u32 *)(r1 + {_DATA})",
           "r4 = r2", f"r4 += {TAG_SIZE}", "if r4 > r3 goto L0", "r4 = *(u32 *)(r2 + 0)",
           f"if w4 == {TAG_DONE} goto stage_pass"]
    for h in cut.handoffs[1:]:
        out.append(f"if w4 == {h.tag} goto stage_at_{h.point}")
    first = cut.handoffs[0]
    out.append(f"if w4 != {first.tag} goto L0")
    for n, h in enumerate(cut.handoffs):
        out += ([] if n == 0 else [f"stage_at_{h.point}:"]) + _restore_point(cut, h)
    if any("stage_orig" in line for line in out):  # the kernel refuses unreachable code
        out += ["stage_orig:", f"r1 = *(u64 *)(r10 {S:+d})", "goto L0"]
    out += ["stage_pass:", f"w0 = {XDP_PASS}", "exit"]
    return out


def _restore_point(cut: Cut, h: Handoff) -> list[str]:
    """One point's restore (r1 the context, r2 the metadata, r3 data): the size checked, the values back
    (a failed check runs the original from its entry), the registers rebuilt, a jump to the point."""
    S, N = cut.ctx_slot, h.meta_size
    out = ["r4 = r2", f"r4 += {N}", "if r4 > r3 goto L0"]
    for q in sorted(h.pieces, key=lambda q: q.meta):
        if q.kind == "zero":
            out.append(f"*({_size(q.width)} *)(r10 {q.stack:+d}) = 0")
        elif q.kind == "const" and q.stack is not None:
            out += [_imm(4, q.value), f"*(u64 *)(r10 {q.stack:+d}) = r4"]
        elif q.size:
            out.append(f"r4 = *({_size(q.size)} *)(r2 + {q.meta})")
            if q.kind != "bytes":
                out += _bound_checks(4, 5, q, "L0")
            at = h.temp_slot(S, q) if q.reg is not None else q.stack
            out.append(f"*({_size(q.width if q.kind == 'bytes' else 8)} *)(r10 {at:+d}) = r4")
    # Registers: packet pointers first, while the others are free to serve as temporaries.
    built: set[int] = set()
    for q in sorted((q for q in h.pieces if q.reg is not None), key=lambda q: q.kind != "pkt"):
        t = q.reg
        if q.kind == "pkt":
            a, b = [n for n in range(10) if n not in built and n != t][:2]
            out += [f"r{t} = *(u64 *)(r10 {S:+d})", f"r{a} = *(u32 *)(r{t} + {_DATA_END})",
                    f"r{t} = *(u32 *)(r{t} + {_DATA})"]
            if q.size:
                out += [f"r{b} = *(u64 *)(r10 {h.temp_slot(S, q):+d})", f"r{t} += r{b}"]
            if q.range:
                out += [f"r{b} = r{t}", f"r{b} += {q.range}", f"if r{b} > r{a} goto stage_orig"]
            if q.value:
                out.append(f"r{t} += {q.value}")
        elif q.kind == "const":
            out.append(_imm(t, q.value))
        elif q.kind == "scalar":
            out.append(f"r{t} = *(u64 *)(r10 {h.temp_slot(S, q):+d})")
        elif q.kind == "fp":
            out += [f"r{t} = r10"] + ([f"r{t} += {q.value}"] if q.value else [])
        elif q.kind == "pkt_end":
            out += [f"r{t} = *(u64 *)(r10 {S:+d})", f"r{t} = *(u32 *)(r{t} + {_DATA_END})"]
        elif q.kind == "ctx":
            out.append(f"r{t} = *(u64 *)(r10 {S:+d})")
        built.add(t)
    out.append(f"goto L{h.point}")
    return out


def _generate(prog: _Program, cut: Cut) -> tuple[list[Insn], list[Insn]]:
    points = set(cut.points)
    main = prog.slots_of(0)
    others = [s for f in range(1, len(prog.cfg.functions)) for s in prog.slots_of(f)]
    # device: the context saved, the device part of main (each point a hand-off, exits tagging), its callees
    keep = set(cut.device_slots) | points
    device = [f"*(u64 *)(r10 {cut.ctx_slot:+d}) = r1"]
    for s in sorted(keep & set(main)):
        device.append(f"L{s}:")
        if s in points:
            device += _handoff(prog, cut, cut.handoff(s))
        elif prog.ops[s].__class__ is Exit:
            device.append("goto stage_exit")
        else:
            device.append(_line(prog, s))
    if "goto stage_exit" in device:  # the kernel refuses unreachable code
        device += _tag_exit(cut)
    called = prog.callees(cut.device_slots)
    for s in others:
        if prog.cfg.block_at(s).function in called:
            device += [f"L{s}:", _line(prog, s)]
    host = _restore(prog, cut)
    for s in main + others:
        host += [f"L{s}:", _line(prog, s)]
    try:
        return assemble("\n".join(device)), assemble("\n".join(host))
    except BpforgeError as err:
        raise StageError(f"generated code does not assemble: {err.message}", insn=cut.point) from None


# ---- running staged -----------------------------------------------------------------------------------------

@dataclass
class StagedResult:
    """A staged run: the final verdict, the packet as it leaves (without the metadata), the maps (per
    index: the device's copy for the device's maps, else the host's), which stage decided ("device":
    its verdict, or XDP_PASS it tagged done; "host") and what the device handed over ("cut", at `point`;
    "done"; or "none": untagged, the host ran the whole program)."""

    retval: int
    data_out: bytes
    maps: list
    stage: str
    tag: str
    device_retval: int
    meta: bytes = b""
    point: int | None = None  # the point the device handed over at (tag "cut")
    device_counts: dict[int, int] = field(default_factory=dict)  # on an emulated device: slot -> runs
    device_insns: int | None = None  # ... and the native instructions it executed
    handed: bytes = b""  # the frame handed to the host, its metadata first (empty: the device decided)


def _meta_of(data_out: bytes, ctx_out: bytes | None) -> int:
    return XDP_MD.unpack(ctx_out)["data"] if ctx_out else 0


def run_staged(staged: Split, data: bytes, *, device_maps: Sequence, host_maps: Sequence, device: str = "interp",
               host="interp", cpu: int = 0, vm_options: Mapping | None = None) -> StagedResult:
    """Run a frame through the device program (`device`: "interp", "fast" or an emulated device's arch,
    "arm64"/"riscv64"), then, when it passes the frame on, through the host program (`host`: "interp",
    "fast", or a loaded `kernel.KernelProgram` of `staged.host`, run with BPF_PROG_TEST_RUN and the
    metadata in its context). `device_maps` / `host_maps`: each side's maps by index (VM maps; None
    where that side has none); kernel maps stay in the kernel program."""
    options = dict(vm_options or {})
    ctx = xdp_md(len(data))
    counted: dict = {}

    def on_vm(code, maps, engine: str, frame: bytes, ctx_in: bytes):
        program = vm.from_insns(code, list(maps))
        machine = vm.Machine(program, cpu=cpu, **options)
        if engine == "interp":
            return machine.run(frame, "xdp", ctx_in)
        if engine == "fast":
            return vm.run_fast(machine, frame, "xdp", ctx_in)
        session = DeviceSession.of(program, facts_of_insns(code, "xdp", staged.maps), engine, count_slots=True)
        result = run_device(machine, session, frame, "xdp", ctx_in)
        counted.update(counts={slot: n for (image, slot), n in session.last_counts.items() if image == 0},
                       insns=session.last_executed)
        return result

    first = on_vm(staged.device, device_maps, device, bytes(data), ctx)
    counts, insns = counted.get("counts", {}), counted.get("insns")
    merged = [device_maps[i] if i in staged.device_maps else host_maps[i] for i in range(len(staged.maps))]
    meta_len = _meta_of(first.data_out, first.ctx_out)
    meta = first.data_out[:meta_len]
    tag = int.from_bytes(meta[:TAG_SIZE], "little") if meta_len >= TAG_SIZE else None
    points = {h.tag: h.point for h in staged.cut.handoffs}
    kind = "cut" if tag in points else "done" if tag == TAG_DONE else "none"
    point = points.get(tag)
    retval = first.retval & 0xFFFFFFFF
    if retval != XDP_PASS or staged.host is None or kind == "done":
        return StagedResult(retval, first.data_out[meta_len:], merged, "device", kind, retval, meta, point, counts,
                            insns)
    frame, ctx_in = first.data_out, xdp_md(len(first.data_out), meta_len=meta_len)
    if isinstance(host, str):
        second = on_vm(staged.host, host_maps, host, frame, ctx_in)
        out, ctx_out = second.data_out, second.ctx_out
    else:
        second = host.test_run(frame, ctx=ctx_in)
        out, ctx_out = second.data_out, second.ctx_out
    return StagedResult(second.retval & 0xFFFFFFFF, out[_meta_of(out, ctx_out):], merged, "host", kind, retval, meta,
                        point, counts, insns, frame)


__all__ = ["CostModel", "Cut", "Handoff", "META_MAX", "Piece", "Split", "StageError", "TAG_CUT", "TAG_DONE", "StagedResult",
           "explicit_cut", "plan_cut", "run_staged", "score", "split"]
