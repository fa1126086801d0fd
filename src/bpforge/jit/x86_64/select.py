"""Instruction selection for x86-64: a lowered program's effects and nodes (`jit.mir`) into native code.

The frame follows the kernel's x86-64 JIT: BPF registers live in the registers `abi.X86_64` names (r1-r5 in
the C argument registers, so a call-out needs no moves), a BPF call is a native call, exit is `ret`, and a
tail call jumps to the target's first instruction in the same frame. Every function body runs with the
native stack 8 bytes off 16-byte alignment (just after a call), so a call-out that pushes the five argument
registers calls the run with the alignment the C ABI wants.

Values are computed into registers with the upper bits beyond a value's width zero (a 32-bit operation
zero-extends on x86-64, so the semantics' zext of a 32-bit result costs nothing); a `trunc` whose result
only feeds an operation of that width or narrower costs nothing either.
"""

from __future__ import annotations

import secrets

from ...isa.numbers import M64, s64
from ...vm.interp import MAX_CALL_FRAMES, MAY_GOTO_BUDGET
from .. import abi
from ..emit import Label
from ..image import Image
from ..lower import CACHE_MULTIPLIER, MAP_LOOKUP_ELEM, SKB_LOAD_BYTES, Lowered
from ..mir import AtomicRmw, Call, Node, Store
from ..selector import Selector
from . import encode as X
from .encode import R8, R9, R10, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDI, RDX, RSI, RSP, Mem

REGS = abi.X86_64
H = REGS.bpf
CTL, TMP = REGS.ctl, REGS.tmp
ARG_REGS = (RDI, RSI, RDX, RCX, R8)  # BPF r1-r5, the C argument registers

_CC = {"eq": "e", "ne": "ne", "ult": "b", "ule": "be", "ugt": "a", "uge": "ae",
       "slt": "l", "sle": "le", "sgt": "g", "sge": "ge", "set": "ne", "clear": "e"}
_NEG_CC = {"e": "ne", "ne": "e", "b": "ae", "ae": "b", "be": "a", "a": "be", "l": "ge", "ge": "l", "le": "g", "g": "le"}
_ALU = {"add": "add", "sub": "sub", "and": "and", "or": "or", "xor": "xor"}
_SHIFTS = {"shl": "shl", "lshr": "shr", "ashr": "sar"}


def C(offset: int) -> Mem:
    """A control-block cell."""
    return Mem(CTL, offset)


class X86Compiler(Selector):
    def __init__(self, lowered: Lowered, *, blind: bool = False) -> None:
        super().__init__(lowered, H, REGS.scratch)
        self.blind = blind

    # ---- the image -------------------------------------------------------------------------------------

    def compile(self) -> Image:
        asm = self.asm
        entry, callfn = Label("entry"), Label("call function")
        asm.label(entry)
        self._prologue()
        asm.emit(X.alu_rm("mov", 64, RDI, C(abi.R1_IN)), X.alu_rm("mov", 64, RSI, C(abi.R2_IN)),
                 X.alu_rm("mov", 64, RBP, C(abi.STACK_TOP)))
        for r in (RAX, RDX, RCX, R8, RBX, R13, R14, R15):
            asm.emit(X.alu_rr("xor", 32, r, r))
        asm.emit(X.alu_ri("mov", 64, C(abi.DEPTH), 0), X.alu_ri("mov", 64, C(abi.MAY_GOTO), MAY_GOTO_BUDGET))
        self._call_label(self.functions[0] if 0 in self.functions else self._control_fault(0))
        self._jmp(self.epilogue)

        asm.label(callfn)  # uint64 callfn(ctl, native target): a BPF function called back from a helper
        self._prologue()
        asm.emit(X.alu_rr("mov", 64, TMP, RSI), X.push_mem(C(abi.MAY_GOTO)), X.alu_ri("sub", 64, RSP, 8),
                 X.alu_rm("mov", 64, R10, C(abi.DEPTH)), X.inc_dec("inc", 64, R10),
                 X.alu_rr("mov", 64, C(abi.DEPTH), R10), X.alu_rm("mov", 64, RBP, Mem(CTL, abi.STACK_TOP, R10, 8)))
        for i, r in enumerate(ARG_REGS):
            asm.emit(X.alu_rm("mov", 64, r, C(abi.ARGS + 8 * i)))
        for r in (RAX, RBX, R13, R14, R15):
            asm.emit(X.alu_rr("xor", 32, r, r))
        asm.emit(X.alu_ri("mov", 64, C(abi.MAY_GOTO), MAY_GOTO_BUDGET), X.call_indirect(TMP),
                 X.inc_dec("dec", 64, C(abi.DEPTH)), X.alu_ri("add", 64, RSP, 8), X.pop_mem(C(abi.MAY_GOTO)))

        asm.label(self.epilogue)
        asm.emit(X.alu_rm("mov", 64, TMP, Mem(RSP)), X.alu_rr("mov", 64, C(abi.SAVED_SP), TMP),
                 X.alu_ri("add", 64, RSP, 8))
        for r in (R15, R14, R13, R12, RBP, RBX):
            asm.emit(X.pop(r))
        asm.emit(X.ret())

        asm.label(self.dispatch)  # a call-back asked for something other than "continue"
        tail = Label("tail call")
        asm.emit(X.alu_ri("cmp", 32, RAX, abi.TAIL_CALL))
        self._jcc("e", tail)
        asm.emit(X.alu_rm("mov", 64, RSP, C(abi.SAVED_SP)), X.alu_rr("xor", 32, RAX, RAX))
        self._jmp(self.epilogue)
        asm.label(tail)
        asm.emit(X.alu_rm("mov", 64, RAX, C(abi.R0)), X.alu_ri("mov", 64, C(abi.MAY_GOTO), MAY_GOTO_BUDGET),
                 X.jmp_indirect(C(abi.TAIL_TARGET)))

        repeat = Label("repeat")
        asm.label(repeat)  # uint64 repeat(ctl, n): n runs, as test_run's loop does them, until one fails
        again, done = Label("again"), Label("done")
        asm.emit(X.push(RBX), X.push(R12), X.push(R13), X.alu_rr("mov", 64, RBX, RDI), X.alu_rr("mov", 64, R13, RSI))
        asm.label(again)
        for cell in (abi.EXECUTED, abi.TAIL_CALLS, abi.EXPIRED):
            asm.emit(X.alu_ri("mov", 64, Mem(RBX, cell), 0))
        asm.emit(X.alu_rm("mov", 64, TMP, Mem(RBX, abi.LIMIT)), X.alu_rr("mov", 64, Mem(RBX, abi.BUDGET), TMP),
                 X.alu_rr("mov", 64, RDI, RBX))
        self._call_label(entry)
        asm.emit(X.alu_ri("cmp", 64, Mem(RBX, abi.ERROR), 0))
        self._jcc("ne", done)
        asm.emit(X.inc_dec("dec", 64, R13))
        self._jcc("ne", again)
        asm.label(done)
        asm.emit(X.pop(R13), X.pop(R12), X.pop(RBX), X.ret())

        return self._image("x86_64", entry, callfn, repeat)

    def _prologue(self) -> None:
        for r in (RBX, RBP, R12, R13, R14, R15):
            self.asm.emit(X.push(r))
        self.asm.emit(X.alu_ri("sub", 64, RSP, 8), X.alu_rr("mov", 64, CTL, RDI),
                      X.alu_rm("mov", 64, TMP, C(abi.SAVED_SP)), X.alu_rr("mov", 64, Mem(RSP), TMP),
                      X.alu_rr("mov", 64, C(abi.SAVED_SP), RSP))

    # ---- branches and labels ---------------------------------------------------------------------------

    def _jmp(self, label: Label) -> None:
        self.asm.branch(label, X.jmp, 2, 5)

    def _jcc(self, cc: str, label: Label) -> None:
        self.asm.branch(label, lambda rel, short: X.jcc(cc, rel, short), 2, 6)

    def _call_label(self, label: Label) -> None:
        self.asm.branch(label, lambda rel, short: X.call_rel32(rel), 0, 5)

    def _branch_if(self, cond, label: Label) -> None:
        self._jcc(self._condition(cond), label)

    # ---- call-outs to the run ----------------------------------------------------------------------------

    def _callout(self, kind: int, setup=None) -> None:
        """Call the run with `kind`, r1-r5 preserved (a helper's result comes back in r0); `setup()` puts
        the C arguments in place once r1-r5 are saved."""
        asm = self.asm
        for r in ARG_REGS:
            asm.emit(X.push(r))
        if setup is not None:
            setup()
        asm.emit(X.mov_const(R9, kind), X.alu_ri("mov", 64, C(abi.SLOT), self.slot), X.alu_rr("mov", 64, C(abi.R0), RAX),
                 X.call_indirect(C(abi.CALLBACK)))
        for r in reversed(ARG_REGS):
            asm.emit(X.pop(r))
        asm.emit(X.alu_rr("test", 32, RAX, RAX))
        self._jcc("ne", self.dispatch)
        asm.emit(X.alu_rm("mov", 64, RAX, C(abi.R0)))

    def _arg(self, i: int, reg: int) -> None:
        if ARG_REGS[i] != reg:
            self.asm.emit(X.alu_rr("mov", 64, ARG_REGS[i], reg))

    def _fault(self, what: int, value: int = 0) -> None:
        self._callout(self._kind(abi.FAULT, what), lambda: self.asm.emit(X.mov_const(RDI, value)))
        self.asm.emit(X.ud2())  # the run raises: control never comes back

    def _charge(self, n: int) -> None:
        asm = self.asm
        resume = Label("charged")
        asm.emit(X.alu_ri("add", 64, C(abi.EXECUTED), n), X.alu_rm("mov", 64, TMP, C(abi.EXECUTED)),
                 X.alu_rm("cmp", 64, TMP, C(abi.BUDGET)))
        self._jcc("a", self._stub(lambda: self._callout(self._kind(abi.TICK, 0)), resume))
        asm.label(resume)

    # ---- instructions ------------------------------------------------------------------------------------

    def _extend(self, reg: int, from_width: int) -> None:
        self.asm.emit(X.movsx(reg, reg, from_width))

    def _may_goto(self, target: Label) -> None:
        self.asm.emit(X.alu_ri("cmp", 64, C(abi.MAY_GOTO), 0))
        self._jcc("e", target)
        self.asm.emit(X.alu_ri("cmp", 64, C(abi.EXPIRED), 0))
        self._jcc("ne", target)
        self.asm.emit(X.inc_dec("dec", 64, C(abi.MAY_GOTO)))

    def _exit(self) -> None:
        self.asm.emit(X.ret())

    # ---- values ----------------------------------------------------------------------------------------

    def _reads(self, node: Node, reg: int) -> bool:
        if node.op == "reg":
            return H[node.value] == reg
        if node in self.fetched:
            return self.fetched[node] == reg
        return any(isinstance(a, Node) and self._reads(a, reg) for a in node.args)

    def _leaf_reg(self, node: Node) -> int | None:
        """The register already holding `node` (its low bits, for a trunc), if any."""
        while node.op == "trunc":
            node = node.args[0]
        if node.op == "reg":
            return H[node.value]
        return self.fetched.get(node)

    def _set_reg(self, n: int, value: Node) -> None:
        self._into(value, H[n])

    def _into(self, node: Node, target: int, exact: bool = True) -> None:
        """Code leaving `node`'s value in `target` (with `exact`, zero above the node's width)."""
        asm = self.asm
        op, w = node.op, node.width
        if op == "const":
            self._constant(target, node.value)
        elif op == "reg" or node in self.fetched:
            source = self._leaf_reg(node)
            if source != target:
                asm.emit(X.alu_rr("mov", 64, target, source))
        elif op in ("map", "mapvalue", "func"):
            table = {"map": self.lw.cells.maps, "mapvalue": self.lw.cells.map_values, "func": self.lw.cells.functions}
            cell = table[op][node.value]
            asm.emit(X.alu_rm("mov", 64, target, C(cell)))
            resume = Label("resolved")
            asm.emit(X.alu_rr("test", 64, target, target))
            self._jcc("e", self._stub(lambda: self._resolve_cell(cell, target), resume))
            asm.label(resume)
        elif op == "kobj":
            self._fault(abi.FAULT_KERNEL_OBJECT)
        elif op in _ALU or op == "mul":
            self._binary(node, target)
        elif op in _SHIFTS:
            self._shift(node, target)
        elif op in ("udiv", "urem", "sdiv", "srem"):
            self._divide(node, target)
        elif op == "neg":
            self._into(node.args[0], target, exact=False)
            asm.emit(X.unary_group3("neg", w, target))
        elif op == "zext":
            self._into(node.args[0], target, exact=True)
        elif op == "trunc":
            source = self._leaf_reg(node)
            if exact and source is not None and w == 32:
                asm.emit(X.alu_rr("mov", 32, target, source))
            elif exact and source is not None:
                asm.emit(X.movzx(target, source, w))
            else:
                self._into(node.args[0], target, exact=False)
                if exact:
                    self._zero_upper(target, w)
        elif op == "sext":
            self._into(node.args[0], target, exact=False)
            asm.emit(X.movsx(target, target, node.value, 64 if w == 64 else 32))
        elif op == "bswap":
            self._into(node.args[0], target, exact=False)
            if w == 16:
                asm.emit(X.shift_imm("ror", 16, target, 8), X.movzx(target, target, 16))
            else:
                asm.emit(X.bswap(w, target))
        elif op == "ite":
            cond, a, b = node.args
            otherwise, done = Label("else"), Label("end if")
            self._jcc(self._condition(cond, negate=True), otherwise)
            self._into(a, target, exact)
            self._jmp(done)
            asm.label(otherwise)
            self._into(b, target, exact)
            asm.label(done)
        else:
            raise ValueError(f"no x86-64 selection for {op}")

    def _constant(self, target: int, value: int) -> None:
        """target = a program's constant. Blinded (the kernel's bpf_jit_blind_constants), the constant never
        appears in the code as written: it is loaded xor a fresh random key, and the key xored out again."""
        value &= M64
        asm = self.asm
        if not self.blind or value == 0:
            asm.emit(X.mov_const(target, value))
            return
        low = secrets.randbits(31) | 1  # positive: as a sign-extended imm32 it leaves the upper half alone
        if X.fits_imm32(s64(value)):
            asm.emit(X.mov_const(target, value ^ low), X.alu_ri("xor", 64, target, low))
            return
        high = secrets.randbits(31) | 1
        asm.emit(X.mov_imm64(target, value ^ (high << 32 | low)), X.alu_ri("xor", 64, target, low),
                 X.shift_imm("ror", 64, target, 32), X.alu_ri("xor", 64, target, high),
                 X.shift_imm("ror", 64, target, 32))

    def _zero_upper(self, reg: int, width: int) -> None:
        if width == 32:
            self.asm.emit(X.alu_rr("mov", 32, reg, reg))
        elif width < 32:
            self.asm.emit(X.movzx(reg, reg, width))

    def _operand(self, node: Node, width: int, avoid: int | None = None):
        """A source operand for a `width`-bit operation: ("imm", value) or ("reg", register); a register
        taken from the scratch pool is returned third, to be given back. Blinded, constants are never
        immediates."""
        if node.is_const and not self.blind:
            value = node.value if width == 64 else node.value & 0xFFFFFFFF
            signed = s64(value) if width == 64 else value - (1 << 32) if value >> 31 else value
            if X.fits_imm32(signed):
                return "imm", signed, None
        reg = self._leaf_reg(node)
        if reg is not None and reg != avoid:
            return "reg", reg, None
        if not self.free:
            raise ValueError("expression too deep for the scratch registers")
        scratch = self.free.pop(0)
        self._into(node, scratch, exact=False)
        return "reg", scratch, scratch

    def _release(self, scratch: int | None) -> None:
        if scratch is not None:
            self.free.insert(0, scratch)

    def _binary(self, node: Node, target: int) -> None:
        a, b = node.args
        w, op = node.width, node.op
        commutative = op in ("add", "and", "or", "xor", "mul")
        if self._reads(b, target) and not self._same_value(a, target):
            if commutative and not self._reads(a, target) or commutative and self._same_value(b, target):
                a, b = b, a
            else:
                with self._scratch() as s:
                    self._binary(node, s)
                    self.asm.emit(X.alu_rr("mov", 64, target, s))
                return
        if not self._same_value(a, target):
            self._into(a, target, exact=False)
        kind, value, scratch = self._operand(b, w)
        if op == "mul":
            if kind == "imm":
                self.asm.emit(X.imul_ri(w, target, target, value))
            else:
                self.asm.emit(X.imul_rr(w, target, value))
        elif kind == "imm":
            self.asm.emit(X.alu_ri(_ALU[op], w, target, value))
        else:
            self.asm.emit(X.alu_rr(_ALU[op], w, target, value))
        self._release(scratch)

    def _same_value(self, node: Node, reg: int) -> bool:
        """Whether `reg` already holds `node` (as far as a `node.width`-bit operation reads it)."""
        return self._leaf_reg(node) == reg

    def _shift(self, node: Node, target: int) -> None:
        a, amount = node.args
        w = node.width
        if amount.op == "and" and amount.args[1].is_const and amount.args[1].value == w - 1:
            amount = amount.args[0]  # the processor masks the count to the width, as the semantics does
        if amount.is_const:
            if not self._same_value(a, target):
                self._into(a, target, exact=False)
            self.asm.emit(X.shift_imm(_SHIFTS[node.op], w, target, amount.value & (w - 1)))
            return
        count = self._leaf_reg(amount)
        if count is None:
            with self._scratch() as s:
                self._into(amount, s, exact=False)
                self._shift_by(node, a, s, target)
            return
        self._shift_by(node, a, count, target)

    def _shift_by(self, node: Node, a: Node, count: int, target: int) -> None:
        """target = a shifted by the register `count` (only its low bits count), through cl."""
        asm, w = self.asm, node.width
        name = _SHIFTS[node.op]
        if target == RCX:  # the value is shifted in the temporary while cl holds the count
            self._into(a, TMP, exact=False)
            if count != RCX:
                asm.emit(X.alu_rr("mov", 64, RCX, count))
            asm.emit(X.shift_cl(name, w, TMP), X.alu_rr("mov", 64, RCX, TMP))
            return
        if count == target and not self._same_value(a, target):
            with self._scratch() as s:  # computing `a` in the target would lose the count
                self._shift_by(node, a, count, s)
                asm.emit(X.alu_rr("mov", 64, target, s))
            return
        if not self._same_value(a, target):
            self._into(a, target, exact=False)
        if count == RCX:
            asm.emit(X.shift_cl(name, w, target))
        else:
            asm.emit(X.alu_rr("mov", 64, TMP, RCX), X.alu_rr("mov", 64, RCX, count), X.shift_cl(name, w, target),
                     X.alu_rr("mov", 64, RCX, TMP))

    def _divide(self, node: Node, target: int) -> None:
        """The dividend in rax, the divisor in the temporary, rdx:rax saved around the division."""
        a, b = node.args
        w, asm = node.width, self.asm
        kb, vb, sb = self._operand(b, w)
        if kb == "imm":
            asm.emit(X.mov_const(TMP, vb & ((1 << w) - 1)))
        else:
            asm.emit(X.alu_rr("mov", 64, TMP, vb))
        self._release(sb)
        ka, va, sa = self._operand(a, w)
        asm.emit(X.push(RAX), X.push(RDX))
        if ka == "imm":
            asm.emit(X.mov_const(RAX, va & ((1 << w) - 1)))
        elif va != RAX:
            asm.emit(X.alu_rr("mov", 64, RAX, va))
        self._release(sa)
        signed = node.op in ("sdiv", "srem")
        asm.emit(X.cqo(w) if signed else X.alu_rr("xor", 32, RDX, RDX),
                 X.unary_group3("idiv" if signed else "div", w, TMP),
                 X.alu_rr("mov", w, TMP, RAX if node.op in ("udiv", "sdiv") else RDX),
                 X.pop(RDX), X.pop(RAX), X.alu_rr("mov", 64, target, TMP))

    def _condition(self, cond, negate: bool = False) -> str:
        """Flags for a comparison node or `semantics.Condition`; the condition code that holds when it does
        (with `negate`, when it does not)."""
        if isinstance(cond, Node):
            if cond.op == "not":
                return self._condition(cond.args[0], not negate)
            name, w, lhs, rhs = cond.value, cond.width, cond.args[0], cond.args[1]
        else:
            name, w, lhs, rhs = cond.cmp, cond.width, cond.lhs, cond.rhs
        asm = self.asm
        left = self._leaf_reg(lhs)
        scratch_left = None
        if left is None:
            scratch_left = left = self.free.pop(0)
            self._into(lhs, left, exact=False)
        kind, value, scratch = self._operand(rhs, w)
        test = name in ("set", "clear")
        if kind == "imm":
            asm.emit(X.alu_ri("test" if test else "cmp", w, left, value))
        else:
            asm.emit(X.alu_rr("test" if test else "cmp", w, left, value))
        self._release(scratch)
        self._release(scratch_left)
        cc = _CC[name]
        return _NEG_CC[cc] if negate else cc

    def _resolve_cell(self, cell: int, target: int) -> None:
        self._callout(self._kind(abi.RESOLVE, abi.RESOLVE_CELL), lambda: self.asm.emit(X.mov_const(RDI, cell)))
        self.asm.emit(X.alu_rm("mov", 64, target, C(cell)))

    # ---- memory ----------------------------------------------------------------------------------------

    def _translate(self, base: int, off: int) -> Mem:
        """Verified access: the region's delta added to the VM address."""
        asm = self.asm
        asm.emit(X.alu_rr("mov", 64, TMP, H[base]), X.shift_imm("shr", 64, TMP, 32),
                 X.alu_rm("mov", 64, TMP, Mem(CTL, abi.DELTA - 8, TMP, 8)))
        return Mem(H[base], off, TMP, 1)

    def _checked(self, base: int, off: int, size: int, write: bool, slow) -> tuple[Mem, Label]:
        """Sandboxed access: the address in the temporary, checked against its region's bounds and flags;
        returns the native operand and the label after the access, where `slow()` (out of line) resumes."""
        asm = self.asm
        asm.emit(X.lea(64, TMP, Mem(H[base], off)), X.alu_rr("mov", 64, R10, TMP), X.shift_imm("shr", 64, R10, 32),
                 X.inc_dec("dec", 64, R10), X.alu_rm("cmp", 64, R10, C(abi.NREGIONS)))
        resume = Label("accessed")
        slow_label = self._stub(slow, resume)
        self._jcc("ae", slow_label)
        asm.emit(X.alu_rr("mov", 32, R9, TMP), X.alu_rm("cmp", 64, R9, Mem(CTL, abi.LO, R10, 8)))
        self._jcc("b", slow_label)
        asm.emit(X.alu_ri("add", 64, R9, size), X.alu_rm("cmp", 64, R9, Mem(CTL, abi.HI, R10, 8)))
        self._jcc("a", slow_label)
        flags = abi.FLAG_SPECIAL | (abi.FLAG_READONLY if write else 0)
        asm.emit(X.alu_ri("test", 64, Mem(CTL, abi.FLAGS, R10, 8), flags))
        self._jcc("ne", slow_label)
        asm.emit(X.alu_rm("add", 64, TMP, Mem(CTL, abi.DELTA, R10, 8)))
        return Mem(TMP), resume

    def _fetch(self, node: Node, target: int) -> None:
        asm = self.asm
        if node.op == "legacy":
            self._legacy(node, target)
            return
        if node.op == "cast":
            self._callout(self._kind(abi.CAST, node.value), lambda: self._into(node.args[0], RDI))
            asm.emit(X.alu_rm("mov", 64, target, C(abi.VALUE)))
            return
        size = node.value
        base, off = self._base_offset(node.args[0])
        lw = self.lw
        if not lw.sandbox and self.slot in lw.ctx_fields:
            asm.emit(X.alu_rm("mov", 64, target, C(lw.cells.ctx_loads[self.slot])))
            return
        if not lw.sandbox and self.slot not in lw.checked:
            asm.emit(X.load(target, self._translate(base, off), size))
            return

        def slow() -> None:
            self._callout(self._kind(abi.LOAD, size), lambda: asm.emit(X.alu_rr("mov", 64, RDI, TMP)))
            asm.emit(X.alu_rm("mov", 64, target, C(abi.VALUE)))
        mem, resume = self._checked(base, off, size, False, slow)
        asm.emit(X.load(target, mem, size))
        asm.label(resume)

    def _legacy(self, node: Node, target: int) -> None:
        """LD_ABS/LD_IND: a big-endian read at a non-negative offset inside skb->data..tail natively (the run
        keeps PKT_DATA and PKT_LEN current); negative offsets (SKF_NET_OFF, SKF_LL_OFF), loads out of bounds
        (the run ends with r0 = 0) and programs without a socket buffer go to the run."""
        asm, size = self.asm, node.value

        def slow() -> None:
            self._callout(self._kind(abi.LEGACY, size), lambda: self._into(node.args[0], RDI, exact=True))
            asm.emit(X.alu_rm("mov", 64, target, C(abi.VALUE)))
        resume = Label("loaded")
        slow_label = self._stub(slow, resume)
        self._into(node.args[0], TMP, exact=True)
        asm.emit(X.alu_rr("test", 32, TMP, TMP))
        self._jcc("s", slow_label)
        asm.emit(X.lea(64, R10, Mem(TMP, size)), X.alu_rm("cmp", 64, R10, C(abi.PKT_LEN)))
        self._jcc("a", slow_label)
        asm.emit(X.alu_rm("add", 64, TMP, C(abi.PKT_DATA)), X.load(target, Mem(TMP), size))
        if size == 2:
            asm.emit(X.shift_imm("ror", 16, target, 8), X.movzx(target, target, 16))
        elif size == 4:
            asm.emit(X.bswap(32, target))
        asm.label(resume)

    def _store(self, effect: Store) -> None:
        asm = self.asm
        base, off = self._base_offset(effect.addr)
        size, value = effect.size, effect.value
        if self.blind and value.is_const and self.lw.sandbox:
            self._blinded_checked_store(base, off, size, value.value)
            return
        kind, operand, scratch = self._operand(value, 64 if size == 8 else 32)
        if not self.lw.sandbox:
            mem = self._translate(base, off)
            self._store_to(mem, size, kind, operand)
            self._release(scratch)
            return

        def slow() -> None:
            def setup() -> None:
                if kind == "imm":
                    asm.emit(X.mov_const(RSI, operand))
                elif operand != RSI:
                    asm.emit(X.alu_rr("mov", 64, RSI, operand))
                asm.emit(X.alu_rr("mov", 64, RDI, TMP))
            self._callout(self._kind(abi.STORE, size), setup)
        mem, resume = self._checked(base, off, size, True, slow)
        self._store_to(mem, size, kind, operand)
        asm.label(resume)
        self._release(scratch)

    def _blinded_checked_store(self, base: int, off: int, size: int, value: int) -> None:
        """A sandboxed store of a blinded constant: made after the access checks, which use the scratch
        registers."""
        asm = self.asm

        def slow() -> None:
            def setup() -> None:
                self._constant(RSI, value)
                asm.emit(X.alu_rr("mov", 64, RDI, TMP))
            self._callout(self._kind(abi.STORE, size), setup)
        mem, resume = self._checked(base, off, size, True, slow)
        self._constant(R9, value)
        asm.emit(X.store(mem, R9, size))
        asm.label(resume)

    def _store_to(self, mem: Mem, size: int, kind: str, operand: int) -> None:
        if kind == "imm":
            self.asm.emit(X.store_imm(mem, operand, size))
        else:
            self.asm.emit(X.store(mem, operand, size))

    def _atomic(self, effect: AtomicRmw) -> None:
        asm = self.asm
        w = effect.size * 8
        if self.lw.sandbox:
            mem, resume = self._checked(effect.base, effect.off, effect.size, True, lambda: self._atomic_slow(effect))
            asm.label(resume)
        else:
            mem = self._translate(effect.base, effect.off)
            asm.emit(X.lea(64, TMP, mem))
        mem = Mem(TMP)  # the native address, whatever the base register the atomic may overwrite
        src = H[effect.src]
        op = effect.op
        if op == "cmpxchg":
            asm.emit(X.cmpxchg(w, mem, src))
            if w == 32:
                asm.emit(X.alu_rr("mov", 32, RAX, RAX))
        elif op == "xchg":
            asm.emit(X.xchg(w, mem, src))
        elif not effect.fetch:
            asm.emit(X.lock_alu(op, w, mem, src))
        elif op == "add":
            asm.emit(X.xadd(w, mem, src))
        else:  # fetch-and-op without a native instruction: a compare-and-exchange loop
            again = Label("retry")
            asm.emit(X.alu_rr("mov", 64, R10, RAX), X.alu_rm("mov", w, RAX, mem))
            operand = R10 if src == RAX else src
            asm.label(again)
            asm.emit(X.alu_rr("mov", 64, R9, RAX), X.alu_rr(op, w, R9, operand), X.cmpxchg(w, mem, R9))
            self._jcc("ne", again)
            if src == RAX:
                if w == 32:
                    asm.emit(X.alu_rr("mov", 32, RAX, RAX))
            else:
                asm.emit(X.alu_rr("mov", w, src, RAX), X.alu_rr("mov", 64, RAX, R10))

    def _atomic_slow(self, effect: AtomicRmw) -> None:
        """An atomic whose access the fast checks refused: the run faults as the VM would, or gives the
        native address to do it at."""
        self._callout(self._kind(abi.ATOMIC, effect.size), lambda: self.asm.emit(X.alu_rr("mov", 64, RDI, TMP)))
        self.asm.emit(X.alu_rm("mov", 64, TMP, C(abi.VALUE)))

    # ---- calls -----------------------------------------------------------------------------------------

    def _inline_helper(self, effect: Call) -> bool:
        inline = self.lw.lookups.get(self.slot)
        if inline is not None and inline.kind == "array":
            self._array_lookup(inline.ref, inline.entries)
        elif inline is not None:
            self._cached_lookup(inline)
        elif effect.target == SKB_LOAD_BYTES and not self.lw.sandbox:
            self._skb_load_bytes()
        else:
            return False
        return True

    def _array_lookup(self, ref: int, entries: int) -> None:
        """bpf_map_lookup_elem of an array map, inlined: the u32 key, its bounds, then the value's address
        from the run's table (filled by the helper the first time an index is looked up)."""
        asm = self.asm
        done = Label("looked up")
        asm.emit(X.load(TMP, self._translate(2, 0), 4), X.alu_ri("cmp", 64, TMP, entries))
        self._jcc("ae", self._stub(lambda: asm.emit(X.alu_rr("xor", 32, RAX, RAX)), done))
        asm.emit(X.alu_rm("mov", 64, RAX, C(self.lw.cells.array_tables[ref])),
                 X.alu_rm("mov", 64, RAX, Mem(RAX, 0, TMP, 8)), X.alu_rr("test", 64, RAX, RAX))
        self._jcc("e", self._stub(lambda: self._callout(self._kind(abi.HELPER, MAP_LOOKUP_ELEM)), done))
        asm.label(done)

    def _cached_lookup(self, inline) -> None:
        """bpf_map_lookup_elem of a hash-like map through its cache: the key's words hashed
        (`lower.cache_hash`) to one slot; the slot's key equal to ours: its result (a value address, or 0),
        else the helper (whose result the run caches)."""
        asm = self.asm
        done = Label("looked up")
        slow = self._stub(lambda: self._callout(self._kind(abi.HELPER, MAP_LOOKUP_ELEM)), done)
        key = self._translate(2, 0)
        asm.emit(X.lea(64, TMP, key), X.alu_rr("xor", 32, RAX, RAX), X.mov_imm64(R10, CACHE_MULTIPLIER))
        words = inline.key_words
        offsets = [sum(words[:i]) for i in range(len(words))]
        for at, size in zip(offsets, words):
            asm.emit(X.load(R9, Mem(TMP, at), size), X.alu_rr("add", 64, RAX, R9), X.imul_rr(64, RAX, R10))
        asm.emit(X.shift_imm("shr", 64, RAX, 56), X.imul_ri(64, RAX, RAX, inline.slot_size),
                 X.alu_rm("add", 64, RAX, C(self.lw.cells.lookup_caches[inline.ref])),
                 X.alu_ri("cmp", 64, Mem(RAX), 1))
        self._jcc("ne", slow)
        for i, (at, size) in enumerate(zip(offsets, words)):
            asm.emit(X.load(R9, Mem(TMP, at), size), X.alu_rm("cmp", 64, R9, Mem(RAX, 8 + 8 * i)))
            self._jcc("ne", slow)
        asm.emit(X.alu_rm("mov", 64, RAX, Mem(RAX, 8 + 8 * len(words))))
        asm.label(done)

    def _skb_load_bytes(self) -> None:
        """bpf_skb_load_bytes(skb, offset, to, len) of bytes inside skb->data..tail, copied natively (the
        verifier proved `to` a buffer of `len` bytes, and r1-r5 dead after the call); anything else (out of
        the packet, no socket buffer) goes to the helper, which zeroes the buffer and fails as the VM does."""
        asm = self.asm
        done = Label("loaded bytes")
        slow = self._stub(lambda: self._callout(self._kind(abi.HELPER, SKB_LOAD_BYTES)), done)
        asm.emit(X.alu_rr("mov", 32, R10, RSI), X.alu_rr("mov", 32, R9, RCX), X.alu_rr("add", 64, R9, R10),
                 X.alu_rm("cmp", 64, R9, C(abi.PKT_LEN)))
        self._jcc("a", slow)
        asm.emit(X.alu_rr("mov", 64, TMP, RDX), X.shift_imm("shr", 64, TMP, 32),
                 X.alu_rm("mov", 64, RDI, Mem(CTL, abi.DELTA - 8, TMP, 8)), X.alu_rr("add", 64, RDI, RDX),
                 X.alu_rm("mov", 64, RSI, C(abi.PKT_DATA)), X.alu_rr("add", 64, RSI, R10),
                 X.alu_rr("mov", 32, RCX, RCX), X.rep_movsb(), X.alu_rr("xor", 32, RAX, RAX))
        asm.label(done)

    def _local_call(self, target: int | None) -> None:
        """A BPF-to-BPF call: r6-r9, the frame pointer and the may_goto count saved around it, the callee's
        frame one deeper (`target` None: the native address the run resolved, in VALUE)."""
        asm = self.asm
        asm.emit(X.alu_ri("cmp", 64, C(abi.DEPTH), MAX_CALL_FRAMES - 1))  # checked before the frame grows
        self._jcc("ae", self._stub(lambda: self._fault(abi.FAULT_DEPTH)))
        for r in (RBX, R13, R14, R15, RBP):
            asm.emit(X.push(r))
        asm.emit(X.push_mem(C(abi.MAY_GOTO)), X.alu_ri("sub", 64, RSP, 8),
                 X.alu_rm("mov", 64, TMP, C(abi.DEPTH)), X.inc_dec("inc", 64, TMP),
                 X.alu_rr("mov", 64, C(abi.DEPTH), TMP), X.alu_rm("mov", 64, RBP, Mem(CTL, abi.STACK_TOP, TMP, 8)),
                 X.alu_ri("mov", 64, C(abi.MAY_GOTO), MAY_GOTO_BUDGET))
        if target is None:
            asm.emit(X.call_indirect(C(abi.VALUE)))
        else:
            function = self.functions.get(target)
            self._call_label(function if function is not None else self._control_fault(target))
        asm.emit(X.inc_dec("dec", 64, C(abi.DEPTH)), X.alu_ri("add", 64, RSP, 8), X.pop_mem(C(abi.MAY_GOTO)))
        for r in (RBP, R15, R14, R13, RBX):
            asm.emit(X.pop(r))


def compile_x86_64(lowered: Lowered, *, blind: bool = False) -> Image:
    return X86Compiler(lowered, blind=blind).compile()
