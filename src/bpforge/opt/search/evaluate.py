"""Concrete evaluation of candidates on test states, cheap enough for the inner loop of the search.

Each distinct cell is compiled once into a small Python function by running the one semantics
(`isa.semantics.step`) on a machine whose values are Python expression text (`SourceOps`, as the fast tier
does): `f(R, M)` updates the register list `R` and the memory `M` and returns None to fall through, a cell
index or an `ExitTarget`. A candidate is then a list of those functions; running it on a test costs a few
calls, with no per-run set-up beyond a fresh memory overlay.

Memory is total and deterministic per test: a byte nobody wrote reads from the test's `initial` bytes (a
counterexample's) or else from a hash of the address and the test's salt, so every address reads the same
in the original and in the candidate. The outcome of a run is what the prover compares: the exit, the
registers live there (r0 only at BPF_EXIT), and the bytes written outside the stack slots dead there (at
BPF_EXIT the whole 512-byte frame below r10), minus writes that left a byte as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import BpforgeError
from ...isa.ops import Call, LegacyLoad, Load, LoadImm64, MayGoto, decode_op
from ...isa.semantics import INT_OPS, SOURCE_OPS, BitVectorArithmetic, Condition, holds, step
from ...verifier.window import PROGRAM_END, ExitTarget
from .cells import Cell

M64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # an odd constant with well-spread bits (Fibonacci hashing)
_FIELD_SALT = 0x5DEECE66D
AFTER = ExitTarget("after", 0)
FRAME = 512
_SLOT_BIT = 11
ALL_LIVE = (1 << (_SLOT_BIT + FRAME // 8)) - 1


class Unsearchable(BpforgeError):
    """A window the search does not take (calls, legacy packet loads, may_goto, function addresses)."""


def map_handle(ref: int) -> int:
    """The value a map reference loads in every test: distinct per map, far from small numbers and r10."""
    return 0xFFFF8880_00000000 + (ref << 20)


def map_value(ref: int) -> int:
    return 0xFFFF8881_00000000 + (ref << 20)


class TestMemory:
    """One run's memory: bytes written in `wrote` over the test's initial bytes over its hash.

    With `pointer_fields`, a 4-byte load (`load_field`) at an address the hash marks reads a whole 64-bit
    value, as the prover allows for a load through the context (the kernel turns a load of xdp_md.data
    into one of the 64-bit pointer): a candidate relying on such a load's upper half being zero then fails
    a test instead of wasting a proof."""

    __slots__ = ("wrote", "initial", "salt", "pointer_fields")
    __test__ = False  # (not a pytest class)

    def __init__(self, initial: dict[int, int], salt: int, pointer_fields: bool = False) -> None:
        self.wrote: dict[int, int] = {}
        self.initial = initial
        self.salt = salt
        self.pointer_fields = pointer_fields

    def original(self, a: int) -> int:
        b = self.initial.get(a)
        return ((((a ^ self.salt) * _MIX) & M64) >> 56) if b is None else b

    def load(self, addr: int, size: int) -> int:
        wrote, value = self.wrote, 0
        for i in range(size):
            a = (addr + i) & M64
            b = wrote.get(a)
            if b is None:
                b = self.original(a)
            value |= b << (8 * i)
        return value

    def load_field(self, addr: int) -> int:
        """A 4-byte load that may read a pointer field: per address, the same in every run of the test."""
        if self.pointer_fields:
            mixed = ((addr ^ self.salt ^ _FIELD_SALT) * _MIX) & M64
            if mixed >> 63:
                return (mixed * _MIX) & M64 | 1 << 40  # its upper half never zero
        return self.load(addr, 4)

    def store(self, addr: int, size: int, value: int) -> None:
        wrote = self.wrote
        for i in range(size):
            wrote[(addr + i) & M64] = (value >> (8 * i)) & 0xFF


# ---- compiling one cell --------------------------------------------------------------------------------------

class _CellSource(BitVectorArithmetic):
    """`isa.semantics.Machine` over expression text: `step` on it writes the body of one cell's function."""

    bv = SOURCE_OPS

    def __init__(self, field_load: bool = False) -> None:
        self.lines: list[str] = []
        self.field_load = field_load  # the instruction is a load that may go through the context

    def reg(self, n: int) -> str:
        return f"R[{n}]"

    def set_reg(self, n: int, value: str) -> None:
        self.lines.append(f"R[{n}] = {value}")

    def load(self, addr: str, size: int) -> str:
        if self.field_load and size == 4:
            self.lines.append(f"_m = M.load_field({addr})")
        else:
            self.lines.append(f"_m = M.load({addr}, {size})")  # bound once: the value may be used twice
        return "_m"

    def store(self, addr: str, size: int, value: str, when=None) -> None:
        line = f"M.store({addr}, {size}, {value})"
        self.lines.append(line if when is None else f"if {when}: {line}")

    def branch(self, cond: Condition | None, target: int) -> None:
        if cond is None:
            self.lines.append("return T")
        else:
            self.lines.append(f"if {holds(SOURCE_OPS, cond)}: return T")

    def exit(self) -> None:
        self.lines.append("return END")

    def map_handle(self, ref: int) -> str:
        return str(map_handle(ref))

    def map_value(self, ref: int) -> str:
        return str(map_value(ref))

    def _refuse(self, *_args) -> str:
        raise Unsearchable("the search does not take windows with calls, function addresses, kernel objects, "
                           "legacy packet loads, may_goto or arena casts")

    clobber = may_goto = call_helper = call_local = call_indirect = call_kfunc = _refuse
    function_address = kernel_object = legacy_load = addr_space_cast = _refuse


_NAMESPACE = {"_sdiv": INT_OPS.sdiv, "_srem": INT_OPS.srem, "END": PROGRAM_END}


def _noop(R, M):
    return None


def compile_cell(cell: Cell | None):
    """The function of one cell (a hole: a no-op). Unsearchable for what a window may not hold."""
    if cell is None:
        return _noop
    op = decode_op(cell.insn, 0)
    if isinstance(op, (Call, LegacyLoad, MayGoto)) or (op.__class__ is LoadImm64 and op.kind in ("func", "btf_id")):
        raise Unsearchable(f"the search does not take windows with {cell.insn}")
    # (as the prover: any unsigned 4-byte load may read a pointer field, except through the frame pointer)
    source = _CellSource(op.__class__ is Load and op.size == 4 and not op.signed and op.base != 10)
    step(source, op)
    body = source.lines or ["pass"]
    text = "def _cell(R, M):\n" + "".join(f"    {line}\n" for line in body)
    namespace = dict(_NAMESPACE, T=cell.target)
    exec(compile(text, "<search cell>", "exec"), namespace)  # noqa: S102 - text built from our own semantics
    return namespace["_cell"]


# ---- tests and outcomes --------------------------------------------------------------------------------------

@dataclass
class TestCase:
    """An entry state: 11 registers, the bytes memory starts with where given, the salt of the rest."""

    __test__ = False  # (not a pytest class)

    registers: tuple[int, ...]
    initial: dict[int, int] = field(default_factory=dict)
    salt: int = 0
    pointer_fields: bool = False  # some 4-byte loads read 64-bit pointers (`TestMemory.load_field`)


@dataclass(frozen=True)
class Outcome:
    """What a run shows the rest of the program: the exit, live registers there, the bytes it changed."""

    exit: ExitTarget
    registers: tuple[tuple[int, int], ...]  # (register, value) for each register live at the exit
    memory: Mapping[int, int]  # address -> byte, where the run left a byte different from how it started


def run(functions: Sequence, test: TestCase) -> tuple[ExitTarget, list[int], TestMemory]:
    """Run compiled cells on one test: the exit taken, the final registers and the memory."""
    regs = list(test.registers)
    mem = TestMemory(test.initial, test.salt, test.pointer_fields)
    n = len(functions)
    pc = 0
    while pc < n:
        went = functions[pc](regs, mem)
        if went is None:
            pc += 1
        elif went.__class__ is int:
            pc = went
        else:
            return went, regs, mem
    return AFTER, regs, mem


class Judge:
    """Outcomes of runs judged against what is live at each exit of the original window."""

    def __init__(self, live_out: Mapping[ExitTarget, int]) -> None:
        self.live_out = dict(live_out)
        self._regs: dict[ExitTarget, tuple[int, ...]] = {}

    def live_registers(self, target: ExitTarget) -> tuple[int, ...]:
        regs = self._regs.get(target)
        if regs is None:
            if target == PROGRAM_END:
                regs = (0,)
            else:
                live = self.live_out.get(target, ALL_LIVE)
                regs = tuple(n for n in range(10) if live >> n & 1)
            self._regs[target] = regs
        return regs

    def dead(self, target: ExitTarget, frame_pointer: int, address: int) -> bool:
        """Whether byte `address` lies in a stack slot dead at `target` (the prover's `_dead_stack`)."""
        below = (frame_pointer - address) & M64
        if not 0 < below <= FRAME:
            return False
        if target == PROGRAM_END:
            return True
        k = (below - 1) // 8
        return not self.live_out.get(target, ALL_LIVE) >> (_SLOT_BIT + k) & 1

    def outcome(self, target: ExitTarget, regs: list[int], mem: TestMemory) -> Outcome:
        return Outcome(target, tuple((n, regs[n]) for n in self.live_registers(target)),
                       self.changed(target, regs[10], mem))

    def changed(self, target: ExitTarget, frame_pointer: int, mem: TestMemory) -> dict[int, int]:
        out = {}
        for a, b in mem.wrote.items():
            if b != mem.original(a) and not self.dead(target, frame_pointer, a):
                out[a] = b
        return out

    def distance(self, expected: Outcome, target: ExitTarget, regs: list[int], mem: TestMemory) -> int:
        """0 when the run matches `expected`, else how many bits differ (a wrong exit counts 64 bits plus
        one per live register of the expected exit)."""
        if target != expected.exit:
            return 64 + len(expected.registers)
        bits = 0
        for n, value in expected.registers:
            if regs[n] != value:
                bits += (regs[n] ^ value).bit_count()
        if mem.wrote or expected.memory:
            got = self.changed(target, regs[10], mem)
            if got != expected.memory:
                for a in got.keys() | expected.memory.keys():
                    x = got.get(a)
                    y = expected.memory.get(a)
                    x = mem.original(a) if x is None else x
                    y = mem.original(a) if y is None else y
                    bits += (x ^ y).bit_count()
        return bits


__all__ = ["AFTER", "Judge", "Outcome", "TestCase", "TestMemory", "Unsearchable", "compile_cell", "map_handle",
           "map_value", "run"]
