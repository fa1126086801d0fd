"""What every path knows of each register at each instruction: known bits (the kernel's tnum, as a mask of
known bits and their value), by a forward problem on the one dataflow solver.

This is the analysis the gate trusts when a rewrite says what it `assumes`, so it claims little and only
what holds on every path, whatever the kernel does behind the instruction:
- constants from `r = imm`, lddw of an immediate, and any ALU or byte swap of known constants, computed by
  the one semantics (`isa.semantics.alu` / `unary` over ints);
- a 32-bit ALU result has its upper half zero; AND/OR with known bits and shifts by a constant move the
  known bits as tnum does;
- a zero-extending load of 1 or 2 bytes has the bits above them zero. Not a 4-byte load: a context's
  pointer fields (xdp_md.data, __sk_buff.data_end, ...) are 4-byte fields the kernel rewrites into loads of
  a whole 64-bit pointer;
- a call leaves r0-r5 unknown (bpf2bpf calls too: the callee's r6-r9 are its own); LD_ABS/LD_IND too, but
  their r0 is the 1, 2 or 4 packet bytes zero-extended;
- r10 is never known (it is the frame pointer, a pointer the program does not choose).
Nothing is learnt from branch conditions. Blocks no path reaches know nothing (no facts, not all facts).

Beside the bits, which registers may hold the context pointer (`may_context`): the kernel rewrites loads
through the context (and only those) into loads of its real fields, so the prover models a 4-byte load as
a possible pointer-field load only where its base may be the context. r1 at the program's entry (r1-r5 at
a subprogram's, which a caller may pass it to), copies of those, and whatever an 8-byte load or a
bpf-to-bpf call returns (a context spilled to the stack and filled again, or handed back) may be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..analysis.cfg import ProgramCfg, cfg_of_ops
from ..analysis.dataflow import FORWARD, Problem, solve
from ..isa import Insn
from ..isa.ops import (
    AddrSpaceCast, Alu, Atomic, Call, Imm, LegacyLoad, Load, LoadImm64, Op, Reg, Unary, decode_ops,
)
from ..isa.semantics import INT_OPS, alu, unary
from .rewrite import KnownBits

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
UPPER = M64 ^ M32
REGISTERS = 11
UNKNOWN = (0, 0)  # (mask of known bits, their value)
_BOTTOM = None  # a block no path has reached yet

Bits = tuple[int, int]
State = tuple[Bits, ...]  # one per register


def _join(a: State | None, b: State | None) -> State | None:
    if a is None:
        return b
    if b is None:
        return a
    out = []
    for (ma, va), (mb, vb) in zip(a, b):
        mask = ma & mb & ~(va ^ vb) & M64
        out.append((mask, va & mask))
    return tuple(out)


def _constant(bits: Bits) -> int | None:
    return bits[1] if bits[0] == M64 else None


def _operand(state: list[Bits], src) -> Bits:
    return (M64, src.value & M64) if isinstance(src, Imm) else state[src.n]


def _alu_bits(op: Alu, dst: Bits, src: Bits) -> Bits:
    """Known bits of `dst op src` (64-bit view of the result)."""
    a, b = _constant(dst), _constant(src)
    if op.op in ("mov", "movsx"):
        a = 0  # a move does not read its destination
    if a is not None and b is not None:
        return (M64, alu(INT_OPS, op, a, b) & M64)
    width_mask = M64 if op.width == 64 else M32
    result: Bits = UNKNOWN
    if op.op == "mov" and op.width == 64:
        result = src
    elif op.op == "mov":
        result = (src[0] & M32, src[1] & M32)
    elif op.op == "and":
        (ma, va), (mb, vb) = dst, src
        zero = (ma & ~va) | (mb & ~vb)
        one = ma & va & mb & vb
        result = ((zero | one) & width_mask, one & width_mask)
    elif op.op == "or":
        (ma, va), (mb, vb) = dst, src
        one = (ma & va) | (mb & vb)
        zero = ma & ~va & mb & ~vb
        result = ((zero | one) & width_mask, one & width_mask)
    elif op.op in ("lsh", "rsh") and b is not None:
        shift = b & (op.width - 1)
        ma, va = dst[0] & width_mask, dst[1] & width_mask
        if op.op == "lsh":
            mask = ((ma << shift) | ((1 << shift) - 1)) & width_mask
            value = (va << shift) & width_mask
        else:
            high = width_mask & ~(width_mask >> shift)
            mask = (ma >> shift) | high
            value = va >> shift
        result = (mask, value & mask)
    if op.width == 32:  # the upper half of a 32-bit result is zero
        result = ((result[0] & M32) | UPPER, result[1] & M32)
    return result


_SWAP_ZEROES = {16: M64 ^ 0xFFFF, 32: UPPER, 64: 0}


def _unary_bits(op: Unary, dst: Bits) -> Bits:
    a = _constant(dst)
    if a is not None:
        return (M64, unary(INT_OPS, op, a) & M64)
    if op.op in ("le", "be", "bswap"):
        zero = _SWAP_ZEROES[op.width]
        return (zero, 0)
    if op.op == "neg" and op.width == 32:
        return (UPPER, 0)
    return UNKNOWN


def step_context(holders: set[int], op: Op) -> None:
    """Which registers may hold the context after `op` (updated in place)."""
    cls = op.__class__
    if cls is Alu and op.op == "mov" and op.width == 64 and isinstance(op.src, Reg):
        if op.src.n in holders:
            holders.add(op.dst)
        else:
            holders.discard(op.dst)
        return
    if cls is Alu and op.op in ("add", "sub") and op.width == 64:
        return  # a context pointer moved by an offset is still one (the verifier refuses its loads anyway)
    if cls is Call:
        holders.difference_update(range(6))
        if op.kind != "helper":
            holders.add(0)
        return
    if cls is Load and op.size == 8:
        holders.add(op.dst)
        return
    written = {op.dst} if cls in (Alu, Unary, Load, LoadImm64, AddrSpaceCast) else set()
    if cls is LegacyLoad:
        written = set(range(6))
    if cls is Atomic:
        written = {0} if op.op == "cmpxchg" else {op.src} if op.fetch or op.op == "xchg" else set()
    holders.difference_update(written)
    if cls is Atomic and op.size == 8 and written:
        holders.update(written)


def step_bits(state: list[Bits], op: Op) -> None:
    """What `op` leaves known in `state` (updated in place)."""
    cls = op.__class__
    if cls is Alu:
        state[op.dst] = _alu_bits(op, state[op.dst], _operand(state, op.src))
    elif cls is Unary:
        state[op.dst] = _unary_bits(op, state[op.dst])
    elif cls is Load:
        state[op.dst] = (M64 ^ ((1 << 8 * op.size) - 1), 0) if op.size < 4 and not op.signed else UNKNOWN
    elif cls is LoadImm64:
        state[op.dst] = (M64, op.value & M64) if op.kind == "imm" else UNKNOWN
    elif cls is Call or cls is LegacyLoad:
        for n in range(6):
            state[n] = UNKNOWN
        if cls is LegacyLoad:  # the packet's bytes in host order, zero-extended (what LD_ABS/LD_IND return)
            state[0] = (M64 ^ ((1 << 8 * op.size) - 1), 0)
    elif cls is Atomic:
        if op.op == "cmpxchg":
            state[0] = UNKNOWN
        elif op.fetch or op.op == "xchg":
            state[op.src] = UNKNOWN
    elif cls is AddrSpaceCast:
        state[op.dst] = UNKNOWN
    state[10] = UNKNOWN


@dataclass(frozen=True)
class Facts:
    """Known bits of every register before each slot (only for slots some path reaches)."""

    before: dict[int, State]
    contexts: dict[int, frozenset[int]]

    def may_context(self, slot: int) -> frozenset[int]:
        """Registers that may hold the context pointer before `slot` (all of r0-r9 where nothing is known)."""
        return self.contexts.get(slot, frozenset(range(10)))

    def at(self, slot: int) -> dict[int, KnownBits]:
        state = self.before.get(slot)
        if state is None:
            return {}
        return {n: KnownBits(mask, value) for n, (mask, value) in enumerate(state) if mask}

    def constant(self, slot: int, reg: int) -> int | None:
        state = self.before.get(slot)
        return None if state is None else _constant(state[reg])


def _union(a: frozenset[int] | None, b: frozenset[int] | None) -> frozenset[int] | None:
    return b if a is None else a if b is None else a | b


def _per_slot(cfg: ProgramCfg, function: int, entry, join, step, thaw, freeze) -> dict:
    """A forward problem whose instruction transfer is `step` (in place, on `thaw(value)`), solved on one
    function and spelt out before every slot a path reaches (`freeze` makes a value comparable again)."""
    blocks = cfg.blocks

    def transfer(b: int, value):
        if value is None:
            return None
        state = thaw(value)
        for _, op in blocks[b].ops:
            step(state, op)
        return freeze(state)

    out = {}
    for b, value in solve(cfg, function, Problem(FORWARD, entry, _BOTTOM, join, transfer)).before.items():
        if value is None:
            continue
        state = thaw(value)
        for slot, op in blocks[b].ops:
            out[slot] = freeze(state)
            step(state, op)
    return out


def known_bits(insns: Sequence[Insn], cfg: ProgramCfg | None = None) -> Facts:
    """The facts of `insns` (a linked program: its functions are solved one by one)."""
    if cfg is None:
        cfg = cfg_of_ops(decode_ops(insns))
    entry: State = tuple(UNKNOWN for _ in range(REGISTERS))

    before: dict[int, State] = {}
    contexts: dict[int, frozenset[int]] = {}
    for fn in cfg.functions:
        before.update(_per_slot(cfg, fn.index, entry, _join, step_bits, list, tuple))
        at_entry = frozenset({1}) if fn.index == 0 else frozenset(range(1, 6))
        contexts.update(_per_slot(cfg, fn.index, at_entry, _union, step_context, set, frozenset))
    return Facts(before, contexts)


__all__ = ["Facts", "known_bits", "step_bits"]
