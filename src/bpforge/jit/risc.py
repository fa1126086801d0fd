"""Instruction selection for the load/store machines (arm64, riscv64): a lowered program's effects and nodes
(`jit.mir`) into native code, over a per-architecture `MachineOps` that only knows encodings (moves of
constants, ALU register/immediate forms with their fits-checks, compare-and-branch, loads and stores,
calls, atomics, extensions, byte swaps).

The frame follows the kernel's arm64 and riscv64 JITs and the x86-64 backend's control-block protocol
(`abi`): BPF registers live where `ops.regs` puts them (r1-r5 in the C argument registers), a BPF call is a
branch-and-link with the caller saving the link register, r6-r9, the frame pointer and the may_goto count
on the native stack, exit is `ret`, and a tail call branches to the target's first instruction in the same
frame. A call-out to the run (helpers, kfuncs, sandboxed accesses, faults, the budget) saves r1-r5 and the
link register, passes the category in `regs.kind`, leaves r0 in its cell and takes it back from there; the
call-back's status comes back in the first argument register.

Values are computed three-address style: an operation's operands are leaf registers or scratch registers,
and only the last instruction of a node writes the register it is computed into, so a node may be
computed into a register its operands read. A value narrower than 64 bits is "exact" when the bits above
its width are zero: arm64's W operations give that for free, riscv64's W operations sign-extend, so there a
zero-extension the MIR asks for costs an instruction pair (`ops.alu32_exact`), which is left out where no
path reads the destination's upper half before overwriting it (`analysis.upper`, as the kernel's verifier
marks the zero-extensions its riscv64 JIT must emit).
"""

from __future__ import annotations

from contextlib import contextmanager

from ..analysis.cfg import cfg_of_ops
from ..analysis.upper import upper_dead_after
from ..errors import BpforgeError
from ..isa.ops import LoadImm64
from ..isa.semantics import NEGATED
from ..vm.interp import MAX_CALL_FRAMES, MAY_GOTO_BUDGET
from . import abi
from .emit import Label
from .image import Image
from .lower import Lowered
from .mir import AtomicRmw, Call, Node, Store
from .selector import Selector

_BINARY = frozenset({"add", "sub", "mul", "and", "or", "xor", "shl", "lshr", "ashr", "udiv", "urem", "sdiv", "srem"})
_SHIFTS = frozenset({"shl", "lshr", "ashr"})


class RiscCompiler(Selector):
    def __init__(self, lowered: Lowered, ops) -> None:
        regs = ops.regs
        super().__init__(lowered, regs.bpf, regs.scratch)
        self.ops = ops
        self.CTL, self.TMP, self.TABLES, self.LINK = regs.ctl, regs.tmp, regs.tables, regs.link
        self.T1, self.T2, self.T3 = regs.temps
        self.ARGS = tuple(regs.bpf[1:6])  # r1-r5: the C argument registers
        self.upper_dead = frozenset() if ops.alu32_exact else _upper_dead(lowered)

    # ---- small helpers -----------------------------------------------------------------------------------

    def emit(self, *chunks: bytes) -> None:
        self.asm.emit(*chunks)

    def cell_load(self, reg: int, offset: int) -> None:
        self.emit(self.ops.load(8, reg, self.CTL, offset))

    def cell_store(self, reg: int, offset: int) -> None:
        self.emit(self.ops.store(8, reg, self.CTL, offset))

    def cell_set(self, offset: int, value: int, via: int) -> None:
        if value == 0:
            self.cell_store(self.ops.zero, offset)
        else:
            self.emit(self.ops.li(via, value))
            self.cell_store(via, offset)

    def cell_add(self, offset: int, delta: int, via: int) -> None:
        self.cell_load(via, offset)
        self.emit(self.ops.add_const(via, via, delta))
        self.cell_store(via, offset)

    # ---- the image -------------------------------------------------------------------------------------

    def compile(self) -> Image:
        asm, ops, H = self.asm, self.ops, self.H
        entry, callfn, repeat = Label("entry"), Label("call function"), Label("repeat")
        asm.label(entry)  # uint64 entry(ctl)
        self._prologue()
        self.cell_load(H[1], abi.R1_IN)
        self.cell_load(H[2], abi.R2_IN)
        self.cell_load(H[10], abi.STACK_TOP)
        for n in (0, 3, 4, 5, 6, 7, 8, 9):
            self.emit(ops.mov(H[n], ops.zero))
        self.cell_set(abi.DEPTH, 0, self.T1)
        self.cell_set(abi.MAY_GOTO, MAY_GOTO_BUDGET, self.T1)
        self._call_label(self.functions[0] if 0 in self.functions else self._control_fault(0))
        self._jmp(self.epilogue)

        asm.label(callfn)  # uint64 call_function(ctl, native target): a BPF function called from a helper
        self._prologue()
        target = self.TMP
        self.emit(ops.mov(target, ops.regs.bpf[2]))  # the second C argument: r2's register
        self.cell_load(self.T2, abi.MAY_GOTO)
        self.emit(ops.push([self.T2]))
        self._enter_frame()
        for i, r in enumerate(self.ARGS):
            self.cell_load(r, abi.ARGS + 8 * i)
        for n in (0, 6, 7, 8, 9):
            self.emit(ops.mov(H[n], ops.zero))
        self.cell_set(abi.MAY_GOTO, MAY_GOTO_BUDGET, self.T1)
        self.emit(ops.call_reg(target))
        self.cell_add(abi.DEPTH, -1, self.T1)
        self.emit(ops.pop([self.T2]))
        self.cell_store(self.T2, abi.MAY_GOTO)

        asm.label(self.epilogue)
        self.emit(ops.pop([self.T1]), ops.store(8, self.T1, self.CTL, abi.SAVED_SP), ops.mov(ops.ret_reg, H[0]),
                  ops.pop(self._callee_saved()), ops.ret())

        asm.label(self.dispatch)  # a call-back asked for something other than "continue" (status in T1)
        tail = Label("tail call")
        self._cond_branch("eq", 64, self.T1, None, abi.TAIL_CALL, tail)
        self.cell_load(self.T1, abi.SAVED_SP)
        self.emit(ops.set_sp(self.T1), ops.mov(H[0], ops.zero))
        self._jmp(self.epilogue)
        asm.label(tail)
        self.cell_load(H[0], abi.R0)
        self.cell_set(abi.MAY_GOTO, MAY_GOTO_BUDGET, self.T1)
        self.cell_load(self.T1, abi.TAIL_TARGET)
        self.emit(ops.jump_reg(self.T1))

        asm.label(repeat)  # uint64 repeat(ctl, n): n runs, as test_run's loop does them, until one fails
        ctl_saved, count = ops.regs.saved
        first, second = ops.regs.bpf[1], ops.regs.bpf[2]
        again, done = Label("again"), Label("done")
        self.emit(ops.push([self.LINK, ctl_saved, count]), ops.mov(ctl_saved, first), ops.mov(count, second))
        asm.label(again)
        for cell in (abi.EXECUTED, abi.TAIL_CALLS, abi.EXPIRED):
            self.emit(ops.store(8, ops.zero, ctl_saved, cell))
        self.emit(ops.load(8, self.T1, ctl_saved, abi.LIMIT), ops.store(8, self.T1, ctl_saved, abi.BUDGET),
                  ops.mov(first, ctl_saved))
        self._call_label(entry)
        self.emit(ops.load(8, self.T1, ctl_saved, abi.ERROR))
        self._cond_branch("ne", 64, self.T1, None, 0, done)
        self.emit(ops.add_const(count, count, -1))
        self._cond_branch("ne", 64, count, None, 0, again)
        asm.label(done)
        self.emit(ops.pop([self.LINK, ctl_saved, count]), ops.ret())

        return self._image(ops.arch, entry, callfn, repeat)

    def _callee_saved(self) -> list[int]:
        H = self.H
        return [self.LINK, H[6], H[7], H[8], H[9], H[10], self.CTL, self.TABLES]

    def _prologue(self) -> None:
        """Save what the C ABI wants saved, take the control block from the first argument and push the
        SAVED_SP of the run that may be active (a call_function from a helper nests a run)."""
        ops = self.ops
        self.emit(ops.push(self._callee_saved()), ops.mov(self.CTL, self.ARGS[0]),
                  ops.add_const(self.TABLES, self.CTL, abi.DELTA))
        self.cell_load(self.T1, abi.SAVED_SP)
        self.emit(ops.push([self.T1]), ops.get_sp(self.T1))
        self.cell_store(self.T1, abi.SAVED_SP)

    def _enter_frame(self) -> None:
        """DEPTH += 1 and the frame pointer to that depth's stack top."""
        ops = self.ops
        self.cell_load(self.T1, abi.DEPTH)
        self.emit(ops.add_const(self.T1, self.T1, 1))
        self.cell_store(self.T1, abi.DEPTH)
        self.emit(ops.add_shifted(self.T2, self.CTL, self.T1, 3), ops.load(8, self.H[10], self.T2, abi.STACK_TOP))

    # ---- branches and labels ---------------------------------------------------------------------------

    def _jmp(self, label: Label) -> None:
        ops = self.ops
        self.asm.branch(label, lambda rel, short: ops.jump(rel + 4), 4, 4, lambda rel: ops.fits_jump(rel + 4))

    def _call_label(self, label: Label) -> None:
        ops = self.ops
        self.asm.branch(label, lambda rel, short: ops.call(rel + 4), 4, 4, lambda rel: ops.fits_jump(rel + 4))

    def _cond_branch(self, name: str, w: int, a: int, b: int | None, imm: int, label: Label) -> None:
        """Branch to `label` when `a` <name> (`b`, or the immediate when `b` is None) at width `w`: the
        machine's compare (flags, or operands put in shape) then a short branch, or, out of its reach, the
        inverted branch over an unconditional jump."""
        ops = self.ops
        prefix, short, inverse = ops.compare_branch(name, w, a, b, imm)
        self.emit(prefix)

        def encode(rel: int, is_short: bool) -> bytes:
            if is_short:
                return short(rel + 4)
            return inverse(8) + ops.jump(rel + 4)  # rel is from the end of the 8-byte pair
        self.asm.branch(label, encode, 4, 8, lambda rel: ops.fits_cond(rel + 4))

    # ---- call-outs to the run ----------------------------------------------------------------------------

    def _callout(self, kind: int, setup=None) -> None:
        """Call the run with `kind`, r1-r5 and the link register preserved; `setup()` puts the C arguments
        in place once they are saved (it may read every BPF register, r0 included)."""
        ops, H = self.ops, self.H
        saved = [*self.ARGS, self.LINK]
        self.emit(ops.push(saved))
        if setup is not None:
            setup()
        self.cell_store(H[0], abi.R0)  # before the kind, whose register may be r0's (riscv64)
        self.cell_set(abi.SLOT, self.slot, self.T1)
        self.emit(ops.li(ops.regs.kind, kind))
        self.cell_load(self.T1, abi.CALLBACK)
        self.emit(ops.call_reg(self.T1), ops.mov(self.T1, ops.ret_reg), ops.pop(saved))
        self._cond_branch("ne", 64, self.T1, None, 0, self.dispatch)
        self.cell_load(H[0], abi.R0)

    def _arg(self, i: int, reg: int) -> None:
        if self.ARGS[i] != reg:
            self.emit(self.ops.mov(self.ARGS[i], reg))

    def _branch_if(self, cond, label: Label) -> None:
        self._condition(cond, label)

    def _extend(self, reg: int, from_width: int) -> None:
        self.emit(self.ops.sext(reg, reg, from_width, 64))

    def _set_reg(self, n: int, value: Node) -> None:
        if value.op == "zext" and value.value == 32 and self.slot in self.upper_dead:
            self._into(value.args[0], self.H[n], exact=False)  # bits 32-63 are never read as they are
        else:
            self._into(value, self.H[n])

    def _may_goto(self, target: Label) -> None:
        self.cell_load(self.T1, abi.MAY_GOTO)
        self._cond_branch("eq", 64, self.T1, None, 0, target)
        self.cell_load(self.T2, abi.EXPIRED)
        self._cond_branch("ne", 64, self.T2, None, 0, target)
        self.emit(self.ops.add_const(self.T1, self.T1, -1))
        self.cell_store(self.T1, abi.MAY_GOTO)

    def _exit(self) -> None:
        self.emit(self.ops.ret())

    def _fault(self, what: int, value: int = 0) -> None:
        self._callout(self._kind(abi.FAULT, what), lambda: self.emit(self.ops.li(self.ARGS[0], value)))
        self.emit(self.ops.trap())  # the run raises: control never comes back

    def _charge(self, n: int) -> None:
        resume = Label("charged")
        self.cell_add(abi.EXECUTED, n, self.T1)
        self.cell_load(self.T2, abi.BUDGET)
        self._cond_branch("ugt", 64, self.T1, self.T2, 0,
                          self._stub(lambda: self._callout(self._kind(abi.TICK, 0)), resume))
        self.asm.label(resume)

    # ---- instructions ------------------------------------------------------------------------------------

    # ---- values ----------------------------------------------------------------------------------------

    def _leaf_reg(self, node: Node) -> int | None:
        """The register already holding `node` (its low bits, for a trunc), if any."""
        while node.op == "trunc":
            node = node.args[0]
        if node.op == "reg":
            return self.H[node.value]
        if node.is_const and node.value == 0:
            return self.ops.zero
        return self.fetched.get(node)

    @contextmanager
    def _in_reg(self, node: Node):
        """A register holding `node`'s low `node.width` bits: its own, or a scratch one computed."""
        reg = self._leaf_reg(node)
        if reg is not None:
            yield reg
            return
        with self._scratch() as s:
            self._into(node, s, exact=False)
            yield s

    def _into(self, node: Node, target: int, exact: bool = True) -> None:
        """Code leaving `node`'s value in `target` (with `exact`, zero above the node's width)."""
        ops = self.ops
        op, w = node.op, node.width
        if op == "const":
            self.emit(ops.li(target, node.value))
        elif op == "reg" or node in self.fetched:
            source = self._leaf_reg(node)
            if source != target:
                self.emit(ops.mov(target, source))
        elif op in ("map", "mapvalue", "func"):
            table = {"map": self.lw.cells.maps, "mapvalue": self.lw.cells.map_values, "func": self.lw.cells.functions}
            cell = table[op][node.value]
            self.cell_load(target, cell)
            resume = Label("resolved")
            self._cond_branch("eq", 64, target, None, 0, self._stub(lambda: self._resolve_cell(cell, target), resume))
            self.asm.label(resume)
        elif op == "kobj":
            self._fault(abi.FAULT_KERNEL_OBJECT)
        elif op in _BINARY:
            self._binary(node, target, exact)
        elif op == "neg":
            with self._in_reg(node.args[0]) as a:
                self.emit(ops.alu("sub", w, target, ops.zero, a))
            self._exactly(target, w, exact)
        elif op == "zext":
            self._into(node.args[0], target, exact=True)
        elif op == "trunc":
            source = self._leaf_reg(node)
            if source is not None:
                if exact:
                    self.emit(ops.zext(target, source, w))
                elif source != target:
                    self.emit(ops.mov(target, source))
            else:
                self._into(node.args[0], target, exact=False)
                if exact:
                    self.emit(ops.zext(target, target, w))
        elif op == "sext":
            with self._in_reg(node.args[0]) as a:
                self.emit(ops.sext(target, a, node.value, w))  # exact at width w
        elif op == "bswap":
            with self._in_reg(node.args[0]) as a:
                self.emit(ops.bswap(w, target, a))  # exact
        elif op == "ite":
            cond, a, b = node.args
            otherwise, done = Label("else"), Label("end if")
            self._condition(cond, otherwise, negate=True)
            self._into(a, target, exact)
            self._jmp(done)
            self.asm.label(otherwise)
            self._into(b, target, exact)
            self.asm.label(done)
        else:
            raise ValueError(f"no {ops.arch} selection for {op}")

    def _exactly(self, target: int, w: int, exact: bool) -> None:
        """After a `w`-bit operation: zero above its width if asked and the machine did not."""
        if exact and w < 64 and not (w == 32 and self.ops.alu32_exact):
            self.emit(self.ops.zext(target, target, w))

    def _binary(self, node: Node, target: int, exact: bool) -> None:
        ops = self.ops
        a, b = node.args
        w, op = node.width, node.op
        if op in _SHIFTS and b.op == "and" and b.args[1].is_const and b.args[1].value == w - 1:
            b = b.args[0]  # the machine masks the count to the width, as the semantics does
        if a.is_const and not b.is_const and op in ("add", "mul", "and", "or", "xor") and a.value != 0:
            a, b = b, a  # commutative: the constant second, where an immediate form may take it
        with self._in_reg(a) as ra:
            code = ops.alu_imm(op, w, target, ra, b.value) if b.is_const else None
            if code is None:
                with self._in_reg(b) as rb:
                    code = ops.alu(op, w, target, ra, rb)
            self.emit(code)
        self._exactly(target, w, exact)

    def _condition(self, cond, label: Label, negate: bool = False) -> None:
        """Branch to `label` when the comparison node or `semantics.Condition` holds (with `negate`, when
        it does not)."""
        if isinstance(cond, Node):
            if cond.op == "not":
                self._condition(cond.args[0], label, not negate)
                return
            name, w, lhs, rhs = cond.value, cond.width, cond.args[0], cond.args[1]
        else:
            name, w, lhs, rhs = cond.cmp, cond.width, cond.lhs, cond.rhs
        if negate:
            name = NEGATED[name]
        with self._in_reg(lhs) as left:
            if rhs.is_const:
                self._cond_branch(name, w, left, None, rhs.value & ((1 << w) - 1), label)
            else:
                with self._in_reg(rhs) as right:
                    self._cond_branch(name, w, left, right, 0, label)

    def _resolve_cell(self, cell: int, target: int) -> None:
        self._callout(self._kind(abi.RESOLVE, abi.RESOLVE_CELL), lambda: self.emit(self.ops.li(self.ARGS[0], cell)))
        self.cell_load(target, cell)

    # ---- memory ----------------------------------------------------------------------------------------

    def _translate(self, base: int) -> int:
        """Verified access: TMP = the native address of BPF register `base`'s VM address (its region's delta,
        from the DELTA table by the high half, added); the access adds its offset."""
        ops, TMP, reg = self.ops, self.TMP, self.H[base]
        self.emit(ops.alu_imm("lshr", 64, TMP, reg, 32), ops.add_shifted(TMP, self.TABLES, TMP, 3),
                  ops.load(8, TMP, TMP, -8), ops.alu("add", 64, TMP, TMP, reg))
        return TMP

    def _checked(self, base: int, off: int, size: int, write: bool, slow) -> Label:
        """Sandboxed access: TMP = the VM address, checked against its region's bounds and flags, then its
        native address; returns the label after the access, where `slow()` (out of line, address in TMP)
        resumes."""
        ops, TMP, T1, T2, T3 = self.ops, self.TMP, self.T1, self.T2, self.T3
        resume = Label("accessed")
        slow_label = self._stub(slow, resume)
        self.emit(ops.add_const(TMP, self.H[base], off), ops.alu_imm("lshr", 64, T1, TMP, 32),
                  ops.add_const(T1, T1, -1))
        self.cell_load(T2, abi.NREGIONS)
        self._cond_branch("uge", 64, T1, T2, 0, slow_label)
        self.emit(ops.add_shifted(T1, self.TABLES, T1, 3), ops.zext(T2, TMP, 32),
                  ops.load(8, T3, T1, abi.LO - abi.DELTA))
        self._cond_branch("ult", 64, T2, T3, 0, slow_label)
        self.emit(ops.add_const(T2, T2, size), ops.load(8, T3, T1, abi.HI - abi.DELTA))
        self._cond_branch("ugt", 64, T2, T3, 0, slow_label)
        self.emit(ops.load(8, T3, T1, abi.FLAGS - abi.DELTA))
        self._cond_branch("set", 64, T3, None, abi.FLAG_SPECIAL | (abi.FLAG_READONLY if write else 0), slow_label)
        self.emit(ops.load(8, T1, T1, 0), ops.alu("add", 64, TMP, TMP, T1))
        return resume

    def _fetch(self, node: Node, target: int) -> None:
        ops = self.ops
        if node.op == "legacy":
            self._legacy(node, target)
            return
        if node.op == "cast":
            def setup() -> None:
                self._into(node.args[0], self.TMP)
                self._arg(0, self.TMP)
            self._callout(self._kind(abi.CAST, node.value), setup)
            self.cell_load(target, abi.VALUE)
            return
        size = node.value
        base, off = self._base_offset(node.args[0])
        lw = self.lw
        if not lw.sandbox and self.slot in lw.ctx_fields:
            self.cell_load(target, lw.cells.ctx_loads[self.slot])
            return
        if not lw.sandbox and self.slot not in lw.checked:
            self.emit(ops.load(size, target, self._translate(base), off))
            return

        def slow() -> None:
            self._callout(self._kind(abi.LOAD, size), lambda: self._arg(0, self.TMP))
            self.cell_load(target, abi.VALUE)
        resume = self._checked(base, off, size, False, slow)
        self.emit(ops.load(size, target, self.TMP, 0))
        self.asm.label(resume)

    def _legacy(self, node: Node, target: int) -> None:
        """LD_ABS/LD_IND: a big-endian read at a non-negative offset inside skb->data..tail natively (the run
        keeps PKT_DATA and PKT_LEN current); the rest goes to the run, as on x86-64."""
        ops, size, TMP, T1, T2 = self.ops, node.value, self.TMP, self.T1, self.T2

        def slow() -> None:
            def setup() -> None:
                self._into(node.args[0], TMP, exact=True)
                self._arg(0, TMP)
            self._callout(self._kind(abi.LEGACY, size), setup)
            self.cell_load(target, abi.VALUE)
        resume = Label("loaded")
        slow_label = self._stub(slow, resume)
        self._into(node.args[0], TMP, exact=True)
        self.emit(ops.alu_imm("lshr", 64, T1, TMP, 31))
        self._cond_branch("ne", 64, T1, None, 0, slow_label)
        self.emit(ops.add_const(T1, TMP, size))
        self.cell_load(T2, abi.PKT_LEN)
        self._cond_branch("ugt", 64, T1, T2, 0, slow_label)
        self.cell_load(T2, abi.PKT_DATA)
        self.emit(ops.alu("add", 64, TMP, TMP, T2), ops.load(size, target, TMP, 0))
        if size > 1:
            self.emit(ops.bswap(size * 8, target, target))
        self.asm.label(resume)

    def _value_reg(self, node: Node, width: int) -> int:
        """A register holding a store's value (a BPF register, zero, or the constant in T1)."""
        reg = self._leaf_reg(node)
        if reg is not None:
            return reg
        if node.is_const:
            self.emit(self.ops.li(self.T1, node.value & ((1 << width) - 1)))
            return self.T1
        self._into(node, self.T1, exact=False)
        return self.T1

    def _store(self, effect: Store) -> None:
        ops = self.ops
        base, off = self._base_offset(effect.addr)
        size = effect.size
        if not self.lw.sandbox:
            value = self._value_reg(effect.value, 64 if size == 8 else 32)
            self.emit(ops.store(size, value, self._translate(base), off))
            return

        def slow() -> None:
            def setup() -> None:  # the value again: the checks used T1, where a constant would be
                if effect.value.is_const:
                    self.emit(ops.li(self.ARGS[1], effect.value.value & ((1 << (64 if size == 8 else 32)) - 1)))
                else:
                    self._arg(1, self._value_reg(effect.value, 64))
                self._arg(0, self.TMP)
            self._callout(self._kind(abi.STORE, size), setup)
        resume = self._checked(base, off, size, True, slow)
        value = self._value_reg(effect.value, 64 if size == 8 else 32)  # after the checks, which use T1
        self.emit(ops.store(size, value, self.TMP, 0))
        self.asm.label(resume)

    def _atomic(self, effect: AtomicRmw) -> None:
        if self.lw.sandbox:
            resume = self._checked(effect.base, effect.off, effect.size, True, lambda: self._atomic_slow(effect))
            self.asm.label(resume)
        else:
            self._translate(effect.base)
            self.emit(self.ops.add_const(self.TMP, self.TMP, effect.off))
        # the native address in TMP, whatever the base register the atomic may overwrite
        self.emit(self.ops.atomic(effect.op, effect.size, self.TMP, self.H[effect.src], self.H[0], effect.fetch,
                                 self.T1))

    def _atomic_slow(self, effect: AtomicRmw) -> None:
        self._callout(self._kind(abi.ATOMIC, effect.size), lambda: self._arg(0, self.TMP))
        self.cell_load(self.TMP, abi.VALUE)

    # ---- calls -----------------------------------------------------------------------------------------

    def _inline_helper(self, effect: Call) -> bool:
        inline = self.lw.lookups.get(self.slot)
        if inline is None or inline.kind != "array":  # cached hash lookups: x86-64 only so far
            return False
        self._array_lookup(inline.ref, inline.entries)
        return True

    def _array_lookup(self, ref: int, entries: int) -> None:
        """bpf_map_lookup_elem of an array map, inlined: the u32 key, its bounds, then the value's address
        from the run's table (filled by the helper the first time an index is looked up)."""
        ops, H, T1 = self.ops, self.H, self.T1
        done = Label("looked up")
        self.emit(ops.load(4, T1, self._translate(2), 0))
        self._cond_branch("uge", 64, T1, None, entries, self._stub(lambda: self.emit(ops.mov(H[0], ops.zero)), done))
        self.cell_load(H[0], self.lw.cells.array_tables[ref])
        self.emit(ops.add_shifted(H[0], H[0], T1, 3), ops.load(8, H[0], H[0], 0))
        self._cond_branch("eq", 64, H[0], None, 0, self._stub(lambda: self._callout(self._kind(abi.HELPER, 1)), done))
        self.asm.label(done)

    def _local_call(self, target: int | None) -> None:
        """A BPF-to-BPF call: the link register, r6-r9, the frame pointer and the may_goto count saved
        around it, the callee's frame one deeper (`target` None: the native address the run resolved, in
        VALUE)."""
        ops, H = self.ops, self.H
        self.cell_load(self.T1, abi.DEPTH)  # checked before the frame grows
        self._cond_branch("uge", 64, self.T1, None, MAX_CALL_FRAMES - 1, self._stub(lambda: self._fault(abi.FAULT_DEPTH)))
        self.cell_load(self.T2, abi.MAY_GOTO)
        saved = [self.LINK, H[6], H[7], H[8], H[9], H[10], self.T2]
        self.emit(ops.push(saved))
        self._enter_frame()
        self.cell_set(abi.MAY_GOTO, MAY_GOTO_BUDGET, self.T1)
        if target is None:
            self.cell_load(self.T1, abi.VALUE)
            self.emit(ops.call_reg(self.T1))
        else:
            function = self.functions.get(target)
            self._call_label(function if function is not None else self._control_fault(target))
        self.cell_add(abi.DEPTH, -1, self.T1)
        self.emit(ops.pop(saved))
        self.cell_store(self.T2, abi.MAY_GOTO)


def _upper_dead(lowered: Lowered) -> frozenset[int]:
    """The 32-bit results whose zero-extension no one needs (`analysis.upper`); none where the program has
    no CFG (a sandboxed program may jump anywhere: its code faults there)."""
    ends = [sc.slot + (2 if isinstance(sc.op, LoadImm64) else 1) for sc in lowered.code]
    ops: list = [None] * max(ends, default=0)
    for sc in lowered.code:
        ops[sc.slot] = sc.op
    try:
        return upper_dead_after(cfg_of_ops(ops, lowered.entries))
    except BpforgeError:
        return frozenset()


def compile_risc(lowered: Lowered, ops) -> Image:
    return RiscCompiler(lowered, ops).compile()
