"""The reference interpreter: one instruction at a time, every operation through `semantics` and every
memory access through `Memory`. Slow on purpose-free grounds only: it is the definition the fast tier and
the kernel are compared with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa import Form, Insn
from .context import Input, prepare
from .helpers import TailCall, call_helper, legacy_load
from .memory import Memory, Region, VmFault
from .program import VmProgram
from .semantics import INT_OPS, alu, byte_swap, condition, imm_operand

M64 = (1 << 64) - 1
STACK_SIZE = 512
MAX_CALL_FRAMES = 8  # the kernel's MAX_CALL_FRAMES
MAY_GOTO_BUDGET = 1 << 23  # BPF_MAX_LOOPS: iterations a may_goto loop gets
DEFAULT_BUDGET = 10_000_000


@dataclass
class RunResult:
    retval: int
    data_out: bytes
    ctx_out: bytes | None
    executed: int  # instructions executed
    trace: list[str] = field(default_factory=list)  # bpf_trace_printk output


@dataclass
class Frame:
    """A caller's state saved across a bpf-to-bpf call."""

    program: VmProgram
    return_slot: int
    callee_saved: tuple[int, int, int, int]
    fp: int


class Machine:
    """The state one run needs: memory, maps, helper environment. Create one per run (or reuse for a
    sequence of runs that should share maps)."""

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
        self.trace: list[str] = []

    # ---- addresses of maps, map values and code --------------------------------------------------------

    def map_handle(self, vm_map) -> int:
        handle = self._handle_of.get(id(vm_map))
        if handle is None:
            handle = self.memory.reserve(f"map {getattr(vm_map, 'name', '?')}").base
            self._handle_of[id(vm_map)] = handle
            self._map_handles[handle] = vm_map
        return handle

    def map_at(self, handle: int):
        vm_map = self._map_handles.get(handle)
        if vm_map is None:
            raise VmFault(f"{handle:#x} is not a map")
        return vm_map

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
            raise VmFault(f"callx to {addr:#x}, which is not a function")
        return target

    # ---- running -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """A fresh address space for the next run (maps keep their contents: they are not memory here)."""
        self.memory = Memory()
        self._map_handles.clear()
        self._handle_of.clear()
        self._code_of.clear()

    def run(self, data: bytes = b"", prog_type: str = "xdp", ctx_in: bytes | None = None) -> RunResult:
        self.reset()
        inp = prepare(self.memory, prog_type, data, ctx_in)
        self.input = inp
        retval, executed = Interpreter(self, inp).execute()
        return RunResult(retval, inp.data_out(), inp.ctx_out(), executed, self.trace)

    def new_stack(self) -> Region:
        return self.memory.map(bytearray(STACK_SIZE), "stack")


class Interpreter:
    def __init__(self, machine: Machine, inp: Input) -> None:
        self.machine = machine
        self.input = inp
        self.regs = [0] * 11
        self.frames: list[Frame] = []
        self.tail_calls = 0
        self.may_goto = MAY_GOTO_BUDGET
        self._decoded: dict[int, tuple[list[tuple[Form, Insn] | None], int]] = {}

    def decoded(self, program: VmProgram) -> list[tuple[Form, Insn] | None]:
        """Slot-indexed (form, insn); None in the second slot of an lddw."""
        entry = self._decoded.get(id(program))
        if entry is None:
            table: list[tuple[Form, Insn] | None] = []
            for insn in program.insns:
                table.append((insn.form, insn))
                if insn.slots == 2:
                    table.append(None)
            entry = self._decoded[id(program)] = (table, len(table))
        return entry[0]

    def execute(self) -> tuple[int, int]:
        machine, regs, memory = self.machine, self.regs, self.machine.memory
        program = machine.program
        code = self.decoded(program)
        regs[1], regs[2] = self.input.r1, self.input.r2
        stack = machine.new_stack()
        regs[10] = stack.base + STACK_SIZE
        pc = executed = 0
        budget = machine.budget
        try:
            while True:
                if not 0 <= pc < len(code) or code[pc] is None:
                    raise VmFault(f"control reached slot {pc}, which is not an instruction")
                executed += 1
                if executed > budget:
                    raise VmFault(f"instruction budget of {budget} exhausted (an endless loop?)")
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
                elif kind == "lddw":
                    regs[insn.dst] = self.load_imm64(program, form, insn, pc)
                    next_pc += 1  # the second slot
                elif kind == "atomic":
                    self.atomic(form, insn)
                elif kind == "call":
                    if form.op == "helper":
                        result = call_helper(self, insn.imm, *regs[1:6])
                        if isinstance(result, TailCall):
                            program, code, next_pc = result.program, self.decoded(result.program), 0
                        elif result is not None:
                            regs[0] = result
                    elif form.op == "local":
                        next_pc = self.enter(program, next_pc, next_pc + insn.imm)
                    else:
                        raise VmFault("kfunc calls need the kernel (the interpreter has no kfuncs)")
                elif kind == "callx":
                    callee, slot = machine.code_at(regs[insn.dst])
                    if callee is not program:
                        raise VmFault("callx into another program")
                    next_pc = self.enter(program, next_pc, slot)
                elif kind == "exit":
                    if not self.frames:
                        return regs[0], executed
                    frame = self.frames.pop()
                    regs[6:10] = frame.callee_saved
                    regs[10] = frame.fp
                    program, next_pc = frame.program, frame.return_slot
                    code = self.decoded(program)
                elif kind in ("ld_abs", "ld_ind"):
                    value = legacy_load(self.input, form.size, legacy_offset(form, insn, regs))
                    if value is None:
                        return 0, executed
                    regs[0:6] = [value, 0, 0, 0, 0, 0]  # the kernel's load helper call clobbers r1-r5
                elif kind == "may_goto":
                    if self.may_goto == 0:
                        next_pc += insn.off
                    else:
                        self.may_goto -= 1
                else:
                    raise VmFault(f"{form.name} is not supported by the interpreter")
                pc = next_pc
        except BpforgeError as err:
            raise err.at(insn=pc) from None

    # ---- instruction helpers -------------------------------------------------------------------------

    def enter(self, program: VmProgram, return_slot: int, target: int) -> int:
        if len(self.frames) + 1 >= MAX_CALL_FRAMES:
            raise VmFault(f"call depth exceeds {MAX_CALL_FRAMES} frames")
        regs = self.regs
        self.frames.append(Frame(program, return_slot, tuple(regs[6:10]), regs[10]))
        stack = self.machine.new_stack()
        regs[10] = stack.base + STACK_SIZE
        return target

    def load_imm64(self, program: VmProgram, form: Form, insn: Insn, pc: int) -> int:
        if form.name == "lddw":
            return insn.imm64 & M64
        if form.name in ("lddw_map_fd", "lddw_map_idx"):
            return self.machine.map_handle(self._map(program, insn.imm))
        if form.name in ("lddw_map_value", "lddw_map_idx_value"):
            vm_map = self._map(program, insn.imm)
            storage = vm_map.prog_lookup((0).to_bytes(4, "little"), self.machine.cpu)
            if storage is None:
                raise VmFault(f"map {vm_map.name} has no value to point into")
            return (self.machine.value_pointer(vm_map, storage) + (insn.imm_hi & 0xFFFFFFFF)) & M64
        if form.name == "lddw_func":
            return self.machine.code_pointer(program, pc + 1 + insn.imm)
        raise VmFault(f"{form.name} needs kernel BTF; the interpreter cannot resolve it")

    @staticmethod
    def _map(program: VmProgram, index: int):
        if not 0 <= index < len(program.maps):
            raise VmFault(f"map reference {index} but the program has {len(program.maps)} maps")
        return program.maps[index]

    def atomic(self, form: Form, insn: Insn) -> None:
        atomic(self.machine.memory, form, insn, self.regs)


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
    """Run `program` once on `data` in a fresh machine."""
    ctx_in = options.pop("ctx_in", None)
    return Machine(program, **options).run(data, prog_type, ctx_in)


