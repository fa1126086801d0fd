"""Decode once: what each instruction means, as a small closed set of frozen dataclasses.

The form table (`forms.py`) says how an instruction is spelled and encoded; this module says what it does,
in the terms every consumer needs — `semantics.step` executes it, the verifier will check it, the prover and
the JITs will translate it. The encoding's variants are folded here and nowhere else:
- `ja` (16-bit `off`) and `gotol` (32-bit `imm`) are one unconditional `Jump`, and every target is an
  absolute slot;
- the seven lddw source kinds are one `LoadImm64` whose `kind` says what the value is (map_fd and map_idx
  are the same map reference for a loader, which already resolved which of the two it is);
- helper, local, kfunc and indirect calls are one `Call` whose `kind` says which;
- load-acquire and store-release are a `Load`/`Store` with an ordering (single-threaded, they read and write
  as plain accesses; a JIT emits the barrier);
- immediates are the 64-bit values the instruction reads (sign-extended 32-bit `imm`), as `Imm`.

`decode_op(insn, slot)` builds a node from an instruction; `decode_ops(insns)` a slot-indexed table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import opcodes
from .forms import Form
from .insn import Insn
from .numbers import M64


@dataclass(frozen=True, slots=True)
class Reg:
    n: int


@dataclass(frozen=True, slots=True)
class Imm:
    """An immediate operand as the instruction reads it: an unsigned 64-bit value (32-bit operations use its
    low half)."""

    value: int


Operand = Reg | Imm


@dataclass(frozen=True, slots=True)
class Alu:
    """dst = dst <op> src (`mov`: dst = src; `movsx`: dst = src sign-extended from `ext` bits)."""

    op: str  # add sub mul div mod sdiv smod or and xor lsh rsh arsh mov movsx
    width: int  # 32 or 64
    dst: int
    src: Operand
    ext: int = 0  # movsx: bits of src that are sign-extended


@dataclass(frozen=True, slots=True)
class Unary:
    """dst = <op> dst: `neg` (width 32/64), byte swaps `le`, `be`, `bswap` (width 16/32/64)."""

    op: str
    width: int
    dst: int


@dataclass(frozen=True, slots=True)
class AddrSpaceCast:
    """dst = src converted between arena address space `src_as` and `dst_as` (0 = kernel, 1 = arena)."""

    dst: int
    src: int
    dst_as: int
    src_as: int


@dataclass(frozen=True, slots=True)
class Load:
    """dst = *(size *)(base + off), zero- or sign-extended to 64 bits."""

    size: int
    signed: bool
    dst: int
    base: int
    off: int
    acquire: bool = False


@dataclass(frozen=True, slots=True)
class Store:
    """*(size *)(base + off) = value (its low `size` bytes)."""

    size: int
    base: int
    off: int
    value: Operand
    release: bool = False


@dataclass(frozen=True, slots=True)
class Atomic:
    """An atomic read-modify-write of *(size *)(base + off) with register `src`: `op` in add or and xor
    (fetch: src receives the old value), xchg (always fetches), cmpxchg (compares with r0, r0 receives the
    old value)."""

    op: str
    size: int
    fetch: bool
    base: int
    off: int
    src: int


@dataclass(frozen=True, slots=True)
class Jump:
    """Go to `target` (an absolute slot) if `dst <cmp> src` holds in `width` bits; always when `cmp` is None.

    Comparisons are named as the bit-vector interface names them: eq ne ugt uge ult ule sgt sge slt sle,
    and `set` (dst & src != 0, BPF_JSET)."""

    cmp: str | None
    width: int
    dst: int
    src: Operand
    target: int


@dataclass(frozen=True, slots=True)
class MayGoto:
    """Go to `target` once the frame's loop budget is spent, else fall through (BPF_JCOND may_goto)."""

    target: int


@dataclass(frozen=True, slots=True)
class Call:
    """`kind` helper (target = helper id), local (target = the callee's slot), kfunc (target = BTF id,
    module = the BTF object's fd index, 0 for vmlinux) or indirect (target = the register holding the
    callee's address: callx)."""

    kind: str
    target: int
    module: int = 0


@dataclass(frozen=True, slots=True)
class Exit:
    pass


@dataclass(frozen=True, slots=True)
class LoadImm64:
    """dst = a 64-bit value: `imm` (value = the constant), `map` (value = the map's fd or index, as the
    loader put it), `map_value` (value = the map's, `offset` = the byte offset into its value), `func`
    (value = the function's slot), `btf_id` (value = the BTF id, `offset` = the BTF object's fd)."""

    kind: str
    dst: int
    value: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class LegacyLoad:
    """r0 = the packet's big-endian `size` bytes at `imm` (LD_ABS) or at src + imm (LD_IND, `src` set);
    r1-r5 are clobbered, and an access outside the packet ends the program with r0 = 0."""

    size: int
    imm: int
    src: int | None = None


Op = Alu | Unary | AddrSpaceCast | Load | Store | Atomic | Jump | MayGoto | Call | Exit | LoadImm64 | LegacyLoad
OP_TYPES: tuple[type, ...] = (Alu, Unary, AddrSpaceCast, Load, Store, Atomic, Jump, MayGoto, Call, Exit, LoadImm64,
                              LegacyLoad)

# Jump conditions as the bit-vector interface names them (JSET is `set`).
CONDITIONS = {
    "jeq": "eq", "jne": "ne", "jgt": "ugt", "jge": "uge", "jlt": "ult", "jle": "ule",
    "jsgt": "sgt", "jsge": "sge", "jslt": "slt", "jsle": "sle", "jset": "set",
}
_LDDW_KINDS = {
    0: "imm", opcodes.PSEUDO_MAP_FD: "map", opcodes.PSEUDO_MAP_IDX: "map",
    opcodes.PSEUDO_MAP_VALUE: "map_value", opcodes.PSEUDO_MAP_IDX_VALUE: "map_value",
    opcodes.PSEUDO_FUNC: "func", opcodes.PSEUDO_BTF_ID: "btf_id",
}


def _operand(form: Form, insn: Insn) -> Operand:
    return Reg(insn.src) if form.source == "reg" else Imm(insn.imm & M64)


def _alu(form: Form, insn: Insn, slot: int) -> Op:
    if form.op == "movsx":
        return Alu("movsx", form.width, insn.dst, Reg(insn.src), form.size * 8)
    return Alu(form.op, form.width, insn.dst, _operand(form, insn))


def _atomic(form: Form, insn: Insn, slot: int) -> Op:
    if form.op == "load_acquire":
        return Load(form.size, False, insn.dst, insn.src, insn.off, acquire=True)
    if form.op == "store_release":
        return Store(form.size, insn.dst, insn.off, Reg(insn.src), release=True)
    return Atomic(form.op, form.size, form.fetch, insn.dst, insn.off, insn.src)


def _call(form: Form, insn: Insn, slot: int) -> Op:
    if form.op == "local":
        return Call("local", slot + 1 + insn.imm)
    return Call(form.op, insn.imm, insn.off if form.op == "kfunc" else 0)


def _lddw(form: Form, insn: Insn, slot: int) -> Op:
    kind = _LDDW_KINDS[insn.src]
    if kind == "imm":
        return LoadImm64("imm", insn.dst, insn.imm64 & M64)
    if kind == "func":
        return LoadImm64("func", insn.dst, slot + 1 + insn.imm)
    offset = insn.imm_hi & 0xFFFFFFFF if kind in ("map_value", "btf_id") else 0
    return LoadImm64(kind, insn.dst, insn.imm, offset)


def _legacy(form: Form, insn: Insn, slot: int) -> Op:
    return LegacyLoad(form.size, insn.imm, insn.src if form.kind == "ld_ind" else None)


# One builder per form kind: the only place the table's kinds turn into meanings.
_BUILDERS: dict[str, Callable[[Form, Insn, int], Op]] = {
    "alu": _alu,
    "mov": _alu,
    "neg": lambda f, i, s: Unary("neg", f.width, i.dst),
    "end": lambda f, i, s: Unary(f.op, f.width, i.dst),
    "as_cast": lambda f, i, s: AddrSpaceCast(i.dst, i.src, i.imm >> 16, i.imm & 0xFFFF),
    "ldx": lambda f, i, s: Load(f.size, f.signed, i.dst, i.src, i.off),
    "st": lambda f, i, s: Store(f.size, i.dst, i.off, Imm(i.imm & M64)),
    "stx": lambda f, i, s: Store(f.size, i.dst, i.off, Reg(i.src)),
    "atomic": _atomic,
    "jmp": lambda f, i, s: Jump(CONDITIONS[f.op], f.width, i.dst, _operand(f, i), s + 1 + i.off),
    "ja": lambda f, i, s: Jump(None, 64, 0, Imm(0), s + 1 + (i.off if f.target_field == "off" else i.imm)),
    "may_goto": lambda f, i, s: MayGoto(s + 1 + i.off),
    "call": _call,
    "callx": lambda f, i, s: Call("indirect", i.dst),
    "exit": lambda f, i, s: Exit(),
    "lddw": _lddw,
    "ld_abs": _legacy,
    "ld_ind": _legacy,
}


def decode_op(insn: Insn, slot: int = 0) -> Op:
    """The meaning of `insn`, which sits at `slot` (jump and call targets become absolute slots)."""
    form = insn.form
    return _BUILDERS[form.kind](form, insn, slot)


def decode_ops(insns: Sequence[Insn]) -> list[Op | None]:
    """Slot-indexed meanings of a program; None in the second slot of an lddw."""
    table: list[Op | None] = []
    for insn in insns:
        table.append(decode_op(insn, len(table)))
        if insn.slots == 2:
            table.append(None)
    return table


def following(ops: Sequence[Op | None], slot: int) -> int:
    """The slot after the instruction at `slot` of a `decode_ops` table (an lddw takes two)."""
    return slot + 2 if slot + 1 < len(ops) and ops[slot + 1] is None else slot + 1


def jump_target(op: Op) -> int | None:
    """The slot a jump, may_goto, local call or function-address load refers to, else None."""
    if isinstance(op, (Jump, MayGoto)):
        return op.target
    if isinstance(op, Call) and op.kind == "local":
        return op.target
    if isinstance(op, LoadImm64) and op.kind == "func":
        return op.value
    return None


def ends_block(op: Op) -> bool:
    """Whether control may leave the straight line after `op` (a jump, an exit, a call or a legacy load,
    which may end the program)."""
    return isinstance(op, (Jump, MayGoto, Call, Exit, LegacyLoad))


def falls_through(op: Op) -> bool:
    """Whether control may continue at the next instruction after `op` (all but exit and `goto`)."""
    return not (op.__class__ is Exit or (op.__class__ is Jump and op.cmp is None))


__all__ = [
    "Alu", "AddrSpaceCast", "Atomic", "CONDITIONS", "Call", "Exit", "Imm", "Jump", "LegacyLoad", "Load",
    "LoadImm64", "MayGoto", "OP_TYPES", "Op", "Operand", "Reg", "Store", "Unary", "decode_op", "decode_ops",
    "ends_block", "falls_through", "following", "jump_target",
]
