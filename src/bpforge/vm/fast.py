"""The fast tier: each function of a program translated once into Python source and compiled.

Registers become local variables, ALU and jump semantics are the very same `semantics` functions
instantiated with `SourceOps` (expression text instead of ints), basic blocks are dispatched by a binary
tree of comparisons, and a block that branches back to its own start becomes a tight `while` loop.
Memory, helpers, atomics and legacy loads go through the interpreter's own functions, so both tiers share
every rule that is not plain arithmetic. `pc` is updated before each instruction that can fault, so a fault
names the same instruction as in the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import BpforgeError
from ..isa import Form, Insn, branch_target, slot_starts
from .helpers import call_helper, legacy_load
from .context import prepare
from .interp import (
    DEFAULT_BUDGET, MAX_CALL_FRAMES, MAY_GOTO_BUDGET, STACK_SIZE, Machine, RunResult, atomic, legacy_offset,
)
from .memory import VmFault
from .program import VmProgram
from .semantics import INT_OPS, SOURCE_OPS, alu, byte_swap, condition, imm_operand

M64 = (1 << 64) - 1


class _Stop(Exception):
    """Ends the whole run with a return value (a failed legacy packet load)."""

    def __init__(self, retval: int) -> None:
        self.retval = retval


class _Tail(Exception):
    def __init__(self, program: VmProgram) -> None:
        self.program = program


@dataclass
class _RunState:
    """What generated code reaches besides its registers: the helpers' view of a run (machine, input,
    tail_calls, as the interpreter offers them), counters, and the run's map/function addresses."""

    machine: Machine
    input: object
    budget: int = DEFAULT_BUDGET
    tail_calls: int = 0
    executed: int = 0
    may_goto: int = MAY_GOTO_BUDGET
    pc: int = 0
    handles: Callable[[int], int] | None = None
    values: Callable[[int], int] | None = None
    funcs: Callable[[int], int] | None = None
    callx: Callable[[int], Callable] | None = None


def _functions(program: VmProgram) -> list[int]:
    """Entry slots of the program's functions: 0, every local call target and every lddw func target."""
    entries = {0}
    for insn, slot in zip(program.insns, slot_starts(program.insns)):
        if insn.form.name in ("call_local", "lddw_func"):
            entries.add(branch_target(insn, slot))
    return sorted(entries)


def _blocks(insns: list[Insn], starts: list[int], entry: int, end: int) -> list[int]:
    """Block leader slots of the function [entry, end)."""
    leaders = {entry}
    for insn, slot in zip(insns, starts):
        if not entry <= slot < end:
            continue
        form = insn.form
        if form.is_branch:
            leaders.add(branch_target(insn, slot))
            leaders.add(slot + 1)
        elif form.kind in ("exit", "call", "callx", "ld_abs", "ld_ind"):
            leaders.add(slot + 1)
    return sorted(s for s in leaders if entry <= s < end)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)


def translate(program: VmProgram) -> str:
    """Python source defining `bind(env)`, which returns the program's compiled functions by entry slot."""
    insns = program.insns
    starts = slot_starts(insns)
    at = dict(zip(starts, insns))
    total = starts[-1] + insns[-1].slots if insns else 0
    entries = _functions(program)
    out = _Writer()
    out.emit(0, "def bind(env):")
    out.emit(1, "st, machine, mem = env, env.machine, env.machine.memory")
    out.emit(1, "ld, sto, new_stack = mem.load, mem.store, machine.new_stack")
    out.emit(1, "H, VP, FP = env.handles, env.values, env.funcs")
    for i, entry in enumerate(entries):
        end = entries[i + 1] if i + 1 < len(entries) else total
        _function(out, program, at, starts, entry, end)
    out.emit(1, "return {" + ", ".join(f"{e}: f_{e}" for e in entries) + "}")
    return "\n".join(out.lines) + "\n"


def _function(out: _Writer, program: VmProgram, at: dict[int, Insn], starts: list[int], entry: int, end: int) -> None:
    leaders = _blocks(program.insns, starts, entry, end)
    out.emit(1, f"def f_{entry}(r1, r2, r3, r4, r5, depth):")
    out.emit(2, "if depth >= %d: st.pc = %d; raise VmFault('call depth exceeds %d frames')"
             % (MAX_CALL_FRAMES, entry, MAX_CALL_FRAMES))
    out.emit(2, "r0 = r6 = r7 = r8 = r9 = 0")
    out.emit(2, f"r10 = new_stack().base + {STACK_SIZE}")
    out.emit(2, f"b = {entry}")
    out.emit(2, "while True:")
    _dispatch(out, program, at, leaders, end, leaders, 3)


def _dispatch(out, program, at, group: list[int], end, leaders, depth) -> None:
    if len(group) == 1:
        _block(out, program, at, group[0], end, leaders, depth)
        return
    mid = len(group) // 2
    out.emit(depth, f"if b < {group[mid]}:")
    _dispatch(out, program, at, group[:mid], end, leaders, depth + 1)
    out.emit(depth, "else:")
    _dispatch(out, program, at, group[mid:], end, leaders, depth + 1)


def _block(out: _Writer, program: VmProgram, at: dict[int, Insn], leader: int, end: int, leaders, depth) -> None:
    slots, slot = [], leader
    while slot < end and slot in at:
        slots.append(slot)
        insn = at[slot]
        form = insn.form
        slot += insn.slots
        if form.is_branch or form.kind in ("exit", "call", "callx", "ld_abs", "ld_ind") or slot in leaders:
            break
    last = at[slots[-1]]
    self_loop = last.form.is_branch and branch_target(last, slots[-1]) == leader
    if self_loop:
        out.emit(depth, "while True:")
        depth += 1
    out.emit(depth, f"st.executed += {len(slots)}")
    out.emit(depth, f"if st.executed > st.budget: st.pc = {slots[-1]}; raise VmFault('instruction budget of ' + "
                    "str(st.budget) + ' exhausted (an endless loop?)')")
    for s in slots:
        _insn(out, program, at[s], s, depth, self_loop and s == slots[-1], leader)
    fallthrough = slots[-1] + last.slots
    if last.form.kind not in ("exit", "ja"):
        if self_loop:
            out.emit(depth, "break")
            depth -= 1
        _goto(out, fallthrough, end, depth)


def _goto(out: _Writer, target: int, end: int, depth: int) -> None:
    if target >= end:
        out.emit(depth, f"st.pc = {target}; raise VmFault('control reached slot {target}, which is not an "
                        "instruction of this function')")
    else:
        out.emit(depth, f"b = {target}; continue")


def _reg(n: int) -> str:
    return f"r{n}"


def _insn(out: _Writer, program: VmProgram, insn: Insn, slot: int, depth: int, loops_back: bool, leader: int) -> None:
    form: Form = insn.form
    kind = form.kind
    e = lambda text: out.emit(depth, text)  # noqa: E731
    d, s = _reg(insn.dst), _reg(insn.src)
    imm = str(imm_operand(insn.imm))
    if kind in ("alu", "mov", "neg"):
        src = s if form.source == "reg" or form.op == "movsx" else imm
        e(f"{d} = {alu(SOURCE_OPS, form, d, src)}")
    elif kind == "end":
        e(f"{d} = {byte_swap(SOURCE_OPS, form, d)}")
    elif kind == "ldx":
        value = f"ld(({s} + {insn.off}) & {M64}, {form.size})"
        if form.signed:
            value = SOURCE_OPS.sext(value, form.size * 8, 64)
        e(f"st.pc = {slot}; {d} = {value}")
    elif kind == "stx":
        e(f"st.pc = {slot}; sto(({d} + {insn.off}) & {M64}, {form.size}, {s})")
    elif kind == "st":
        e(f"st.pc = {slot}; sto(({d} + {insn.off}) & {M64}, {form.size}, {imm})")
    elif kind == "atomic":
        e(f"st.pc = {slot}; R = [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10]; atomic(mem, FORM_{slot}, INSN_{slot}, R)")
        e(f"r0, {d}, {s} = R[0], R[{insn.dst}], R[{insn.src}]")
    elif kind == "lddw":
        name = form.name
        if name == "lddw":
            e(f"{d} = {insn.imm64 & M64}")
        elif name in ("lddw_map_fd", "lddw_map_idx"):
            e(f"st.pc = {slot}; {d} = H({insn.imm})")
        elif name in ("lddw_map_value", "lddw_map_idx_value"):
            e(f"st.pc = {slot}; {d} = (VP({insn.imm}) + {insn.imm_hi & 0xFFFFFFFF}) & {M64}")
        elif name == "lddw_func":
            e(f"{d} = FP({slot + 1 + insn.imm})")
        else:
            e(f"st.pc = {slot}; raise VmFault('{name} needs kernel BTF; the interpreter cannot resolve it')")
    elif kind == "jmp":
        src = s if form.source == "reg" else imm
        target = slot + 1 + insn.off
        cond = condition(SOURCE_OPS, form, d, src)
        if loops_back:
            e(f"if {cond}: continue")
        else:
            e(f"if {cond}:")
            out.emit(depth + 1, f"b = {target}; continue")
    elif kind == "ja":
        target = slot + 1 + (insn.off if form.name == "ja" else insn.imm)
        if loops_back:
            e("continue")
        else:
            e(f"b = {target}; continue")
    elif kind == "may_goto":
        target = slot + 1 + insn.off
        e("if st.may_goto == 0:")
        out.emit(depth + 1, "continue" if loops_back else f"b = {target}; continue")
        e("st.may_goto -= 1")
    elif kind == "call":
        if form.op == "helper":
            e(f"st.pc = {slot}; _r = call_helper(st, {insn.imm}, r1, r2, r3, r4, r5)")
            e("if _r.__class__ is int: r0 = _r")
            e("elif _r is not None: raise _Tail(_r.program)")
        elif form.op == "local":
            e(f"st.pc = {slot}; r0 = f_{slot + 1 + insn.imm}(r1, r2, r3, r4, r5, depth + 1)")
        else:
            e(f"st.pc = {slot}; raise VmFault('kfunc calls need the kernel (the interpreter has no kfuncs)')")
    elif kind == "callx":
        e(f"st.pc = {slot}; r0 = env.callx({d})(r1, r2, r3, r4, r5, depth + 1)")
    elif kind == "exit":
        e("return r0")
    elif kind in ("ld_abs", "ld_ind"):
        e(f"st.pc = {slot}; _v = legacy_load(st.input, {form.size}, legacy_offset(FORM_{slot}, INSN_{slot}, "
          "[r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10]))")
        e("if _v is None: raise _Stop(0)")
        e("r0, r1, r2, r3, r4, r5 = _v, 0, 0, 0, 0, 0")
    else:
        e(f"st.pc = {slot}; raise VmFault('{form.name} is not supported by the interpreter')")


class CompiledProgram:
    """A program translated once; `run` binds it to a fresh machine state per run."""

    def __init__(self, program: VmProgram) -> None:
        self.program = program
        self.source = translate(program)
        namespace = {"VmFault": VmFault, "call_helper": call_helper, "_Tail": _Tail, "_Stop": _Stop,
                     "_sdiv": INT_OPS.sdiv, "_srem": INT_OPS.srem, "atomic": atomic, "legacy_load": legacy_load,
                     "legacy_offset": legacy_offset}
        for insn, slot in zip(program.insns, slot_starts(program.insns)):
            if insn.form.kind in ("atomic", "ld_abs", "ld_ind"):
                namespace[f"FORM_{slot}"], namespace[f"INSN_{slot}"] = insn.form, insn
        exec(compile(self.source, f"<bpforge fast tier: {program.name}>", "exec"), namespace)
        self.bind = namespace["bind"]


def compiled(program: VmProgram) -> CompiledProgram:
    """The program's translation, made on first use and kept with the program (and freed with it)."""
    if program.compiled is None or program.compiled.program is not program:
        program.compiled = CompiledProgram(program)
    return program.compiled


def run_fast(machine: Machine, data: bytes = b"", prog_type: str = "xdp", ctx_in: bytes | None = None) -> RunResult:
    """Run `machine.program` in the fast tier; same results, faults and budget as `Machine.run`."""
    machine.reset()
    inp = prepare(machine.memory, prog_type, data, ctx_in)
    machine.input = inp
    state = _RunState(machine, inp, machine.budget)
    program = machine.program
    try:
        while True:
            entry = _bound(state, program)
            try:
                retval = entry(inp.r1, inp.r2, 0, 0, 0, 0)
                break
            except _Tail as tail:
                program = tail.program
    except _Stop as stop:
        retval = stop.retval
    except BpforgeError as err:
        raise err.at(insn=state.pc) from None
    return RunResult(retval, inp.data_out(), inp.ctx_out(), state.executed, machine.trace)


def _bound(state: _RunState, program: VmProgram):
    """The entry function of `program`, its generated code bound to this run's machine."""
    machine = state.machine
    state.handles = lambda index: machine.map_handle(_map(program, index))
    state.values = lambda index: _value(machine, _map(program, index))
    state.funcs = lambda slot: machine.code_pointer(program, slot)

    def callx(addr: int):
        callee, slot = machine.code_at(addr)
        if callee is not program or slot not in functions:
            raise VmFault(f"callx to slot {slot}, which is not a function of this program")
        return functions[slot]

    state.callx = callx
    functions = compiled(program).bind(state)
    return functions[0]


def _map(program: VmProgram, index: int):
    if not 0 <= index < len(program.maps):
        raise VmFault(f"map reference {index} but the program has {len(program.maps)} maps")
    return program.maps[index]


def _value(machine: Machine, vm_map) -> int:
    storage = vm_map.prog_lookup((0).to_bytes(4, "little"), machine.cpu)
    if storage is None:
        raise VmFault(f"map {vm_map.name} has no value to point into")
    return machine.value_pointer(vm_map, storage)


__all__ = ["CompiledProgram", "DEFAULT_BUDGET", "compiled", "run_fast", "translate"]
