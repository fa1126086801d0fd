"""Numeric fields of the eBPF encoding (RFC 9669 section 3 and the kernel's uapi/linux/bpf.h)."""

# Instruction classes (low 3 bits of the opcode).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)

# Source bit for ALU/JMP classes.
K, X = 0x00, 0x08
# Byte-swap direction for ALU-class END (shares the source bit).
TO_LE, TO_BE = 0x00, 0x08

# ALU operation codes (high 4 bits).
ALU_OPS = {
    "add": 0x00, "sub": 0x10, "mul": 0x20, "div": 0x30, "or": 0x40, "and": 0x50, "lsh": 0x60, "rsh": 0x70,
    "neg": 0x80, "mod": 0x90, "xor": 0xA0, "mov": 0xB0, "arsh": 0xC0, "end": 0xD0,
}

# Jump operation codes (high 4 bits).
JMP_OPS = {
    "ja": 0x00, "jeq": 0x10, "jgt": 0x20, "jge": 0x30, "jset": 0x40, "jne": 0x50, "jsgt": 0x60, "jsge": 0x70,
    "call": 0x80, "exit": 0x90, "jlt": 0xA0, "jle": 0xB0, "jslt": 0xC0, "jsle": 0xD0, "jcond": 0xE0,
}

# Load/store modes (high 3 bits) and sizes (bits 3-4).
IMM, ABS, IND, MEM, MEMSX, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0
SIZES = {4: 0x00, 2: 0x08, 1: 0x10, 8: 0x18}  # bytes -> size field (W, H, B, DW)

# Atomic operations (imm field of STX|ATOMIC).
FETCH = 0x01
ATOMIC_OPS = {"add": 0x00, "or": 0x40, "and": 0x50, "xor": 0xA0}
XCHG = 0xE0 | FETCH
CMPXCHG = 0xF0 | FETCH
LOAD_ACQ = 0x100
STORE_REL = 0x110

# src_reg values that select what a 64-bit immediate load means (kernel uapi BPF_PSEUDO_*).
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE, PSEUDO_BTF_ID, PSEUDO_FUNC, PSEUDO_MAP_IDX, PSEUDO_MAP_IDX_VALUE = range(1, 7)
# src_reg values of BPF_CALL.
PSEUDO_CALL, PSEUDO_KFUNC_CALL = 1, 2

# Registers: r0-r9 general purpose, r10 the read-only frame pointer.
NUM_REGS = 11
FRAME_POINTER = 10
SLOT_SIZE = 8


def cls(opcode: int) -> int:
    return opcode & 0x07
