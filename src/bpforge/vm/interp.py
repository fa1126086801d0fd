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
from ..isa import Form, Insn
from .context import Input, prepare
from .helpers import TailCall, call_helper, legacy_load
from .kfuncs import call_kfunc
from .maps.arena import addr_space_cast
from .memory import Memory, Region, VmFault
from .program import VmProgram
from .semantics import INT_OPS, alu, byte_swap, condition, imm_operand

M64 = (1 << 64) - 1
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
            name = f"map {getattr(vm_map, 'name', '?')}"
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
        readonly = getattr(vm_map, "readonly_prog", False)  # BPF_F_RDONLY_PROG (.rodata), not syscall freezing
        return self.memory.map(storage, f"value of map {getattr(vm_map, 'name', '?')}", writable=not readonly).base

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


class Interpreter:
    """One run of the machine's program. Also the `vm` argument helpers receive (`machine`, `input`,
    `tail_calls`, `call_function`)."""

    def __init__(self, machine: Machine, inp: Input) -> None:
        self.machine = machine
        self.input = inp
        self.regs = [0] * 11
        self.frames: list[Frame] = []
        self.tail_calls = 0
        self.clock = Clock(machine.budget, machine.program)
        self._calling_program = machine.program  # the program a helper was called from (for callbacks)
        self._decoded: dict[int, list[tuple[Form, Insn] | None]] = {}

    def decoded(self, program: VmProgram) -> list[tuple[Form, Insn] | None]:
        """Slot-indexed (form, insn); None in the second slot of an lddw."""
        table = self._decoded.get(id(program))
        if table is None:
            table = []
            for insn in program.insns:
                table.append((insn.form, insn))
                if insn.slots == 2:
                    table.append(None)
            self._decoded[id(program)] = table
        return table

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
        they were afterwards."""
        program, slot = self.machine.code_at(addr)
        if program is not self._calling_program or slot not in program.entries:
            raise VmFault(f"callback to slot {slot}, which is not a function of this program")
        regs = self.regs
        self._push(Frame(program, -1, tuple(regs[6:10]), regs[10], callback=True, saved_args=tuple(regs[0:6])))
        regs[0:10] = [0, r1, r2, r3, r4, r5, 0, 0, 0, 0]
        return self._loop(program, slot)

    def _push(self, frame: Frame) -> None:
        if len(self.frames) + 1 >= MAX_CALL_FRAMES:
            raise VmFault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
        self.frames.append(frame)
        self.regs[10] = self.machine.stack(len(self.frames)).base + STACK_SIZE

    def _loop(self, program: VmProgram, pc: int) -> int:
        """Execute from `pc`, the entry of a function, until the frame that starts there returns (r0)."""
        machine, regs, memory = self.machine, self.regs, self.machine.memory
        clock = self.clock
        code = self.decoded(program)
        lo, hi = program.function_bounds(pc)
        may_goto = MAY_GOTO_BUDGET
        try:
            while True:
                if not lo <= pc < hi or code[pc] is None:
                    raise VmFault(f"control reached slot {pc}, which is not an instruction of this function")
                clock.executed += 1
                if clock.executed > clock.budget:
                    clock.exhausted()
                form, insn = code[pc]
                kind = form.kind
                next_pc = pc + 1
                if kind in ("alu", "mov", "neg"):
                    src = regs[insn.src] if form.source == "reg" or form.op == "movsx" else imm_operand(insn.imm)
                    regs[insn.dst] = alu(INT_OPS, form, regs[insn.dst], src)
                elif kind == "ldx":
                    value = memory.load((regs[insn.src] + insn.off) & M64, form.size)
                    regs[insn.dst] = INT_OPS.sext(value, form.size * 8, 64) if form.signed else value
                elif kind == "stx":
                    memory.store((regs[insn.dst] + insn.off) & M64, form.size, regs[insn.src])
                elif kind == "st":
                    memory.store((regs[insn.dst] + insn.off) & M64, form.size, imm_operand(insn.imm))
                elif kind == "jmp":
                    src = regs[insn.src] if form.source == "reg" else imm_operand(insn.imm)
                    if condition(INT_OPS, form, regs[insn.dst], src):
                        next_pc += insn.off
                elif kind == "ja":
                    next_pc += insn.off if form.name == "ja" else insn.imm
                elif kind == "end":
                    regs[insn.dst] = byte_swap(INT_OPS, form, regs[insn.dst])
                elif kind == "as_cast":
                    regs[insn.dst] = addr_space_cast(machine, insn.imm, regs[insn.src])
                elif kind == "lddw":
                    regs[insn.dst] = self.load_imm64(program, form, insn, pc)
                    next_pc += 1  # the second slot
                elif kind == "atomic":
                    atomic(memory, form, insn, regs)
                elif kind == "call":
                    if form.op == "helper":
                        self._calling_program = program
                        result = call_helper(self, insn.imm, *regs[1:6])
                        if isinstance(result, TailCall):  # the target replaces this function, in its frame
                            program, code, next_pc = result.program, self.decoded(result.program), 0
                            lo, hi = program.function_bounds(0)
                            may_goto = MAY_GOTO_BUDGET
                        elif result is not None:
                            regs[0] = result
                    elif form.op == "local":
                        next_pc = self._enter(program, next_pc, next_pc + insn.imm, may_goto, (lo, hi))
                        lo, hi = program.function_bounds(next_pc)
                        may_goto = MAY_GOTO_BUDGET
                    else:
                        regs[0] = call_kfunc(self, insn.imm, insn.off, *regs[1:6])
                elif kind == "callx":
                    callee, slot = machine.code_at(regs[insn.dst])
                    if callee is not program or slot not in program.entries:
                        raise VmFault(f"callx to slot {slot}, which is not a function of this program")
                    next_pc = self._enter(program, next_pc, slot, may_goto, (lo, hi))
                    lo, hi = program.function_bounds(next_pc)
                    may_goto = MAY_GOTO_BUDGET
                elif kind == "exit":
                    if not self.frames:
                        return regs[0]
                    frame = self.frames.pop()
                    regs[6:10] = frame.callee_saved
                    regs[10] = frame.fp
                    if frame.callback:  # back to the helper that called: the caller's r0-r5 as they were
                        retval = regs[0]
                        regs[0:6] = frame.saved_args
                        return retval
                    program, next_pc = frame.program, frame.return_slot
                    code = self.decoded(program)
                    (lo, hi), may_goto = frame.bounds, frame.may_goto
                elif kind in ("ld_abs", "ld_ind"):
                    value = legacy_load(self.input, form.size, legacy_offset(form, insn, regs))
                    if value is None:
                        raise _Abort()
                    regs[0:6] = [value, 0, 0, 0, 0, 0]  # the kernel's load helper call clobbers r1-r5
                elif kind == "may_goto":
                    if may_goto == 0 or clock.expired:
                        next_pc += insn.off
                    else:
                        may_goto -= 1
                else:
                    raise VmFault(f"{form.name} is not supported by the interpreter")
                pc = next_pc
        except BpforgeError as err:
            raise err.at(insn=pc) from None

    def _enter(self, program: VmProgram, return_slot: int, target: int, may_goto: int,
               bounds: tuple[int, int]) -> int:
        regs = self.regs
        self._push(Frame(program, return_slot, tuple(regs[6:10]), regs[10], may_goto, bounds))
        return target

    # ---- instruction helpers -------------------------------------------------------------------------

    def load_imm64(self, program: VmProgram, form: Form, insn: Insn, pc: int) -> int:
        if form.name == "lddw":
            return insn.imm64 & M64
        if form.name in ("lddw_map_fd", "lddw_map_idx"):
            return self.machine.map_handle(program.map_at(insn.imm))
        if form.name in ("lddw_map_value", "lddw_map_idx_value"):
            return (self.machine.data_pointer(program.map_at(insn.imm)) + (insn.imm_hi & 0xFFFFFFFF)) & M64
        if form.name == "lddw_func":
            return self.machine.code_pointer(program, pc + 1 + insn.imm)
        raise VmFault(f"{form.name} needs kernel BTF; the interpreter cannot resolve it")


class _Abort(Exception):
    """A failed legacy packet load: the whole run ends with r0 = 0, as the kernel's LD_ABS does."""


def atomic(memory: Memory, form: Form, insn: Insn, regs: list[int]) -> None:
    """An atomic memory operation, updating the registers it writes (src for fetches, r0 for cmpxchg,
    dst for load-acquire)."""
    size = form.size
    bits = size * 8
    addr = (regs[insn.src if form.op == "load_acquire" else insn.dst] + insn.off) & M64
    if form.op == "load_acquire":
        regs[insn.dst] = memory.load(addr, size)
        return
    if form.op == "store_release":
        memory.store(addr, size, regs[insn.src])
        return
    old = memory.load(addr, size)
    operand = regs[insn.src] & ((1 << bits) - 1)
    if form.op == "cmpxchg":
        if old == regs[0] & ((1 << bits) - 1):
            memory.store(addr, size, operand)
        regs[0] = old  # zero-extended, for 32 bits too
        return
    if form.op == "xchg":
        new = operand
    else:
        new = {"add": INT_OPS.add(old, operand, bits), "or": old | operand, "and": old & operand,
               "xor": old ^ operand}[form.op]
    memory.store(addr, size, new)
    if form.fetch:
        regs[insn.src] = old


def legacy_offset(form: Form, insn: Insn, regs) -> int:
    """The packet offset of LD_ABS (imm) or LD_IND (src + imm, added in 64 bits, passed on as an int)."""
    if form.kind == "ld_abs":
        return insn.imm
    total = (regs[insn.src] + imm_operand(insn.imm)) & 0xFFFFFFFF
    return total - (1 << 32) if total >> 31 else total


def run(program: VmProgram, data: bytes = b"", prog_type: str = "xdp", **options) -> RunResult:
    """Run `program` once (or `repeat` times) on `data` in a fresh machine."""
    ctx_in = options.pop("ctx_in", None)
    repeat = options.pop("repeat", 1)
    return Machine(program, **options).run(data, prog_type, ctx_in, repeat)
