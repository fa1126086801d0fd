"""The A64 encoders against llvm-mc-19 (the assembler's bytes for the same instruction text, random
operands per form, one llvm-mc run per group) and against capstone (hypothesis: what we encode disassembles
to what we meant); mov_imm sequences are executed under unicorn."""

from __future__ import annotations

import random
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import code_runner

from bpforge.jit.arm64 import encode as a64

LLVM_MC = shutil.which("llvm-mc-19")
SEED = 20250101
N = 40


def x(n: int, width: int = 64, sp: bool = False) -> str:
    if n == 31:
        return ("sp" if width == 64 else "wsp") if sp else ("xzr" if width == 64 else "wzr")
    return f"{'x' if width == 64 else 'w'}{n}"


def reg(rng, allow31: bool = True) -> int:
    return rng.randrange(32 if allow31 else 31)


def _data_imm(rng):
    for _ in range(N):
        w = rng.choice((32, 64))
        rd, rn = reg(rng), reg(rng)
        imm = rng.randrange(4096) if rng.random() < 0.6 else rng.randrange(4096) << 12
        for name, fn in (("add", a64.add_imm), ("sub", a64.sub_imm)):
            text = f"{name} {x(rd, w, True)}, {x(rn, w, True)}, #{imm >> 12 if imm >= 4096 else imm}"
            yield text + (", lsl #12" if imm >= 4096 else ""), fn(w, rd, rn, imm)
        if imm < 4096:
            yield f"cmp {x(rn, w, True)}, #{imm}", a64.cmp_imm(w, rn, imm)
            yield f"cmn {x(rn, w, True)}, #{imm}", a64.cmn_imm(w, rn, imm)


def _logical_imm(rng):
    found = 0
    while found < N:
        w = rng.choice((32, 64))
        size = rng.choice([s for s in (2, 4, 8, 16, 32, 64) if s <= w])
        ones = rng.randrange(1, size)
        rot = rng.randrange(size)
        elem = ((1 << ones) - 1)
        elem = ((elem >> rot) | (elem << (size - rot))) & ((1 << size) - 1)
        value = 0
        for i in range(0, w, size):
            value |= elem << i
        assert a64.fits_logical_imm(value, w)
        rd, rn = reg(rng, False), reg(rng)
        op = rng.choice(("and", "orr", "eor", "ands"))
        yield f"{op} {x(rd, w, op != 'ands')}, {x(rn, w)}, #{value:#x}", a64.logical_imm(op, w, rd, rn, value)
        found += 1
    for value in (0, 0xFFFFFFFF, 5, 0x12345678):
        assert not a64.fits_logical_imm(value, 32)


def _move_wide(rng):
    for _ in range(N):
        w = rng.choice((32, 64))
        rd, imm, shift = reg(rng, False), rng.randrange(1 << 16), rng.randrange(w // 16) * 16
        op = rng.choice(("movz", "movn", "movk"))
        yield f"{op} {x(rd, w)}, #{imm}, lsl #{shift}", a64.move_wide(op, w, rd, imm, shift)


def _bitfield(rng):
    for _ in range(N):
        w = rng.choice((32, 64))
        rd, rn, s = reg(rng), reg(rng), rng.randrange(1, w)
        yield f"lsl {x(rd, w)}, {x(rn, w)}, #{s}", a64.lsl_imm(w, rd, rn, s)
        yield f"lsr {x(rd, w)}, {x(rn, w)}, #{s}", a64.lsr_imm(w, rd, rn, s)
        yield f"asr {x(rd, w)}, {x(rn, w)}, #{s}", a64.asr_imm(w, rd, rn, s)
        for bits, name in ((8, "b"), (16, "h"), (32, "w")):
            if bits < w:
                yield f"sxt{name} {x(rd, w)}, {x(rn, 32)}", a64.sxt(w, rd, rn, bits)
        yield f"uxtb {x(rd, 32)}, {x(rn, 32)}", a64.uxt(rd, rn, 8)
        yield f"uxth {x(rd, 32)}, {x(rn, 32)}", a64.uxt(rd, rn, 16)
        off = rng.randrange(-(1 << 20), 1 << 20)
        yield f"adr {x(rd)}, #{off}", a64.adr(rd, off)


def _data_reg(rng):
    for _ in range(N):
        w = rng.choice((32, 64))
        rd, rn, rm, ra = (reg(rng) for _ in range(4))
        shift, amount = rng.choice(("lsl", "lsr", "asr")), rng.randrange(w)
        yield f"add {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {shift} #{amount}", a64.add_reg(w, rd, rn, rm, shift, amount)
        yield f"sub {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {shift} #{amount}", a64.sub_reg(w, rd, rn, rm, shift, amount)
        yield f"cmp {x(rn, w)}, {x(rm, w)}", a64.cmp_reg(w, rn, rm)
        yield f"neg {x(rd, w)}, {x(rm, w)}", a64.neg(w, rd, rm)
        op = rng.choice(("and", "bic", "orr", "orn", "eor", "eon", "ands", "bics"))
        lshift = rng.choice(("lsl", "lsr", "asr", "ror"))
        yield (f"{op} {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {lshift} #{amount}",
               a64.logical_reg(op, w, rd, rn, rm, lshift, amount))
        yield f"tst {x(rn, w)}, {x(rm, w)}", a64.tst_reg(w, rn, rm)
        yield f"mvn {x(rd, w)}, {x(rm, w)}", a64.mvn(w, rd, rm)
        if rd != 31 and rm != 31:
            yield f"mov {x(rd, w)}, {x(rm, w)}", a64.mov_reg(w, rd, rm)
        for op2 in ("udiv", "sdiv", "lslv", "lsrv", "asrv", "rorv"):
            yield f"{op2} {x(rd, w)}, {x(rn, w)}, {x(rm, w)}", a64.two_source(op2, w, rd, rn, rm)
        yield f"madd {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {x(ra, w)}", a64.madd(w, rd, rn, rm, ra)
        yield f"msub {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {x(ra, w)}", a64.msub(w, rd, rn, rm, ra)
        yield f"mul {x(rd, w)}, {x(rn, w)}, {x(rm, w)}", a64.mul(w, rd, rn, rm)
        yield f"rev {x(rd, w)}, {x(rn, w)}", a64.rev(w, rd, rn)
        yield f"rev16 {x(rd, w)}, {x(rn, w)}", a64.rev16(w, rd, rn)
        yield f"rev32 {x(rd)}, {x(rn)}", a64.rev32(rd, rn)
        cond = rng.choice(list(a64.COND)[:14])
        op3 = rng.choice(("csel", "csinc", "csinv", "csneg"))
        yield f"{op3} {x(rd, w)}, {x(rn, w)}, {x(rm, w)}, {cond}", a64.csel(op3, w, rd, rn, rm, cond)


_SUFFIX = {1: "b", 2: "h", 4: "", 8: ""}


def _mnemonic(kind: str, size: int, base: str) -> tuple[str, int]:
    """(mnemonic, register width of rt) of a load/store of `size` bytes."""
    if kind == "ldrs":
        return f"{base}s{ {1: 'b', 2: 'h', 4: 'w'}[size]}", 64
    return f"{base}{_SUFFIX[size]}", 64 if size == 8 else 32


def _loads_stores(rng):
    for _ in range(N):
        size = rng.choice((1, 2, 4, 8))
        kind = rng.choice(("str", "ldr") + (("ldrs",) if size < 8 else ()))
        rt, rn, rm = reg(rng), reg(rng), reg(rng)
        base = "str" if kind == "str" else "ldr"
        name, w = _mnemonic(kind, size, base)
        off = rng.randrange(4096) * size
        yield f"{name} {x(rt, w)}, [{x(rn, 64, True)}, #{off}]", a64.ldst_scaled(kind, size, rt, rn, off)
        uoff = rng.randrange(-256, 256)
        uname, _ = _mnemonic(kind, size, "stur" if kind == "str" else "ldur")
        yield f"{uname} {x(rt, w)}, [{x(rn, 64, True)}, #{uoff}]", a64.ldst_unscaled(kind, size, rt, rn, uoff)
        yield f"{name} {x(rt, w)}, [{x(rn, 64, True)}, {x(rm)}]", a64.ldst_reg(kind, size, rt, rn, rm)
        if rt != rn:  # writeback with rt == rn is unpredictable, llvm-mc refuses it
            yield f"{name} {x(rt, w)}, [{x(rn, 64, True)}, #{uoff}]!", a64.ldst_indexed(kind, size, rt, rn, uoff, True)
            yield f"{name} {x(rt, w)}, [{x(rn, 64, True)}], #{uoff}", a64.ldst_indexed(kind, size, rt, rn, uoff, False)
        rt2 = reg(rng)
        poff = rng.randrange(-64, 64) * 8
        load = rng.random() < 0.5
        pname = "ldp" if load else "stp"
        if not (load and rt == rt2):
            yield f"{pname} {x(rt)}, {x(rt2)}, [{x(rn, 64, True)}, #{poff}]", a64.ldst_pair(load, rt, rt2, rn, poff)
            if rn not in (rt, rt2) or rn == 31:
                yield (f"{pname} {x(rt)}, {x(rt2)}, [{x(rn, 64, True)}, #{poff}]!",
                       a64.ldst_pair(load, rt, rt2, rn, poff, "pre"))
                yield (f"{pname} {x(rt)}, {x(rt2)}, [{x(rn, 64, True)}], #{poff}",
                       a64.ldst_pair(load, rt, rt2, rn, poff, "post"))


def _atomics(rng):
    for _ in range(N):
        size = rng.choice((4, 8))
        w = 64 if size == 8 else 32
        rs, rt, rn = reg(rng, False), reg(rng, False), reg(rng)
        acq = rng.random() < 0.5
        yield f"{'ldaxr' if acq else 'ldxr'} {x(rt, w)}, [{x(rn, 64, True)}]", a64.ldxr(size, rt, rn, acq)
        if rs not in (rt, rn):
            yield (f"{'stlxr' if acq else 'stxr'} {x(rs, 32)}, {x(rt, w)}, [{x(rn, 64, True)}]",
                   a64.stxr(size, rs, rt, rn, acq))
        for sz in (1, 2, 4, 8):
            sw = 64 if sz == 8 else 32
            yield f"ldar{_SUFFIX[sz]} {x(rt, sw)}, [{x(rn, 64, True)}]", a64.ldar(sz, rt, rn)
            yield f"stlr{_SUFFIX[sz]} {x(rt, sw)}, [{x(rn, 64, True)}]", a64.stlr(sz, rt, rn)
        a, r = rng.random() < 0.5, rng.random() < 0.5
        order = ("a" if a else "") + ("l" if r else "")
        yield f"cas{order} {x(rs, w)}, {x(rt, w)}, [{x(rn, 64, True)}]", a64.cas(size, rs, rt, rn, a, r)
        for op in ("ldadd", "ldclr", "ldeor", "ldset", "swp"):
            rt_any = reg(rng)
            yield (f"{op}{order} {x(rs, w)}, {x(rt_any, w)}, [{x(rn, 64, True)}]",
                   a64.lse(op, size, rs, rt_any, rn, a, r))


def _branches(rng):
    for _ in range(N):
        off = rng.randrange(-(1 << 25), 1 << 25) * 4
        yield f"b #{off}", a64.b(off)
        yield f"bl #{off}", a64.bl(off)
        coff = rng.randrange(-(1 << 18), 1 << 18) * 4
        cond = rng.choice(list(a64.COND)[:14])
        yield f"b.{cond} #{coff}", a64.b_cond(cond, coff)
        w, rt = rng.choice((32, 64)), reg(rng)
        yield f"cbz {x(rt, w)}, #{coff}", a64.cbz(w, rt, coff)
        yield f"cbnz {x(rt, w)}, #{coff}", a64.cbz(w, rt, coff, nonzero=True)
        rn = reg(rng, False)
        yield f"br {x(rn)}", a64.br(rn)
        yield f"blr {x(rn)}", a64.blr(rn)
        yield f"ret {x(rn)}", a64.ret(rn)
        imm = rng.randrange(1 << 16)
        yield f"brk #{imm}", a64.brk(imm)
        yield f"svc #{imm}", a64.svc(imm)
    yield "ret", a64.ret()
    yield "nop", a64.nop()
    yield "dmb ish", a64.dmb_ish()


GROUPS = {"data_imm": _data_imm, "logical_imm": _logical_imm, "move_wide": _move_wide, "bitfield": _bitfield,
          "data_reg": _data_reg, "loads_stores": _loads_stores, "atomics": _atomics, "branches": _branches}


def assemble(lines: list[str], triple: str, attrs: str) -> list[bytes]:
    """llvm-mc's encoding of each line (one instruction per line)."""
    proc = subprocess.run([LLVM_MC, f"-triple={triple}", f"-mattr={attrs}", "-show-encoding"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, check=False)
    assert not proc.stderr.strip(), proc.stderr[:3000]
    found = [bytes(int(b, 16) for b in m.group(1).split(","))
             for m in re.finditer(r"encoding: \[([^\]]*)\]", proc.stdout)]
    assert len(found) == len(lines), proc.stdout[:2000]
    return found


@pytest.mark.skipif(LLVM_MC is None, reason="llvm-mc-19 is not installed")
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_encodings_match_llvm_mc(group):
    rng = random.Random(f"{SEED}-{group}")
    cases = list(GROUPS[group](rng))
    expected = assemble([text for text, _ in cases], "aarch64", "+lse")
    wrong = [(text, ours.hex(), theirs.hex()) for (text, ours), theirs in zip(cases, expected) if ours != theirs]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ (text, ours, llvm-mc): {wrong[:10]}"


def test_out_of_range_operands_are_refused():
    for bad in (lambda: a64.add_imm(64, 0, 0, 4097), lambda: a64.ldst_scaled("ldr", 8, 0, 0, 4),
                lambda: a64.ldst_unscaled("ldr", 8, 0, 0, 256), lambda: a64.b(2), lambda: a64.b_cond("eq", 1 << 20),
                lambda: a64.logical_imm("and", 64, 0, 0, 0), lambda: a64.ldst_scaled("ldrs", 8, 0, 0, 0),
                lambda: a64.movz(32, 0, 1, 32), lambda: a64.add_reg(64, 32, 0, 0)):
        with pytest.raises(ValueError):
            bad()
    assert a64.fits_add_imm(0xFFF000) and not a64.fits_add_imm(0x1001)
    assert a64.fits_scaled_offset(8 * 4095, 8) and not a64.fits_scaled_offset(-8, 8)


def _capstone():
    cs = pytest.importorskip("capstone", reason="capstone is not installed")
    return cs.Cs(cs.CS_ARCH_ARM64, cs.CS_MODE_ARM)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(("add", "sub", "mul", "udiv", "sdiv", "lsl")), st.integers(0, 30), st.integers(0, 30),
       st.integers(0, 30), st.sampled_from((32, 64)))
def test_register_forms_disassemble_as_meant(op, rd, rn, rm, width):
    md = _capstone()
    fn = {"add": a64.add_reg, "sub": a64.sub_reg, "mul": a64.mul,
          "udiv": lambda w, d, n, m: a64.two_source("udiv", w, d, n, m),
          "sdiv": lambda w, d, n, m: a64.two_source("sdiv", w, d, n, m),
          "lsl": lambda w, d, n, m: a64.two_source("lslv", w, d, n, m)}[op]
    (insn,) = md.disasm(fn(width, rd, rn, rm), 0)
    assert insn.mnemonic == op
    assert insn.op_str == f"{x(rd, width)}, {x(rn, width)}, {x(rm, width)}"


@pytest.fixture(scope="module")
def emulator():
    return code_runner("UC_ARCH_ARM64", "UC_MODE_ARM", "arm64_const.UC_ARM64_REG_X0")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 0xFFFF).map(lambda v: v << 32),
                 st.integers(-0x10000, 0x10000).map(lambda v: v & ((1 << 64) - 1)),
                 st.sampled_from((0, (1 << 64) - 1, 0xFFFFFFFF, 0x5555555555555555, 0x00FF00FF00FF00FF))),
       st.sampled_from((32, 64)), st.integers(0, 28))
def test_mov_imm_sets_the_value(emulator, value, width, rd):
    seq = a64.mov_imm(width, rd, value)
    assert len(seq) <= width // 16
    assert emulator(b"".join(seq), rd) == value & ((1 << width) - 1)
