"""The z3 instantiation of `isa.semantics` (opt/smt) agrees with the integer one, which the kernel-differential
tests vouch for: every ALU, move, negation, byte-swap and jump form run through `step` on both machines with
the same concrete edge and random inputs gives the same registers and branch; and, with symbolic operands,
`step` on the z3 machine is proved equal to a reference written here in z3's own words from RFC 9669."""

from __future__ import annotations

import inspect
import random

import pytest
import z3
from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.isa import FORMS, Insn
from bpforge.isa.ops import OP_TYPES, decode_op
from bpforge.isa.semantics import INT_OPS, BitVectorArithmetic, Machine, handled_op_types, holds, step
from bpforge.opt.smt import NotModelled, Z3Machine
from bpforge.vm.fast import _SourceMachine
from bpforge.vm.interp import Interpreter

M64 = (1 << 64) - 1
SLOT = 40  # where the instruction under test sits (jump targets are absolute slots)
DST, SRC = 1, 2  # the registers the edge cases and proofs use; hypothesis picks any, the same one included
BACKGROUND = [0x0123456789ABCDEF * (n + 1) & M64 for n in range(11)]  # registers the instruction must not touch

ARITH_FORMS = [f for f in FORMS if f.kind in ("alu", "mov", "neg", "end")]
JUMP_FORMS = [f for f in FORMS if f.kind in ("jmp", "ja")]
MEMORY_FORMS = [f for f in FORMS if f.kind in ("ldx", "st", "stx", "atomic")]

# 64-bit register values at the edges: signs and widths of 8/16/32/64 bits, shift amounts around 32 and 64
# (and a large one whose low bits are a small amount), divisors 0 and -1.
EDGES = [0, 1, 2, M64, M64 - 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
         0x100000000, 0xFFFFFFFF80000000, 0x7FFFFFFFFFFFFFFF, 1 << 63, 31, 32, 63, 64, 65, 0xFFFFFFFF00000021]
# Immediates (signed 32-bit, as encoded): the same edges where they fit.
IMM_EDGES = [0, 1, 2, -1, -2, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, -(1 << 31), -0x80, 31, 32,
             63, 64, 65, 127]
U64 = st.one_of(st.integers(0, M64), st.sampled_from(EDGES), st.integers(-300, 300).map(lambda v: v & M64))
S32 = st.one_of(st.integers(-(1 << 31), (1 << 31) - 1), st.sampled_from(IMM_EDGES))
S16 = st.integers(-(1 << 15), (1 << 15) - 1)


class IntMachine(BitVectorArithmetic):
    """The integer `Machine` of the interpreter, cut down to registers, a little byte memory at `BASE` and a
    record of the branch: enough for `step` on the forms tested here."""

    BASE = 0x10000
    bv = INT_OPS

    def __init__(self, regs, memory: bytearray | None = None) -> None:
        self.regs = list(regs)
        self.memory = bytearray(memory or b"")
        self.branched: tuple[bool, int] | None = None  # (taken, target)

    def reg(self, n):
        return self.regs[n]

    def set_reg(self, n, value):
        self.regs[n] = value

    def clobber(self, n):
        self.regs[n] = 0

    def _offset(self, addr, size):
        offset = addr - self.BASE
        assert 0 <= offset <= len(self.memory) - size, f"access at {addr:#x} outside the test memory"
        return offset

    def load(self, addr, size):
        offset = self._offset(addr, size)
        return int.from_bytes(self.memory[offset:offset + size], "little")

    def store(self, addr, size, value, when=None):
        offset = self._offset(addr, size)
        if when is None or when:
            self.memory[offset:offset + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def branch(self, cond, target):
        self.branched = (cond is None or holds(INT_OPS, cond), target)


_CONSTANTS: dict[int, z3.BitVecRef] = {}


def constant(value: int) -> z3.BitVecRef:
    """A 64-bit z3 value, made once (the edge cases reuse a few dozen)."""
    term = _CONSTANTS.get(value)
    if term is None:
        term = _CONSTANTS[value] = z3.BitVecVal(value, 64)
    return term


def value_of(term) -> int:
    simple = z3.simplify(term)
    assert z3.is_bv_value(simple), f"{term} does not simplify to a value"
    return simple.as_long()


def truth_of(formula) -> bool:
    simple = z3.simplify(formula)
    assert z3.is_true(simple) or z3.is_false(simple), f"{formula} does not simplify to a truth value"
    return z3.is_true(simple)


def make(form, dst=DST, src=SRC, imm=0, off=0) -> Insn:
    given_fields = {"dst": dst, "src": src, "imm": imm, "off": off}
    return Insn.make(form, **{name: given_fields[name] for name in form.operands})


def agree(insn: Insn, regs: list[int]) -> None:
    """`step` on both machines from the same registers: same registers after, same branch decision."""
    op = decode_op(insn, SLOT)
    ints = IntMachine(regs)
    step(ints, op)
    before = [constant(v) for v in regs]
    machine = Z3Machine(before)
    step(machine, op)
    for n, term in enumerate(machine.regs):
        assert term.size() == 64, f"r{n} is {term.size()} bits wide after {insn}"
        z3_value = regs[n] if term is before[n] else value_of(term)
        assert z3_value == ints.regs[n], f"{insn}: r{n} = {z3_value:#x} in z3, {ints.regs[n]:#x} as ints; in {regs}"
    if ints.branched is None:
        assert not machine.branches
    else:
        (branch,) = machine.branches
        assert (truth_of(branch.taken), branch.target) == ints.branched, f"{insn} with {regs}"


def with_operands(dst_value: int, src_value: int) -> list[int]:
    regs = list(BACKGROUND)
    regs[DST], regs[SRC] = dst_value, src_value
    return regs


# ---- concrete agreement: edge values in every operand position, then random ones ----------------------

@pytest.mark.parametrize("form", ARITH_FORMS + JUMP_FORMS, ids=lambda f: f.name)
def test_edge_values_agree_with_the_integer_machine(form):
    if "src" in form.operands:
        cases = [(make(form, off=3), with_operands(a, b)) for a in EDGES for b in EDGES]
    elif "imm" in form.operands and form.kind != "ja":
        cases = [(make(form, imm=imm, off=3), with_operands(a, 0)) for a in EDGES for imm in IMM_EDGES]
    else:  # neg, byte swaps, ja/gotol
        cases = [(make(form, imm=-5, off=-5), with_operands(a, 0)) for a in EDGES]
    for insn, regs in cases:
        agree(insn, regs)


@pytest.mark.parametrize("form", ARITH_FORMS + JUMP_FORMS, ids=lambda f: f.name)
@given(regs=st.lists(U64, min_size=11, max_size=11), dst=st.integers(0, 10), src=st.integers(0, 10), imm=S32,
       off=S16)
@settings(max_examples=12, deadline=None)
def test_random_values_agree_with_the_integer_machine(form, regs, dst, src, imm, off):
    agree(make(form, dst=dst, src=src, imm=imm, off=off), regs)


# ---- proofs with symbolic operands against a reference ------------------------------------------------

def prove(claim) -> None:
    solver = z3.Solver()
    solver.set("timeout", 60_000)
    solver.add(z3.Not(claim))
    result = solver.check()
    assert result == z3.unsat, f"not proved ({result}): {solver.model() if result == z3.sat else claim}"


def low(term, bits=32):
    return z3.Extract(bits - 1, 0, term)


def reference_binary(op: str, a, b, w: int):
    """RFC 9669's ALU table as z3 states it (z3's bvsdiv and bvsrem wrap INT_MIN / -1 as the RFC wants)."""
    shift = b & (w - 1)
    return {
        "add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b,
        "div": lambda: z3.If(b == 0, z3.BitVecVal(0, w), z3.UDiv(a, b)),
        "mod": lambda: z3.If(b == 0, a, z3.URem(a, b)),
        "sdiv": lambda: z3.If(b == 0, z3.BitVecVal(0, w), a / b),
        "smod": lambda: z3.If(b == 0, a, z3.SRem(a, b)),
        "or": lambda: a | b, "and": lambda: a & b, "xor": lambda: a ^ b,
        "lsh": lambda: a << shift, "rsh": lambda: z3.LShR(a, shift), "arsh": lambda: a >> shift,
        "mov": lambda: b,
    }[op]()


def reference_arith(form, dst, src):
    """The new value of dst: 32-bit operations read the low halves and zero-extend their result."""
    w = form.width
    if form.kind == "neg":
        return -dst if w == 64 else z3.ZeroExt(32, -low(dst))
    if form.kind == "end":
        data = low(dst, w) if w < 64 else dst
        if form.op != "le":  # Concat takes its high part first: the low byte first is the swapped value
            data = data if w == 8 else z3.Concat(*[z3.Extract(8 * i + 7, 8 * i, data) for i in range(w // 8)])
        return z3.ZeroExt(64 - w, data) if w < 64 else data
    if form.op == "movsx":
        extended = z3.SignExt(w - 8 * form.size, low(src, 8 * form.size))
        return extended if w == 64 else z3.ZeroExt(32, extended)
    if w == 64:
        return reference_binary(form.op, dst, src, 64)
    return z3.ZeroExt(32, reference_binary(form.op, low(dst), low(src), 32))


def reference_jump(form, dst, src):
    if form.kind == "ja":
        return z3.BoolVal(True)
    a, b = (dst, src) if form.width == 64 else (low(dst), low(src))
    return {
        "jeq": a == b, "jne": a != b, "jgt": z3.UGT(a, b), "jge": z3.UGE(a, b), "jlt": z3.ULT(a, b),
        "jle": z3.ULE(a, b), "jsgt": a > b, "jsge": a >= b, "jslt": a < b, "jsle": a <= b, "jset": a & b != 0,
    }[form.op]


def symbolic_cases(form):
    """(instruction, the source operand as the reference sees it): a symbolic register, or each edge immediate
    sign-extended from its 32 bits by the reference itself."""
    src_register = z3.BitVec(f"r{SRC}", 64)
    if "src" in form.operands:
        return [(make(form, off=7), src_register)]
    if "imm" in form.operands and form.kind != "ja":
        return [(make(form, imm=imm, off=7), z3.SignExt(32, z3.BitVecVal(imm, 32))) for imm in IMM_EDGES]
    return [(make(form, imm=7, off=7), src_register)]


@pytest.mark.parametrize("form", ARITH_FORMS + JUMP_FORMS, ids=lambda f: f.name)
def test_step_on_symbolic_operands_is_the_reference(form):
    for insn, src in symbolic_cases(form):
        machine = Z3Machine()
        before = list(machine.regs)
        step(machine, decode_op(insn, SLOT))
        untouched = [machine.regs[n] == before[n] for n in range(11) if n != DST or form.is_branch]
        if form.is_branch:
            (branch,) = machine.branches
            assert branch.target == SLOT + 1 + 7
            prove(z3.And(branch.taken == reference_jump(form, before[DST], src), *untouched))
        else:
            assert not machine.branches
            prove(z3.And(machine.regs[DST] == reference_arith(form, before[DST], src), *untouched))


def test_jmp32_reads_only_the_low_halves():
    """Whatever the high halves, a JMP32 comparison decides as on the low ones (and a JMP64 one does not)."""
    a, b, high_a, high_b = z3.BitVecs("a b ha hb", 32)
    for form in [f for f in JUMP_FORMS if f.kind == "jmp" and f.source == "reg"]:
        decisions = []
        for dst, src in ((z3.Concat(high_a, a), z3.Concat(high_b, b)), (z3.ZeroExt(32, a), z3.ZeroExt(32, b))):
            machine = Z3Machine([dst if n == DST else src if n == SRC else z3.BitVec(f"r{n}", 64)
                                 for n in range(11)])
            step(machine, decode_op(make(form, off=1), SLOT))
            decisions.append(machine.branches[0].taken)
        claim = decisions[0] == decisions[1]
        if form.width == 32:
            prove(claim)
        else:
            solver = z3.Solver()
            solver.add(z3.Not(claim))
            assert solver.check() == z3.sat, f"{form.name} ignores the high halves"


# ---- memory: loads, stores and atomics on concrete addresses ------------------------------------------

def z3_memory(data: bytes):
    memory = z3.K(z3.BitVecSort(64), z3.BitVecVal(0, 8))
    for i, byte in enumerate(data):
        memory = z3.Store(memory, IntMachine.BASE + i, byte)
    return memory


def memory_cases(form, rng: random.Random):
    """(instruction, registers, memory) cases: dst/src base and value registers, r0 the comparand of cmpxchg
    (equal to memory and not, with junk above a 32-bit comparison)."""
    base, value = (SRC, DST) if form.kind == "ldx" or form.op == "load_acquire" else (DST, SRC)
    for off in (0, 8, -8):
        data = bytes(rng.randrange(256) for _ in range(48))
        for stored in (0, M64, 0x8000000000000080, rng.randrange(1 << 64)):
            regs = list(BACKGROUND)
            regs[base], regs[value] = IntMachine.BASE + 16, stored
            addr = 16 + off
            current = int.from_bytes(data[addr:addr + form.size], "little")
            equal = (current | 0xDEAD << 48) if form.size == 4 else current
            for r0 in (equal, current ^ 1) if form.op == "cmpxchg" else (current ^ 1,):
                regs[0] = r0
                yield make(form, imm=rng.randrange(-(1 << 31), 1 << 31), off=off), list(regs), data


@pytest.mark.parametrize("form", MEMORY_FORMS, ids=lambda f: f.name)
def test_memory_forms_agree_with_the_integer_machine(form):
    rng = random.Random(form.name)
    for insn, regs, data in memory_cases(form, rng):
        op = decode_op(insn, SLOT)
        ints = IntMachine(regs, bytearray(data))
        step(ints, op)
        machine = Z3Machine([constant(v) for v in regs], z3_memory(data))
        step(machine, op)
        assert [value_of(r) for r in machine.regs] == ints.regs, f"{insn} with {regs}"
        after = z3.Concat(*[z3.Select(machine.memory, IntMachine.BASE + i) for i in reversed(range(len(data)))])
        assert value_of(after).to_bytes(len(data), "little") == bytes(ints.memory), f"{insn} with {regs}"


def test_loads_are_little_endian_and_stores_under_a_condition_are_conditional():
    machine = Z3Machine()
    addr, value, when = z3.BitVec("addr", 64), z3.BitVec("value", 64), z3.Bool("when")
    before = machine.memory
    machine.store(addr, 4, value, when=when)
    old = z3.Concat(*[z3.Select(before, addr + i) for i in (3, 2, 1, 0)])  # the high byte at the highest address
    prove(machine.load(addr, 4) == z3.ZeroExt(32, z3.If(when, low(value), old)))
    prove(z3.Select(machine.memory, addr + 1) == z3.If(when, z3.Extract(15, 8, value), z3.Select(before, addr + 1)))


# ---- every node type, and the Machine protocol on every engine ----------------------------------------

def test_every_node_type_runs_on_the_z3_machine_or_is_refused_by_name():
    assert handled_op_types() == frozenset(OP_TYPES)
    seen, refused = set(), set()
    for form in FORMS:
        op = decode_op(Insn.make(form), SLOT)
        seen.add(type(op))
        machine = Z3Machine()
        try:
            step(machine, op)
        except NotModelled:
            refused.add(form.name)
            continue
        assert all(r.size() == 64 for r in machine.regs), form.name
    assert seen == set(OP_TYPES)
    assert refused == {"call_local", "callx", "ld_abs8", "ld_abs16", "ld_abs32", "ld_ind8", "ld_ind16", "ld_ind32"}
    with pytest.raises(NotModelled, match="tail_call"):
        step(Z3Machine(), decode_op(Insn.make("call", imm=12)))


def test_calls_and_loader_values_are_uninterpreted():
    machine = Z3Machine()
    r6, memory = machine.regs[6], machine.memory
    step(machine, decode_op(Insn.make("call", imm=1)))  # bpf_map_lookup_elem
    assert "map_lookup_elem" in str(machine.regs[0]) and machine.regs[6] is r6
    solver = z3.Solver()
    solver.add(machine.regs[0] != z3.BitVec("r0", 64), machine.memory != memory)  # r0 and memory are new
    assert solver.check() == z3.sat
    first, second = Z3Machine(), Z3Machine()
    step(first, decode_op(Insn.make("lddw_map_fd", dst=1, imm=3)))
    step(second, decode_op(Insn.make("lddw_map_idx", dst=2, imm=3)))
    prove(first.regs[1] == second.regs[2])  # the same map reference is the same value in every machine


MACHINE_METHODS = [name for name, member in vars(Machine).items()
                   if inspect.isfunction(member) and not name.startswith("_")]


@pytest.mark.parametrize("engine", [Z3Machine, Interpreter, _SourceMachine], ids=lambda c: c.__name__)
def test_every_engine_implements_the_machine_protocol(engine):
    assert "reg" in MACHINE_METHODS and "legacy_load" in MACHINE_METHODS
    assert hasattr(engine, "bv")
    for name in MACHINE_METHODS:
        method = getattr(engine, name, None)
        assert callable(method), f"{engine.__name__} lacks {name}"
        expected = list(inspect.signature(getattr(Machine, name)).parameters)
        assert list(inspect.signature(method).parameters) == expected, f"{engine.__name__}.{name}"
