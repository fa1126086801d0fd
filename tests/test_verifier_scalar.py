"""Soundness of the scalar domain (tnum x bounds): concrete values drawn from inside random abstract values
stay inside through every ALU op and width, branch prediction never contradicts a concrete pair, and
refinement keeps every pair that satisfies the condition. Concrete results come from `isa.semantics`.
(Exactness against the kernel is test_verifier_scalar_kernel.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.isa.numbers import M64
from bpforge.isa.ops import Alu, Imm, Reg, Unary
from bpforge.isa.semantics import NEGATED, Condition, IntOps, alu as concrete_alu, holds, unary
from bpforge.verifier.branch import branch_taken, refine
from bpforge.verifier.format import format_scalar, parse_scalar
from bpforge.verifier.scalar import Scalar, alu
from bpforge.verifier.tnum import Tnum

INT = IntOps()
BINARY = ("add", "sub", "mul", "div", "mod", "sdiv", "smod", "or", "and", "xor", "lsh", "rsh", "arsh")
EDGES = (0, 1, 2, 7, 8, 31, 32, 63, 64, 255, 256, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, (1 << 63) - 1,
         1 << 63, M64, M64 - 1)
u64 = st.one_of(st.sampled_from(EDGES), st.integers(0, M64), st.integers(0, 0xFFFF))


@st.composite
def member(draw):
    """(abstract, concrete) with concrete in abstract: from a concrete x, an abstract value built by
    branches that x satisfies and ALU ops applied to both."""
    x = draw(u64)
    start = draw(st.sampled_from(("unknown", "u32", "known")))
    a = Scalar.unknown() if start == "unknown" else Scalar.known(x) if start == "known" else Scalar.u32_value()
    if start == "u32":
        x &= 0xFFFF_FFFF
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            cmp = draw(st.sampled_from(tuple(NEGATED)))
            width = draw(st.sampled_from((32, 64)))
            k = draw(u64)
            if not holds(INT, Condition(cmp, width, x, k)):
                cmp = NEGATED[cmp]
            refined = refine(cmp, width, a, Scalar.known(k))
            assert refined is not None, (cmp, width, a, k, x)
            a = refined[0]
        else:
            op = draw(st.sampled_from(("add", "sub", "and", "or", "xor", "mul", "lsh", "rsh")))
            width = draw(st.sampled_from((32, 64)))
            k = draw(st.integers(0, width - 1)) if op in ("lsh", "rsh") else draw(u64)
            x = concrete_alu(INT, Alu(op, width, 0, Imm(k)), x, k)
            a = alu(op, width, a, k)
        assert a.contains(x), (a, x)
    return a, x


@settings(max_examples=400)
@given(member(), member(), st.sampled_from(BINARY), st.sampled_from((32, 64)), st.booleans())
def test_binary_ops_are_sound(d, s, op, width, immediate):
    (a, x), (b, y) = d, s
    if immediate:
        y = y & 0x7FFF_FFFF if y < 1 << 63 else y | ~0x7FFF_FFFF & M64  # a sign-extended 32-bit imm
        if op in ("lsh", "rsh", "arsh"):
            y %= width
        b = y
        src = Imm(y)
    else:
        src = Reg(1)
    result = alu(op, width, a, b)
    expected = concrete_alu(INT, Alu(op, width, 0, src), x, y)
    assert result.contains(expected), (op, width, a, b, x, y, result, expected)


@settings(max_examples=300)
@given(member(), member(), st.sampled_from(("mov", "movsx")), st.sampled_from((32, 64)), st.sampled_from((8, 16, 32)))
def test_moves_are_sound(d, s, op, width, ext):
    (a, _), (b, y) = d, s
    if width == 32 and ext == 32:
        ext = 16
    result = alu(op, width, a, b, ext)
    assert result.contains(concrete_alu(INT, Alu(op, width, 0, Reg(1), ext), 0, y))


@settings(max_examples=300)
@given(member(), st.sampled_from(("neg", "le", "be", "bswap")), st.sampled_from((16, 32, 64)))
def test_unary_ops_are_sound(d, op, width):
    a, x = d
    if op == "neg":
        width = 32 if width == 16 else width
    assert alu(op, width, a).contains(unary(INT, Unary(op, width, 0), x))


@settings(max_examples=400)
@given(member(), member(), st.sampled_from(tuple(NEGATED)), st.sampled_from((32, 64)))
def test_branches_are_sound(d, s, cmp, width):
    (a, x), (b, y) = d, s
    truth = holds(INT, Condition(cmp, width, x, y))
    decided = branch_taken(cmp, width, a, b)
    assert decided is None or decided == truth
    refined = refine(cmp if truth else NEGATED[cmp], width, a, b)
    assert refined is not None and refined[0].contains(x) and refined[1].contains(y)


@given(u64, u64, u64, u64, st.sampled_from(("add", "sub", "and", "or", "xor", "mul")))
def test_tnum_ops_are_sound(v1, m1, v2, m2, op):
    a, b = Tnum(v1 & ~m1, m1), Tnum(v2 & ~m2, m2)
    x, y = (v1 & ~m1) | (m1 & v2), (v2 & ~m2) | (m2 & v1)  # some members of each
    t = getattr(a, {"and": "and_", "or": "or_"}.get(op, op))(b)
    assert t.contains(concrete_alu(INT, Alu(op, 64, 0, Reg(1)), x, y))


@given(member())
def test_format_reads_back(d):
    a, _ = d
    assert parse_scalar(format_scalar(a)) == a


def test_format_examples():
    assert format_scalar(Scalar.unknown()) == "scalar()"
    assert format_scalar(Scalar.known(-5)) == "-5"
    assert format_scalar(Scalar.known(0xFFFF_FFFD)) == "0xfffffffd"
    r = alu("and", 64, Scalar.unknown(), 0xFF0)
    assert format_scalar(r) == "scalar(smin=smin32=0,smax=umax=smax32=umax32=4080,var_off=(0x0; 0xff0))"


def test_branch_on_a_value_outside_the_tnum_is_decided():
    nibble = alu("and", 64, Scalar.unknown(), 0xF0)
    assert branch_taken("eq", 64, nibble, Scalar.known(0x10)) is None
    assert branch_taken("eq", 64, nibble, Scalar.known(0x18)) is False
    assert branch_taken("ne", 32, nibble, Scalar.known(0x101)) is True


def test_empty_states_are_recognised():
    assert Scalar.from_bounds(umin=5, umax=4, sync=False).is_empty()
    assert Scalar.from_bounds(var_off=Tnum.const(3), umin=4, sync=False).is_empty()
    assert not Scalar.u64_range(4, 9).is_empty()
