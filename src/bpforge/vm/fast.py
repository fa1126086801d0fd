"""The fast tier: a program translated into Python source, one unit at a time, compiled on first use.

Registers become local variables, ALU and jump semantics are the very same `semantics` functions
instantiated with `SourceOps` (expression text instead of ints), basic blocks are dispatched by a binary
tree of comparisons, and a block that branches back to its own start becomes a tight `while` loop.
Memory, helpers, atomics and legacy loads go through the interpreter's own functions, and the rules the
interpreter's docstring lists (control stays in its function, registers across calls, one stack per call
depth, may_goto per frame and the budget as its clock) hold here the same way.

A unit is one BPF function, or for a function of more than SEGMENT_BLOCKS blocks one segment of it (the
function's unit then only drives its segments), so translation time and memory stay linear in the program
size however large a function is, and a unit is translated and compiled only when a run first enters it.
`st.pc` is set before each instruction that can fault, so a fault names the same instruction as in the
interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ..errors import BpforgeError
from ..isa.ops import Jump, MayGoto, ends_block, falls_through
from ..isa.semantics import INT_OPS, SOURCE_OPS, BitVectorArithmetic, Condition, holds, step
from .helpers import call_helper, legacy_load
from .kfuncs import call_kfunc
from .maps.arena import addr_space_cast
from .interp import (
    KERNEL_OBJECT_REFUSAL, MAX_CALL_FRAMES, MAY_GOTO_BUDGET, STACK_SIZE, Clock, Machine, RunResult, decoded,
    repeat_runs,
)
from .memory import VmFault
from .program import VmProgram

SEGMENT_BLOCKS = 256
_REGS = "r0, r1, r2, r3, r4, r5, r6, r7, r8, r9"
_ARGS = "r0, r1, r2, r3, r4, r5"


class _Stop(Exception):
    """Ends the whole run with r0 = 0 (a failed legacy packet load)."""


@dataclass
class _RunState:
    """What generated code and helpers reach besides registers: the machine, the input, the clock, the
    tail-call count, the slot that may fault next, and each program's bound units."""

    machine: Machine
    input: object
    clock: Clock
    tail_calls: int = 0
    pc: int = 0
    depth: int = 0  # call depth of the function calling a helper (a callback runs one deeper)
    bound: dict[int, "_Bound"] = field(default_factory=dict)

    def binding(self, program: VmProgram) -> "_Bound":
        env = self.bound.get(id(program))
        if env is None or env.program is not program:
            env = self.bound[id(program)] = _Bound(self, program)
        return env

    def call_function(self, addr: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        """A helper's call of a BPF function (bpf_loop's callback): as `Interpreter.call_function`."""
        program, slot = self.machine.code_at(addr)
        if slot not in program.entries:
            raise VmFault(f"callback to slot {slot}, which is not a function of this program")
        depth = self.depth
        try:
            return self.binding(program).functions[slot](0, r1, r2, r3, r4, r5, 0, 0, 0, 0, depth + 1)[0]
        finally:
            self.depth = depth

    def tail(self, program: VmProgram, r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, depth):
        """bpf_tail_call that found its target: the target's entry runs in the caller's frame."""
        return self.binding(program).functions[0](r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, depth)


class _Lazy(dict):
    """A dict that fills a missing key with `make(key)`: units are bound when a run first needs them."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key):
        value = self[key] = self._make(key)
        return value


class _Bound:
    """One program's units bound to one run: what generated code calls `env`."""

    def __init__(self, run: _RunState, program: VmProgram) -> None:
        machine = run.machine
        self.run, self.program, self.machine = run, program, machine
        self.compiled = compiled(program)
        self.handles = lambda index: machine.map_handle(program.map_at(index))
        self.values = lambda index: machine.data_pointer(program.map_at(index))
        self.funcs = lambda slot: machine.code_pointer(program, slot)
        self.functions = _Lazy(lambda entry: self.compiled.unit(("f", entry))(self))
        self._segments: dict[tuple[int, int], object] = {}
        self.segments = _Lazy(self._segment)  # (entry, leader) -> bound segment

    def _segment(self, key: tuple[int, int]):
        entry, leader = key
        index = self.compiled.segment_of(entry, leader)
        fn = self._segments.get((entry, index))
        if fn is None:
            fn = self._segments[(entry, index)] = self.compiled.unit(("s", entry, index))(self)
        return fn

    def callx(self, addr: int):
        callee, slot = self.machine.code_at(addr)
        if callee is not self.program or slot not in self.program.entries:
            raise VmFault(f"callx to slot {slot}, which is not a function of this program")
        return self.functions[slot]


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)


@dataclass
class _Function:
    """A BPF function's blocks: leaders in order, split into segments of at most SEGMENT_BLOCKS."""

    entry: int
    end: int
    leaders: list[int]

    @cached_property
    def segments(self) -> list[list[int]]:
        return [self.leaders[i:i + SEGMENT_BLOCKS] for i in range(0, len(self.leaders), SEGMENT_BLOCKS)]

    @cached_property
    def leader_set(self) -> frozenset[int]:
        return frozenset(self.leaders)


class CompiledProgram:
    """A program's translation: units generated and compiled on demand, kept with the program."""

    def __init__(self, program: VmProgram) -> None:
        self.program = program
        self.code = decoded(program)  # the interpreter's table: decoded once per program
        self.starts = [slot for slot, entry in enumerate(self.code) if entry is not None]
        self._index = {slot: i for i, slot in enumerate(self.starts)}
        self._functions: dict[int, _Function] = {}
        self._units: dict[tuple, object] = {}
        self._segment_index: dict[int, dict[int, int]] = {}
        self.namespace = {"VmFault": VmFault, "call_helper": call_helper, "call_kfunc": call_kfunc,
                          "addr_space_cast": addr_space_cast, "_Stop": _Stop, "_sdiv": INT_OPS.sdiv,
                          "_srem": INT_OPS.srem, "legacy_load": legacy_load}

    def function(self, entry: int) -> _Function:
        fn = self._functions.get(entry)
        if fn is None:
            start, end = self.program.function_bounds(entry)
            if start != entry:
                raise VmFault(f"slot {entry} is not the start of a function")
            first = self._index[entry]
            last = self._index.get(end, len(self.starts))
            fn = self._functions[entry] = _Function(entry, end, _leaders(self.starts[first:last], self.code,
                                                                         entry, end))
        return fn

    def segment_of(self, entry: int, leader: int) -> int:
        table = self._segment_index.get(entry)
        if table is None:
            table = self._segment_index[entry] = {l: i for i, seg in enumerate(self.function(entry).segments)
                                                  for l in seg}
        return table[leader]

    def unit(self, key: tuple):
        """The factory `make(env)` of a unit: ("f", entry) a function, ("s", entry, i) its i-th segment."""
        make = self._units.get(key)
        if make is None:
            namespace = dict(self.namespace)
            exec(compile(self.source(key), f"<bpforge fast tier: {self.program.name} {key}>", "exec"), namespace)
            make = self._units[key] = namespace["make"]
        return make

    def source(self, key: tuple) -> str:
        fn = self.function(key[1])
        out = _Writer()
        out.emit(0, "def make(env):")
        out.emit(1, "st, machine, clock = env.run, env.machine, env.run.clock")
        out.emit(1, "mem = machine.memory")
        out.emit(1, "ld, sto, stack = mem.load, mem.store, machine.stack")
        out.emit(1, "H, VP, FP, F, S = env.handles, env.values, env.funcs, env.functions, env.segments")
        segments = fn.segments
        if key[0] == "f":
            out.emit(1, f"def f({_REGS}, depth):")
            out.emit(2, f"if depth >= {MAX_CALL_FRAMES}: raise VmFault('call depth exceeds {MAX_CALL_FRAMES} frames')")
            out.emit(2, f"r10 = stack(depth).base + {STACK_SIZE}")
            out.emit(2, f"mg = {MAY_GOTO_BUDGET}")
            out.emit(2, f"b = {fn.entry}")
            out.emit(2, "while True:")
            if len(segments) == 1:
                _Emitter(self, fn, set(segments[0]), segmented=False).dispatch(out, segments[0], 3)
            else:  # the driver: each segment runs until control leaves it
                out.emit(3, f"b, {_REGS}, mg = S[({fn.entry}, b)](b, {_REGS}, r10, mg, depth)")
                out.emit(3, f"if b < 0: return {_ARGS}")
            out.emit(1, "return f")
        else:
            leaders = segments[key[2]]
            out.emit(1, f"def s(b, {_REGS}, r10, mg, depth):")
            out.emit(2, "while True:")
            _Emitter(self, fn, set(leaders), segmented=True).dispatch(out, leaders, 3)
            out.emit(1, "return s")
        return "\n".join(out.lines) + "\n"


def _leaders(slots: list[int], code: list, entry: int, end: int) -> list[int]:
    """Block leader slots of the function [entry, end) whose instructions start at `slots`."""
    leaders = {entry}
    for slot in slots:
        _, op, after = code[slot]
        if ends_block(op):
            leaders.add(after)
            if op.__class__ in (Jump, MayGoto) and entry <= op.target < end:
                leaders.add(op.target)
    return sorted(s for s in leaders if entry <= s < end and code[s] is not None)


class _Emitter:
    """Emits the blocks of one unit (a whole function, or one segment of it)."""

    def __init__(self, prog: CompiledProgram, fn: _Function, mine: set[int], *, segmented: bool) -> None:
        self.prog, self.fn, self.mine, self.segmented = prog, fn, mine, segmented
        self.leaders = fn.leader_set

    def dispatch(self, out: _Writer, group: list[int], depth: int) -> None:
        if len(group) == 1:
            self.block(out, group[0], depth)
            return
        mid = len(group) // 2
        out.emit(depth, f"if b < {group[mid]}:")
        self.dispatch(out, group[:mid], depth + 1)
        out.emit(depth, "else:")
        self.dispatch(out, group[mid:], depth + 1)

    def goto(self, out: _Writer, target: int, depth: int) -> None:
        if target in self.mine:
            out.emit(depth, f"b = {target}; continue")
        elif target in self.leaders:  # another segment of this function
            out.emit(depth, f"return {target}, {_REGS}, mg")
        else:
            out.emit(depth, f"st.pc = {target}; raise VmFault('control reached slot {target}, which is not an "
                            "instruction of this function')")

    def leave(self, out: _Writer, depth: int) -> None:
        """The function returns (r0-r5 as they are)."""
        out.emit(depth, f"return -1, {_REGS}, mg" if self.segmented else f"return {_ARGS}")

    def block(self, out: _Writer, leader: int, depth: int) -> None:
        code, slots, slot = self.prog.code, [], leader
        while slot < self.fn.end and code[slot] is not None:
            slots.append(slot)
            _, op, slot = code[slot]
            if ends_block(op) or slot in self.leaders:
                break
        _, last, after = code[slots[-1]]
        self_loop = last.__class__ in (Jump, MayGoto) and last.target == leader
        if self_loop:
            out.emit(depth, "while True:")
            depth += 1
        out.emit(depth, f"clock.executed += {len(slots)}")
        out.emit(depth, f"if clock.executed > clock.budget: st.pc = {slots[-1]}; clock.exhausted()")
        machine = _SourceMachine(self, out)
        for s in slots:
            machine.begin(s, depth, self_loop and s == slots[-1])
            step(machine, code[s][1])
        if falls_through(last):
            if self_loop:
                out.emit(depth, "break")
                depth -= 1
            self.goto(out, after, depth)


class _SourceMachine(BitVectorArithmetic):
    """The `isa.semantics.Machine` whose values are Python expression text: `step` run on it writes the
    code of one instruction. Registers are the locals r0-r10; a value loaded from memory is bound to `_m`
    first (an operation may use it more than once), which the register write that follows absorbs."""

    bv = SOURCE_OPS

    def __init__(self, emitter: _Emitter, out: _Writer) -> None:
        self.emitter, self.out = emitter, out

    def begin(self, slot: int, depth: int, loops_back: bool) -> None:
        self.slot, self.depth, self.loops_back = slot, depth, loops_back
        self._pc_set = False
        self._loaded: int | None = None  # index of the line that bound `_m`

    def emit(self, text: str, indent: int = 0) -> None:
        self.out.emit(self.depth + indent, text)

    def _may_fault(self) -> None:
        """Before the first operation of an instruction that can fault: name its slot for the error."""
        if not self._pc_set:
            self.emit(f"st.pc = {self.slot}")
            self._pc_set = True

    def reg(self, n: int) -> str:
        return f"r{n}"

    def set_reg(self, n: int, value: str) -> None:
        lines = self.out.lines
        if value == "_m" and self._loaded == len(lines) - 1:
            lines[-1] = lines[-1].replace("_m = ", f"r{n} = ", 1)
            self._loaded = None
        else:
            self.emit(f"r{n} = {value}")

    def clobber(self, n: int) -> None:
        self.emit(f"r{n} = 0")

    def load(self, addr: str, size: int) -> str:
        self._may_fault()
        self.emit(f"_m = ld({addr}, {size})")
        self._loaded = len(self.out.lines) - 1
        return "_m"

    def store(self, addr: str, size: int, value: str, when=None) -> None:
        self._may_fault()
        self.emit(f"sto({addr}, {size}, {value})" if when is None else f"if {when}: sto({addr}, {size}, {value})")

    def _goto(self, target: int, indent: int) -> None:
        if self.loops_back:
            self.emit("continue", indent)
        else:
            self.emitter.goto(self.out, target, self.depth + indent)

    def branch(self, cond: Condition | None, target: int) -> None:
        if cond is None:
            self._goto(target, 0)
        else:
            self.emit(f"if {holds(SOURCE_OPS, cond)}:")
            self._goto(target, 1)

    def may_goto(self, target: int) -> None:
        self.emit("if mg == 0 or clock.expired:")
        self._goto(target, 1)
        self.emit("mg -= 1")

    def call_helper(self, helper: int) -> None:
        self._may_fault()
        self.emit(f"st.depth = depth; _r = call_helper(st, {helper}, r1, r2, r3, r4, r5)")
        self.emit("if _r.__class__ is int: r0 = _r")
        self.emit("elif _r is not None:")  # a tail call: the target finishes this function's frame
        self.emit(f"{_ARGS} = st.tail(_r.program, {_REGS}, depth)", 1)
        self.emitter.leave(self.out, self.depth + 1)

    def call_local(self, target: int) -> None:
        self._may_fault()
        self.emit(f"{_ARGS} = F[{target}]({_REGS}, depth + 1)")

    def call_indirect(self, addr: str) -> None:
        self._may_fault()
        self.emit(f"{_ARGS} = env.callx({addr})({_REGS}, depth + 1)")

    def call_kfunc(self, btf_id: int, module: int) -> None:
        self._may_fault()
        self.emit(f"r0 = call_kfunc(st, {btf_id}, {module}, r1, r2, r3, r4, r5)")

    def exit(self) -> None:
        self.emitter.leave(self.out, self.depth)

    def map_handle(self, ref: int) -> str:
        self._may_fault()
        return f"H({ref})"

    def map_value(self, ref: int) -> str:
        self._may_fault()
        return f"VP({ref})"

    def function_address(self, slot: int) -> str:
        return f"FP({slot})"

    def kernel_object(self, btf_id: int, module: int) -> str:
        self._may_fault()
        self.emit(f"raise VmFault({KERNEL_OBJECT_REFUSAL!r})")
        return "0"

    def legacy_load(self, size: int, offset: str) -> str:
        self._may_fault()
        self.emit(f"_v = legacy_load(st.input, {size}, {SOURCE_OPS.signed(offset, 32)})")
        self.emit("if _v is None: raise _Stop()")
        return "_v"

    def addr_space_cast(self, value: str, dst_as: int, src_as: int) -> str:
        self._may_fault()
        return f"addr_space_cast(st.machine, {dst_as << 16 | src_as}, {value})"


def _unit_keys(program: VmProgram) -> list[tuple]:
    prog = compiled(program)
    keys: list[tuple] = []
    for entry in program.entries:
        keys.append(("f", entry))
        segments = prog.function(entry).segments
        if len(segments) > 1:
            keys += [("s", entry, i) for i in range(len(segments))]
    return keys


def translate(program: VmProgram) -> str:
    """The source of every unit of the program (what runs compile on demand), for reading."""
    return "\n".join(compiled(program).source(key) for key in _unit_keys(program))


def compile_all(program: VmProgram) -> CompiledProgram:
    """Every unit compiled now (before a timed run), not when a run first enters it."""
    prog = compiled(program)
    for key in _unit_keys(program):
        prog.unit(key)
    return prog


def compiled(program: VmProgram) -> CompiledProgram:
    """The program's translation, made on first use and kept with the program (and freed with it)."""
    if program.compiled is None or program.compiled.program is not program:
        program.compiled = CompiledProgram(program)
    return program.compiled


def run_fast(machine: Machine, data: bytes = b"", prog_type: str = "xdp", ctx_in: bytes | None = None,
             repeat: int = 1, stop=None) -> RunResult:
    """Run `machine.program` in the fast tier; same results, faults and budget as `Machine.run`."""
    inp = machine.start(data, prog_type, ctx_in)
    clock = Clock(machine.budget, machine.program)
    state = _RunState(machine, inp, clock)
    entry = state.binding(machine.program).functions[0]  # units are bound once per input, not per run

    def once() -> tuple[int, int]:
        clock.reset()
        state.tail_calls = 0
        try:
            retval = entry(0, inp.r1, inp.r2, 0, 0, 0, 0, 0, 0, 0, 0)[0]
        except _Stop:
            retval = 0
        except BpforgeError as err:
            raise err.at(insn=state.pc) from None
        return retval, clock.executed

    return repeat_runs(machine, inp, once, repeat, stop)


__all__ = ["CompiledProgram", "compile_all", "compiled", "run_fast", "translate"]
