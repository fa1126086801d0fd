"""Instructions that change nothing, removed; and the zero- or sign-extension idiom clang emits for older
CPUs shortened:
- an ALU operation that leaves its destination as it was: `r = r`, `r += 0`, `r |= 0`, `r *= 1`, shifts by
  0 in 64 bits; `w = w`, `w += 0`, ... when the upper half is already known zero (a 32-bit operation only
  zeroes it); `r &= K` when every bit K clears is known zero, `r |= K` when every bit K sets is known one;
  `r = K` when r is known to hold K already (a constant loaded twice);
- `r <<= 32; r >>= 32` -> `w = w` (or nothing, when the upper half is known zero), and `r <<= 32;
  r s>>= 32` -> `r = (s32) r` (cpu v4's movsx: the gate asks the verifier whether the target has it).
Each removal that relies on what the register holds `assumes` exactly those bits."""

from __future__ import annotations

from ...isa import Insn
from ...isa.ops import Alu, Imm, Reg
from ..rewrite import KnownBits, Rewrite
from .build import alu
from .view import ProgramView

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
UPPER = M64 ^ M32
_NEUTRAL = {"add": 0, "sub": 0, "or": 0, "xor": 0, "lsh": 0, "rsh": 0, "arsh": 0, "mul": 1, "div": 1, "sdiv": 1}


def _known(view: ProgramView, slot: int, reg: int) -> KnownBits:
    return view.facts.at(slot).get(reg, KnownBits(0, 0))


def _identity(view: ProgramView, slot: int, op: Alu) -> KnownBits | None:
    """The bits of dst the operation leaving dst unchanged depends on (mask 0: none), or None if it may
    change it."""
    if op.op == "mov" and op.src == Reg(op.dst):
        return KnownBits(0, 0) if op.width == 64 else KnownBits(UPPER, 0)
    if not isinstance(op.src, Imm):
        return None
    k = op.src.value if op.width == 64 else op.src.value & M32
    width_mask = M64 if op.width == 64 else M32
    upper = KnownBits(0, 0) if op.width == 64 else KnownBits(UPPER, 0)
    if _NEUTRAL.get(op.op) == k:
        return upper
    if op.op == "and":
        return KnownBits((width_mask & ~k) | upper.mask, 0)
    if op.op == "or":
        return KnownBits(k | upper.mask, k)
    if op.op == "mov":
        value = k  # the register's value after the move (32-bit: zero-extended)
        return KnownBits(M64, value)
    return None


def _removal(view: ProgramView, slot: int, op: Alu) -> Rewrite | None:
    needed = _identity(view, slot, op)
    if needed is None:
        return None
    have = _known(view, slot, op.dst)
    if not have.implies(needed) or op.dst == 10:
        return None
    assumes = {op.dst: needed} if needed.mask else {}
    return Rewrite(slot, view.next_slot(slot), (), f"nops: {view.insn_at(slot)} leaves r{op.dst} as it is", assumes)


def _extension(view: ProgramView, slot: int, op: Alu) -> Rewrite | None:
    """`r <<= 32` followed by `r >>= 32` or `r s>>= 32` in the same block."""
    if not (op.op == "lsh" and op.width == 64 and op.src == Imm(32)):
        return None
    after = view.next_slot(slot)
    if after >= len(view.ops) or not view.same_block(slot, after):
        return None
    second = view.ops[after]
    if not (isinstance(second, Alu) and second.width == 64 and second.dst == op.dst and second.src == Imm(32)
            and second.op in ("rsh", "arsh")):
        return None
    x = op.dst
    end = view.next_slot(after)
    if second.op == "arsh":
        return Rewrite(slot, end, (Insn.make("movsx64_32", dst=x, src=x),), f"nops: r{x} sign-extended from 32 bits")
    if _known(view, slot, x).implies(KnownBits(UPPER, 0)):
        return Rewrite(slot, end, (), f"nops: r{x} is already zero-extended", {x: KnownBits(UPPER, 0)})
    return Rewrite(slot, end, (alu("mov", 32, x, src=x),), f"nops: r{x} zero-extended from 32 bits")


def propose(view: ProgramView) -> list[Rewrite]:
    out: list[Rewrite] = []
    for slot, op in enumerate(view.ops):
        if not isinstance(op, Alu) or not view.reached(slot):
            continue
        rewrite = _extension(view, slot, op) or _removal(view, slot, op)
        if rewrite is not None and not any(rewrite.overlaps(o) for o in out):
            out.append(rewrite)
    return out


__all__ = ["propose"]
