"""`isa.semantics.Machine` over z3 terms: `step` run on it turns straight-line code into formulas.

State: eleven 64-bit register terms and one byte-addressed memory, a z3 `Array(BitVec 64 -> BitVec 8)`
(little-endian; the prover's regions and maps will split it, K2's memory-type concretization). Without given
ones, the registers are the constants `r0`..`r10` and the memory `mem`: two machines start from the same
state, which is what an equivalence query of two programs wants.

Control is recorded, not followed: `branch` and `may_goto` append a `Branch` (target slot and the formula
under which control goes there), `exit` sets `exited`; the caller builds path conditions from them.

What this machine does not know is modelled as an uninterpreted value where that over-approximates the
kernel, and refused with `NotModelled` where any value would be wrong:
- helper and kfunc calls: r0 is a fresh constant (named after the callee), r1-r5 too (the calling convention
  clobbers them; the verifier forbids reading them), and memory becomes a fresh array (a callee may write
  whatever it was given a pointer to, or run a callback that does);
- lddw of a map, a map value, a function or a kernel object: a constant named after it (`map_3`,
  `map_value_3`, `func_12`, `kernel_object_77_0`): the same reference is the same value in every machine;
- an arena address-space cast: an uninterpreted function of the value per direction (kernel and interpreter
  represent arena pointers differently; both are such a function);
- may_goto: taken under a fresh condition (whether the loop budget is spent is not known here);
- refused: bpf-to-bpf and indirect calls (control enters another function, which this machine does not
  follow), tail calls (a successful one does not return), legacy packet loads (they read the packet, not
  memory, and end the program when out of bounds: a hidden exit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import z3

from ...errors import BpforgeError
from ...isa.helpers import helper_id, helper_name
from ...isa.semantics import BitVectorArithmetic, Condition, holds
from .bitvec import Z3_OPS

ADDR = z3.BitVecSort(64)
BYTE = z3.BitVecSort(8)
MEMORY = z3.ArraySort(ADDR, BYTE)
REGISTERS = 11
TAIL_CALL = helper_id("tail_call")


class NotModelled(BpforgeError):
    """An instruction whose effect the z3 machine cannot state without being wrong (see the module doc)."""


@dataclass(frozen=True, eq=False)  # z3 overloads == to build formulas: records of terms compare by identity
class Branch:
    """Control goes to slot `target` when `taken` holds (`True` for an unconditional jump). `condition` is the
    jump's comparison before evaluation (None for `ja` and may_goto), for a caller that refines operands."""

    target: int
    taken: z3.BoolRef
    condition: Condition | None = None


@dataclass(eq=False)
class Z3Machine(BitVectorArithmetic):
    """Registers and memory as z3 terms. `regs` (eleven 64-bit terms) and `memory` (a byte array) default to
    the named constants `r0`..`r10` and `mem`."""

    regs: list = field(default_factory=lambda: [z3.BitVec(f"r{n}", 64) for n in range(REGISTERS)])
    memory: z3.ArrayRef = field(default_factory=lambda: z3.Array("mem", ADDR, BYTE))
    branches: list[Branch] = field(default_factory=list)
    exited: bool = False
    bv = Z3_OPS

    def __post_init__(self) -> None:
        self.regs = list(self.regs)
        if len(self.regs) != REGISTERS or any(r.sort() != ADDR for r in self.regs):
            raise ValueError(f"a Z3Machine takes {REGISTERS} registers of 64 bits")

    # ---- registers and memory ---------------------------------------------------------------------------

    def reg(self, n: int):
        return self.regs[n]

    def set_reg(self, n: int, value) -> None:
        self.regs[n] = value

    def clobber(self, n: int) -> None:
        self.regs[n] = z3.FreshConst(ADDR, f"clobbered_r{n}")

    def load(self, addr, size: int):
        data = [z3.Select(self.memory, addr + i if i else addr) for i in range(size)]
        value = data[0] if size == 1 else z3.Concat(*reversed(data))  # Concat takes the high byte first
        return Z3_OPS.zext(value, 8 * size, 64)

    def store(self, addr, size: int, value, when=None) -> None:
        memory = self.memory
        for i in range(size):
            memory = z3.Store(memory, addr + i if i else addr, z3.Extract(8 * i + 7, 8 * i, value))
        self.memory = memory if when is None else z3.If(when, memory, self.memory)

    # ---- control ---------------------------------------------------------------------------------------

    def branch(self, cond: Condition | None, target: int) -> None:
        taken = z3.BoolVal(True) if cond is None else holds(Z3_OPS, cond)
        self.branches.append(Branch(target, taken, cond))

    def may_goto(self, target: int) -> None:
        self.branches.append(Branch(target, z3.FreshBool("may_goto_budget_spent")))

    def exit(self) -> None:
        self.exited = True

    def call_helper(self, helper: int) -> None:
        if helper == TAIL_CALL:
            raise NotModelled("bpf_tail_call does not return when it succeeds; the z3 machine cannot follow it")
        self._opaque_call(helper_name(helper) or f"helper_{helper}")

    def call_kfunc(self, btf_id: int, module: int) -> None:
        self._opaque_call(f"kfunc_{btf_id}_{module}")

    def _opaque_call(self, callee: str) -> None:
        self.regs[0] = z3.FreshConst(ADDR, f"{callee}_r0")
        for n in range(1, 6):
            self.regs[n] = z3.FreshConst(ADDR, f"{callee}_clobbered_r{n}")
        self.memory = z3.FreshConst(MEMORY, f"mem_after_{callee}")

    def call_local(self, target: int) -> None:
        raise NotModelled(f"a bpf-to-bpf call (to slot {target}) enters another function; the z3 machine "
                          "models one function's straight-line code")

    def call_indirect(self, addr) -> None:
        raise NotModelled("an indirect call (callx) enters another function; the z3 machine models one "
                          "function's straight-line code")

    # ---- what the loader resolves ----------------------------------------------------------------------

    def map_handle(self, ref: int):
        return z3.BitVec(f"map_{ref}", 64)

    def map_value(self, ref: int):
        return z3.BitVec(f"map_value_{ref}", 64)

    def function_address(self, slot: int):
        return z3.BitVec(f"func_{slot}", 64)

    def kernel_object(self, btf_id: int, module: int):
        return z3.BitVec(f"kernel_object_{btf_id}_{module}", 64)

    def legacy_load(self, size: int, offset):
        raise NotModelled("a legacy packet load (LD_ABS/LD_IND) reads the packet and may end the program; "
                          "the z3 machine does not model it")

    def addr_space_cast(self, value, dst_as: int, src_as: int):
        return z3.Function(f"addr_space_cast_{dst_as}_{src_as}", ADDR, ADDR)(value)


__all__ = ["Branch", "NotModelled", "Z3Machine"]
