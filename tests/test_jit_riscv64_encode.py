"""The RV64 encoders against llvm-mc-19 (random operands per form, one llvm-mc run per group) and against
capstone (hypothesis); `li` sequences are executed under unicorn."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_jit_arm64_encode import LLVM_MC, assemble

from conftest import code_runner

from bpforge.jit.riscv64 import encode as rv

SEED = 20250102
N = 40


def r(n: int) -> str:
    return f"x{n}"


def reg(rng) -> int:
    return rng.randrange(32)


def _alu(rng):
    for _ in range(N):
        rd, rs1, rs2 = reg(rng), reg(rng), reg(rng)
        for name in ("add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and",
                     "mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu"):
            yield f"{name} {r(rd)}, {r(rs1)}, {r(rs2)}", rv.op(name, rd, rs1, rs2)
        for name in sorted(rv._W_OPS):
            yield f"{name}w {r(rd)}, {r(rs1)}, {r(rs2)}", rv.op(name, rd, rs1, rs2, word=True)
        imm = rng.randrange(-2048, 2048)
        for name in ("addi", "slti", "sltiu", "xori", "ori", "andi"):
            yield f"{name} {r(rd)}, {r(rs1)}, {imm}", rv.op_imm(name, rd, rs1, imm)
        yield f"addiw {r(rd)}, {r(rs1)}, {imm}", rv.addiw(rd, rs1, imm)
        sh, shw = rng.randrange(64), rng.randrange(32)
        for name in ("slli", "srli", "srai"):
            yield f"{name} {r(rd)}, {r(rs1)}, {sh}", rv.shift_imm(name, rd, rs1, sh)
            yield f"{name}w {r(rd)}, {r(rs1)}, {shw}", rv.shift_imm(name, rd, rs1, shw, word=True)
        up = rng.randrange(1 << 20)
        yield f"lui {r(rd)}, {up}", rv.lui(rd, up)
        yield f"auipc {r(rd)}, {up}", rv.auipc(rd, up)
        yield f"mv {r(rd)}, {r(rs1)}", rv.mv(rd, rs1)


def _zbb(rng):
    for _ in range(N):
        rd, rs1 = reg(rng), reg(rng)
        yield f"rev8 {r(rd)}, {r(rs1)}", rv.rev8(rd, rs1)
        yield f"sext.b {r(rd)}, {r(rs1)}", rv.sext_b(rd, rs1)
        yield f"sext.h {r(rd)}, {r(rs1)}", rv.sext_h(rd, rs1)
        yield f"zext.h {r(rd)}, {r(rs1)}", rv.zext_h(rd, rs1)
        yield f"zext.w {r(rd)}, {r(rs1)}", rv.zext_w(rd, rs1)


def _memory(rng):
    for _ in range(N):
        rd, rs1, rs2 = reg(rng), reg(rng), reg(rng)
        off = rng.randrange(-2048, 2048)
        for name, size, signed in (("lb", 1, True), ("lh", 2, True), ("lw", 4, True), ("ld", 8, False),
                                   ("lbu", 1, False), ("lhu", 2, False), ("lwu", 4, False)):
            yield f"{name} {r(rd)}, {off}({r(rs1)})", rv.load(size, rd, rs1, off, signed)
        for name, size in (("sb", 1), ("sh", 2), ("sw", 4), ("sd", 8)):
            yield f"{name} {r(rs2)}, {off}({r(rs1)})", rv.store(size, rs1, rs2, off)
        for size, suffix in ((4, "w"), (8, "d")):
            aq, rl = rng.random() < 0.5, rng.random() < 0.5
            order = (".aq" if aq else "") + (".rl" if rl else "")
            order = ".aqrl" if aq and rl else order
            for name in ("amoswap", "amoadd", "amoxor", "amoand", "amoor"):
                yield (f"{name}.{suffix}{order} {r(rd)}, {r(rs2)}, ({r(rs1)})",
                       rv.amo(name, size, rd, rs1, rs2, aq, rl))
            yield f"lr.{suffix}{order} {r(rd)}, ({r(rs1)})", rv.lr(size, rd, rs1, aq, rl)
            yield f"sc.{suffix}{order} {r(rd)}, {r(rs2)}, ({r(rs1)})", rv.sc(size, rd, rs1, rs2, aq, rl)
    yield "fence rw, rw", rv.fence()
    yield "fence r, rw", rv.fence("r", "rw")
    yield "fence iorw, iorw", rv.fence("iorw", "iorw")


def _control(rng):
    for _ in range(N):
        rs1, rs2, rd = reg(rng), reg(rng), reg(rng)
        off = rng.randrange(-(1 << 11), 1 << 11) * 2
        for name in ("beq", "bne", "blt", "bge", "bltu", "bgeu"):
            yield f"{name} {r(rs1)}, {r(rs2)}, {off}", rv.branch(name, rs1, rs2, off)
        joff = rng.randrange(-(1 << 19), 1 << 19) * 2
        yield f"jal {r(rd)}, {joff}", rv.jal(rd, joff)
        ioff = rng.randrange(-2048, 2048)
        yield f"jalr {r(rd)}, {ioff}({r(rs1)})", rv.jalr(rd, rs1, ioff)
    yield "ret", rv.ret()
    yield "ecall", rv.ecall()
    yield "ebreak", rv.ebreak()
    yield "nop", rv.nop()


GROUPS = {"alu": _alu, "zbb": _zbb, "memory": _memory, "control": _control}


@pytest.mark.skipif(LLVM_MC is None, reason="llvm-mc-19 is not installed")
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_encodings_match_llvm_mc(group):
    rng = random.Random(f"{SEED}-{group}")
    cases = list(GROUPS[group](rng))
    # -riscv-no-aliases: the assembler must not compress or rewrite (c.* forms would change the bytes)
    expected = assemble([text for text, _ in cases], "riscv64", "+m,+a,+zbb,+zba,-c")
    wrong = [(text, ours.hex(), theirs.hex()) for (text, ours), theirs in zip(cases, expected) if ours != theirs]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ (text, ours, llvm-mc): {wrong[:10]}"


def test_out_of_range_operands_are_refused():
    for bad in (lambda: rv.op_imm("addi", 1, 1, 2048), lambda: rv.branch("beq", 1, 1, 4096),
                lambda: rv.branch("beq", 1, 1, 3), lambda: rv.jal(1, 1 << 20), lambda: rv.lui(1, 1 << 20),
                lambda: rv.shift_imm("slli", 1, 1, 32, word=True), lambda: rv.op("xor", 1, 1, 1, word=True),
                lambda: rv.amo("amoadd", 2, 1, 1, 1), lambda: rv.load(3, 1, 1, 0), lambda: rv.op("add", 32, 0, 0)):
        with pytest.raises(ValueError):
            bad()


@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 31) - 4096, (1 << 31) + 4096))
def test_split_offset_recombines(offset):
    hi, lo = rv.split_offset(offset)
    assert -2048 <= lo < 2048
    value = ((hi << 12) - ((hi & 0x80000) << 13)) + lo  # hi20 sign-extended as AUIPC/LUI take it
    assert value == offset or not rv.fits_auipc_pair(offset)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(("add", "sub", "mul", "divu", "remu", "and", "xor")), st.integers(0, 31), st.integers(0, 31),
       st.integers(0, 31))
def test_register_forms_disassemble_as_meant(name, rd, rs1, rs2):
    cs = pytest.importorskip("capstone", reason="capstone is not installed")
    md = cs.Cs(cs.CS_ARCH_RISCV, cs.CS_MODE_RISCV64)
    (insn,) = md.disasm(rv.op(name, rd, rs1, rs2), 0)
    assert insn.mnemonic in (name, {"add": "mv", "sub": "neg"}.get(name))  # capstone prints aliases for x0
    assert insn.bytes == rv.op(name, rd, rs1, rs2)


@pytest.fixture(scope="module")
def emulator():
    return code_runner("UC_ARCH_RISCV", "UC_MODE_RISCV64", "riscv_const.UC_RISCV_REG_X0")


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF).map(lambda v: v << 32),
                 st.integers(-0x100000, 0x100000).map(lambda v: v & ((1 << 64) - 1)),
                 st.sampled_from((0, (1 << 64) - 1, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 1 << 63, 0x800,
                                  0x7FFFF800, 0xFFFFFFFF80000000))),
       st.integers(1, 31))
def test_li_sets_the_value(emulator, value, rd):
    seq = rv.li(rd, value)
    assert len(seq) <= 8
    assert emulator(b"".join(seq), rd) == value
