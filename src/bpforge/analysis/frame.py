"""Which stack bytes a call or a load through a copy of r10 reads: the refinement `effects` leaves to
consumers that know more ("unknown memory" would otherwise keep the whole frame live).

A forward problem on the one solver tracks, per register, one of: a stack address `r10 + c` (`Frame(c)`),
a known scalar constant (`Const(c)`), the handle of map `ref` (`MapHandle(ref)`, from `lddw map_fd`), or
nothing known. Helpers then read exactly what the kernel's verifier makes them initialise
(`check_helper_mem_access`): a map key of the map's `key_size` bytes, a map value of its `value_size`, a
read-only buffer of the size the next argument gives. An argument that is a known constant or a map handle
names no stack at all. Anything else that may be a stack pointer still reads the whole frame, as does every
bpf2bpf call (the callee may read its caller's stack through any pointer it gets).

Registers spilled and filled, and stack pointers passed to callees, are not followed: they fall to "nothing
known", which only makes the answer less precise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..isa.ctx_access import ctx_access, known_types
from ..isa.helpers import HELPER_SIGNATURES
from ..isa.maptypes import MapSpec
from ..isa.numbers import M32, M64, s64
from ..isa.ops import Alu, Atomic, Call, LegacyLoad, Load, LoadImm64, Op, Reg, Unary
from .cfg import CfgError, ProgramCfg, cfg_of_ops
from .dataflow import FORWARD, Problem, solve
from .effects import FRAME_POINTER, StackAccess, effects_of


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int  # r10 + offset


@dataclass(frozen=True, slots=True)
class Const:
    value: int


@dataclass(frozen=True, slots=True)
class MapHandle:
    ref: int


@dataclass(frozen=True, slots=True)
class Region:
    """A pointer into one kind of memory other than the stack: "ctx", "packet" (packet data or metadata, as
    loaded from the context), "map_value" (what a lookup returned, or null). Memory of two different kinds
    never overlaps, which is what the prover may assume of two accesses that both happen."""

    kind: str


class _NotStack:
    """A value that is no stack address: a scalar, or a pointer into something else (context, packet, map
    value). Stack addresses come only from r10; the verifier refuses to store them outside the stack, 32-bit
    arithmetic or byte swaps on them, and helpers never return one."""

    def __repr__(self) -> str:
        return "NOT_STACK"


NOT_STACK = _NotStack()
Value = Frame | Const | MapHandle | Region | _NotStack | None
Registers = tuple  # 11 Values, r0..r10
_NOWHERE = (Const, MapHandle, Region, _NotStack)  # values that name no stack bytes
_MAP_VALUE_RETURNS = frozenset({"ptr_to_map_value_or_null"})
_PACKET_FIELDS = frozenset({"pkt", "pkt_meta"})
_CTX_RULES = known_types()

_NOT_STACK_ARGS = frozenset({"anything", "const_size", "const_size_or_zero", "const_alloc_size_or_zero",
                             "ptr_to_ctx", "ptr_to_ctx_or_null", "const_map_ptr", "ptr_to_func"})
_WRITE_ONLY_ARGS = frozenset({"ptr_to_uninit_mem", "ptr_to_uninit_map_value"})  # MEM_UNINIT: never read
_SIZED_ARGS = frozenset({"ptr_to_mem", "ptr_to_mem_readonly", "ptr_to_mem_readonly_or_null"})


def entry_registers(main: bool) -> Registers:
    """At a function's entry: r10 the frame; in the program's main function r1 is the context."""
    return (None, Region("ctx") if main else None) + (None,) * (FRAME_POINTER - 2) + (Frame(0),)


def _join_value(x: Value, y: Value) -> Value:
    if x == y or x is y:
        return x
    return NOT_STACK if isinstance(x, _NOWHERE) and isinstance(y, _NOWHERE) else None


def _join(a: Registers | None, b: Registers | None) -> Registers | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(_join_value(x, y) for x, y in zip(a, b))


def _alu(value: Value, op: Alu, src: Value) -> Value:
    if op.op == "movsx":
        return NOT_STACK
    if op.width != 64:  # 32-bit arithmetic gives a scalar (the verifier refuses it on pointers)
        if op.op == "mov" and isinstance(src, Const):
            return Const(src.value & M32)
        if op.op in ("add", "sub") and isinstance(value, Const) and isinstance(src, Const):
            delta = src.value if op.op == "add" else -src.value
            return Const((value.value + delta) & M32)
        return NOT_STACK
    if op.op == "mov":
        return src
    if op.op in ("add", "sub") and isinstance(src, Const):
        delta = src.value if op.op == "add" else -src.value
        if isinstance(value, Frame):
            return Frame(s64((value.offset + delta) & M64))
        if isinstance(value, Const):
            return Const((value.value + delta) & M64)
    if op.op in ("add", "sub"):
        # A pointer moved by a scalar stays in its memory (pointer + pointer is refused, pointer - pointer
        # is a scalar); a scalar plus a pointer is that pointer.
        if isinstance(value, Region) and isinstance(src, (Const, _NotStack)):
            return value
        if op.op == "add" and isinstance(src, Region) and isinstance(value, (Const, _NotStack)):
            return src
        if isinstance(value, Region) and isinstance(src, Region):
            return None  # pointer - pointer: the verifier allows it within one memory only
    elif isinstance(value, Region) or isinstance(src, Region):
        return None  # any other arithmetic on a pointer (refused by the verifier) may give any number
    # Without a stack address among the operands there is none in the result (scalar op scalar, or a
    # non-stack pointer moved by a scalar).
    return NOT_STACK if isinstance(value, _NOWHERE) and isinstance(src, _NOWHERE) else None


def _operand(regs: Registers, src) -> Value:
    return regs[src.n] if src.__class__ is Reg else Const(src.value & M64)


def step_frame(regs: Registers, op: Op, prog_type: str | None = None) -> Registers:
    """The registers after `op` (`prog_type` tells which context fields are packet pointers)."""
    out = list(regs)
    cls = op.__class__
    if cls is Alu:
        dst = None if op.op in ("mov", "movsx") else regs[op.dst]
        out[op.dst] = _alu(dst, op, _operand(regs, op.src))
        return tuple(out)
    if cls is LoadImm64:
        out[op.dst] = Const(op.value & M64) if op.kind == "imm" else MapHandle(op.value) if op.kind == "map" \
            else NOT_STACK
        return tuple(out)
    if cls is Unary:
        out[op.dst] = NOT_STACK
        return tuple(out)
    if cls is Load:
        # Only the stack may hold a stack address (a spill), and only in a full 8-byte slot.
        base = regs[op.base]
        out[op.dst] = NOT_STACK if op.size < 8 or isinstance(base, _NOWHERE) else None
        if base == Region("ctx") and prog_type in _CTX_RULES:
            access = ctx_access(prog_type, op.off, op.size, False)
            if access is not None and access.yields in _PACKET_FIELDS:
                out[op.dst] = Region("packet")
        return tuple(out)
    fx = effects_of(op)
    for n in fx.writes | fx.clobbers:
        out[n] = None
    if (cls is Call and op.kind == "helper") or cls is LegacyLoad:
        out[0] = NOT_STACK  # no helper returns an address on the caller's stack
        sig = HELPER_SIGNATURES.get(op.target) if cls is Call else None
        if sig is not None and sig.ret in _MAP_VALUE_RETURNS:
            out[0] = Region("map_value")
    return tuple(out)


def frame_states(cfg: ProgramCfg, function: int = 0, prog_type: str | None = None) -> dict[int, Registers]:
    """Slot -> the registers before it, for every instruction of `function` reachable from its entry."""
    blocks = cfg.blocks

    def transfer(b: int, regs: Registers | None) -> Registers | None:
        if regs is None:
            return None
        for _, op in blocks[b].ops:
            regs = step_frame(regs, op, prog_type)
        return regs

    main = cfg.functions[function].entry == 0
    problem = Problem(FORWARD, boundary=entry_registers(main), bottom=None, join=_join, transfer=transfer)
    solution = solve(cfg, function, problem)
    states: dict[int, Registers] = {}
    for b, regs in solution.before.items():
        if regs is None:
            continue
        for slot, op in blocks[b].ops:
            states[slot] = regs
            regs = step_frame(regs, op, prog_type)
    return states


def _slots(offset: int, size: int) -> frozenset[int] | None:
    """The 8-byte slots (named by their offsets -8, -16, ...) that bytes [offset, offset + size) touch, or None
    when they leave the frame."""
    if size <= 0:
        return frozenset()
    access = StackAccess(offset, size)
    if offset < -512 or access.end > 0:
        return None
    return frozenset(access.slots)


def call_reads(op: Call, regs: Registers, maps: Mapping[int, MapSpec]) -> frozenset[int] | None:
    """The stack slots a helper call reads, or None when it may read any of them."""
    if op.kind != "helper":
        return None
    sig = HELPER_SIGNATURES.get(op.target)
    if sig is None:
        return None
    handle = regs[1]
    spec = maps.get(handle.ref) if isinstance(handle, MapHandle) else None
    read: set[int] = set()
    for i, kind in enumerate(sig.args):
        value = regs[i + 1]
        if kind in _NOT_STACK_ARGS or kind in _WRITE_ONLY_ARGS or isinstance(value, _NOWHERE):
            continue
        if not isinstance(value, Frame):
            return None
        if kind == "ptr_to_map_key" and spec is not None:
            size = spec.key_size
        elif kind == "ptr_to_map_value" and spec is not None:
            size = spec.value_size
        elif kind in _SIZED_ARGS and i + 1 < len(sig.args) and isinstance(regs[i + 2], Const):
            size = regs[i + 2].value
        else:
            return None
        slots = _slots(value.offset, size)
        if slots is None:
            return None
        read |= slots
    return frozenset(read)


def access_reads(op: Load | Atomic, regs: Registers) -> frozenset[int] | None:
    """The stack slots a load or an atomic through a register other than r10 reads."""
    base = regs[op.base]
    if isinstance(base, _NOWHERE):
        return frozenset()
    if not isinstance(base, Frame):
        return None
    return _slots(base.offset + op.off, op.size)


def program_frame_states(ops) -> dict[int, Registers]:
    """`frame_states` of every function of a decoded slot table, by slot; empty when the program has no
    CFG (jumps out of range and the like: nothing is known of it)."""
    try:
        cfg = cfg_of_ops(list(ops))
    except CfgError:
        return {}
    states: dict[int, Registers] = {}
    for function in range(len(cfg.functions)):
        states.update(frame_states(cfg, function))
    return states


def maps_by_ref(maps: Mapping[int, MapSpec] | Sequence[MapSpec] | None) -> dict[int, MapSpec]:
    """Map specs by the reference an `lddw map_fd` carries (a list is numbered from 0, as linking numbers it)."""
    if not maps:
        return {}
    return dict(maps) if isinstance(maps, Mapping) else dict(enumerate(maps))


def stack_reads(cfg: ProgramCfg, function: int, maps: Mapping[int, MapSpec]) -> dict[int, frozenset[int]]:
    """Slot -> the stack slots it reads, for the calls and loads of `function` whose reads through pointers
    are known exactly (the others read "unknown memory")."""
    out: dict[int, frozenset[int]] = {}
    states = frame_states(cfg, function)
    for b in cfg.functions[function].blocks:
        for slot, op in cfg.blocks[b].ops:
            regs = states.get(slot)
            if regs is None:
                continue
            if op.__class__ is Call:
                found = call_reads(op, regs, maps)
            elif op.__class__ in (Load, Atomic) and op.base != FRAME_POINTER:
                found = access_reads(op, regs)
            else:
                continue
            if found is not None:
                out[slot] = found
    return out


__all__ = ["NOT_STACK", "Const", "Frame", "MapHandle", "Region", "access_reads", "entry_registers", "call_reads", "frame_states", "maps_by_ref", "program_frame_states", "stack_reads", "step_frame"]
