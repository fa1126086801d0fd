"""K2's proposals over cells: replace an operand, replace an instruction, replace two adjacent
instructions, replace an instruction by a NOP hole, exchange a memory access's width.

What a move may write comes from the window itself (`Pool`): registers it names or has live at its ends,
immediates it uses (and their neighbours) plus a small pool of common constants, the bases and offsets of
its memory accesses, its exits, copies of its lddw (a map reference is never invented). Loads and stores
are only proposed when the window has them, jumps only when it has jumps, `exit` only when it exits: what
the original does not do, a cheaper equivalent of it rarely needs. Jumps only go forward, to a cell
inside or to one of the original's exits; no calls, ever; no stack access misaligned for its size.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from ...isa import Insn
from ...isa.forms import FORMS_BY_NAME, Form
from ...verifier.window import PROGRAM_END, ExitTarget
from .cells import Cell, Cells

SMALL_IMMEDIATES = (0, 1, -1, 2, 3, 4, 8, 16, 24, 31, 32, 48, 56, 63, 0xFF, 0xFFFF, 0x7FFFFFFF, -0x80000000)
_ALU_OPS = ("add", "sub", "mul", "or", "and", "xor", "lsh", "rsh", "arsh", "mov")
_RARE_ALU_OPS = ("div", "mod")
_JUMPS = ("jeq", "jne", "jgt", "jge", "jlt", "jle", "jsgt", "jsge", "jslt", "jsle", "jset")
_SIZES = (1, 2, 4, 8)


def _alu_form(op: str, width: int, source: str) -> Form:
    return FORMS_BY_NAME[f"{op}{width}_{source}"]


def _jump_form(cmp: str, width: int, source: str) -> Form:
    return FORMS_BY_NAME[f"{cmp}{'32' if width == 32 else ''}_{source}"]


def _build(form: Form, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, imm_hi: int = 0) -> Insn:
    fields = {"dst": dst, "src": src, "off": off, "imm": imm, "imm_hi": imm_hi} | form.fixed_fields
    return Insn(form.opcode, **fields)


@dataclass(frozen=True)
class MoveWeights:
    """Relative frequencies of the moves (normalized when drawn)."""

    operand: float = 0.35
    instruction: float = 0.25
    pair: float = 0.1
    nop: float = 0.2
    width: float = 0.1


class Pool:
    """What moves may write, read from the original window's cells."""

    def __init__(self, cells: Cells, live_in: int, live_out: Mapping[ExitTarget, int]) -> None:
        regs: set[int] = {n for n in range(11) if live_in >> n & 1}
        for live in live_out.values():
            regs |= {n for n in range(10) if live >> n & 1}
        imms: set[int] = set()
        offsets: set[int] = set()
        bases: set[int] = set()
        self.has_load = self.has_store = self.has_jump = self.has_exit = False
        self.lddw: list[Insn] = []
        self.exits = sorted({t for t in live_out if t != PROGRAM_END} |
                            {c.target for c in cells if c is not None and isinstance(c.target, ExitTarget)},
                            key=lambda t: (t.kind, t.offset))
        for cell in cells:
            insn = cell.insn
            form = insn.form
            kind = form.kind
            if kind not in ("exit", "ja"):
                regs.add(insn.dst)
            if form.source == "reg" or kind in ("ldx", "stx", "atomic"):
                regs.add(insn.src)
            if kind in ("alu", "mov", "st", "jmp") and form.source != "reg":
                imms.add(insn.imm)
            if kind in ("ldx", "st", "stx", "atomic"):
                offsets.add(insn.off)
                bases.add(insn.src if kind == "ldx" else insn.dst)
                self.has_load |= kind == "ldx"
                self.has_store |= kind in ("st", "stx")
            if kind in ("jmp", "ja"):
                self.has_jump = True
            if kind == "exit":
                self.has_exit = True
            if kind == "lddw":
                self.lddw.append(insn)
        regs &= set(range(11))
        self.regs = sorted(regs) or [0]
        self.dsts = [n for n in self.regs if n != 10] or [0]
        near = {v + d for v in imms for d in (-1, 1)} | {-v for v in imms}
        self.window_imms = sorted(imms | {v for v in near if -(1 << 31) <= v < 1 << 31})
        self.offsets = sorted(offsets)
        self.near_offsets = sorted({o + d for o in offsets for d in (-4, -2, -1, 1, 2, 4)} - offsets)
        self.bases = sorted(bases)
        self.originals = [c for c in cells if c is not None]
        kinds = [("alu", 0.55), ("unary", 0.05), ("original", 0.15)]
        if self.has_load and self.bases:
            kinds.append(("load", 0.1))
        if self.has_store and self.bases:
            kinds.append(("store", 0.1))
        if self.has_jump or self.exits:
            kinds.append(("jump", 0.08 if self.has_jump else 0.02))
        if self.has_exit:
            kinds.append(("exit", 0.03))
        if self.lddw:
            kinds.append(("lddw", 0.05))
        self.kinds = [k for k, _ in kinds]
        self.kind_weights = [w for _, w in kinds]

    # ---- operands ----

    def reg(self, rng: random.Random) -> int:
        return rng.choice(self.regs)

    def dst(self, rng: random.Random) -> int:
        return rng.choice(self.dsts)

    def imm(self, rng: random.Random, form: Form | None = None) -> int:
        if self.window_imms and rng.random() < 0.5:
            value = rng.choice(self.window_imms)
        else:
            value = rng.choice(SMALL_IMMEDIATES)
        if form is not None:
            if form.op in ("lsh", "rsh", "arsh"):
                value %= form.width  # the verifier refuses shifts by the width or more
            elif form.op in ("div", "mod") and value == 0:
                value = 1  # and division by an immediate zero
        return value

    def offset(self, rng: random.Random) -> int:
        if self.near_offsets and rng.random() < 0.25:
            return rng.choice(self.near_offsets)
        return rng.choice(self.offsets) if self.offsets else rng.choice((-8, -4, 0, 4, 8))

    def base(self, rng: random.Random) -> int:
        return rng.choice(self.bases) if self.bases else 10

    def target(self, rng: random.Random, at: int, length: int) -> int | ExitTarget | None:
        inside = list(range(at + 2, length))  # at + 1 is where falling through goes anyway
        choices = len(inside) + len(self.exits)
        if not choices:
            return None
        k = rng.randrange(choices)
        return inside[k] if k < len(inside) else self.exits[k - len(inside)]

    # ---- instructions ----

    def instruction(self, rng: random.Random, at: int, length: int) -> Cell | None:
        kind = rng.choices(self.kinds, self.kind_weights)[0]
        if kind == "alu":
            op = rng.choice(_RARE_ALU_OPS) if rng.random() < 0.04 else rng.choice(_ALU_OPS)
            form = _alu_form(op, rng.choice((64, 64, 32)), rng.choice(("imm", "reg")))
            if form.source == "reg":
                return Cell(_build(form, self.dst(rng), self.reg(rng)))
            return Cell(_build(form, self.dst(rng), imm=self.imm(rng, form)))
        if kind == "unary":
            name = rng.choice(("neg64", "neg32", "le16", "le32", "be16", "be32", "be64", "bswap16", "bswap32",
                               "bswap64", "movsx64_8", "movsx64_16", "movsx64_32", "movsx32_8", "movsx32_16"))
            form = FORMS_BY_NAME[name]
            return Cell(_build(form, self.dst(rng), self.reg(rng) if form.kind == "mov" else 0))
        if kind == "original":
            cell = rng.choice(self.originals)
            if isinstance(cell.target, int) and cell.target <= at:
                return None
            return cell
        if kind == "load":
            form = FORMS_BY_NAME[f"ldx{8 * rng.choice(_SIZES)}"]
            return Cell(_build(form, self.dst(rng), self.base(rng), self.offset(rng)))
        if kind == "store":
            size = 8 * rng.choice(_SIZES)
            if rng.random() < 0.5:
                return Cell(_build(FORMS_BY_NAME[f"st{size}"], self.base(rng), off=self.offset(rng), imm=self.imm(rng)))
            return Cell(_build(FORMS_BY_NAME[f"stx{size}"], self.base(rng), self.reg(rng), self.offset(rng)))
        if kind == "jump":
            target = self.target(rng, at, length)
            if target is None:
                return None
            if rng.random() < 0.1:
                return Cell(_build(FORMS_BY_NAME["ja"]), target)
            form = _jump_form(rng.choice(_JUMPS), rng.choice((64, 32)), rng.choice(("imm", "reg")))
            if form.source == "reg":
                return Cell(_build(form, self.reg(rng), self.reg(rng)), target)
            return Cell(_build(form, self.reg(rng), imm=self.imm(rng)), target)
        if kind == "exit":
            return Cell(_build(FORMS_BY_NAME["exit"]))
        original = rng.choice(self.lddw)
        return Cell(original.replace(dst=self.dst(rng)))


# ---- moves -----------------------------------------------------------------------------------------------------

def _operand(cell: Cell, pool: Pool, rng: random.Random, at: int, length: int) -> Cell | None:
    insn = cell.insn
    form = insn.form
    kind = form.kind
    fields: list[str]
    if kind in ("alu", "mov"):
        fields = ["dst", "src" if form.source == "reg" else "imm"]
    elif kind in ("neg", "end", "lddw"):
        fields = ["dst"]
    elif kind == "ldx":
        fields = ["dst", "src", "off"]
    elif kind == "st":
        fields = ["dst", "off", "imm"]
    elif kind in ("stx", "atomic"):
        fields = ["dst", "src", "off"]
    elif kind == "jmp":
        fields = ["dst", "src" if form.source == "reg" else "imm", "target"]
    elif kind == "ja":
        fields = ["target"]
    else:
        return None
    name = rng.choice(fields)
    if name == "target":
        target = pool.target(rng, at, length)
        return None if target is None else Cell(insn, target)
    memory_base = (kind == "ldx" and name == "src") or (kind in ("st", "stx", "atomic") and name == "dst")
    if memory_base:
        value = pool.base(rng)
    elif name == "dst":
        value = pool.reg(rng) if kind == "jmp" else pool.dst(rng)
    elif name == "src":
        value = pool.reg(rng)
    elif name == "off":
        value = pool.offset(rng)
    else:
        value = pool.imm(rng, form if kind in ("alu", "mov") else None)
    return Cell(insn.replace(**{name: value}), cell.target)


def _width(cell: Cell, rng: random.Random) -> Cell | None:
    form = cell.insn.form
    if form.kind not in ("ldx", "st", "stx") or form.signed:
        return None
    size = rng.choice([s for s in _SIZES if s != form.size])
    other = FORMS_BY_NAME[f"{form.kind}{8 * size}"]
    insn = cell.insn
    return Cell(_build(other, insn.dst, insn.src, insn.off, insn.imm))


def propose(cells: Cells, pool: Pool, weights: MoveWeights, rng: random.Random) -> Cells | None:
    """One move applied to `cells` (a new tuple), or None when the drawn move does not apply."""
    length = len(cells)
    if not length:
        return None
    move = rng.choices(("operand", "instruction", "pair", "nop", "width"),
                       (weights.operand, weights.instruction, weights.pair, weights.nop, weights.width))[0]
    at = rng.randrange(length)
    out = list(cells)
    if move == "nop":
        if cells[at] is None:
            return None
        out[at] = None
    elif move == "instruction" or (move == "pair" and length == 1):
        new = pool.instruction(rng, at, length)
        if new is None:
            return None
        out[at] = new
    elif move == "pair":
        at = min(at, length - 2)
        first, second = pool.instruction(rng, at, length), pool.instruction(rng, at + 1, length)
        if first is None or second is None:
            return None
        out[at], out[at + 1] = first, second
    else:
        cell = cells[at]
        if cell is None:
            return None
        new = _operand(cell, pool, rng, at, length) if move == "operand" else _width(cell, rng)
        if new is None:
            return None
        out[at] = new
    for cell in out[at:at + 2]:
        if cell is not None and not _aligned_on_stack(cell.insn):
            return None
    result = tuple(out)
    return None if result == cells else result


def _aligned_on_stack(insn: Insn) -> bool:
    """False for a stack access misaligned for its size, which the kernel always refuses (it checks
    stack alignment strictly); other memory is for `safe` to judge."""
    form = insn.form
    if form.kind == "ldx":
        base = insn.src
    elif form.kind in ("st", "stx", "atomic"):
        base = insn.dst
    else:
        return True
    return base != 10 or insn.off % form.size == 0


__all__ = ["MoveWeights", "Pool", "SMALL_IMMEDIATES", "propose"]
