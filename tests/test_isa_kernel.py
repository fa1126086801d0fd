"""Decoding against the kernel: we reject exactly what the kernel rejects when it checks instruction fields.

Each random instruction is loaded into the real verifier as the first instruction after register set-up.
The kernel's first complaint is classified: a field-level complaint ("uses reserved fields", "unknown
opcode", ...) means it refused the encoding, which our decoder must refuse too; anything semantic (pointer
arithmetic, stack bounds, division by zero) means the encoding was fine, which our decoder must accept.
"""

import os
import random
import re
import struct

import pytest

from bpforge.errors import DecodeError
from bpforge.isa import FORMS, decode

FIELD_LEVEL = re.compile(
    r"uses reserved fields|^unknown opcode|^invalid BPF_ALU opcode|^invalid BPF_LD mode|^unknown insn class"
    r"|^invalid bpf_ld_imm64 insn|^unrecognized bpf_ld_imm64 insn|^R\d+ is invalid|^invalid may_goto"
    r"|invalid atomic opcode|^invalid atomic operand size|BPF_ATOMIC uses invalid|^addr_space_cast insn can only convert")
# Whole-program passes that run before the instruction's own field check (control flow, subprogram discovery,
# resolving map fds and BTF ids); their complaints say nothing about the encoding.
EARLIER_PASS = re.compile(r"jump out of range|unreachable insn|last insn is not|jump into the middle|back-edge"
                          r"|infinite loop|call to invalid destination|is not pointing to valid bpf_map"
                          r"|without fd_array|btf_id \d+ is not")

SLOT = struct.Struct("<BBhi")
# r6 = ctx for legacy packet loads, r1-r5 and r7-r9 = frame pointer, r0 = 0
PROLOGUE = (SLOT.pack(0xBF, 1 << 4 | 6, 0, 0) + b"".join(SLOT.pack(0xBF, 10 << 4 | r, 0, 0) for r in (1, 2, 3, 4, 5, 7, 8, 9))
            + SLOT.pack(0xB7, 0, 0, 0))
EPILOGUE = SLOT.pack(0xB7, 0, 0, 0) + SLOT.pack(0x95, 0, 0, 0)
KERNEL_OPCODES = sorted({f.opcode for f in FORMS if f.kernel})
NON_KERNEL = {f.opcode for f in FORMS if not f.kernel}


def random_slot(rng: random.Random) -> bytes:
    def field(bits: int) -> int:
        pick = rng.random()
        if pick < 0.5:
            value = 0
        elif pick < 0.85:
            value = rng.choice([1, 2, 3, 8, 16, 32, 64, 0x40, 0x41, 0x50, 0x51, 0xA0, 0xA1, 0xE1, 0xF1, 0x100,
                                0x110, -1, -8])
        else:
            value = rng.getrandbits(bits)
        value &= (1 << bits) - 1
        return value - (1 << bits) if value >> (bits - 1) else value

    opcode = rng.choice(KERNEL_OPCODES) if rng.random() < 0.9 else rng.getrandbits(8)
    regs = rng.choice([0x00, 0x01, 0x10, 0x21, 0x12, 0x1A, 0xA1]) if rng.random() < 0.8 else rng.getrandbits(8)
    off = field(16) if opcode & 7 not in (5, 6) else rng.choice([0, 1, field(16)])  # jumps mostly stay inside
    data = SLOT.pack(opcode, regs, off, field(32))
    if opcode == 0x18 and rng.random() < 0.9:
        data += SLOT.pack(*((0, 0, 0) if rng.random() < 0.8 else (rng.getrandbits(8), rng.getrandbits(8), field(16))),
                          field(32))
    return data


def first_complaint(log: str) -> str:
    for line in log.splitlines():
        if line and not line[0].isdigit() and not line.startswith(("processed", "from ", "old state", "new state",
                                                                    "verification time", "stack depth", ";")):
            return line
    return log.strip().splitlines()[-1] if log.strip() else ""


@pytest.mark.parametrize("seed", range(4))
def test_decode_agrees_with_kernel_field_checks(kernel, seed):
    rng = random.Random(seed)
    disagreements = []
    for _ in range(2500):
        slot = random_slot(rng)
        try:
            decode(slot)
            ours = None
        except DecodeError as err:
            ours = err.message
        if slot[0] in NON_KERNEL and ours is None:
            continue  # callx: a valid llvm/userspace form the kernel does not implement
        result = kernel.prog_load(PROLOGUE + slot + EPILOGUE, "socket_filter")
        if result.fd is not None:
            os.close(result.fd)
            complaint = ""
        else:
            complaint = first_complaint(result.log) or f"errno {result.errno}"
        if EARLIER_PASS.search(complaint):
            continue
        kernel_refused_fields = bool(FIELD_LEVEL.search(complaint))
        if kernel_refused_fields != (ours is not None):
            disagreements.append((slot.hex(), ours, complaint))
    assert not disagreements, f"seed {seed}: {disagreements[:5]}"
