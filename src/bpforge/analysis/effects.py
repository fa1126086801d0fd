"""What one instruction reads and writes: registers, stack bytes addressed as r10 + constant, unknown memory.

This is the def/use table every dataflow analysis starts from (the kernel's verifier keeps the same facts
implicitly in `check_reg_arg(..., SRC_OP / DST_OP)`, its liveness pass and `mark_reg_read`; LLVM's
MachineInstr operand flags). The calling convention is the kernel's: a helper reads its arguments r1..rN
(N from the helper's signature, all of r1-r5 for helpers without one), writes r0 and leaves r1-r5
unreadable (`clobbers`); a bpf2bpf call or callx reads r1-r5 (the callee's possible arguments), writes r0
and clobbers r1-r5, while r6-r9 survive; exit reads r0; LD_ABS/LD_IND read r6 (the implicit skb) and their
index register, write r0 and clobber r1-r5.

Memory: an access whose base is r10 is a stack access of exact bytes [offset, offset + size) relative to the
frame pointer (`StackAccess`, with the 8-byte slots it touches); an access through any other register, and
everything a call may do through the pointers it is given, is "unknown memory" (it may be the stack too:
a consumer that knows more, such as the verifier's pointer tracking, refines it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..isa.helpers import HELPER_SIGNATURES
from ..isa.ops import (
    AddrSpaceCast, Alu, Atomic, Call, Exit, Jump, LegacyLoad, Load, LoadImm64, MayGoto, Op, Reg, Store, Unary,
)

FRAME_POINTER = 10
ARGUMENT_REGISTERS = frozenset(range(1, 6))
CALLER_SAVED = ARGUMENT_REGISTERS  # what a call leaves unreadable besides r0, which it defines
STACK_SIZE = 512  # MAX_BPF_STACK: one frame's bytes below r10
SLOT_SIZE = 8

# Argument kinds a helper cannot reach memory through (everything else names, or may name, memory).
_NON_MEMORY_ARGS = frozenset({"anything", "const_size", "const_size_or_zero", "const_alloc_size_or_zero",
                              "ptr_to_ctx", "const_map_ptr", "ptr_to_func"})


@dataclass(frozen=True, slots=True)
class StackAccess:
    """Bytes [offset, offset + size) relative to r10 (offset < 0 inside the frame)."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def slots(self) -> tuple[int, ...]:
        """The 8-byte slots touched, each named by the offset of its first byte (-8, -16, ...)."""
        first = self.offset - self.offset % SLOT_SIZE
        return tuple(range(first, self.end, SLOT_SIZE))

    @property
    def whole_slots(self) -> tuple[int, ...]:
        """The 8-byte slots covered entirely (a write to those replaces the whole slot)."""
        first = -(-self.offset // SLOT_SIZE) * SLOT_SIZE
        return tuple(range(first, self.end - SLOT_SIZE + 1, SLOT_SIZE))


@dataclass(frozen=True, slots=True)
class Effects:
    """Registers read / written / clobbered (left without a value) and memory touched by one op."""

    reads: frozenset[int] = frozenset()
    writes: frozenset[int] = frozenset()
    clobbers: frozenset[int] = frozenset()
    stack_reads: tuple[StackAccess, ...] = ()
    stack_writes: tuple[StackAccess, ...] = ()
    memory_reads: bool = False  # may read memory whose address is not r10 + constant
    memory_writes: bool = False

    @property
    def kills(self) -> frozenset[int]:
        """Registers whose old value is gone after the op (written or clobbered)."""
        return self.writes | self.clobbers


def _regs(*numbers: int | None) -> frozenset[int]:
    return frozenset(n for n in numbers if n is not None)


def _stack(base: int, off: int, size: int) -> tuple[StackAccess, ...]:
    return (StackAccess(off, size),) if base == FRAME_POINTER else ()


def _alu(op: Alu) -> Effects:
    src = op.src.n if isinstance(op.src, Reg) else None
    # mov and movsx overwrite dst without reading it; every other operation combines dst with src.
    dst_read = None if op.op in ("mov", "movsx") else op.dst
    return Effects(reads=_regs(src, dst_read), writes=_regs(op.dst))


def _unary(op: Unary) -> Effects:
    return Effects(reads=_regs(op.dst), writes=_regs(op.dst))


def _cast(op: AddrSpaceCast) -> Effects:
    return Effects(reads=_regs(op.src), writes=_regs(op.dst))


def _load(op: Load) -> Effects:
    stack = _stack(op.base, op.off, op.size)
    return Effects(reads=_regs(op.base), writes=_regs(op.dst), stack_reads=stack, memory_reads=not stack)


def _store(op: Store) -> Effects:
    value = op.value.n if isinstance(op.value, Reg) else None
    stack = _stack(op.base, op.off, op.size)
    return Effects(reads=_regs(op.base, value), stack_writes=stack, memory_writes=not stack)


def _atomic(op: Atomic) -> Effects:
    stack = _stack(op.base, op.off, op.size)
    if op.op == "cmpxchg":  # compares with r0, which receives the old value
        reads, writes = _regs(op.base, op.src, 0), _regs(0)
    else:
        reads, writes = _regs(op.base, op.src), _regs(op.src) if op.fetch else frozenset()
    return Effects(reads=reads, writes=writes, stack_reads=stack, stack_writes=stack,
                   memory_reads=not stack, memory_writes=not stack)


def _jump(op: Jump) -> Effects:
    if op.cmp is None:
        return Effects()
    src = op.src.n if isinstance(op.src, Reg) else None
    return Effects(reads=_regs(op.dst, src))


def _helper_arguments(helper: int) -> tuple[frozenset[int], bool]:
    """Registers a helper reads, and whether it may touch memory through them."""
    sig = HELPER_SIGNATURES.get(helper)
    if sig is None:
        return ARGUMENT_REGISTERS, True
    memory = any(kind not in _NON_MEMORY_ARGS for kind in sig.args)
    return frozenset(range(1, 1 + len(sig.args))), memory


def _call(op: Call) -> Effects:
    if op.kind == "helper":
        reads, memory = _helper_arguments(op.target)
    elif op.kind == "indirect":
        reads, memory = ARGUMENT_REGISTERS | {op.target}, True
    else:  # local and kfunc: any of r1-r5 may be an argument, any pointer among them dereferenced
        reads, memory = ARGUMENT_REGISTERS, True
    return Effects(reads=reads, writes=_regs(0), clobbers=CALLER_SAVED, memory_reads=memory, memory_writes=memory)


def _legacy(op: LegacyLoad) -> Effects:
    # r6 holds the skb the kernel reads the packet from; the access is to the packet, not to memory we track.
    return Effects(reads=_regs(6, op.src), writes=_regs(0), clobbers=CALLER_SAVED)


_EFFECTS: dict[type, Callable[[Op], Effects]] = {
    Alu: _alu,
    Unary: _unary,
    AddrSpaceCast: _cast,
    Load: _load,
    Store: _store,
    Atomic: _atomic,
    Jump: _jump,
    MayGoto: lambda op: Effects(),
    Call: _call,
    Exit: lambda op: Effects(reads=_regs(0)),
    LoadImm64: lambda op: Effects(writes=_regs(op.dst)),
    LegacyLoad: _legacy,
}


def effects_of(op: Op) -> Effects:
    """Registers and memory `op` reads and writes."""
    return _EFFECTS[op.__class__](op)


def handled_op_types() -> frozenset[type]:
    """The node types `effects_of` knows (a test checks they are all of `ops.OP_TYPES`)."""
    return frozenset(_EFFECTS)


__all__ = ["ARGUMENT_REGISTERS", "CALLER_SAVED", "Effects", "FRAME_POINTER", "SLOT_SIZE", "STACK_SIZE",
           "StackAccess", "effects_of", "handled_op_types"]
