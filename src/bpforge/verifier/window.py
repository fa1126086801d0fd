"""The window API: check a candidate window of a program against the verifier states that reach its first
instruction, and tell what it guarantees to the rest of the program — what the optimizer calls for every
candidate rewrite, so it costs what the window costs, never what the program costs.

`check_window(insns, pre_states, prog_type=...)` explores every path of the window from each pre-state with
the verifier's own machine (`check.VerifierMachine` over a `check.Context` of its own) and stops a path where
it leaves the window: at a jump whose target lies outside [0, len) or by falling off the end (an exit of
kind "before" or "after", named by where it lands relative to the window's start or end, so a window of
another length has the same exits), or at BPF_EXIT once the machine's exit checks passed (kind "exit").
The result says whether every path is safe, the first failure (slot, message, the assertion it refutes,
which pre-state), every instruction's assertions (`assertions.assertions_of`) with their status, and the
states at each exit.

`guarantees(original, candidate, site)` decides whether a candidate may replace the original window: every
state the candidate leaves with is covered (`check.covers`, over the registers and stack slots live there)
by one the original leaves with at the same exit, so the proof of the rest of the program still holds.
`ProgramSites(insns).site(start, end)` computes, once per window position, what that needs from the whole
program: liveness at the window's entry and exits, which exits only the window leads to, where a jump may
land. Its `pre_states` makes `Verdict.collected` states fit to start a window from.

`replace_window(insns, start, end, new)` splices a window of another length in, with every jump and call
offset that crosses it fixed (`elf.edit.splice`).

The pre-states speak for every path only up to what the collecting walk's pruning ignored: registers
dead at a prune point (`WindowSite.pre_states` makes those unreadable) and scalars no later instruction
needed exactly (not "precise"). So a window also records which of its entry values its outcome depends on
(`demanded`: what the machine marked precise; `flows`: what reaches each exit's scalars), and a candidate
may depend on no more of them than the original did.

Not modelled inside a window (Unsupported): bpf2bpf calls, function addresses, helpers that call back, and
loops beyond `budget` instructions per pre-state (a state repeated on a path is an infinite loop, as the
kernel says).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from ..analysis.cfg import cfg_of_ops, function_entries
from ..analysis.effects import effects_of
from ..analysis.liveness import program_liveness
from ..elf.edit import splice
from ..elf.model import ProgramSection
from ..errors import BpforgeError
from ..isa import Insn, slot_count, slot_starts
from ..isa.helpers import HELPER_SIGNATURES
from ..isa.maptypes import MapSpec
from ..isa.numbers import s64
from ..isa.ops import (
    Alu, Atomic, Call, Exit, Imm, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Op, Store, Unary, decode_ops,
    following,
)
from ..isa.semantics import step
from .assertions import PROVEN, REFUTED, UNKNOWN, UNREACHED, Assertion, assertions_of, refuted
from .check import ALL_REGISTERS, Context, Rejected, Unsupported, VerifierMachine, covers
from .regs import NOT_INIT, Reg
from .state import INVALID, SLOT, STACK_SIZE, State

DEFAULT_BUDGET = 4096  # instructions processed from each pre-state before the window gets no verdict
_STACK_SLOTS = STACK_SIZE // SLOT
_SLOT_BIT = 11  # analysis.liveness: bit 11 + k is the stack slot at r10 - 8(k+1)


# ---- exits ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ExitTarget:
    """Where control leaves a window: kind "before" (a jump to window slot `offset` < 0, before the window),
    "after" (to the slot `offset` past the window's end; 0: falling off the end) or "exit" (BPF_EXIT:
    `offset` -1 when it ends the program, else the caller's slot a subprogram returns to)."""

    kind: str
    offset: int

    def slot(self, length: int) -> int | None:
        """The window-relative slot a jump exit lands on, for a window of `length` slots."""
        if self.kind == "before":
            return self.offset
        if self.kind == "after":
            return length + self.offset
        return None

    def __str__(self) -> str:
        if self.kind == "exit":
            return "program exit" if self.offset < 0 else f"return to insn {self.offset}"
        return f"window slot {self.offset}" if self.kind == "before" else f"window end + {self.offset}"


PROGRAM_END = ExitTarget("exit", -1)


def exit_of(target: int, length: int) -> ExitTarget:
    """The exit a jump to window-relative slot `target` (outside [0, length)) is."""
    return ExitTarget("before", target) if target < 0 else ExitTarget("after", target - length)


# ---- results -------------------------------------------------------------------------------------------------

@dataclass
class WindowFailure:
    """Where the window is unsafe: the slot, the verifier's message, the assertion it refutes, the index of
    the pre-state the failing path started from (None: the window's shape alone is wrong) and the state at
    the failing instruction."""

    slot: int
    message: str
    assertion: Assertion
    pre_state: int | None
    state: State | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CheckedAssertion:
    assertion: Assertion
    status: str  # assertions.PROVEN, REFUTED, UNKNOWN (the walk stopped before every path got there), UNREACHED


@dataclass(eq=False)
class WindowResult:
    """What `check_window` found. `exits` holds the distinct states at each exit (for `guarantees`);
    `edges` every exit the window's instructions could take, taken or not (what the kernel's CFG check
    sees); `depths` how deep each function's frame (by entry slot) reached into its stack."""

    safe: bool
    failure: WindowFailure | None
    exits: dict[ExitTarget, list[State]]
    edges: frozenset[ExitTarget]
    length: int
    depths: dict[int, int]
    processed: int
    complete: bool  # every path from every pre-state was followed to its end
    failures: list[WindowFailure] = field(default_factory=list)
    # Per pre-state: the entry values (`_Origins` bits) the machine needed exactly, and those each exit's numbers
    # come from.
    demanded: list[int] = field(default_factory=list)
    flows: list[dict[ExitTarget, "_Flow"]] = field(default_factory=list, repr=False)
    prog_type: str = ""
    attach: int = 0
    _ops: tuple = field(default=(), repr=False)
    _visits: list[int] = field(default_factory=list, repr=False)
    _regs: dict[int, tuple] = field(default_factory=dict, repr=False)

    @cached_property
    def assertions(self) -> list[CheckedAssertion]:
        """Every instruction's assertions with their status: refuted by a failure, proven when the walk
        followed every path and each that reached the instruction passed it, unreached when none did."""
        refuting = {f.slot: f.assertion for f in reversed(self.failures)}  # (explore_all: the first per slot)
        out = []
        for slot, op in enumerate(self._ops):
            if op is None:
                continue
            mine = assertions_of(op, slot, prog_type=self.prog_type or None, attach=self.attach,
                                 regs=self._regs.get(slot))
            refuted_here = refuting.get(slot)
            for a in mine:
                if a == refuted_here:
                    status = REFUTED
                elif refuted_here is not None or not self.complete:
                    status = UNKNOWN
                else:
                    status = PROVEN if self._visits[slot] else UNREACHED
                out.append(CheckedAssertion(a, status))
            if refuted_here is not None and refuted_here not in mine:  # one in the message's own words
                out.append(CheckedAssertion(refuted_here, REFUTED))
        return out


# ---- the window's shape ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Shape:
    """What the instructions alone say: decoded ops, the slot after each, the exits any path could take,
    the targets of backward jumps (where a path may meet itself), and a structural fault (slot, message)."""

    ops: tuple[Op | None, ...]
    after: tuple[int, ...]
    edges: frozenset[ExitTarget]
    heads: frozenset[int]
    problem: tuple[int, str] | None
    call: int | None  # the slot of a bpf2bpf call or function address, which windows do not model


# Helpers that call a function of the program back (bpf_loop, for_each_map_elem, ...): a call out of the window.
_CALLBACK_HELPERS = frozenset(h for h, sig in HELPER_SIGNATURES.items() if "ptr_to_func" in sig.args)


@lru_cache(maxsize=4096)
def _shape(insns: tuple[Insn, ...]) -> _Shape:
    ops = decode_ops(insns)
    n = len(ops)
    after = tuple(following(ops, s) for s in range(n))
    edges: set[ExitTarget] = set()
    heads: set[int] = set()
    successors: dict[int, list[int]] = {}
    problems: list[tuple[int, str]] = []
    call = None
    for s, op in enumerate(ops):
        if op is None:
            continue
        cls = op.__class__
        if call is None and ((cls is Call and op.kind == "local") or (cls is LoadImm64 and op.kind == "func") or
                             (cls is Call and op.kind == "helper" and op.target in _CALLBACK_HELPERS)):
            call = s
        if cls is Exit:
            targets = []
        elif cls is Jump:
            targets = [op.target] if op.cmp is None else [after[s], op.target]
        elif cls is MayGoto:
            targets = [after[s], op.target]
        else:
            targets = [after[s]]
        inside = []
        for t in targets:
            if 0 <= t < n:
                if ops[t] is None:
                    problems.append((s, f"jump into the middle of ldimm64 insn {t - 1}"))
                if t <= s:
                    heads.add(t)
                inside.append(t)
            else:
                edges.add(exit_of(t, n))
        successors[s] = inside
    seen, pending = set(), [0] if n else []
    while pending:  # check_cfg: each instruction reachable (a window has one entry, its first slot)
        s = pending.pop()
        if s not in seen and ops[s] is not None:
            seen.add(s)
            pending.extend(successors[s])
    if not n:  # an empty window: control falls through it
        edges.add(ExitTarget("after", 0))
    unreachable = next((s for s in range(n) if ops[s] is not None and s not in seen), None)
    if unreachable is not None:
        problems.append((unreachable, f"unreachable insn {unreachable}"))
    problem = min(problems) if problems else None
    return _Shape(tuple(ops), after, frozenset(edges), frozenset(heads), problem, call)


def _largest_id(states: Iterable[State]) -> int:
    """The largest id (register links, references) the states use: fresh ones in a window go above it."""
    largest = 0
    for state in states:
        for ref, _ in getattr(state, "refs", ()):
            largest = max(largest, ref)
        for frame in state.frames:
            for reg in (*frame.regs, *frame.spilled.values()):
                ref = getattr(reg, "ref", 0)
                if reg.id > largest or ref > largest:
                    largest = max(reg.id, ref)
    return largest


def _add(exits: dict[ExitTarget, list[State]], target: ExitTarget, state: State) -> None:
    kept = exits.setdefault(target, [])
    if not any(k == state for k in kept):
        kept.append(state)


# ---- which entry values a window's outcome depends on -------------------------------------------------------

# Bits of an origin mask: register n of the window's frame at entry (n < 10), its stack slot s (Frame's slot
# index, 16 + s), or something else nothing here follows (another frame's stack).
_OTHER = 1 << 15
_STACK_ORIGIN = 16


class _Origins:
    """For one path: which entry values each register and stack slot of the window's frame holds now."""

    __slots__ = ("regs", "stack")

    def __init__(self, regs: list[int] | None = None, stack: dict[int, int] | None = None) -> None:
        self.regs = regs if regs is not None else [1 << n if n < 10 else 0 for n in range(11)]
        self.stack = stack if stack is not None else {}

    def copy(self) -> "_Origins":
        return _Origins(list(self.regs), dict(self.stack))

    def slot(self, s: int) -> int:
        return _slot_origin(self.stack, s)

    def touched(self, reg: Reg, off: int, size: int, depth: int) -> tuple[range, bool] | None:
        """The window frame's slots an access at `reg` + `off` of `size` bytes touches, and whether it is one
        whole slot; None for no stack at all; _OTHER's marker (an empty range) for a stack not followed."""
        if reg.kind != "fp":
            return None
        if reg.frame != depth or not reg.var.is_const():
            return range(0), False
        first = STACK_SIZE + reg.off + s64(reg.var.var_off.value) + off
        return range(first // SLOT, (first + size - 1) // SLOT + 1), first % SLOT == 0 and size == SLOT

    def read(self, where: tuple[range, bool] | None) -> int:
        if where is None:
            return 0
        slots, _ = where
        if not slots:
            return _OTHER
        out = 0
        for s in slots:
            out |= self.slot(s)
        return out

    def write(self, where: tuple[range, bool] | None, value: int) -> None:
        if where is None:
            return
        slots, whole = where
        for s in slots:
            self.stack[s] = value if whole else self.slot(s) | value

    def step(self, op: Op, regs: Sequence[Reg], depth: int) -> None:
        """What `op` did to the origins, given the registers before it (a step that succeeded)."""
        o = self.regs
        cls = op.__class__
        if cls is Alu:
            src = 0 if op.src.__class__ is Imm else o[op.src.n]
            o[op.dst] = src if op.op in ("mov", "movsx") else o[op.dst] | src
        elif cls is Unary:
            pass
        elif cls is Load:
            o[op.dst] = self.read(self.touched(regs[op.base], op.off, op.size, depth))
        elif cls is Store:
            value = 0 if op.value.__class__ is Imm else o[op.value.n]
            self.write(self.touched(regs[op.base], op.off, op.size, depth), value)
        elif cls is Atomic:
            where = self.touched(regs[op.base], op.off, op.size, depth)
            old = self.read(where)
            if op.op == "cmpxchg":
                self.write(where, old | o[op.src] | o[0])
                o[0] = old
            else:
                self.write(where, o[op.src] if op.op == "xchg" else old | o[op.src])
                if op.fetch or op.op == "xchg":
                    o[op.src] = old
        elif cls is Call or cls is LegacyLoad:  # a result the machine makes up; the arguments are gone
            for n in range(6):
                o[n] = 0
        elif cls is LoadImm64:
            o[op.dst] = 0

    def flow(self, state: State) -> "_Flow":
        """The origins of what `state`'s frame holds: of its registers only the numbers (pointers are compared
        whole when paths meet, so only numbers may stand for others), of its stack the slots the window
        wrote (the others still hold what they held at entry)."""
        regs = state.regs
        return [self.regs[n] if regs[n].kind == "scalar" else 0 for n in range(10)], dict(self.stack)


_Flow = tuple  # (10 register origin masks, {stack slot the window wrote: origin mask})


def _slot_origin(stack: dict[int, int], s: int) -> int:
    return stack.get(s, 1 << (_STACK_ORIGIN + s))


def _merge_flow(flows: dict, target: ExitTarget, flow: _Flow) -> None:
    regs, stack = flow
    kept = flows.get(target)
    if kept is None:
        flows[target] = flow
        return
    kept_regs, kept_stack = kept
    for n in range(10):
        kept_regs[n] |= regs[n]
    for s in stack.keys() | kept_stack.keys():
        kept_stack[s] = _slot_origin(kept_stack, s) | _slot_origin(stack, s)


class _WindowContext(Context):
    """The machine's context in a window: what it marks precise is noted as entry values the outcome
    depends on."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.origins = _Origins()
        self.depth = 0  # the window's frame
        self.demanded = 0

    def mark_precise(self, machine, regs: list[int], slot: tuple[int, int] | None) -> None:
        if len(machine.state.frames) - 1 != self.depth:
            self.demanded |= _OTHER
            return
        for n in regs:
            self.demanded |= self.origins.regs[n]
        if slot is not None:
            frame, s = slot
            self.demanded |= self.origins.slot(s) if frame == self.depth else _OTHER


# ---- the walk of a window ----------------------------------------------------------------------------------

def check_window(insns: Sequence[Insn], pre_states: Sequence[State], *, prog_type: str,
                 maps: Sequence[MapSpec] | Mapping[int, MapSpec] = (), attach: int = 0, prog_flags: int = 0,
                 budget: int = DEFAULT_BUDGET, explore_all: bool = False) -> WindowResult:
    """Every path of the window `insns` (jump offsets relative within it) from each of `pre_states` (the
    verifier's states at its first instruction; they are not changed), checked by the verifier's machine.
    The walk stops at the first failure unless `explore_all`, which follows every other path too (for a
    complete list of refuted and proven assertions). Unsupported for what windows do not model: a bpf2bpf
    call, more than `budget` instructions from one pre-state (a loop), what the verifier does not model."""
    shape = _shape(tuple(insns))
    ops, after, heads, n = shape.ops, shape.after, shape.heads, len(shape.ops)
    visits = [0] * n
    first_regs: dict[int, tuple] = {}
    exits: dict[ExitTarget, list[State]] = {}
    demanded: list[int] = []
    flows: list[dict[ExitTarget, _Flow]] = []
    failures: list[WindowFailure] = []
    context = _WindowContext(prog_type, maps, attach, prog_flags, first_id=_largest_id(pre_states))

    def result(complete: bool, processed: int) -> WindowResult:
        return WindowResult(not failures, failures[0] if failures else None, exits, shape.edges, n,
                            dict(context.depths), processed, complete, failures, demanded, flows, prog_type, attach,
                            ops, visits, first_regs)

    if shape.call is not None:
        raise Unsupported(f"insn {shape.call} of the window calls a function of the program (a bpf2bpf call, a "
                          "function's address, a helper with a callback), which windows do not model")
    if any(getattr(frame, "callback", False) for state in pre_states for frame in state.frames):
        raise Unsupported("windows inside a callback are not modelled")
    if shape.problem is not None:
        slot, message = shape.problem
        mine = assertions_of(ops[slot], slot, prog_type=prog_type, attach=attach)
        failures.append(WindowFailure(slot, message, refuted(mine, message, slot), None))
        return result(False, 0)
    machine = VerifierMachine(context)
    total = 0
    for index, pre in enumerate(pre_states):
        processed = 0
        depth = context.depth = len(pre.frames) - 1
        context.demanded = 0
        demanded.append(0)
        flows.append({})
        stack: list[tuple[int, State, tuple, _Origins]] = [(0, pre.copy(), (), _Origins())]
        while stack:
            slot, state, history, origins = stack.pop()
            while True:
                if not 0 <= slot < n:
                    target = exit_of(slot, n)
                    _add(exits, target, state)
                    _merge_flow(flows[index], target, origins.flow(state))
                    break
                op = ops[slot]
                if slot in heads:  # the target of a backward jump: a path that meets itself here loops forever
                    seen = history
                    while seen and not (seen[0] == slot and seen[1] == state):
                        seen = seen[2]
                    if seen:
                        message = f"infinite loop detected at insn {slot}"
                        failures.append(WindowFailure(slot, message, refuted((), message, slot), index, state.copy()))
                        if not explore_all:
                            return result(False, total + processed)
                        break
                    history = (slot, state.copy(), history)
                processed += 1
                if processed > budget:
                    raise Unsupported(f"gave up after {budget} instructions from pre-state {index} (the window's "
                                      "budget: a loop?)")
                visits[slot] += 1
                regs = tuple(state.regs)
                if slot not in first_regs:
                    first_regs[slot] = regs
                machine.state, machine.op, machine.slot, machine.next = state, op, slot, after[slot]
                machine.ended, machine.forks = False, []
                context.origins = origins
                try:
                    step(machine, op)
                except Rejected as err:
                    mine = assertions_of(op, slot, prog_type=prog_type, attach=attach, regs=regs)
                    failures.append(WindowFailure(slot, err.message, refuted(mine, err.message, slot), index,
                                                  machine.state.copy()))
                    demanded[index] = context.demanded
                    if not explore_all:
                        return result(False, total + processed)
                    break
                origins.step(op, regs, depth)
                demanded[index] = context.demanded
                for target, forked in machine.forks:
                    stack.append((target, forked, history, origins.copy()))
                if op.__class__ is Exit:
                    if machine.ended:
                        _add(exits, PROGRAM_END, machine.state)
                    else:  # back in the caller: of this frame, only r0 goes on
                        target = ExitTarget("exit", machine.next)
                        _add(exits, target, machine.state)
                        r0 = origins.regs[0] if machine.state.regs[0].is_scalar else 0
                        _merge_flow(flows[index], target, ([r0] + [0] * 9, {}))
                    break
                if machine.ended:  # neither side of a branch can happen: the path ends here
                    break
                state, slot = machine.state, machine.next
        total += processed
    return result(True, total)


# ---- what the rest of the program needs ----------------------------------------------------------------------

@dataclass(eq=False)
class WindowSite:
    """A window position [start, end) (slots) in a program, with what the rest of the program needs of any
    window there: `live_out` (masks of registers and stack slots, as `analysis.liveness`) at each exit the
    original window has, `needed` the exits leading to instructions nothing else reaches (a replacement must
    keep them, or the kernel finds unreachable code), and `unreliable` the registers whose values in the
    collected pre-states do not speak for every path (see `pre_states`)."""

    program: "ProgramSites"
    start: int
    end: int
    function: tuple[int, int]  # [entry, end) slots of the window's function
    live_in: int
    live_out: dict[ExitTarget, int]
    needed: frozenset[ExitTarget]
    unreliable: int  # mask of registers

    def window(self) -> list[Insn]:
        """The original window's instructions."""
        return window_of(self.program.insns, self.start, self.end)

    def pre_states(self, states: Iterable[State]) -> list[State]:
        """`states` (the verifier's at `start`, as `Verdict.collected[start]` holds them) fit for a window:
        the `unreliable` registers made unreadable. The walk that collected them ended paths at prune points
        where an earlier state covered theirs in the registers live there; a register dead at the last prune
        point before the window, and not set again since, may hold anything on such a path."""
        out: list[State] = []
        for state in states:
            state = state.copy()
            regs = state.regs
            for n in range(10):
                if self.unreliable >> n & 1:
                    regs[n] = NOT_INIT
            if not any(s == state for s in out):
                out.append(state)
        return out

    def lands(self, target: ExitTarget, length: int) -> bool:
        """Whether a jump exit of a window of `length` slots put here lands on an instruction of the
        window's function outside the window."""
        if target.kind == "before":
            slot = self.start + target.offset
        elif target.kind == "after":
            slot = self.end + target.offset
        else:
            return True
        entry, end = self.function
        return entry <= slot < end and self.program.ops[slot] is not None and not self.start <= slot < self.end


class ProgramSites:
    """The whole-program facts windows of one program need, computed once: its CFG and liveness (with the
    stack bytes helpers read known from `maps`, the program's map specs by reference), the predecessors of
    every slot, the callers of every function. `site(start, end)` for each window."""

    def __init__(self, insns: Sequence[Insn], maps: Mapping[int, MapSpec] | Sequence[MapSpec] = ()) -> None:
        self.insns = list(insns)
        self.ops = decode_ops(self.insns)
        self.cfg = cfg_of_ops(self.ops)
        self.live = program_liveness(self.cfg, maps)
        self.successors: dict[int, tuple[int, ...]] = {}
        self.predecessors: dict[int, list[int]] = {}
        for slot, op in enumerate(self.ops):
            if op is None:
                continue
            succ = _successors(op, following(self.ops, slot))
            self.successors[slot] = succ
            for t in succ:
                self.predecessors.setdefault(t, []).append(slot)
        self.callers: dict[int, list[int]] = {}
        for fn in self.cfg.functions:
            for site, callee in fn.calls:
                self.callers.setdefault(callee, []).append(site)

    def _live_before(self, slot: int) -> int:
        if not 0 <= slot < len(self.ops) or self.ops[slot] is None:
            return ALL_REGISTERS
        return self.live[self.cfg.function_at(slot).index].before_mask(slot)

    def site(self, start: int, end: int) -> WindowSite:
        """The window of slots [start, end). BpforgeError unless it lies in one function, starts and ends at
        instruction boundaries, and has one entry (no jump from elsewhere into it past its first slot)."""
        ops = self.ops
        if not (0 <= start < len(ops) and start <= end <= len(ops)) or ops[start] is None or \
                (end < len(ops) and ops[end] is None):
            raise BpforgeError(f"window [{start}, {end}) does not start and end at instructions of the program",
                               insn=start)
        fn = self.cfg.function_at(start)
        if end > fn.end:
            raise BpforgeError(f"window [{start}, {end}) runs past the end of its function at {fn.end}", insn=start)
        for s in range(start + 1, end):
            outside = [p for p in self.predecessors.get(s, ()) if not start <= p < end]
            if outside:
                raise BpforgeError(f"insn {s} inside window [{start}, {end}) is also reached from insn {outside[0]}: "
                                   "a window has one entry", insn=s)
        length = end - start
        live_out: dict[ExitTarget, int] = {}
        edges: dict[ExitTarget, int] = {}  # jump exits -> their absolute slot
        for s in range(start, end):
            op = ops[s]
            if op is None:
                continue
            if op.__class__ is Exit:
                if fn.index == 0 or fn.entry not in self.callers:
                    live_out[PROGRAM_END] = 0
                for c in self.callers.get(fn.entry, ()):
                    back = following(ops, c)
                    live_out[ExitTarget("exit", back)] = self._live_before(back)
                continue
            for t in self.successors[s]:
                if not start <= t < end:
                    target = exit_of(t - start, length)
                    edges[target] = t
                    live_out[target] = self._live_before(t)
        if start == end:
            edges[ExitTarget("after", 0)] = start
            live_out[ExitTarget("after", 0)] = self._live_before(start)
        reached = self._reachable_without(start, end)
        needed = frozenset(target for target, t in edges.items() if t not in reached)
        live_in = self.live[fn.index].before_mask(start)
        return WindowSite(self, start, end, (fn.entry, fn.end), live_in, live_out, needed, self._unreliable(start))

    def _unreliable(self, start: int) -> int:
        """The registers dead at the last place before `start` where the verifier may have ended a path (a
        block's first instruction: every prune point is one) and not written between there and `start`.
        Nothing was pruned before the program's first instruction."""
        block = self.cfg.block_at(start)
        if block.start == 0 and not self.predecessors.get(0):
            return 0
        unreliable = ~self._live_before(block.start) & (ALL_REGISTERS >> 1)  # r0-r9
        for slot, op in block.ops:
            if slot >= start:
                break
            for n in effects_of(op).kills:
                unreliable &= ~(1 << n)
        return unreliable

    def _reachable_without(self, start: int, end: int) -> set[int]:
        """The slots reachable from the program's entry without going through window [start, end)'s
        instructions (calls and function addresses reach the callee's entry)."""
        seen: set[int] = set()
        pending = [0]
        while pending:
            s = pending.pop()
            if s in seen:
                continue
            seen.add(s)
            if start <= s < end:
                continue
            op = self.ops[s]
            pending.extend(self.successors.get(s, ()))
            if op.__class__ is Call and op.kind == "local":
                pending.append(op.target)
            elif op.__class__ is LoadImm64 and op.kind == "func":
                pending.append(op.value)
        return seen

    @property
    def functions(self) -> int:
        return len(self.cfg.functions)


def _successors(op: Op, after: int) -> tuple[int, ...]:
    cls = op.__class__
    if cls is Exit:
        return ()
    if cls is Jump:
        return (op.target,) if op.cmp is None else (after, op.target)
    if cls is MayGoto:
        return (after, op.target)
    return (after,)


def window_site(insns: Sequence[Insn], start: int, end: int) -> WindowSite:
    """`ProgramSites(insns).site(start, end)`, for one window (the optimizer keeps the ProgramSites)."""
    return ProgramSites(insns).site(start, end)


# ---- whether a candidate may replace the original ----------------------------------------------------------

def guarantees(original: WindowResult, candidate: WindowResult, site: WindowSite) -> bool:
    """Whether `candidate` keeps the proof of the rest of the program that `original` (both checked from
    the same pre-states, at `site`) gave: both safe with every path followed; every state the candidate
    leaves with covered by one the original leaves with at the same exit, in what is live there; its
    jumps landing on instructions of the function outside the window, those only the window leads to still
    taken; and its frames no deeper than the original's where calls add frames' stacks up."""
    if not (original.safe and candidate.safe and original.complete and candidate.complete):
        return False
    if any(not site.lands(target, candidate.length) for target in candidate.edges):
        return False
    if not site.needed <= candidate.edges:
        return False
    if site.program.functions > 1 and any(d > original.depths.get(f, 0) for f, d in candidate.depths.items()):
        return False
    if len(candidate.demanded) != len(original.demanded):
        raise BpforgeError("guarantees compares two windows checked from the same pre-states")
    for index, (needs, had) in enumerate(zip(candidate.demanded, original.demanded)):
        if needs & (_OTHER | ~had):
            return False  # the candidate needs exactly an entry value the original did not: pruned paths may differ
        for target, flow in candidate.flows[index].items():
            if target != PROGRAM_END and not _flows_within(flow, original.flows[index].get(target), had,
                                                           site.live_out.get(target, ALL_REGISTERS | _ALL_STACK)):
                return False
    for target, states in candidate.exits.items():
        if target == PROGRAM_END:
            continue  # nothing runs after it
        olds = original.exits.get(target)
        if not olds:
            return False
        live = site.live_out.get(target, ALL_REGISTERS | _ALL_STACK)
        olds = [_without_dead_slots(s, live) for s in olds]
        for cur in states:
            cur = _without_dead_slots(cur, live)
            if not any(covers(old, cur, live & ALL_REGISTERS) for old in olds):
                return False
    return True


_ALL_STACK = ((1 << _STACK_SLOTS) - 1) << _SLOT_BIT


def _flows_within(candidate: _Flow, original: _Flow | None, demanded: int, live: int) -> bool:
    """Whether every number live at an exit of the candidate comes from entry values the same number of the
    original came from, or the original needed exactly anyway: whatever the rest of the program needs
    exactly of it, the collecting walk kept exact."""
    regs, stack = candidate
    old_regs, old_stack = original if original is not None else ([0] * 10, {})
    for n in range(10):
        if live >> n & 1 and regs[n] & ~(old_regs[n] | demanded):
            return False
    for s in stack.keys() | old_stack.keys():
        k = _STACK_SLOTS - 1 - s  # liveness numbers slots from r10 down
        if live >> (_SLOT_BIT + k) & 1 and _slot_origin(stack, s) & ~(_slot_origin(old_stack, s) | demanded):
            return False
    return True


def _without_dead_slots(state: State, live: int) -> State:
    """`state` with the stack slots of its innermost frame that are dead (per `live`) forgotten: the rest of
    the program writes them before it reads them, so what they hold is nobody's business."""
    if live & _ALL_STACK == _ALL_STACK:
        return state
    state = state.copy()
    frame = state.frame
    for k in range(_STACK_SLOTS):
        if not live >> (_SLOT_BIT + k) & 1:
            first = STACK_SIZE - SLOT * (k + 1)
            frame.types[first:first + SLOT] = bytes([INVALID]) * SLOT
            frame.spilled.pop(first // SLOT, None)
    return state


# ---- windows in a program ------------------------------------------------------------------------------------

def _indexes(insns: Sequence[Insn], start: int, end: int) -> tuple[int, int]:
    starts = slot_starts(insns)
    index = {s: i for i, s in enumerate(starts)}
    index[slot_count(insns)] = len(insns)
    if start not in index or end not in index or start > end:
        raise BpforgeError(f"window [{start}, {end}) does not start and end at instructions of the program",
                           insn=start)
    return index[start], index[end]


def window_of(insns: Sequence[Insn], start: int, end: int) -> list[Insn]:
    """The instructions of slots [start, end): a window, its jump offsets relative within it."""
    i, j = _indexes(insns, start, end)
    return list(insns[i:j])


def replace_window(insns: Sequence[Insn], start: int, end: int, new: Sequence[Insn]) -> list[Insn]:
    """`insns` with slots [start, end) replaced by `new` (offsets relative within it: an exit jump lands on
    the same instruction after the splice): every jump, bpf2bpf call and function address of the rest that
    crosses the window retargeted. BpforgeError for a jump from outside into the window's interior."""
    i, j = _indexes(insns, start, end)
    ops = decode_ops(insns)
    for slot, op in enumerate(ops):  # (elf.edit would send a jump to a removed instruction to its successor)
        for target in _successors(op, following(ops, slot)) if op is not None else ():
            if start < target < end and not start <= slot < end:
                raise BpforgeError(f"insn {slot} jumps to insn {target}, inside window [{start}, {end})", insn=slot)
    index = {slot: k for k, slot in enumerate(slot_starts(insns))}
    functions = {index[entry]: f"function@{entry}" for entry in function_entries(ops)}
    section = ProgramSection("program", 0, list(insns), functions)
    return splice(section, i, j, list(new)).insns


__all__ = ["CheckedAssertion", "DEFAULT_BUDGET", "ExitTarget", "PROGRAM_END", "ProgramSites", "WindowFailure",
           "WindowResult", "WindowSite", "check_window", "exit_of", "guarantees", "replace_window", "window_of",
           "window_site"]
