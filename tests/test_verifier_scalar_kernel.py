"""Kernel agreement of the scalar domain: random straight-line programs (unknown scalars from helpers, narrowed
by branches to a common exit, then ALU ops of every kind) are loaded with the verifier log at level 2; we
replay the kernel's own exploration (its log says which path it is on) with our domain and require the very
same scalar — tnum and all eight bounds — for every scalar register the kernel prints at every instruction,
the same decided branches, and the same text (`format_scalar`) as the log."""

from __future__ import annotations

import os
import random
import re

import pytest

from bpforge.isa import assemble
from bpforge.isa.codec import encode
from bpforge.isa.ops import Alu, Call, Exit, Imm, Jump, Reg, Unary, decode_ops
from bpforge.isa.progtypes import PROG_TYPES
from bpforge.isa.semantics import NEGATED
from bpforge.verifier.branch import branch_taken, refine
from bpforge.verifier.format import format_scalar, parse_scalar
from bpforge.verifier.scalar import Scalar, alu

SCALARS = (0, 1, 2, 3, 6, 7, 8, 9)  # registers holding scalars once the prologue ran
ALU_OPS = ("add", "sub", "mul", "div", "mod", "sdiv", "smod", "or", "and", "xor", "lsh", "rsh", "arsh")
SYMBOL = {"add": "+=", "sub": "-=", "mul": "*=", "div": "/=", "mod": "%=", "sdiv": "s/=", "smod": "s%=",
          "or": "|=", "and": "&=", "xor": "^=", "lsh": "<<=", "rsh": ">>=", "arsh": "s>>="}
JUMPS = {"eq": "==", "ne": "!=", "ugt": ">", "uge": ">=", "ult": "<", "ule": "<=", "sgt": "s>", "sge": "s>=",
         "slt": "s<", "sle": "s<=", "set": "&"}
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 100, 255, 256, 1000, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
               -1, -2, -8, -100, -256, -0x8000, -0x80000000)


def _imm(rng: random.Random) -> int:
    return rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randint(-(1 << 31), (1 << 31) - 1)


def generate(rng: random.Random, steps: int) -> str:
    """Assembly text: unknowns (u64 and u32, some narrowed) in r6-r9, constants in r0-r3, then `steps`
    random branches (to `out`) and ALU operations. A register copy is always followed by a non-add operation
    on the copy, so no two registers stay linked by an id (the kernel refines linked copies together, which is
    not the scalar domain's business)."""
    lines = []
    for r in (6, 7, 8, 9):
        lines.append(f"call {rng.choice((5, 7))}")
        lines.append(f"r{r} = r0" if rng.random() < 0.5 else f"w{r} = w0")
    for r in (0, 1, 2, 3):
        lines.append(f"{rng.choice('rw')}{r} = {_imm(rng)}")

    def reg(w):
        return f"{w}{rng.choice(SCALARS)}"

    def alu_line(w, dst, no_add=False):
        ops = [o for o in ALU_OPS if not (no_add and o == "add")]
        op = rng.choice(ops)
        bits = 64 if w == "r" else 32
        if op in ("lsh", "rsh", "arsh"):
            src = str(rng.randrange(bits)) if rng.random() < 0.8 else f"{w}{rng.choice(SCALARS)}"
        elif op in ("div", "mod", "sdiv", "smod") and rng.random() < 0.5:
            src = str(rng.choice([i for i in INTERESTING if i]))  # the kernel refuses a constant zero divisor
        elif op in ("div", "mod", "sdiv", "smod"):
            src = f"{w}{rng.choice(SCALARS)}"
        else:
            src = str(_imm(rng)) if rng.random() < 0.5 else f"{w}{rng.choice(SCALARS)}"
        return f"{w}{dst} {SYMBOL[op]} {src}"

    for _ in range(steps):
        kind = rng.random()
        w = rng.choice("rw")
        dst = rng.choice(SCALARS)
        if kind < 0.35:
            cmp = rng.choice(list(JUMPS))
            src = str(_imm(rng)) if rng.random() < 0.7 else f"{w}{rng.choice(SCALARS)}"
            lines.append(f"if {w}{dst} {JUMPS[cmp]} {src} goto out")
        elif kind < 0.75:
            lines.append(alu_line(w, dst))
        elif kind < 0.83:
            lines.append(f"{w}{dst} = -{w}{dst}")
        elif kind < 0.9:
            op, bits = rng.choice(("le", "be", "bswap")), rng.choice((16, 32, 64))
            lines.append(f"r{dst} = {op}{bits} r{dst}")
        else:
            src = rng.choice(SCALARS)
            if rng.random() < 0.5:
                lines.append(f"{w}{dst} = {w}{src}")
            elif w == "r":
                lines.append(f"r{dst} = (s{rng.choice((8, 16, 32))})r{src}")
            else:
                lines.append(f"w{dst} = (s{rng.choice((8, 16))})w{src}")
            lines.append(alu_line(w, dst, no_add=True) if src != dst else f"{w}{dst} ^= 0")
    if not any("goto out" in line for line in lines):
        lines.append(f"if r{rng.choice(SCALARS)} s> {_imm(rng)} goto out")
    lines += ["r0 = 0", "exit", "out:", "r0 = 0", "exit"]
    return "\n".join(lines) + "\n"


# ---- replaying the kernel's log ------------------------------------------------------------------------

_INSN = re.compile(r"^(\d+): \(([0-9a-f]{2})\) (.*?)(?:\s+; (.*))?$")
_FULL = re.compile(r"^(\d+): (R\d.*)$")
_FROM = re.compile(r"^from (\d+) to (\d+): (.*)$")
_REG = re.compile(r"\bR(\d+)(?:_[rw]+)?=")


def registers(text: str) -> dict[int, str]:
    """The register texts of a printed state (stack slots and the like ignored)."""
    out = {}
    marks = list(_REG.finditer(text))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        value = text[m.end():end].strip()
        value = re.split(r"\s+fp-\d+", value)[0].strip()
        out[int(m.group(1))] = value
    return out


class Mismatch(AssertionError):
    pass


def _operand(state, src):
    return src.value if isinstance(src, Imm) else state[src.n]


def step(state: dict, op) -> tuple[dict, tuple[int, dict] | None, str | None]:
    """Our transfer of one instruction: the new state, a pushed (target, state) for an undecided branch,
    and what a decided branch says ("taken" / "fall")."""
    state = dict(state)
    if isinstance(op, Alu):
        dst = state.get(op.dst) if op.op not in ("mov", "movsx") else Scalar.unknown()
        state[op.dst] = alu(op.op, op.width, dst, _operand(state, op.src), op.ext)
    elif isinstance(op, Unary):
        state[op.dst] = alu(op.op, op.width, state[op.dst])
    elif isinstance(op, Call):
        for r in range(1, 6):
            state.pop(r, None)
        state[0] = Scalar.unknown()
    elif isinstance(op, Jump) and op.cmp is not None:
        a = state[op.dst]
        b = Scalar.known(op.src.value) if isinstance(op.src, Imm) else state[op.src.n]
        decided = branch_taken(op.cmp, op.width, a, b)
        if decided is not None:
            return state, None, "taken" if decided else "fall"
        same = isinstance(op.src, Reg) and op.src.n == op.dst
        taken, fall = dict(state), dict(state)
        for side, cmp in ((taken, op.cmp), (fall, NEGATED[op.cmp])):
                refined = refine(cmp, op.width, a, b, same=same)
                assert refined is not None, f"impossible side {cmp} of {a} vs {b}"
                side[op.dst] = refined[0]
                if isinstance(op.src, Reg):
                    side[op.src.n] = refined[1]
        return fall, (op.target, taken), None
    return state, None, None


def replay(log: str, ops) -> int:
    """Follow the kernel's log with our domain; returns how many register states were compared."""
    state: dict = {}
    pending: dict[tuple[int, int], dict] = {}
    compared = 0
    expect_next: int | None = 0

    def compare(pc, printed, ours, where):
        nonlocal compared
        for r, text in printed.items():
            theirs = parse_scalar(text)
            if theirs is None:
                continue
            mine = ours.get(r)
            if mine != theirs:
                raise Mismatch(f"{where} insn {pc} R{r}: kernel {text} ours {mine and format_scalar(mine)}")
            plain = re.sub(r"^P|id=\d+([+-]\d+)?,?", "", text).replace(",)", ")").replace("()", "()")
            if format_scalar(mine) != plain:
                raise Mismatch(f"{where} insn {pc} R{r}: kernel prints {text}, we print {format_scalar(mine)}")
            compared += 1

    for line in log.splitlines():
        if m := _FROM.match(line):
            src_pc, dst_pc, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if (src_pc, dst_pc) not in pending:
                raise Mismatch(f"kernel explores {src_pc} -> {dst_pc}, which we decided")
            state = pending.pop((src_pc, dst_pc))
            if rest.strip() != "safe":
                compare(dst_pc, registers(rest), state, "from")
            expect_next = dst_pc
        elif m := _INSN.match(line):
            pc = int(m.group(1))
            if expect_next is not None and pc != expect_next:
                raise Mismatch(f"kernel went to {pc}, we expected {expect_next}")
            op = ops[pc]
            state, push, decided = step(state, op)
            if push is not None:
                pending[(pc, push[0])] = push[1]
            if isinstance(op, Exit):
                expect_next = None
            elif decided == "taken":
                expect_next = op.target
            else:
                expect_next = pc + 1
            if m.group(4):
                compare(pc, registers(m.group(4)), state, "after")
        elif (m := _FULL.match(line)) and state:
            compare(int(m.group(1)), registers(m.group(2)), state, "at")
        elif re.match(r"^\d+: safe$", line):
            expect_next = None
    return compared


def check_program(kernel, text: str) -> int:
    insns = assemble(text)
    result = kernel.syscall.bpf_prog_load(encode(insns), PROG_TYPES["socket_filter"], log_level=2,
                                          log_size=1 << 22)
    try:
        assert result.accepted, result.log[-2000:]
        return replay(result.log, decode_ops(insns))
    finally:
        if result.fd is not None:
            os.close(result.fd)


def run_seeds(kernel, seeds, steps=12) -> tuple[int, int]:
    programs = compared = 0
    for seed in seeds:
        text = generate(random.Random(seed), steps)
        try:
            compared += check_program(kernel, text)
        except Mismatch as e:
            raise AssertionError(f"seed {seed}: {e}\n{text}") from None
        programs += 1
    return programs, compared


def test_kernel_agrees_on_random_programs(kernel):
    programs, compared = run_seeds(kernel, range(800))
    assert programs == 800 and compared > 30000


@pytest.mark.slow
def test_kernel_agrees_on_many_random_programs(kernel):
    run_seeds(kernel, range(1000, 5000), steps=20)
