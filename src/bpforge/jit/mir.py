"""The JITs' view of an instruction: `isa.semantics.step` instantiated with a DAG builder.

`MirOps` is the bit-vector interface building `Node`s (folding constants as it goes), `MirMachine` the
machine that records what one instruction does as a short list of effects (`SetReg`, `Store`, `Branch`,
calls, ...) over those nodes. A backend selects native code for effects and nodes and knows nothing of
BPF opcodes: every form reaches it through the semantics, so division by zero, shift masking, 32-bit
zero-extension and sign extension are what the interpreter does, by construction.

Two things are not expressed through the semantics' operations: a byte swap is one `bswap` node (the
semantics composes it from shifts, which no backend should pattern-match back), and an atomic is one
`AtomicRmw` effect (the semantics' load + operation + store is what it computes, not how it must happen:
natively it is one locked instruction).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.ops import Atomic, Op
from ..isa.semantics import INT_OPS, NEGATED, BitVectorArithmetic, Condition, step


@dataclass(frozen=True, slots=True)
class Node:
    """A value: `op` names what computes it, `width` its bits (booleans: the compared operands' width).

    Leaves: const (value), reg (value = register, its value when the instruction starts), map / mapvalue
    (value = the loader's reference), func (value = slot), kobj. Fetched values (their effect says when):
    load (value = size in bytes; args = address), legacy (size; 32-bit offset), cast (value = dst_as << 16 |
    src_as). Operations: the `BitVector` names (add ... xor, neg, zext, sext, trunc, ite, cmp with value =
    the comparison, not), and bswap."""

    op: str
    width: int
    args: tuple = ()
    value: int | str = 0

    @property
    def is_const(self) -> bool:
        return self.op == "const"


def const(value: int, width: int = 64) -> Node:
    return Node("const", width, (), value & ((1 << width) - 1))


def reg(n: int) -> Node:
    return Node("reg", 64, (), n)


_FOLD = {"add", "sub", "mul", "udiv", "urem", "sdiv", "srem", "shl", "lshr", "ashr", "and_", "or_", "xor"}


class MirOps:
    """The bit-vector interface over `Node`s. Operations on constants fold to constants (the semantics'
    masks and width changes on immediates cost nothing), and a few identities every backend would want
    are applied here once: x & all-ones, x | 0, x + 0, zext/trunc of a value already that narrow."""

    def const(self, value, width):
        return const(value, width)

    def _binary(self, name, a, b, w):
        if a.is_const and b.is_const:
            return const(getattr(INT_OPS, name)(a.value, b.value, w), w)
        if b.is_const:
            if name in ("add", "sub", "or_", "xor", "shl", "lshr", "ashr") and b.value == 0:
                return a
            if name == "and_" and b.value == (1 << w) - 1:
                return a
        return Node(name.rstrip("_"), w, (a, b))

    def __getattr__(self, name):
        if name in _FOLD:
            return lambda a, b, w: self._binary(name, a, b, w)
        raise AttributeError(name)

    def neg(self, a, w):
        return const(-a.value, w) if a.is_const else Node("neg", w, (a,))

    def zext(self, a, from_width, to_width):
        if a.is_const:
            return const(a.value, to_width)
        return a if from_width == to_width else Node("zext", to_width, (a,), from_width)

    def sext(self, a, from_width, to_width):
        if a.is_const:
            return const(INT_OPS.sext(a.value, from_width, to_width), to_width)
        return Node("sext", to_width, (a,), from_width)

    def trunc(self, a, to_width):
        if a.is_const:
            return const(a.value, to_width)
        if a.width <= to_width:
            return a
        return Node("trunc", to_width, (a,))

    def ite(self, cond, a, b):
        if isinstance(cond, bool):
            return a if cond else b
        return Node("ite", a.width, (cond, a, b))

    def cmp(self, op, a, b, w):
        if a.is_const and b.is_const:
            return INT_OPS.cmp(op, a.value, b.value, w)
        return Node("cmp", w, (a, b), op)

    def not_(self, cond):
        if isinstance(cond, bool):
            return not cond
        if cond.op == "cmp":
            return Node("cmp", cond.width, cond.args, NEGATED[cond.value])
        return Node("not", cond.width, (cond,))


MIR_OPS = MirOps()


# ---- effects -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SetReg:
    n: int
    value: Node


@dataclass(frozen=True, slots=True)
class Fetch:
    """Read memory (or ask the run) now: `node` is a load / legacy / cast node that later effects use."""

    node: Node


@dataclass(frozen=True, slots=True)
class Store:
    addr: Node
    size: int
    value: Node


@dataclass(frozen=True, slots=True)
class AtomicRmw:
    """One atomic instruction: `op` (add/and/or/xor/xchg/cmpxchg) on `size` bytes at base + off with the
    source register; `fetch`: the source (r0 for cmpxchg) receives the old value."""

    op: str
    size: int
    base: int
    off: int
    src: int
    fetch: bool


@dataclass(frozen=True, slots=True)
class Branch:
    cond: Condition | None  # None: always
    target: int


@dataclass(frozen=True, slots=True)
class MayGoto:
    target: int


@dataclass(frozen=True, slots=True)
class Call:
    """kind helper (target = helper id), local (target = slot), kfunc (target = btf id, module),
    indirect (addr = the node called)."""

    kind: str
    target: int = 0
    module: int = 0
    addr: Node | None = None


@dataclass(frozen=True, slots=True)
class Exit:
    pass


Effect = SetReg | Fetch | Store | AtomicRmw | Branch | MayGoto | Call | Exit


class MirMachine(BitVectorArithmetic):
    """The `isa.semantics.Machine` that records one instruction's effects."""

    bv = MIR_OPS

    def __init__(self) -> None:
        self.effects: list[Effect] = []
        self._written: dict[int, Node] = {}

    def reg(self, n):
        return self._written.get(n) or reg(n)

    def set_reg(self, n, value):
        self._written[n] = value
        self.effects.append(SetReg(n, value))

    def clobber(self, n):  # the VM zeroes what LD_ABS clobbers; so do the JITs, to agree with it
        self.set_reg(n, const(0))

    def unary(self, op, dst):
        if op.op in ("be", "bswap") and op.width > 8:
            low = MIR_OPS.trunc(dst, op.width) if op.width < 64 else dst
            return MIR_OPS.zext(Node("bswap", op.width, (low,)), op.width, 64) if op.width < 64 else \
                Node("bswap", 64, (low,))
        return super().unary(op, dst)

    def _fetch(self, node: Node) -> Node:
        self.effects.append(Fetch(node))
        return node

    def load(self, addr, size):
        return self._fetch(Node("load", 64, (addr,), size))

    def store(self, addr, size, value, when=None):
        if when is not None:  # only cmpxchg stores conditionally, and atomics do not come through here
            raise ValueError("a conditional store outside an atomic")
        self.effects.append(Store(addr, size, value))

    def branch(self, cond, target):
        self.effects.append(Branch(cond, target))

    def may_goto(self, target):
        self.effects.append(MayGoto(target))

    def call_helper(self, helper):
        self.effects.append(Call("helper", helper))

    def call_local(self, target):
        self.effects.append(Call("local", target))

    def call_indirect(self, addr):
        self.effects.append(Call("indirect", addr=addr))

    def call_kfunc(self, btf_id, module):
        self.effects.append(Call("kfunc", btf_id, module))

    def exit(self):
        self.effects.append(Exit())

    def map_handle(self, ref):
        return Node("map", 64, (), ref)

    def map_value(self, ref):
        return Node("mapvalue", 64, (), ref)

    def function_address(self, slot):
        return Node("func", 64, (), slot)

    def kernel_object(self, btf_id, module):
        return Node("kobj", 64, (), btf_id)

    def legacy_load(self, size, offset):
        return self._fetch(Node("legacy", 64, (offset,), size))

    def addr_space_cast(self, value, dst_as, src_as):
        return self._fetch(Node("cast", 64, (value,), dst_as << 16 | src_as))


def effects_of(op: Op) -> list[Effect]:
    """What one decoded instruction does, as effects over nodes."""
    if isinstance(op, Atomic):
        return [AtomicRmw(op.op, op.size, op.base, op.off, op.src, op.fetch or op.op in ("xchg", "cmpxchg"))]
    machine = MirMachine()
    step(machine, op)
    return machine.effects
