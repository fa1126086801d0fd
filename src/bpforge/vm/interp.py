"""The reference interpreter: one instruction at a time, every operation through `semantics` and every
memory access through `Memory`. It is the definition the fast tier and the kernel are compared with.

Rules both tiers share, for programs the kernel would refuse as much as for those it accepts:
- control stays inside the function it is in (a jump or fall-through out of it faults);
- a called function starts with the caller's registers (r0-r9 as they are), its own stack, and gives back
  r0-r5 as it leaves them (r6-r9 and r10 are the caller's again); a helper leaves r1-r5 as they were;
- the stack of each call depth is one buffer, reused by every call at that depth (a tail call reuses the
  caller's), as the kernel's JIT reuses the machine stack;
- may_goto: each frame has its own counter of BPF_MAX_LOOPS iterations, as the kernel's count-based
  may_goto (x86-64 counts 0xffff at a time and refreshes the count until 250 ms have passed; the VM's clock
  is its instruction budget: once a program with may_goto has used it up, every may_goto takes its branch
  and the program gets a grace of instructions to finish, like a kernel loop whose time slice ran out).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa.numbers import s32
from ..isa.ops import Op, decode_ops, following
from ..isa.semantics import INT_OPS, BitVectorArithmetic, Condition, holds, step_of
from .context import Input, prepare
from .helpers import TailCall, call_helper, legacy_load
from .kfuncs import call_kfunc
from .maps.arena import addr_space_cast
from .memory import Memory, Region, VmFault
from .program import VmProgram

STACK_SIZE = 512
MAX_CALL_FRAMES = 8  # the kernel's MAX_CALL_FRAMES
MAY_GOTO_BUDGET = 1 << 23  # BPF_MAX_LOOPS: iterations a frame's may_goto loops get
DEFAULT_BUDGET = 10_000_000
MIN_GRACE = 100_000  # instructions a may_goto program may still run once its budget is spent


@dataclass
class RunResult:
    retval: int
    data_out: bytes
    ctx_out: bytes | None
    executed: int  # instructions executed (in the last run)
    trace: list[str] = field(default_factory=list)  # bpf_trace_printk output
    runs: int = 1  # runs done (fewer than asked when `stopped`)
    stopped: str | None = None  # "budget" or "interrupted" when a repeat loop ended early
    loop_ns: int | None = None  # the engine's own timing of its repeat loop alone, as test_run times it


def repeat_runs(machine: Machine, inp: Input, once: Callable[[], tuple[int, int]], repeat: int,
                stop: Callable[[int], bool] | None) -> RunResult:
    """`repeat` runs of `once` (one run: (r0, instructions)) on one input, as test_run's loop does: each
    sees what the last left. `stop(runs done)` may end the loop early (a time budget), and so may Ctrl-C
    once a run has completed: the result is then the last completed run's, `stopped` says why."""
    retval = executed = runs = 0
    stopped = None
    try:
        while runs < repeat:
            if inp.before_run is not None:
                inp.before_run()
            retval, executed = once()
            if inp.after_run is not None:
                inp.after_run()
            runs += 1
            if runs < repeat and stop is not None and stop(runs):
                stopped = "budget"
                break
    except KeyboardInterrupt:
        if not runs:
            raise
        stopped = "interrupted"
    return RunResult(retval, inp.data_out(), inp.ctx_out(), executed, machine.trace, runs, stopped)


@dataclass
class Frame:
    """A caller's state saved across a bpf-to-bpf call. A helper's callback frame (`callback`) saves the
    caller's r0-r5 instead: the caller's pc, function bounds and may_goto counter stay in the loop that
    called the helper, which the callback's own loop returns to."""

    program: VmProgram
    return_slot: int
    callee_saved: tuple[int, int, int, int]
    fp: int
    may_goto: int = MAY_GOTO_BUDGET
    bounds: tuple[int, int] = (0, 0)
    callback: bool = False
    saved_args: tuple[int, ...] = ()


class Clock:
    """The instruction budget of one run, and the may_goto expiry it drives (see the module docstring)."""

    def __init__(self, budget: int, program: VmProgram) -> None:
        self.limit = budget
        self.program = program
        self.reset()

    def reset(self) -> None:
        """A new run: the whole budget again."""
        self.budget = self.limit
        self.executed = 0
        self.expired = False

    def exhausted(self) -> None:
        """Called when `executed` passed `budget`: expire may_goto once, else fault."""
        if not self.expired and self.program.has_may_goto:
            self.expired = True
            self.budget += max(MIN_GRACE, self.budget // 10)
            return
        raise VmFault(f"instruction budget of {self.limit} exhausted (an endless loop?)")


class Machine:
    """The state runs need: memory, maps, helper environment. One machine serves a sequence of runs that
    share maps (`run(..., repeat=N)` runs N times on one prepared input, as BPF_PROG_TEST_RUN does)."""

    def __init__(self, program: VmProgram, *, budget: int = DEFAULT_BUDGET, cpu: int = 0, seed: int = 0,
                 clock_ns: int = 1_000_000_000, fib=None) -> None:
        self.program = program
        self.budget = budget
        self.cpu = cpu
        self.rng = random.Random(seed)
        self.clock_ns = clock_ns
        self.fib = fib or {}
        self.memory = Memory()
        self._map_handles: dict[int, object] = {}
        self._handle_of: dict[int, int] = {}
        self._code_of: dict[int, tuple[VmProgram, int]] = {}
        self._stacks: list[Region] = []
        self.trace: list[str] = []
        self.input: Input | None = None

    # ---- addresses of maps, map values, code and stacks ------------------------------------------------

    def map_handle(self, vm_map) -> int:
        handle = self._handle_of.get(id(vm_map))
        if handle is None:
            name = f"map {vm_map.name}"
            layout = self.program.map_layout  # the kernel's struct bpf_map, when the program reads it
            handle = (self.memory.map(layout.render(vm_map), f"struct bpf_map of {name}", writable=False)
                      if layout is not None else self.memory.reserve(name)).base
            self._handle_of[id(vm_map)] = handle
            self._map_handles[handle] = vm_map
        return handle

    def map_at(self, handle: int):
        vm_map = self._map_handles.get(handle)
        if vm_map is None:
            raise VmFault(f"{handle:#x} is not a map")
        return vm_map

    def data_pointer(self, vm_map) -> int:
        """Where an lddw map_value points: the map's first value (global data: the section's bytes)."""
        storage = vm_map.prog_lookup((0).to_bytes(4, "little"), self.cpu)
        if storage is None:
            raise VmFault(f"map {vm_map.name} has no value to point into")
        return self.value_pointer(vm_map, storage)

    def value_pointer(self, vm_map, storage: bytearray) -> int:
        # BPF_F_RDONLY_PROG (.rodata) makes a value read-only to programs; freezing through the syscall does not
        return self.memory.map(storage, f"value of map {vm_map.name}", writable=not vm_map.readonly_prog).base

    def code_pointer(self, program: VmProgram, slot: int) -> int:
        for addr, target in self._code_of.items():
            if target[0] is program and target[1] == slot:
                return addr
        region = self.memory.reserve(f"function at slot {slot}")
        self._code_of[region.base] = (program, slot)
        return region.base

    def code_at(self, addr: int) -> tuple[VmProgram, int]:
        target = self._code_of.get(addr)
        if target is None:
            raise VmFault(f"call to {addr:#x}, which is not a function")
        return target

    def stack(self, depth: int) -> Region:
        """The stack of call depth `depth`: one buffer per depth for the whole run (not zeroed between calls,
        as machine stack memory is not)."""
        while len(self._stacks) <= depth:
            self._stacks.append(self.memory.map(bytearray(STACK_SIZE), f"stack of frame {len(self._stacks)}"))
        return self._stacks[depth]

    # ---- running -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """A fresh address space for the next input (maps keep their contents: they are not memory here)."""
        self.memory = Memory()
        self._map_handles.clear()
        self._handle_of.clear()
        self._code_of.clear()
        self._stacks = []

    def start(self, data: bytes = b"", prog_type: str = "xdp", ctx_in: bytes | None = None) -> Input:
        """Prepare one input, which `repeat` runs then share."""
        self.reset()
        self.input = prepare(self.memory, prog_type, data, ctx_in)
        return self.input

    def run(self, data: bytes = b"", prog_type: str = "xdp", ctx_in: bytes | None = None, repeat: int = 1,
            stop: Callable[[int], bool] | None = None) -> RunResult:
        inp = self.start(data, prog_type, ctx_in)
        return repeat_runs(self, inp, lambda: Interpreter(self, inp).execute(), repeat, stop)


class Interpreter(BitVectorArithmetic):
    """One run of the machine's program: the integer instantiation of `isa.semantics.step` (the `Machine`
    it needs), around which this is only the loop. Also the `vm` argument helpers receive (`machine`,
    `input`, `tail_calls`, `call_function`).

    The loop's state (the running program, its decoded slots, the function's bounds, the frame's may_goto
    count and the slot to run next) lives in attributes, which the machine methods change."""

    bv = INT_OPS

    def __init__(self, machine: Machine, inp: Input) -> None:
        self.machine = machine
        self.memory = machine.memory
        self.input = inp
        self.regs = [0] * 11
        self.frames: list[Frame] = []
        self.tail_calls = 0
        self.clock = Clock(machine.budget, machine.program)
        self._calling_program = machine.program  # the program a helper was called from (for callbacks)
        self.program = machine.program
        self.code: list[tuple[Callable, Op, int] | None] = []
        self.lo = self.hi = 0
        self.may_goto_left = MAY_GOTO_BUDGET
        self.next_pc = 0
        self.returned = 0

    def execute(self) -> tuple[int, int]:
        """Run the program from its first instruction: (r0, instructions executed)."""
        regs = self.regs
        regs[1], regs[2] = self.input.r1, self.input.r2
        regs[10] = self.machine.stack(0).base + STACK_SIZE
        try:
            retval = self._loop(self.machine.program, 0)
        except _Abort:
            retval = 0
        return retval, self.clock.executed

    def call_function(self, addr: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        """Call the BPF function at code address `addr` from a helper (bpf_loop's callback): a new frame
        that starts with r1-r5 as given and r0, r6-r9 zero; returns its r0. The caller's registers are as
        they were afterwards, and so is the state of the loop that called the helper."""
        program, slot = self.machine.code_at(addr)
        if program is not self._calling_program or slot not in program.entries:
            raise VmFault(f"callback to slot {slot}, which is not a function of this program")
        regs = self.regs
        self._push(Frame(program, -1, tuple(regs[6:10]), regs[10], callback=True, saved_args=tuple(regs[0:6])))
        regs[0:10] = [0, r1, r2, r3, r4, r5, 0, 0, 0, 0]
        saved = self.program, self.code, self.lo, self.hi, self.may_goto_left, self.next_pc
        try:
            return self._loop(program, slot)
        finally:
            self.program, self.code, self.lo, self.hi, self.may_goto_left, self.next_pc = saved

    def _push(self, frame: Frame) -> None:
        if len(self.frames) + 1 >= MAX_CALL_FRAMES:
            raise VmFault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
        self.frames.append(frame)
        self.regs[10] = self.machine.stack(len(self.frames)).base + STACK_SIZE

    def _enter_function(self, program: VmProgram, slot: int) -> None:
        """Control continues at `slot`, the entry of a function of `program`, with a fresh may_goto count."""
        self.program, self.code = program, decoded(program)
        self.lo, self.hi = program.function_bounds(slot)
        self.may_goto_left = MAY_GOTO_BUDGET
        self.next_pc = slot

    def _loop(self, program: VmProgram, pc: int) -> int:
        """Execute from `pc`, the entry of a function, until the frame that starts there returns (r0)."""
        clock = self.clock
        self._enter_function(program, pc)
        try:
            while True:
                if not self.lo <= pc < self.hi or self.code[pc] is None:
                    if pc == _RETURNED:
                        return self.returned
                    raise VmFault(f"control reached slot {pc}, which is not an instruction of this function")
                clock.executed += 1
                if clock.executed > clock.budget:
                    clock.exhausted()
                execute, op, self.next_pc = self.code[pc]
                execute(self, op)
                pc = self.next_pc
        except BpforgeError as err:
            raise err.at(insn=pc) from None

    # ---- the Machine of isa.semantics: registers and memory ------------------------------------------

    def reg(self, n: int) -> int:
        return self.regs[n]

    def set_reg(self, n: int, value: int) -> None:
        self.regs[n] = value

    def clobber(self, n: int) -> None:
        self.regs[n] = 0

    def load(self, addr: int, size: int) -> int:
        return self.memory.load(addr, size)

    def store(self, addr: int, size: int, value: int, when=None) -> None:
        if when is None or when:
            self.memory.store(addr, size, value)

    # ---- control -------------------------------------------------------------------------------------

    def branch(self, cond: Condition | None, target: int) -> None:
        if cond is None or holds(INT_OPS, cond):
            self.next_pc = target

    def may_goto(self, target: int) -> None:
        if self.may_goto_left == 0 or self.clock.expired:
            self.next_pc = target
        else:
            self.may_goto_left -= 1

    def call_helper(self, helper: int) -> None:
        regs = self.regs
        self._calling_program = self.program
        result = call_helper(self, helper, *regs[1:6])
        if isinstance(result, TailCall):  # the target replaces this function, in its frame
            self._enter_function(result.program, 0)
        elif result is not None:
            regs[0] = result

    def call_local(self, target: int) -> None:
        self._call(target)

    def call_indirect(self, addr: int) -> None:
        callee, slot = self.machine.code_at(addr)
        if callee is not self.program or slot not in self.program.entries:
            raise VmFault(f"callx to slot {slot}, which is not a function of this program")
        self._call(slot)

    def _call(self, target: int) -> None:
        regs = self.regs
        self._push(Frame(self.program, self.next_pc, tuple(regs[6:10]), regs[10], self.may_goto_left,
                         (self.lo, self.hi)))
        self._enter_function(self.program, target)

    def call_kfunc(self, btf_id: int, module: int) -> None:
        self.regs[0] = call_kfunc(self, btf_id, module, *self.regs[1:6])

    def exit(self) -> None:
        regs = self.regs
        if not self.frames:
            self.returned, self.next_pc = regs[0], _RETURNED
            return
        frame = self.frames.pop()
        regs[6:10] = frame.callee_saved
        regs[10] = frame.fp
        if frame.callback:  # back to the helper that called: the caller's r0-r5 as they were
            self.returned, self.next_pc = regs[0], _RETURNED
            regs[0:6] = frame.saved_args
            return
        self.program, self.code = frame.program, decoded(frame.program)
        (self.lo, self.hi), self.may_goto_left = frame.bounds, frame.may_goto
        self.next_pc = frame.return_slot

    # ---- what the loader resolves ----------------------------------------------------------------------

    def map_handle(self, ref: int) -> int:
        return self.machine.map_handle(self.program.map_at(ref))

    def map_value(self, ref: int) -> int:
        return self.machine.data_pointer(self.program.map_at(ref))

    def function_address(self, slot: int) -> int:
        return self.machine.code_pointer(self.program, slot)

    def kernel_object(self, btf_id: int, module: int) -> int:
        raise VmFault(KERNEL_OBJECT_REFUSAL)

    def legacy_load(self, size: int, offset: int) -> int:
        value = legacy_load(self.input, size, s32(offset))
        if value is None:
            raise _Abort()
        return value

    def addr_space_cast(self, value: int, dst_as: int, src_as: int) -> int:
        return addr_space_cast(self.machine, dst_as << 16 | src_as, value)


_RETURNED = -1  # next_pc once the loop's own frame has returned
KERNEL_OBJECT_REFUSAL = "lddw_btf_id needs kernel BTF; the interpreter cannot resolve it"


def decoded(program: VmProgram) -> list[tuple[Callable, Op, int] | None]:
    """Slot-indexed (`step`'s function for the op, the op, the slot that follows) of a program, decoded once
    and kept with it; None in the second slot of an lddw."""
    table = program.decoded
    if table is None:
        ops = decode_ops(program.insns)
        table = program.decoded = [None if op is None else (step_of(op), op, following(ops, slot))
                                   for slot, op in enumerate(ops)]
    return table


class _Abort(Exception):
    """A failed legacy packet load: the whole run ends with r0 = 0, as the kernel's LD_ABS does."""


def run(program: VmProgram, data: bytes = b"", prog_type: str = "xdp", **options) -> RunResult:
    """Run `program` once (or `repeat` times) on `data` in a fresh machine."""
    ctx_in = options.pop("ctx_in", None)
    repeat = options.pop("repeat", 1)
    return Machine(program, **options).run(data, prog_type, ctx_in, repeat)
