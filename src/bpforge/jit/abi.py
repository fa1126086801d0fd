"""What the JITs agree on, as data: which native register holds which BPF register on each architecture,
and the layout of the control block native code and the run share (the run's cells, the call-back
protocol, the region tables that turn the VM's addresses into native ones).

Addresses: native code computes with the VM's own addresses (`vm.memory`: region i at (i + 1) << 32), so
every pointer a program holds, passes to a helper or stores is the value the interpreter has. A memory
access adds the region's delta (native address of its bytes minus its VM base), read from the DELTA table
by the address's high half; in sandbox mode the access is first checked against the region's bounds and
flags, and anything that is not a plain access of those bytes goes to the run's own `Memory` (which faults
with the interpreter's message or gives a context field's value).
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- register maps: BPF r0..r10 -> native register numbers ------------------------------------------------

@dataclass(frozen=True)
class RegisterMap:
    """`bpf[n]`: the native register of BPF register n; `ctl`: the control block's base; `scratch`: free for
    expression values; `tmp`: the selector's own temporary (addresses, divisors, saved shift counts).
    The load/store machines also name `temps` (more temporaries: region-table lookups, counters, compare
    operands), `tables` (the base of the region tables, ctl + DELTA, kept in a register because DELTA is
    too far for their load offsets), `internal` (what the machine ops use inside one native sequence:
    a large offset or immediate, a remainder's quotient), `kind` (the call-back's sixth C argument),
    `saved` (callee-saved registers the repeat loop keeps its state in) and `link`."""

    arch: str
    bpf: tuple[int, ...]
    ctl: int
    scratch: tuple[int, ...]
    tmp: int
    temps: tuple[int, ...] = ()
    tables: int = -1
    internal: tuple[int, ...] = ()
    kind: int = -1
    saved: tuple[int, ...] = ()
    link: int = -1


# x86-64 as the kernel maps it (arch/x86/net/bpf_jit_comp.c): r1-r5 are the C argument registers, so a helper
# call needs no moves; r6-r9 and the frame pointer are callee-saved. r12 holds the control block.
X86_64 = RegisterMap("x86_64", bpf=(0, 7, 6, 2, 1, 8, 3, 13, 14, 15, 5), ctl=12, scratch=(9, 10), tmp=11)

# arm64 as the kernel maps it (arch/arm64/net/bpf_jit_comp.c): r0 in x7, r1-r5 in the argument registers
# x0-x4, r6-r9 in the callee-saved x19-x22 and the frame pointer in x25; x26/x27 (callee-saved, as the
# kernel keeps its tail-call counter and arena base there) hold the control block and the region tables;
# x9-x15 are temporaries, x16/x17 (IP0/IP1) the machine ops' own.
ARM64 = RegisterMap("arm64", bpf=(7, 0, 1, 2, 3, 4, 19, 20, 21, 22, 25), ctl=26, scratch=(13, 14, 15), tmp=9,
                    temps=(10, 11, 12), tables=27, internal=(16, 17), kind=5, saved=(23, 24), link=30)

# riscv64 as the kernel maps it (arch/riscv/net/bpf_jit_comp64.c): r0 in a5, r1-r5 in a0-a4, r6-r9 in
# s1-s4, the frame pointer in s5; s6/s7 hold the control block and the region tables; t0-t6, a6 and a7
# are temporaries. The call-back's sixth argument is a5, which holds r0: a call-out saves r0 in its cell
# first, as every call-out does.
RISCV64 = RegisterMap("riscv64", bpf=(15, 10, 11, 12, 13, 14, 9, 18, 19, 20, 21), ctl=22, scratch=(29, 30, 31),
                      tmp=5, temps=(6, 7, 17), tables=23, internal=(28, 16), kind=15, saved=(24, 25), link=1)

# ---- the control block ---------------------------------------------------------------------------------

CELL = 8
STATUS = 0  # what the last call-back asks native code to do (below)
R0 = 8  # a call-back's result / the r0 it must leave alone
SLOT = 16  # the slot a call-back was made from
SAVED_SP = 24  # the native stack pointer to unwind to when a run aborts
DEPTH = 32  # BPF call depth (0: the program's own frame)
MAY_GOTO = 40  # the current frame's may_goto count
EXPIRED = 48  # nonzero once the instruction budget ran out in a program with may_goto
EXECUTED = 56  # instructions executed (counted per block where counting is on)
BUDGET = 64  # instructions the run may execute (grows once when may_goto expires)
LIMIT = 72  # the budget each run starts with
CALLBACK = 80  # the address of the run's call-back
TAIL_TARGET = 88  # the native address a tail call continues at
TAIL_CALLS = 96  # tail calls taken in this run
ERROR = 104  # nonzero once a run ended with an error (a repeat loop stops)
R1_IN = 112  # the program's first two arguments
R2_IN = 120
VALUE = 128  # a call-back's value for native code (a load's result, a resolved address)
NREGIONS = 136
ARGS = 144  # r1-r5 of a call from the run into a BPF function (bpf_loop's callback): 5 cells
STACK_TOP = 184  # the VM address of the top of each call depth's stack: MAX_CALL_FRAMES cells
PKT_DATA = 248  # LD_ABS/LD_IND: the native address of skb->data (0: the program has no socket buffer)
PKT_LEN = 256  # ... and the bytes from there to the tail
CELLS = 512  # per-program cells from here: map handles, map value pointers, function addresses, context
# fields (see jit.lower.Cells)
MAX_CELLS = 4096

MAX_REGIONS = 1 << 16
DELTA = CELLS + MAX_CELLS * CELL  # MAX_REGIONS cells each: indexed by region number (address >> 32) - 1
LO = DELTA + MAX_REGIONS * CELL
HI = LO + MAX_REGIONS * CELL
FLAGS = HI + MAX_REGIONS * CELL
SIZE = FLAGS + MAX_REGIONS * CELL

FLAG_SPECIAL = 1  # not plain bytes (a context with pointer or computed fields, a region with no bytes)
FLAG_READONLY = 2

# STATUS after a call-back
CONTINUE = 0
ABORT = 1  # the run ends (a fault, whose error the run keeps, or a failed LD_ABS: r0 = 0)
TAIL_CALL = 2  # continue at TAIL_TARGET in this frame

# KIND of a call-back: category << 32 | argument
HELPER = 0  # argument: helper id; r1-r5 as the C arguments
KFUNC = 1  # argument: index into the program's kfunc table
LOAD = 2  # argument: size; address as the first C argument; value -> R0
STORE = 3  # argument: size; address, value
LEGACY = 4  # argument: size; 32-bit offset; value -> R0
CAST = 5  # argument: address-space code; value -> R0
FAULT = 6  # argument: what (below); a value as the first C argument
TICK = 7  # the instruction count passed the budget
RESOLVE = 8  # argument: what (below); -> VALUE: a native address, or a cell filled
ATOMIC = 9  # argument: size; address: check a sandboxed atomic's access -> VALUE: the native address

# RESOLVE arguments
RESOLVE_CALLX = 1  # the native entry of the function at a VM address (first C argument)
RESOLVE_CELL = 2  # fill the cell at the control-block offset (first C argument) or fault as the VM would

# FAULT arguments
FAULT_DEPTH = 1  # too many call frames
FAULT_NOT_FUNCTION = 2  # callx to an address that is no function of the program
FAULT_KERNEL_OBJECT = 3  # lddw of a kernel object
FAULT_CONTROL = 4  # control reached a slot that is no instruction of the function (value: the slot)
FAULT_MAP_REF = 5  # lddw of a map the program does not have (value: the reference)


def kind(category: int, argument: int, image: int = 0) -> int:
    """A call-back's KIND: which image calls (bits 48-63), the category (32-47), its argument (0-31)."""
    return image << 48 | category << 32 | argument & 0xFFFFFFFF
